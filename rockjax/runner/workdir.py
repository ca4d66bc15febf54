"""A run's workdir: the config it records, and which changes a later run may make to it.

A workdir records its resolved config (`config.json`); a run whose config differs is refused
unless allowed, except in RESUMABLE_FIELDS, which change where or how a result is computed,
not the result. A start that fails before it makes progress leaves the workdir as it found it
(undo_failed_start), so the corrected command is not refused as a config change.
"""

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
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
  "ckpt.export_hf",  # an HF copy of the result; turned on later, the next run exports it
  "ckpt.every",  # when and how checkpoints are written and kept, not what they hold
  "ckpt.every_minutes",
  "ckpt.keep",
  "ckpt.async_save",
  "opd.decode_segment",  # how the rollout's decode loop is split; the same tokens
  "cache.",  # where loaded weights and compiled programs are kept
  "bench.",  # rockjax.evaluate reads the trained models; it changes nothing they compute
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
  """'field: old -> new' for every field that differs (RESUMABLE_FIELDS aside).

  A field the recorded config lacks (added to rockjax since the workdir was made) left empty
  or off ('', None, False or 0: its default, e.g. data.pack) is no change."""
  old, new = _flat(recorded), _flat(config)
  keys = sorted(k for k in set(old) | set(new) if not k.startswith(RESUMABLE_FIELDS))
  keys = [k for k in keys if k in old or new[k] not in ("", None, False)]  # False == 0 too
  missing = "<absent>"
  return [
    f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
    for k in keys
    if old.get(k, missing) != new.get(k, missing)
  ]


def recorded_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config a workdir recorded (its config.json); None when it has none."""
  record = epath.Path(workdir) / CONFIG_FILE
  return ml_collections.ConfigDict(json.loads(record.read_text())) if record.exists() else None


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


# What a run leaves besides checkpoint steps (ckpt/N): stage.json and metrics.jsonl in the
# workdir or a stage directory, and any file of the rock analysis (WORKDIR/analysis).
_PROGRESS_FILES = ("stage.json", "metrics.jsonl")
_ANALYSIS_DIR = "analysis"


@dataclasses.dataclass(frozen=True)
class _Found:
  """What a workdir held when a run started (see undo_failed_start)."""

  existed: bool
  entries: frozenset[str]  # its entries and its subdirectories' (ckpt/ not opened)
  config_text: str | None  # config.json's text; None when it had none
  progress: frozenset[Any]  # _progress(workdir)


def _entries(root: epath.Path) -> frozenset[str]:
  """Relative names of root's entries and of its subdirectories' entries (not ckpt/'s)."""
  if not root.is_dir():
    return frozenset()
  out = set()
  for entry in root.iterdir():
    out.add(entry.name)
    if entry.name != "ckpt" and entry.is_dir():
      out.update(f"{entry.name}/{child.name}" for child in entry.iterdir())
  return frozenset(out)


def _progress(root: epath.Path) -> frozenset[Any]:
  """What training (or the analysis) has left in root and its stage directories: checkpoint
  steps, stage.json and metrics.jsonl (with its length), the analysis's files."""
  if not root.is_dir():
    return frozenset()
  marks: set[Any] = set()
  for d in [root, *(p for p in root.iterdir() if p.is_dir())]:
    if (d / "ckpt").is_dir():
      marks.update(str(p) for p in (d / "ckpt").iterdir() if p.name.isdigit())
    marks.update((str(d / f), (d / f).stat().length) for f in _PROGRESS_FILES if (d / f).exists())
  if (root / _ANALYSIS_DIR).is_dir():
    marks.update(str(p) for p in (root / _ANALYSIS_DIR).iterdir())
  return frozenset(marks)


def _find(root: epath.Path) -> _Found | None:
  """What root holds now; None when it cannot be read (prepare_workdir reports why)."""
  try:
    record = root / CONFIG_FILE
    return _Found(
      existed=root.exists(),
      entries=_entries(root),
      config_text=record.read_text() if record.is_file() else None,
      progress=_progress(root),
    )
  except Exception:  # pylint: disable=broad-except  (an unusable URL: prepare_workdir says so)
    return None


def _undo(root: epath.Path, found: _Found) -> None:
  """Put root back as `found` saw it, unless this run made progress there since."""
  if _progress(root) != found.progress:
    return  # a checkpoint, stage or analysis of this run: everything it wrote describes it
  if not found.existed:
    if root.exists():
      root.rmtree()
    return
  for name in sorted(_entries(root) - found.entries):  # a directory before what it holds
    path = root / name
    if path.is_dir():
      path.rmtree()
    elif path.exists():
      path.unlink()
  record = root / CONFIG_FILE
  if found.config_text is not None and record.read_text() != found.config_text:
    tmp = root / (CONFIG_FILE + ".tmp")
    tmp.write_text(found.config_text)
    tmp.replace(record)


@contextlib.contextmanager
def undo_failed_start(workdir: str) -> Iterator[None]:
  """Around a run: when it raises before making progress, undo what it wrote in `workdir`.

  A start that fails (a malformed data file found when the first stage opens it, Ctrl-C
  while it builds) leaves the workdir as it was: one it created is removed, entries it added
  are removed and the config.json it rewrote (--allow_config_change) gets its old text back.
  Nothing is undone once the run has made progress (_progress: a checkpoint step, stage.json,
  a metrics line, an analysis file); nothing of an earlier run is ever removed. Process 0 only.
  """
  root = epath.Path(workdir)
  found = _find(root) if jax.process_index() == 0 else None
  try:
    yield
  except (Exception, KeyboardInterrupt):
    if found is not None:
      try:
        _undo(root, found)
      except Exception as err:  # pylint: disable=broad-except  (the run's own error matters)
        logging.getLogger(__name__).warning("%s: could not undo this failed start: %s", root, err)
    raise
