"""Compare two finished pipeline workdirs: checkpoints, data positions, stage records, exports.

Used by the fault tests to check that a run killed (or stopped by a full disk) and resumed ends
exactly where an uninterrupted run of the same config ends.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tests.fixtures import REPO

FAULTS = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(FAULTS, "kill_driver.py")
STAGE_DIRS = ("teacher_sft", ".")  # the pre-stage's workdir, then the main stage's (the root)
# Per-run facts that differ by design between a resumed and an uninterrupted run.
RUN_FACTS = ("seconds", "resumed_from", "workdir", "export", "perf/seconds_per_step")
RUN_FACTS += ("time/rollout_s", "time/train_s", "time/checkpoint_s", "rollout/tokens_per_s")


def driver(workdir, *plan, config: str = "", timeout: int = 600) -> subprocess.CompletedProcess:
  """Run kill_driver.py on 8 fake CPU devices (as the tests' own process has); `config`:
  kill_driver's FAULT_CONFIG ('' = the pipeline with a teacher SFT stage)."""
  env = dict(
    os.environ,
    FAULT_CONFIG=config,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    HF_HUB_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
  )
  cmd = [sys.executable, DRIVER, str(workdir), *map(str, plan)]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def leftovers(root) -> list[str]:
  """Half-written artefacts still on disk: orbax tmp dirs, hf.tmp, *.tmp records."""
  return sorted(
    str(p.relative_to(root))
    for p in pathlib.Path(root).rglob("*")
    if ".orbax-checkpoint-tmp" in p.name or p.name.endswith(".tmp")
  )


def checkpoint_arrays(step_dir) -> dict[str, np.ndarray]:
  """{path: array} of a checkpoint's saved state, read with orbax (no target: as saved)."""
  tree = ocp.StandardCheckpointer().restore(epath.Path(step_dir) / "state")
  flat = {}
  for path, leaf in _flatten(tree):
    flat[path] = np.asarray(leaf)
  return flat


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, f"{prefix}{k}/")
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      yield from _flatten(v, f"{prefix}{i}/")
  elif tree is not None:
    yield prefix.rstrip("/"), tree


def _strip(obj):
  """A JSON record without the per-run facts (RUN_FACTS)."""
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items() if k not in RUN_FACTS}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


def _metric_lines(path) -> dict[int, dict]:
  """{step: last line logged for it} (a resumed run re-logs the steps after its checkpoint).

  The data counts (data/prompts_dropped, ...) describe a start: every start or resume logs
  them on its first line, so they are compared as the set of values logged, not per step.
  """
  out = {}
  for line in epath.Path(path).read_text().splitlines():
    rec = json.loads(line)
    out[rec["step"]] = {k: v for k, v in _strip(rec).items() if not k.startswith("data/")}
    counts = {k: v for k, v in rec.items() if k.startswith("data/")}
    if counts:
      out.setdefault("data counts", set()).add(tuple(sorted(counts.items())))
  return out


def assert_same_run(expected, actual, stages=STAGE_DIRS) -> list[str]:
  """Assert two finished workdirs hold the same results; the checked items, for the report.

  Checkpoint arrays (params, optimiser moments, RockStats, rock mask, rng, step) are compared
  bit for bit: the resumed run restores float32 arrays exactly and replays the same compiled
  programs on the same 8 CPU devices, so any difference is a resume bug, not rounding.
  """
  expected, actual = epath.Path(expected), epath.Path(actual)
  checked = []
  assert leftovers(actual) == [], leftovers(actual)
  for stage in stages:
    a, b = expected / stage, actual / stage
    steps_a = sorted(p.name for p in (a / "ckpt").iterdir())
    steps_b = sorted(p.name for p in (b / "ckpt").iterdir())
    assert steps_a == steps_b, (stage, steps_a, steps_b)
    for step in steps_a:
      arrays_a, arrays_b = (
        checkpoint_arrays(a / "ckpt" / step),
        checkpoint_arrays(b / "ckpt" / step),
      )
      assert sorted(arrays_a) == sorted(arrays_b), (stage, step)
      for key, x in arrays_a.items():
        np.testing.assert_array_equal(arrays_b[key], x, err_msg=f"{stage} ckpt {step} {key}")
      data_a = json.loads((a / "ckpt" / step / "data" / "process_0-of-1.json").read_text())
      data_b = json.loads((b / "ckpt" / step / "data" / "process_0-of-1.json").read_text())
      assert data_a == data_b, (stage, step, data_a, data_b)
      checked.append(f"{stage}/ckpt/{step}: {len(arrays_a)} arrays, data {data_a['next_batch']}")
    stage_a = json.loads((a / "stage.json").read_text())
    stage_b = json.loads((b / "stage.json").read_text())
    assert _strip(stage_b) == _strip(stage_a), (stage, stage_a, stage_b)
    assert json.loads((b / "rocks.json").read_text()) == json.loads((a / "rocks.json").read_text())
    assert _metric_lines(b / "metrics.jsonl") == _metric_lines(a / "metrics.jsonl")
    checked.append(f"{stage}: stage.json, rocks.json, metrics.jsonl")
  if "teacher_sft" in stages:
    hf_a, hf_b = expected / "teacher_sft" / "hf", actual / "teacher_sft" / "hf"
    names = sorted(p.name for p in hf_a.iterdir())
    assert sorted(p.name for p in hf_b.iterdir()) == names
    for name in names:  # safetensors, config and tokenizer files, byte for byte
      assert (hf_b / name).read_bytes() == (hf_a / name).read_bytes(), name
    checked.append(f"teacher_sft/hf: {names}")
  summary_a = json.loads((expected / "summary.json").read_text())
  summary_b = json.loads((actual / "summary.json").read_text())
  assert _strip(summary_b["stages"]) == _strip(summary_a["stages"])
  return checked
