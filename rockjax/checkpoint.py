"""Orbax checkpoints of the train state and the data-iterator position, in one step directory.

The data position is saved with grain's orbax handler: every host writes its own iterator
state (`<step>/data/process_<i>-of-<n>.json`) and restores its own on resume.

Writes are atomic (orbax finalises a step directory only once everything is on disk), so a
crash mid-save leaves the previous checkpoint as the latest complete one. With `async_save`
(the default) `save` returns once the arrays are copied to host memory and the files are
written in the background while training goes on; the next save, `wait` and `close` wait for
it first, and a write that fails (a full disk) is reported by whichever of them sees it. Restore tells two
failures apart: a checkpoint that cannot be read (truncated or corrupt files) is skipped with
a warning naming it and the previous one is tried; a readable checkpoint whose arrays do not
match the state this config builds (other model sizes, a new state field) stops the run with
an error naming the keys, since starting again from step 0 would let `max_to_keep` delete the
good checkpoints. The teacher is never saved here.
"""

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from rockjax import errors, storage

_log = logging.getLogger(__name__)


def _savable(state) -> dict[str, Any]:
  """The checkpointed part of a TrainState (its static graphdef/optimiser are code, not data)."""
  return {
    "step": state.step,
    "params": state.params,
    "opt_state": state.opt_state,
    "rock": state.rock,
    "rock_mask": state.rock_mask,
    "rng": state.rng,
  }


def _path_str(path: tuple[Any, ...]) -> str:
  """'params/layers/0/kernel' from a jax key path (dict keys, attributes and indices alike)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{path: (shape, dtype)} of every array leaf."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): (tuple(x.shape), str(x.dtype)) for p, x in leaves}


def structure_mismatch(
  saved: dict[str, tuple], wanted: dict[str, tuple], limit: int = 4
) -> str | None:
  """A one-line description of how two {path: (shape, dtype)} maps differ, or None."""
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  shapes = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  parts = []
  for label, keys, show in (
    ("missing from the checkpoint", missing, None),
    ("not in this config's state", extra, None),
    ("different shape/dtype", shapes, True),
  ):
    if keys:
      shown = [f"{k} {saved[k]} vs {wanted[k]}" if show else k for k in keys[:limit]]
      more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
      parts.append(f"{label}: {', '.join(shown)}{more}")
  return "; ".join(parts) or None


_UNROLLED = re.compile(r"(^|/)layers/\d+/")  # params/layers/3/self_attn/... (an nnx.List)
_STACKED = re.compile(r"(^|/)layers/(?!\d+/)")  # params/layers/self_attn/... (scan_layers)


def layers_hint(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
  """The fix when the mismatch is only the decoder's layer layout (unrolled vs scanned)."""
  is_unrolled = lambda specs: any(_UNROLLED.search(k) for k in specs)
  is_stacked = lambda specs: any(_STACKED.search(k) for k in specs)
  if is_unrolled(saved) and is_stacked(wanted):
    return "it holds unrolled layers (layers/0/...): resume with --config.model.scan_layers=False"
  if is_stacked(saved) and is_unrolled(wanted):
    return "it holds scanned layers (layers/...): resume with --config.model.scan_layers=True"
  return None


class _Position:
  """A data iterator's position frozen at save time: grain's checkpoint handler reads
  `get_state()` whenever orbax writes, which for a background save is after the loop has
  drawn the next batches."""

  def __init__(self, iterator: grain.DatasetIterator):
    self._state = json.dumps(iterator.get_state(), indent=4).encode()

  def get_state(self) -> bytes:
    return self._state  # bytes: the handler writes them as they are (its non-dataset branch)


def _keep_policy(keep: int, keep_steps: Sequence[int]):
  """The `keep` latest checkpoints, and those of `keep_steps` once written."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_steps:
    policies.append(ocp.checkpoint_managers.CustomSteps(steps=list(keep_steps)))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


class Checkpointer:
  """A CheckpointManager over `directory` saving {state, data} items per step.

  keep: the latest checkpoints kept; keep_steps: steps kept besides them. async_save: see the
  module docstring.
  """

  def __init__(
    self,
    directory: str,
    *,
    keep: int = 3,
    keep_steps: Sequence[int] = (),
    async_save: bool = False,
  ):
    # Remote paths (gs://...) go to orbax as they are; local ones are made absolute.
    storage.check_checkpoint_dir(directory, field="checkpoint directory")
    self.directory = str(storage.resolve(directory))
    self.async_save = async_save
    # cleanup_tmp_directories: a save killed mid-write (or stopped by a full disk) leaves a
    # `<step>.orbax-checkpoint-tmp` directory that is never restored; delete it on the next start.
    options = ocp.CheckpointManagerOptions(
      preservation_policy=_keep_policy(keep, keep_steps),
      create=True,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save,
    )
    self._mngr = ocp.CheckpointManager(self.directory, options=options)
    # orbax deletes them in a background thread that it joins only before its next save; join
    # it here, so a process that only restores (or fails first) never exits under that thread.
    cleanup = getattr(self._mngr, "_cleanup_tmp_directory_future", None)
    if cleanup is not None:
      cleanup.result()
    self._disk_full = False  # a save stopped on ENOSPC (close then stays quiet about it)
    self._disk_full_message = ""

  def steps(self) -> list[int]:
    """Complete checkpoints on disk, oldest first."""
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, data_iterator: grain.DatasetIterator | None = None) -> None:
    """Save (with every host's data position, as it is now). Blocks until the files are
    durable, or with async_save only until the arrays are on the host (the previous save's
    writes are waited for first). A step already saved is left as it is."""
    if step in self._mngr.all_steps():
      return
    items = {"state": ocp.args.StandardSave(_savable(state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(_Position(data_iterator))
    with self._disk_full_as_one_line(step):
      self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
      if not self.async_save:
        self._mngr.wait_until_finished()

  def wait(self) -> None:
    """Block until a save in flight is durable."""
    with self._disk_full_as_one_line(None):
      self._mngr.wait_until_finished()

  @contextlib.contextmanager
  def _disk_full_as_one_line(self, step: int | None) -> Iterator[None]:
    """Orbax's ENOSPC (for a save of `step`, or the one in flight) as one errors.DiskFull line
    naming the last complete checkpoint; orbax raises it again at every later call, which
    repeats the same line."""
    try:
      yield
    except Exception as err:  # pylint: disable=broad-except  (ENOSPC arrives wrapped by orbax)
      if not storage.is_disk_full(err):
        raise
      if not self._disk_full:
        self._disk_full = True
        self._disk_full_message = self._disk_full_line(step)
      raise errors.DiskFull(self._disk_full_message) from err

  def _disk_full_line(self, step: int | None) -> str:
    try:
      self._mngr.reload()  # the step list as on disk (a background save may have changed it)
    except Exception:  # pylint: disable=broad-except  (the cached list then)
      pass
    written = [s for s in self.steps() if s != step]
    at = f"{self.directory}/{step}" if step is not None else f"a save in {self.directory}"
    return (
      f"checkpoint {at}: no space left on device; the last complete checkpoint is "
      f"{'step ' + str(written[-1]) if written else 'none'}: free space and run the same "
      f"command to resume from it"
    )

  def _saved_specs(self, step: int) -> dict[str, tuple] | None:
    """{path: (shape, dtype)} from a checkpoint's metadata; None when that is unreadable."""
    try:
      meta = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state"
      )
      return _leaf_specs(meta.tree)
    except Exception:  # pylint: disable=broad-except  (unreadable metadata = a broken save)
      return None

  def _data_file(self, step: int) -> epath.Path | None:
    """This host's saved data position in checkpoint `step`; None when it saved none.

    CheckpointMismatch when it saved positions for another number of hosts.
    """
    data_dir = epath.Path(self.directory) / str(step) / "data"
    if not data_dir.is_dir():
      return None
    mine = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not mine.exists():
      saved = sorted(p.name for p in data_dir.glob("process_*.json"))
      raise errors.CheckpointMismatch(
        f"checkpoint {self.directory}/{step} holds data positions {saved or 'of an older format'}"
        f", none for {mine.name}: resume with the number of processes that saved it"
      )
    return mine

  def restore(self, like_state, *, data_iterator: grain.DatasetIterator | None = None):
    """(state, data_state, step) from the newest readable checkpoint, or None if there is none.

    `like_state` is an abstract (or concrete) TrainState whose shapes, dtypes and shardings the
    restored arrays take. `data_iterator` (if given) is moved to this host's saved position;
    data_state is then its state, else None. A checkpoint that fails to read is skipped with a warning and the
    next older one is tried: a broken latest save does not lose the run. A readable one that
    does not match `like_state` raises errors.CheckpointMismatch naming the keys, and so does
    a directory whose checkpoints are all unreadable: never silently start from scratch.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(like_state))
    wanted = _leaf_specs(target)
    steps = self.steps()
    for step in reversed(steps):
      saved = self._saved_specs(step)
      if saved is not None and (diff := structure_mismatch(saved, wanted)):
        fix = (
          layers_hint(saved, wanted)
          or f"({diff}); use the config that wrote it, or a new --workdir"
        )
        raise errors.CheckpointMismatch(
          f"checkpoint {self.directory}/{step} does not match the state this config builds: {fix}"
        )
      items = {"state": ocp.args.StandardRestore(target)}
      if data_iterator is not None and self._data_file(step) is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
      except errors.CheckpointMismatch:
        raise  # a readable data position of a pipeline with other settings
      except Exception as err:  # pylint: disable=broad-except  (any unreadable file: fall back)
        _log.warning(
          "checkpoint %s/%d unreadable (%s: %s); trying the previous one",
          self.directory,
          step,
          type(err).__name__,
          str(err).splitlines()[0][:200],
        )
        continue
      state = like_state.replace(**restored["state"])
      data_state = data_iterator.get_state() if "data" in items else None
      return state, data_state, step
    if steps:
      raise errors.WorkdirError(
        f"no checkpoint in {self.directory} is readable (steps {steps}); move the directory "
        f"away to start again"
      )
    return None

  def restore_params(self, like_params, step: int):
    """The params alone of checkpoint `step`, in `like_params`' shapes, dtypes and shardings:
    the optimiser moments are not read (an export needs the weights only). orbax's ValueError
    when the checkpoint holds another model's params."""
    target = {"params": like_params}
    args = ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True,
    )
    return self._mngr.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]

  def close(self) -> None:
    """Wait for pending writes and release the manager.

    A full disk already reported (errors.DiskFull) is not reported again: orbax raises that
    error at every later call, and it must not replace the one-line error the run stopped with.
    """
    reported = self._disk_full
    try:
      self.wait()
    except errors.DiskFull:
      if not reported:
        raise  # a background write that failed: this is its report
    try:
      self._mngr.close()
    except Exception as err:  # pylint: disable=broad-except
      if not (self._disk_full and storage.is_disk_full(err)):
        raise
