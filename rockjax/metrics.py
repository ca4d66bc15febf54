"""Metric (sum, count) pairs -> averages, written as JSONL and to TensorBoard."""

import json
import math
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np
from etils import epath
from tensorboardX import SummaryWriter

from rockjax import storage


def host_value(x: Any) -> np.ndarray:
  """A replicated (or local) array's value on this host, also on multi-process meshes."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))  # every process holds a full replica
  return np.asarray(x)


def to_host(metrics: dict[str, tuple[Any, Any]]) -> dict[str, tuple[float, float]]:
  """Pull (sum, count) pairs to the host as floats."""
  return {k: (float(host_value(s)), float(host_value(c))) for k, (s, c) in metrics.items()}


def averages(metrics: dict[str, tuple[float, float]]) -> dict[str, float]:
  """sum / count per key (nan when count is 0)."""
  return {k: (s / c if c else math.nan) for k, (s, c) in metrics.items()}


def accumulate(total: dict[str, list[float]], metrics: dict[str, tuple[float, float]]) -> None:
  """Add host (sum, count) pairs into `total` in place (averages stay exact across steps)."""
  for k, (s, c) in metrics.items():
    acc = total.setdefault(k, [0.0, 0.0])
    acc[0] += s
    acc[1] += c


def _drop_torn_line(path: str) -> None:
  """Cut a last line without its newline (a kill mid-write) so appends start on a fresh line."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def logged_at(workdir: str, step: int) -> dict[str, float]:
  """The values workdir/metrics.jsonl holds for `step` (later lines win; null is nan)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  out: dict[str, float] = {}
  if not path.exists():
    return out
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line torn by a kill mid-write (the next writer cuts it)
    if record.pop("step", None) == step:
      out.update({k: math.nan if v is None else v for k, v in record.items()})
  return out


class MetricWriter:
  """Appends `{"step": n, key: value, ...}` lines to workdir/metrics.jsonl and to TensorBoard.

  A cloud workdir (gs://, s3://) cannot be appended to: the file and the TensorBoard events
  are written to a local temporary directory (metrics.jsonl starting from the workdir's copy,
  so a resumed run keeps its earlier lines) and uploaded whole by `flush` -- at most every
  `upload_every_s` seconds from `write`, and always on `flush()` and `close()`.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, upload_every_s: float = 60.0):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self._staging = None
    local = os.fspath(workdir)
    if storage.is_remote(workdir):
      self._staging = tempfile.TemporaryDirectory(prefix="rockjax-metrics-")
      local = self._staging.name
      if self.path.exists():
        self.path.copy(os.path.join(local, "metrics.jsonl"))
    os.makedirs(local, exist_ok=True)
    _drop_torn_line(os.path.join(local, "metrics.jsonl"))
    self._file = open(os.path.join(local, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(local, "tb"))
    self._upload_every_s = upload_every_s
    self._uploaded = time.monotonic()

  def write(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (None if not np.isfinite(v) else float(v)) for k, v in values.items()}
    self._file.write(json.dumps({"step": step, **clean}) + "\n")
    self._file.flush()
    for k, v in values.items():
      if np.isfinite(v):
        self._tb.add_scalar(k, v, step)
    if self._staging is not None and time.monotonic() - self._uploaded >= self._upload_every_s:
      self.flush()

  def flush(self) -> None:
    """Make everything written so far visible in the workdir (an upload for a cloud one)."""
    if not self.enabled:
      return
    self._file.flush()
    self._tb.flush()
    self._upload()

  def _upload(self) -> None:
    if self._staging is not None:
      storage.copy_tree(self._staging.name, self.workdir)
      self._uploaded = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()
      self._upload()
      if self._staging is not None:
        self._staging.cleanup()
