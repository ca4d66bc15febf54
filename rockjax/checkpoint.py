"""Orbax checkpoints of the train state and the data-iterator position, in one step directory.

Writes are atomic (orbax finalises a step directory only once everything is on disk), so a
crash mid-save leaves the previous checkpoint as the latest complete one. Restore walks back
from the newest step when a checkpoint cannot be read. The teacher is never saved here.
"""
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

_log = logging.getLogger(__name__)


def _savable(state) -> dict[str, Any]:
  """The checkpointed part of a TrainState (its static graphdef/optimiser are code, not data)."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "rock": state.rock, "rock_mask": state.rock_mask, "rng": state.rng}


class Checkpointer:
  """A CheckpointManager over `directory` saving {state, data} items per step."""

  def __init__(self, directory: str, *, keep: int = 3):
    # Remote paths (gs://...) go to orbax as they are; local ones are made absolute.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Complete checkpoints on disk, oldest first."""
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, data_state: dict[str, Any] | None = None) -> None:
    """Save and block until it is durable (so a following crash cannot lose it)."""
    items = {"state": ocp.args.StandardSave(_savable(state))}
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    self._mngr.wait_until_finished()

  def restore(self, like_state, *, with_data: bool = True):
    """(state, data_state, step) from the newest readable checkpoint, or None if there is none.

    `like_state` is an abstract (or concrete) TrainState whose shapes, dtypes and shardings the
    restored arrays take. A checkpoint that fails to read is skipped with a warning and the
    next older one is tried: a broken latest save does not lose the run.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(like_state))
    for step in reversed(self.steps()):
      try:
        items = {"state": ocp.args.StandardRestore(target)}
        if with_data and os.path.isdir(os.path.join(self.directory, str(step), "data")):
          items["data"] = ocp.args.JsonRestore()
        restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
      except Exception as err:  # pylint: disable=broad-except  (any unreadable file: fall back)
        _log.warning("checkpoint %s/%d unreadable (%s: %s); trying the previous one",
                     self.directory, step, type(err).__name__, str(err).splitlines()[0][:200])
        continue
      saved = restored["state"]
      state = like_state.replace(**saved)
      return state, restored.get("data") if with_data else None, step
    return None

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
