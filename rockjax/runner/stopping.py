"""When the train loop stops and saves: stop signals (SIGTERM, Ctrl-C) agreed by every host,
and the checkpoint schedule (every N steps, every M minutes, the end, a stop, and the early
step the persistence study reads) with the steps kept besides the latest."""

import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils


class StopSignals:
  """SIGTERM (TPU preemption) or Ctrl-C sets a flag; the loop saves a checkpoint and stops.

  The flag is read after every step and between the decode segments of a rollout (which is
  then abandoned: the checkpoint is the last finished step's). A second Ctrl-C raises
  KeyboardInterrupt at once (no checkpoint), as a user pressing it twice expects.
  """

  def __init__(self):
    self.requested: str | None = None  # the signal's name once one arrived
    self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if self.requested == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = name
    tqdm.tqdm.write(
      f"{name}: saving a checkpoint of the last finished step, then stopping (Ctrl-C again to "
      "stop at once)"
    )

  def agreed(self) -> bool:
    """Whether any host has a stop request. Every host calls this at the same points (after a
    step, between decode segments), so all stop together; one scalar collective per call on
    several hosts, none on one."""
    if jax.process_count() == 1:
      return self.requested is not None
    flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
    if np.asarray(flags).any() and self.requested is None:
      self.requested = "SIGTERM"  # another host's preemption notice: stop with it
    return self.requested is not None

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def early_step(c: ml_collections.ConfigDict) -> int:
  """analysis.early_step for an on-policy run (the OPD stage the persistence study compares),
  else 0: off-policy stages (teacher SFT, stage-1 KD) share the field but nothing reads theirs."""
  analysis, opd = c.get("analysis") or {}, c.get("opd") or {}  # (partial configs of tests)
  return int(analysis.get("early_step", 0)) if opd.get("mode") == "on_policy" else 0


def kept_steps(c: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The steps whose checkpoints are kept besides the ckpt.keep latest: ckpt.keep_steps and
  the early step (`early_step`)."""
  step = early_step(c)
  return tuple(sorted({*c.ckpt.keep_steps, *([step] if step else [])}))


class SaveSchedule:
  """When a finished step is checkpointed: every ckpt.every steps, every ckpt.every_minutes
  since the last save (or the start), at the last step, at the early step (`early_step`) and
  when stopping. Process 0's clock decides the time-based saves for every host (saves are
  collective)."""

  def __init__(self, c: ml_collections.ConfigDict):
    self.every, self.steps = c.ckpt.every, c.steps
    self.early = early_step(c)
    self.seconds = 60.0 * c.ckpt.every_minutes
    self.last = time.monotonic()

  def due(self, done: int, stopping: bool) -> bool:
    by_step = (self.every and done % self.every == 0) or done in (self.steps, self.early)
    by_step = by_step or stopping
    if not by_step and self.seconds:
      by_step = time.monotonic() - self.last >= self.seconds
      if jax.process_count() > 1:
        by_step = bool(multihost_utils.broadcast_one_to_all(np.int32(by_step)))
    return bool(by_step)

  def saved(self) -> None:
    self.last = time.monotonic()
