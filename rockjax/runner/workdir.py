"""A run's workdir: the config it records, and which changes a later run may make to it.

A workdir records its resolved config (`config.json`); a run whose config differs is refused
unless allowed, except in RESUMABLE_FIELDS, which change where or how a result is computed,
not the result.
"""

import json
from typing import Any

import jax
import ml_collections
from etils import epath

from rockjax import errors, storage
from rockjax.runner.summary import CONFIG_FILE

# Fields that may change between runs in one workdir: they do not change what is computed
# (the attention implementations agree to float rounding; prefixes cover attention_block;
# mlp_chunk only changes how the MLP is tiled; rollout_sharding and rollout_tensor only where
# the sampling copy lives, its tokens equal to float rounding).
RESUMABLE_FIELDS = (
  "stop_after",
  "log_every",
  "mesh.",
  "model.attention",
  "teacher.attention",
  "model.mlp_chunk",
  "teacher.mlp_chunk",
  "analysis.",  # the analysis reads the trained models; it changes nothing they compute
  "opd.rollout_sharding",
  "opd.rollout_tensor",
  "preflight.",  # checks before step 1; they change nothing the run computes
)


def _flat(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """{'group.field': value} with JSON-normalised values (tuples become lists)."""
  d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  out = {}
  for key, value in json.loads(json.dumps(d)).items():
    if isinstance(value, dict):
      out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
    else:
      out[key] = value
  return out


def config_changes(recorded: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'field: old -> new' for every field that differs (RESUMABLE_FIELDS aside)."""
  old, new = _flat(recorded), _flat(config)
  keys = sorted(k for k in set(old) | set(new) if not k.startswith(RESUMABLE_FIELDS))
  missing = "<absent>"
  return [
    f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
    for k in keys
    if old.get(k, missing) != new.get(k, missing)
  ]


def write_json(path: epath.Path, obj: Any) -> None:
  """Write atomically (a temp file renamed into place); process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, default=float))
  tmp.replace(path)


def prepare_workdir(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> epath.Path:
  """Check the workdir against the config it records, then create it and record this one."""
  storage.check_checkpoint_dir(workdir)
  root = epath.Path(workdir)
  if root.exists() and not root.is_dir():
    raise errors.WorkdirError(f"--workdir={workdir} is a file; it must be a directory")
  record = root / CONFIG_FILE
  if record.exists():
    changes = config_changes(json.loads(record.read_text()), config)
    if changes and not allow_config_change:
      shown = "; ".join(changes[:6]) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")
      raise errors.WorkdirError(
        f"{workdir} was made with another config ({shown}); use a new --workdir, or pass "
        f"--allow_config_change to continue with this one"
      )
    if not changes:
      return root
  root.mkdir(parents=True, exist_ok=True)
  write_json(record, config.to_dict())
  return root
