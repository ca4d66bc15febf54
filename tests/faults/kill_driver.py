"""Run the fault suite's pipeline in this process and SIGKILL it at one planned moment.

  python tests/faults/kill_driver.py WORKDIR [PHASE N DELAY_S]

With no plan the pipeline (a teacher SFT stage with its HF export, then OPD) runs to the end.
With a plan, the N-th call of this process to PHASE's function (counted from this start, so a
resumed run counts afresh) kills the process with SIGKILL: at once when DELAY_S is 0, else from
a timer thread DELAY_S seconds later while the call goes on (mid-write for the checkpoint
phases). Nothing in rockjax knows about this file: it wraps the real functions from outside.

FAULT_CONFIG=long_rollout in the environment runs another config instead: OPD alone from a
random teacher, 4 steps, rollouts of up to 512 positions decoded in segments of 8, one
checkpoint (kept) at the end.

Phases: task (the synthetic task's files: after the tokenizer's tokenizer_config.json, before
its tokenizer.json), rollout (sampling.generate), step (the jitted train step), ckpt_write (a checkpoint
save, killed after DELAY_S), ckpt_commit (orbax's finalise of a fully written tmp dir, before
its rename), export (after the HF weights are written into hf.tmp, before the tokenizer and
the rename), stage_record (after the export's rename, before stage.json), ckpt_async (the
N-th checkpoint's background commit waits until the loop has started the next train step, so
the save is in flight while training goes on, then the process is killed; DELAY_S unused).
sigterm_rollout (N-th rollout, DELAY_S read as the segment M: right after its M-th decode
segment is dispatched, the process sends itself SIGTERM; not a kill: the run must abandon the
rollout, save and exit; at exit a line `FAULT_REPORT {json}` on stderr says how many segments
were dispatched after the signal and the seconds from the signal to the exit). Two more plans fill
the disk instead (N; DELAY_S unused): enospc_ckpt (from the N-th checkpoint save on, writes in
orbax's tmp dirs raise ENOSPC) and enospc_export (the N-th safetensors file is cut short by
ENOSPC).
"""

import asyncio
import atexit
import errno
import json
import os
import signal
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

PHASES = ("task", "rollout", "step", "ckpt_write", "ckpt_commit", "export", "stage_record")
PHASES += ("ckpt_async", "sigterm_rollout")
DISK_FULL = ("enospc_ckpt", "enospc_export")  # not kills: the disk fills up, the run must stop


def fault_config():
  """The smallest pipeline with a pre-stage export and OPD: tiny models, 4 + 6 steps."""
  from configs import tiny  # pylint: disable=g-import-not-at-top

  c = tiny.get_config()
  c.teacher.source = "sft"  # a teacher SFT stage, exported as HF and loaded back for OPD
  c.teacher.stage_steps = 4
  c.steps = 6
  c.ckpt.every = 2  # teacher stage saves at 2, 4; OPD at 2, 4, 6
  c.rock.warmup_steps = 1  # the selection changes during the run (select_every=2)
  return c


def long_rollout_config():
  """OPD alone with long rollouts decoded in segments (FAULT_CONFIG=long_rollout)."""
  from configs import tiny  # pylint: disable=g-import-not-at-top

  c = tiny.get_config()
  c.teacher.source = "random"
  c.steps = 4
  c.opd.max_new_tokens = 512
  c.opd.decode_segment = 8
  c.ckpt.every = 0  # only the end (and a stop) saves
  c.ckpt.keep = 1
  return c


def _step_commit(tmp_path) -> bool:
  """Whether orbax is finalising a whole step (`<step>.orbax-checkpoint-tmp`), not one of its
  items (state/, data/: an async save finalises those first, in its background thread)."""
  return tmp_path.get().name.split(".")[0].isdigit()


def _die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def _arm(delay_s: float) -> None:
  """Kill now, or from a timer thread `delay_s` seconds from now."""
  if delay_s <= 0:
    _die()
  timer = threading.Timer(delay_s, _die)
  timer.daemon = True
  timer.start()


def _counting(real, n: int, delay_s: float, *, after: bool = False):
  """`real` wrapped so that its n-th call arms the kill (after the call when `after`)."""
  calls = [0]

  def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n and not after:
      _arm(delay_s)
    out = real(*args, **kwargs)
    if calls[0] == n and after:
      _arm(delay_s)
    return out

  return wrapped


def _kill_after_writing(name: str, n: int) -> None:
  """Die once the n-th file called `name` opened for writing has been written and closed."""
  import builtins  # pylint: disable=g-import-not-at-top

  real_open, calls = builtins.open, [0]

  class _KillOnClose:
    def __init__(self, f):
      self._f = f

    def __getattr__(self, attr):
      return getattr(self._f, attr)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self._f.__exit__(*exc)
      _die()

  def open_(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if os.path.basename(os.fspath(file)) == name and "w" in mode:
      calls[0] += 1
      if calls[0] == n:
        return _KillOnClose(f)
    return f

  builtins.open = open_


def _kill_async_save(train, checkpointer_cls, tmp_path_cls, n: int) -> None:
  """The n-th checkpoint's commit (orbax's finalise of the step, in its background thread)
  waits until the train loop has dispatched a train step after that save returned, then kills
  the process: the save was in flight while training went on. Exit status 3 (not a kill) if
  no step came within 120 s: the save held the loop."""
  real_build, real_save, real_finalize = (
    train.build_experiment,
    checkpointer_cls.save,
    tmp_path_cls.finalize,
  )
  commits, steps, steps_at_save = [0], [0], []

  def build(*args, **kwargs):
    exp = real_build(*args, **kwargs)
    step_fn = exp.train_step

    def counted(*a):
      steps[0] += 1
      return step_fn(*a)

    exp.train_step = counted
    return exp

  def save(self, *args, **kwargs):
    out = real_save(self, *args, **kwargs)
    steps_at_save.append(steps[0])  # saves commit in the order they were made
    return out

  async def finalize(self, *args, **kwargs):
    commits[0] += _step_commit(self)
    if commits[0] == n and _step_commit(self):
      seen, deadline = steps_at_save[n - 1], time.monotonic() + 120
      while steps[0] == seen and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # a slow commit awaits its I/O: never block orbax's loop
      if steps[0] == seen:
        os._exit(3)
      _die()
    return await real_finalize(self, *args, **kwargs)

  train.build_experiment, checkpointer_cls.save = build, save
  tmp_path_cls.finalize = finalize


def _sigterm_mid_rollout(n: int, m: int) -> None:
  """SIGTERM to this process right after the m-th decode segment of the n-th rollout is
  dispatched (it is then running); FAULT_REPORT at exit (see the module docstring)."""
  from rockjax import sampling  # pylint: disable=g-import-not-at-top
  from rockjax.sampling import sampler  # pylint: disable=g-import-not-at-top

  real_generate, real_segment = sampling.generate, sampler._segment_jit
  rollouts, segments, report = [0], [0], {"signal_at": None, "segments_after_signal": 0}

  def generate(*args, **kwargs):
    rollouts[0] += 1
    segments[0] = 0
    return real_generate(*args, **kwargs)

  def segment(*args, **kwargs):
    if report["signal_at"] is not None:
      report["segments_after_signal"] += 1
    out = real_segment(*args, **kwargs)
    segments[0] += 1
    if rollouts[0] == n and segments[0] == m and report["signal_at"] is None:
      report["signal_at"] = time.monotonic()
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  def write_report():
    if report["signal_at"] is not None:
      report["seconds_to_exit"] = round(time.monotonic() - report.pop("signal_at"), 3)
      sys.stderr.write(f"FAULT_REPORT {json.dumps(report)}\n")

  sampling.generate, sampler._segment_jit = generate, segment
  atexit.register(write_report)


def _enospc(path) -> OSError:
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _full_disk_from_save(checkpointer_cls, n: int) -> None:
  """From the n-th checkpoint save on, every etils file opened for writing inside the orbax
  tmp directory of such a save raises ENOSPC (the lowest Python write orbax and grain reach).
  An earlier save still being written in the background is not hit."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top

  real_open, real_save, calls, full = gpath._GPath.open, checkpointer_cls.save, [0], []

  def open_(self, mode="r", **kwargs):
    hit = any(f"/{step}.orbax-checkpoint-tmp" in str(self) for step in full)
    if hit and ("w" in mode or "a" in mode):
      raise _enospc(self)
    return real_open(self, mode, **kwargs)

  def save(self, step, *args, **kwargs):
    calls[0] += 1
    if calls[0] >= n:
      full.append(step)
    return real_save(self, step, *args, **kwargs)

  gpath._GPath.open, checkpointer_cls.save = open_, save


def _full_disk_in_export(n: int) -> None:
  """The n-th safetensors file written writes half its bytes, then the disk is full."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  real, calls = safetensors.numpy.save_file, [0]

  def save_file(tensors, filename, *args, **kwargs):
    calls[0] += 1
    if calls[0] != n:
      return real(tensors, filename, *args, **kwargs)
    real(tensors, filename, *args, **kwargs)
    with open(filename, "r+b") as f:  # what a write cut short by ENOSPC leaves
      f.truncate(os.path.getsize(filename) // 2)
    raise _enospc(filename)

  safetensors.numpy.save_file = save_file


def install(phase: str, n: int, delay_s: float) -> None:
  """Wrap the phase's function in place (module attributes the pipeline looks up per call)."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top

  from rockjax import checkpoint, models, sampling  # pylint: disable=g-import-not-at-top
  from rockjax.runner import loop as train
  from rockjax.runner import pipeline

  if phase == "rollout":
    sampling.generate = _counting(sampling.generate, n, delay_s)
  elif phase == "step":
    real_build, counted = train.build_experiment, _counting(lambda f, *a: f(*a), n, delay_s)

    def build(*args, **kwargs):  # one counter over the steps of every stage of this process
      exp = real_build(*args, **kwargs)
      step_fn = exp.train_step
      exp.train_step = lambda *a: counted(step_fn, *a)
      return exp

    train.build_experiment = build
  elif phase == "ckpt_write":
    checkpoint.Checkpointer.save = _counting(checkpoint.Checkpointer.save, n, delay_s)
  elif phase == "ckpt_commit":
    cls = atomicity.AtomicRenameTemporaryPath
    real_finalize = cls.finalize
    calls = [0]

    async def finalize(self, *args, **kwargs):
      calls[0] += _step_commit(self)
      if calls[0] == n and _step_commit(self):
        _die()  # everything is written into the tmp dir; the rename never happens
      return await real_finalize(self, *args, **kwargs)

    cls.finalize = finalize
  elif phase == "ckpt_async":
    _kill_async_save(train, checkpoint.Checkpointer, atomicity.AtomicRenameTemporaryPath, n)
  elif phase == "sigterm_rollout":
    _sigterm_mid_rollout(n, int(delay_s))
  elif phase == "export":
    models.save_pretrained = _counting(models.save_pretrained, n, delay_s, after=True)
  elif phase == "stage_record":
    real_write = pipeline.write_json
    calls = [0]

    def write_json(path, obj):
      if path.name == pipeline.STAGE_FILE:
        calls[0] += 1
        if calls[0] == n:
          _die()
      return real_write(path, obj)

    pipeline.write_json = write_json
  elif phase == "task":
    _kill_after_writing("tokenizer_config.json", n)
  elif phase == "enospc_ckpt":
    _full_disk_from_save(checkpoint.Checkpointer, n)
  elif phase == "enospc_export":
    _full_disk_in_export(n)
  else:
    raise SystemExit(f"unknown phase {phase!r}; one of {PHASES}")


def main(argv: list[str]) -> None:
  workdir = argv[1]
  if len(argv) > 2:
    install(argv[2], int(argv[3]), float(argv[4]))
  from rockjax import cli  # pylint: disable=g-import-not-at-top
  from rockjax.runner import pipeline

  config = long_rollout_config() if os.environ.get("FAULT_CONFIG") == "long_rollout" else None
  # As rockjax.main runs it: a UserError is one line on stderr and exit status 2.
  cli.run_guarded(lambda: pipeline.run(config or fault_config(), workdir))


if __name__ == "__main__":
  main(sys.argv)
