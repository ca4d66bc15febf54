"""A cache of Hugging Face weights as orbax checkpoints (the config's `cache.weights`).

Reading a large HF teacher means copying its safetensors to every host, then reading them
whole. The cache holds the same parameters as an orbax checkpoint, made once, which every host
restores straight into its devices' shards, reading only the shards it holds (TensorStore).

The HF directory stays the source of truth. One model's entry is
`<cache_dir>/<HF dir name>-<key>/`, the key 12 hex digits of sha256(the resolved HF path,
param_dtype, scan_layers); it holds `params/`, the orbax checkpoint of the parameters in
param_dtype and rockjax's layer layout, and `fingerprint.json`, written last by process 0 as
the commit mark. fingerprint.json records the HF path, dtype and layout, and the name, size
and mtime of every file that makes the weights (config.json, *.safetensors, the index) plus
config.json's sha256: cheap to compare, nothing hashed but config.json. An entry without it
(a build that was cut off) or whose fingerprint differs from the directory's now (stale, with
one WARNING line saying what changed) is deleted and built again from the HF directory.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rockjax import errors, storage
from rockjax.models import hf_dirs, hf_io
from rockjax.models.config import ModelConfig

_log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"  # the commit mark: an entry without it is never trusted
PARAMS = "params"  # the orbax checkpoint inside an entry
_FORMAT = 1  # bumped when an entry's contents change meaning: older entries are rebuilt
_CONFIG = "config.json"


def _weights_file(name: str) -> bool:
  """Whether a file of an HF directory decides the weights rockjax loads from it."""
  return name in (_CONFIG, hf_dirs.SAFETENSORS_INDEX) or name.endswith(".safetensors")


def _mtime(path: epath.Path, stat: Any) -> float | None:
  """A file's modification time in seconds; None when the store gives none (0)."""
  if not storage.is_remote(path):
    return os.stat(path).st_mtime  # epath's stat truncates to whole seconds
  return float(stat.mtime) if stat.mtime else None


def fingerprint(hf_path: str | os.PathLike) -> dict[str, Any]:
  """{files: {name: {size, mtime}}, config_sha256} of an HF directory (local or gs://).

  Only listings and stats, and config.json's bytes: the safetensors are never read.
  """
  root = epath.Path(hf_path)
  files = {}
  for path in sorted(root.iterdir(), key=lambda p: p.name):
    if _weights_file(path.name):
      stat = path.stat()
      files[path.name] = {"size": int(stat.length), "mtime": _mtime(path, stat)}
  config_sha256 = hashlib.sha256((root / _CONFIG).read_bytes()).hexdigest()
  return {"files": files, "config_sha256": config_sha256}


def _dtype_name(cfg: ModelConfig) -> str:
  return np.dtype(cfg.param_dtype).name


def entry_dir(cache_dir: str | os.PathLike, hf_path: str | os.PathLike, cfg: ModelConfig):
  """The entry of the HF model at `hf_path` loaded with `cfg`'s param_dtype and scan_layers."""
  source = os.fspath(storage.resolve(hf_path))
  key = f"{source}\n{_dtype_name(cfg)}\n{bool(cfg.scan_layers)}"
  name = os.path.basename(source.rstrip("/")) or "model"
  return storage.resolve(cache_dir) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _layout(cfg: ModelConfig) -> str:
  """12 hex digits naming rockjax's parameter tree for `cfg` (paths, shapes, dtypes)."""
  _, abstract = hf_io.abstract_model(cfg)
  lines = [
    f"{'.'.join(map(str, p))} {tuple(v.get_value().shape)} {np.dtype(v.get_value().dtype)}"
    for p, v in nnx.to_flat_state(abstract)
  ]
  return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def _record(hf_path: str | os.PathLike, cfg: ModelConfig) -> dict[str, Any]:
  """What fingerprint.json holds for the entry of `hf_path` as it is now."""
  return {
    "format": _FORMAT,
    "hf_path": os.fspath(storage.resolve(hf_path)),
    "param_dtype": _dtype_name(cfg),
    "scan_layers": bool(cfg.scan_layers),
    "layers": "scanned" if cfg.scans_layers else "unrolled",
    "layout": _layout(cfg),
    **fingerprint(hf_path),
  }


def _when(mtime: float | None) -> str:
  if mtime is None:
    return "unknown"
  return datetime.datetime.fromtimestamp(mtime, datetime.UTC).isoformat(timespec="microseconds")


def _file_changes(old: dict[str, Any], new: dict[str, Any], hf: str) -> list[str]:
  """'<hf>/<name> changed (size a -> b)' (or is new, or is gone) per file that differs."""
  out = []
  for name in sorted(set(old) | set(new)):
    where, a, b = f"{hf}/{name}", old.get(name), new.get(name)
    if a == b:
      continue
    if b is None or a is None:
      out.append(f"{where} is {'gone' if b is None else 'new'}")
    elif a.get("size") != b.get("size"):
      out.append(f"{where} changed (size {a.get('size')} -> {b.get('size')})")
    else:
      out.append(f"{where} changed (modified {_when(a.get('mtime'))} -> {_when(b.get('mtime'))})")
  return out


def _changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """What differs between an entry's fingerprint.json and the HF directory now, in words."""
  hf = now["hf_path"]
  out = _file_changes(saved.get("files") or {}, now["files"], hf)
  if saved.get("config_sha256") != now["config_sha256"] and not out:
    out.append(f"{hf}/{_CONFIG} changed (contents)")
  if saved.get("format") != now["format"]:
    out.append(f"it was made by another rockjax version (format {saved.get('format')})")
  elif saved.get("layers") != now["layers"] or saved.get("layout") != now["layout"]:
    out.append("rockjax's parameter layout changed")
  for key in ("hf_path", "param_dtype", "scan_layers"):
    if saved.get(key) != now[key]:
      out.append(f"{key} {saved.get(key)!r} -> {now[key]!r}")
  return out or [f"its {FINGERPRINT} differs"]


def _read_fingerprint(entry: epath.Path) -> dict[str, Any] | None:
  """The entry's fingerprint.json; None when it has none (incomplete) or it does not parse."""
  try:
    value = json.loads((entry / FINGERPRINT).read_text())
  except (OSError, ValueError):  # FileNotFoundError, or cut off mid-write
    return None
  return value if isinstance(value, dict) else None


@dataclasses.dataclass(frozen=True)
class _Plan:
  """One model's entry, what its fingerprint.json must say, and whether it does already."""

  entry: epath.Path
  record: dict[str, Any]
  saved: dict[str, Any] | None  # the entry's fingerprint.json now (None: none, or unreadable)
  fresh: bool


def _agreed(flag: bool) -> bool:
  """Process 0's `flag` on every process: all hosts take the same branch (collective save)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"rockjax:weights_cache:{name}")


def _plan(m: ml_collections.ConfigDict, cfg: ModelConfig, cache_dir: str) -> _Plan:
  if m.source != "hf":
    raise ValueError(f"weights cache: source={m.source!r}; only 'hf' models are cached")
  storage.check_checkpoint_dir(cache_dir, field="cache.weights")
  entry = entry_dir(cache_dir, m.path, cfg)
  record = _record(m.path, cfg)
  saved = _read_fingerprint(entry)
  return _Plan(entry, record, saved, _agreed(saved == record))


def _target(cfg: ModelConfig, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, abstract params) whose leaves carry from_pretrained's shardings on `mesh`."""
  graphdef, abstract = hf_io.abstract_model(cfg)

  def place(var: nnx.Variable) -> nnx.Variable:
    value = var.get_value()
    sharding = hf_io.param_sharding(var, mesh)
    return var.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))

  return graphdef, jax.tree.map(place, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _restore(plan: _Plan, cfg: ModelConfig, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
  """The entry's params, each host reading only the shards its devices hold."""
  start = time.perf_counter()
  graphdef, target = _target(cfg, mesh)
  checkpointer = ocp.StandardCheckpointer()
  try:
    params = checkpointer.restore(plan.entry / PARAMS, target)
  except Exception as err:  # pylint: disable=broad-except  (any unreadable file)
    raise errors.InputError(
      f"weights cache {plan.entry} is unreadable ({type(err).__name__}: "
      f"{str(err).splitlines()[0][:200] if str(err) else ''}); delete it to rebuild it from "
      f"{plan.record['hf_path']}"
    ) from err
  finally:
    checkpointer.close()
  took = time.perf_counter() - start
  hf = plan.record["hf_path"]
  _log.info("weights cache: restored %s from %s in %.1f s", hf, plan.entry, took)
  return graphdef, params


def _save(entry: epath.Path, params: nnx.State) -> None:
  """Every process writes its shards (orbax renames its tmp directory once all is written)."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(entry / PARAMS, params)
    checkpointer.wait_until_finished()
  except Exception as err:  # pylint: disable=broad-except  (ENOSPC arrives wrapped by orbax)
    if not storage.is_disk_full(err):
      raise
    raise errors.DiskFull(
      f"weights cache {entry}: no space left on device; free space, or set "
      f"--config.cache.weights='' to read the HF weights directly"
    ) from err
  finally:
    checkpointer.close()


def _build(
  plan: _Plan, hf_path: str, cfg: ModelConfig, mesh: Mesh
) -> tuple[nnx.GraphDef, nnx.State]:
  """Loads the HF directory, writes it as the entry (fingerprint.json last); (graphdef, params)."""
  start, hf, entry = time.perf_counter(), plan.record["hf_path"], plan.entry
  if plan.saved is not None:
    changes = _changes(plan.saved, plan.record)
    more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
    _log.warning(
      "weights cache %s is stale: %s%s; rebuilding it from %s", entry, changes[0], more, hf
    )
  elif entry.exists():
    _log.warning(
      "weights cache %s is incomplete (no %s: its build was cut off); rebuilding it from %s",
      entry,
      FINGERPRINT,
      hf,
    )
  if jax.process_index() == 0 and entry.exists():
    entry.rmtree()
  _sync(f"cleared:{entry}")
  graphdef, params = nnx.split(hf_io.load_pretrained(hf_path, cfg, mesh=mesh))
  _save(entry, params)
  _sync(f"saved:{entry}")
  if jax.process_index() == 0:
    (entry / FINGERPRINT).write_text(json.dumps(plan.record, indent=2) + "\n")
  _sync(f"committed:{entry}")
  took = time.perf_counter() - start
  _log.info("weights cache: built %s from %s in %.1f s", entry, hf, took)
  return graphdef, params


def load(
  m: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh, cache_dir: str
) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) of the HF model `m` (source 'hf'), placed on `mesh` exactly as
  hf_io.from_pretrained places them: restored from its entry under `cache_dir` when that is up
  to date (no safetensors file is opened), else read from m.path and written there first.

  `cfg` is the model's ModelConfig (models.loading.model_config). Every process calls it.
  """
  plan = _plan(m, cfg, cache_dir)
  if plan.fresh:
    return _restore(plan, cfg, mesh)
  return _build(plan, m.path, cfg, mesh)


def ensure(
  m: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh, cache_dir: str
) -> tuple[epath.Path, float | None]:
  """(entry, seconds its build took) after building `m`'s entry where it is missing,
  incomplete or stale; seconds None when it was up to date (then nothing is read)."""
  plan = _plan(m, cfg, cache_dir)
  if plan.fresh:
    return plan.entry, None
  start = time.perf_counter()
  _build(plan, m.path, cfg, mesh)
  return plan.entry, time.perf_counter() - start
