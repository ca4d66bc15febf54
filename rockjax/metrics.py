"""Metric (sum, count) pairs -> averages, written as JSONL and to TensorBoard."""

import json
import math
import os
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter


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


class MetricWriter:
  """Appends `{"step": n, key: value, ...}` lines to workdir/metrics.jsonl and to TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (None if not np.isfinite(v) else float(v)) for k, v in values.items()}
    self._file.write(json.dumps({"step": step, **clean}) + "\n")
    self._file.flush()
    for k, v in values.items():
      if np.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()
