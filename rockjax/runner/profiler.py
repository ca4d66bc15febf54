"""A jax.profiler trace of chosen train steps (main's --profile_steps)."""

import contextlib
from typing import Any

import jax
from etils import epath

from rockjax import storage


class Profiler:
  """A jax.profiler trace of train steps a..b (inclusive, numbered as metrics.jsonl numbers
  them: the first step is 1) in WORKDIR/profile/.

  A resumed run traces the steps of a..b it runs. A cloud workdir is traced to a local
  temporary directory and uploaded when the trace stops.
  """

  def __init__(self, workdir: str, steps: tuple[int, int] | None):
    if steps is not None and not 1 <= steps[0] <= steps[1]:
      raise ValueError(f"profile_steps={steps}: expected (a, b) with 1 <= a <= b")
    self.steps = steps
    self.directory = epath.Path(workdir) / "profile"
    self._open: contextlib.ExitStack | None = None

  def before(self, n: int) -> None:
    """Start tracing if step `n` (about to run) is in a..b and no trace is running."""
    if self.steps and self._open is None and self.steps[0] <= n <= self.steps[1]:
      self._open = contextlib.ExitStack()
      local = self._open.enter_context(storage.staged_dir(self.directory))
      jax.profiler.start_trace(local)
      self._open.callback(jax.profiler.stop_trace)  # runs before staged_dir uploads

  def after(self, n: int, outputs: Any) -> None:
    """Stop after step b, once its `outputs` are ready (the trace holds its device work)."""
    if self._open is not None and n >= self.steps[1]:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self._open is not None:
      stack, self._open = self._open, None
      stack.close()
