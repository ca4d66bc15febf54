"""The weights cache (rockjax.models.weights_cache) and `python -m rockjax.convert`: a cached
load gives from_pretrained's parameters bit for bit, in its shardings, without opening a
safetensors file; a changed, half-built or differently loaded model gets its own fresh entry."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from configs import default, tiny
from rockjax import sharding as shd
from rockjax import storage
from rockjax.models import hf_io, loading, weights_cache
from tests.fixtures import REPO, assert_one_line_error, make_hf_model, save_hf_checkpoint
from tests.runner.test_cloud_workdir import bucket  # noqa: F401  (the fake gs:// bucket fixture)

pytest.importorskip("torch")
pytestmark = pytest.mark.parity

# Tiny checkpoints: hidden 32, 2 layers; the MoE one has MoE on both layers, so it scans.
_SMALL = dict(hidden_size=32, intermediate_size=48, head_dim=8)
_FAMILIES = {
  "qwen3": _SMALL,
  "qwen3_moe": dict(_SMALL, moe_intermediate_size=16, mlp_only_layers=[]),
}


def _save(family: str, path, seed: int = 0) -> str:
  return save_hf_checkpoint(make_hf_model(family, seed=seed, **_FAMILIES[family]), path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> an HF checkpoint directory (never changed by a test)."""
  return {f: _save(f, tmp_path_factory.mktemp(f)) for f in _FAMILIES}


@pytest.fixture(scope="module")
def mesh(devices8):
  return shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _group(path: str, scan: bool = True, param_dtype: str = "float32"):
  """A model sub-config (configs/default.py's) loading the HF directory `path`."""
  m = default.model_group()
  m.update(source="hf", path=str(path), scan_layers=scan, param_dtype=param_dtype)
  return m


def _reference(m, mesh):
  return nnx.split(hf_io.from_pretrained(m.path, mesh=mesh, **loading.numerics(m)))


def _assert_same(want, got) -> None:
  """Same graph, parameter paths, dtypes and shardings, and bit-identical values."""
  assert got[0] == want[0]
  flat_want, flat_got = nnx.to_flat_state(want[1]), nnx.to_flat_state(got[1])
  assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
  for (path, a), (_, b) in zip(flat_want, flat_got):
    a, b = a.get_value(), b.get_value()
    assert (b.dtype, b.shape, b.sharding) == (a.dtype, a.shape, a.sharding), path
    np.testing.assert_array_equal(np.asarray(b).view(np.uint8), np.asarray(a).view(np.uint8))


def _no_safetensors(monkeypatch) -> None:
  """Any read of a safetensors file now raises."""

  def refuse(*args, **kwargs):
    raise AssertionError("a safetensors file was opened")

  monkeypatch.setattr(hf_io, "CheckpointReader", refuse)
  monkeypatch.setattr(hf_io, "safe_open", refuse)


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
  "family,scan,param_dtype",
  [
    ("qwen3", False, "float32"),
    ("qwen3", True, "bfloat16"),
    ("qwen3_moe", False, "bfloat16"),
    ("qwen3_moe", True, "float32"),
  ],
)
def test_cached_load_equals_hf_load(
  checkpoints, mesh, tmp_path, monkeypatch, caplog, family, scan, param_dtype
):
  m = _group(checkpoints[family], scan, param_dtype)
  cfg = loading.model_config(m)
  assert cfg.scans_layers == scan
  want = _reference(m, mesh)
  cache = str(tmp_path / "cache")
  _assert_same(want, weights_cache.load(m, cfg, mesh, cache))  # a miss: built from the HF dir
  entry = weights_cache.entry_dir(cache, m.path, cfg)
  record = json.loads((entry / weights_cache.FINGERPRINT).read_text())
  assert record["param_dtype"] == param_dtype and record["scan_layers"] == scan
  assert set(record["files"]) == {"config.json", "model.safetensors"}

  _no_safetensors(monkeypatch)
  caplog.set_level(logging.INFO, logger=weights_cache.__name__)
  _assert_same(want, loading.load_params(m, cfg, mesh, seed=0, cache_dir=cache))  # a hit
  assert any("restored" in r.getMessage() for r in caplog.records)
  assert _warnings(caplog) == []


def test_changed_hf_directory_rebuilds_with_one_warning(mesh, tmp_path, caplog):
  hf = _save("qwen3", tmp_path / "hf")
  m = _group(hf)
  cfg, cache = loading.model_config(m), str(tmp_path / "cache")
  old = weights_cache.load(m, cfg, mesh, cache)
  entry = weights_cache.entry_dir(cache, hf, cfg)
  # Other values in the same shapes: only the weights file is rewritten, same size.
  new = _save("qwen3", tmp_path / "new", seed=1)
  shutil.copyfile(os.path.join(new, "model.safetensors"), os.path.join(hf, "model.safetensors"))
  caplog.set_level(logging.INFO)
  got = weights_cache.load(m, cfg, mesh, cache)
  (line,) = _warnings(caplog)
  assert line.startswith(f"weights cache {entry} is stale: {hf}/model.safetensors changed")
  assert line.endswith(f"; rebuilding it from {hf}") and "\n" not in line
  want = _reference(m, mesh)
  _assert_same(want, got)
  assert not np.array_equal(
    old[1]["norm"]["weight"].get_value(), want[1]["norm"]["weight"].get_value()
  )
  caplog.clear()
  _assert_same(want, weights_cache.load(m, cfg, mesh, cache))  # up to date again
  assert _warnings(caplog) == []


def test_entry_without_fingerprint_is_rebuilt(checkpoints, mesh, tmp_path, monkeypatch, caplog):
  m = _group(checkpoints["qwen3"], scan=False)
  cfg, cache = loading.model_config(m), str(tmp_path / "cache")
  entry = weights_cache.entry_dir(cache, m.path, cfg)
  want = _reference(m, mesh)
  reads = []
  load_pretrained = hf_io.load_pretrained
  monkeypatch.setattr(
    hf_io, "load_pretrained", lambda *a, **k: reads.append(1) or load_pretrained(*a, **k)
  )
  # Killed mid-save: orbax's tmp directory only. Killed before the commit: params, no fingerprint.
  (entry / "params.orbax-checkpoint-tmp-1").mkdir(parents=True)
  (entry / "params.orbax-checkpoint-tmp-1" / "junk").write_text("half")
  caplog.set_level(logging.WARNING)
  for cut_off in ("mid-save", "before the commit"):
    caplog.clear()
    _assert_same(want, weights_cache.load(m, cfg, mesh, cache))
    (line,) = _warnings(caplog)
    assert f"weights cache {entry} is incomplete" in line, cut_off
    assert not (entry / "params.orbax-checkpoint-tmp-1").exists()
    (entry / weights_cache.FINGERPRINT).unlink()
  assert len(reads) == 2  # both times from the HF directory, not the untrusted entry


def test_param_dtype_and_scan_layers_get_their_own_entries(checkpoints, mesh, tmp_path):
  cache = str(tmp_path / "cache")
  settings = [(True, "float32"), (False, "float32"), (True, "bfloat16"), (False, "bfloat16")]
  entries = []
  for scan, param_dtype in settings:
    m = _group(checkpoints["qwen3"], scan, param_dtype)
    cfg = loading.model_config(m)
    entries.append(weights_cache.entry_dir(cache, m.path, cfg))
    assert weights_cache.entry_dir(cache, m.path, cfg) == entries[-1]  # a pure function
    if scan:  # two loads suffice to show entries side by side
      weights_cache.load(m, cfg, mesh, cache)
  assert len(set(entries)) == 4
  assert all(e.name.startswith(os.path.basename(checkpoints["qwen3"]) + "-") for e in entries)
  assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
    e.name for e in entries[::2]
  )


def test_hf_directory_and_cache_in_a_bucket(checkpoints, mesh, request, monkeypatch):
  """gs:// for both: the fingerprint from the bucket's listing, the entry through TensorStore."""
  store = request.getfixturevalue("bucket")
  storage.copy_tree(checkpoints["qwen3_moe"], "gs://bkt/hf")
  m = _group("gs://bkt/hf")
  cfg = loading.model_config(m)
  want = _reference(m, mesh)
  _assert_same(want, weights_cache.load(m, cfg, mesh, "gs://bkt/cache"))
  (entry,) = (store / "bkt" / "cache").iterdir()
  record = json.loads((entry / weights_cache.FINGERPRINT).read_text())
  assert record["hf_path"] == "gs://bkt/hf" and record["files"]["model.safetensors"]["size"] > 0
  _no_safetensors(monkeypatch)
  _assert_same(want, weights_cache.load(m, cfg, mesh, "gs://bkt/cache"))


def _convert(*args):
  """`python -m rockjax.convert ARGS` from the repo root on the CPU (8 fake devices)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "rockjax.convert", "--config=configs/tiny.py", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_convert_command_builds_then_is_up_to_date(checkpoints, mesh, tmp_path, monkeypatch):
  cache = str(tmp_path / "cache")
  models = [
    "--config.model.source=hf",
    f"--config.model.path={checkpoints['qwen3']}",
    "--config.teacher.source=hf",
    f"--config.teacher.path={checkpoints['qwen3_moe']}",
  ]
  first = _convert(*models, f"--config.cache.weights={cache}")
  assert first.returncode == 0, first.stderr[-3000:]
  lines = first.stdout.splitlines()
  assert [line.split(":")[0] for line in lines] == ["model", "teacher"], first.stdout
  assert lines[0].startswith(f"model: {checkpoints['qwen3']} -> {cache}/qwen3")
  assert all("(built in " in line for line in lines), first.stdout
  again = _convert(*models, f"--config.cache.weights={cache}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert [line.split(" (")[0] for line in again.stdout.splitlines()] == [
    line.split(" (")[0] for line in lines
  ]
  assert all(line.endswith("(up to date)") for line in again.stdout.splitlines()), again.stdout
  # What the command made is what a run with the same config restores.
  c = tiny.get_config()
  c.model.update(source="hf", path=checkpoints["qwen3"])
  _no_safetensors(monkeypatch)
  got = weights_cache.load(c.model, loading.model_config(c.model), mesh, cache)
  monkeypatch.undo()
  _assert_same(_reference(c.model, mesh), got)
  assert_one_line_error(_convert(*models), "cache.weights", "--config.cache.weights=DIR")
