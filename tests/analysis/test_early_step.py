"""analysis.early_step: an on-policy run saves and keeps that step's checkpoint whatever ckpt.every
and ckpt.keep say, and persistence can restore exactly it; the new analysis fields are checked
one line per bad value. Save lists are worked out by hand."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from rockjax import checkpoint as ckpt_lib
from rockjax import errors
from rockjax import sharding as shd
from rockjax.analysis import context
from rockjax.config import check as config_check
from rockjax.runner import loop, stopping


def _config(mode="on_policy", early=25, keep_steps=()):
  c = tiny.get_config()
  c.opd.mode, c.analysis.early_step, c.ckpt.keep_steps = mode, early, keep_steps
  return c


def test_kept_steps_add_the_early_step_of_on_policy_runs_only():
  assert stopping.kept_steps(_config(keep_steps=(100, 10))) == (10, 25, 100)
  assert stopping.kept_steps(_config(early=0, keep_steps=(100,))) == (100,)
  # Preliminary off-policy stages (teacher SFT, stage-1 KD) share the field; nothing reads it.
  assert stopping.kept_steps(_config("off_policy", keep_steps=(100,))) == (100,)


def test_the_save_schedule_adds_the_early_step():
  c = _config(early=5)
  c.steps, c.ckpt.every = 20, 8
  schedule = stopping.SaveSchedule(c)
  saved = [d for d in range(1, 21) if schedule.due(d, stopping=False)]
  assert saved == [5, 8, 16, 20]  # every 8, the last, and the early step
  off = _config("off_policy", early=5)
  off.steps, off.ckpt.every = 20, 8
  schedule = stopping.SaveSchedule(off)
  assert [d for d in range(1, 21) if schedule.due(d, stopping=False)] == [8, 16, 20]


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_run_keeps_the_early_checkpoint_and_persistence_restores_it(tmp_path):
  """4 steps, a checkpoint only at the end (ckpt.every 0) and only the latest kept: without
  the early step the workdir would hold step 4 alone."""
  c = _config(early=2)
  c.steps, c.ckpt.every, c.ckpt.keep, c.ckpt.async_save = 4, 0, 1, False
  loop.run(c, str(tmp_path))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"))
  try:
    assert checkpointer.steps() == [2, 4]
  finally:
    checkpointer.close()
  mesh = shd.decode_mesh(c.mesh)
  early, source = context.load_checkpoint_step(c, str(tmp_path), 2, mesh)
  final, final_source = context.load_student(c, str(tmp_path), "", mesh)
  assert source.endswith("ckpt step 2") and final_source.endswith("ckpt step 4")
  assert context.describe_checkpoint(str(tmp_path / "ckpt"), source)["step"] == 2
  leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # noqa: E731
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(early), leaves(final)))
  with pytest.raises(errors.WorkdirError, match=r"^analysis.early_step=3: .*saved: \[2, 4\]"):
    context.load_checkpoint_step(c, str(tmp_path), 3, mesh)


@pytest.mark.parametrize(
  "field, value, expected",
  [
    ("analysis.knockout_test", "wilcoxon", "expected one of 'bootstrap', 'permutation'"),
    ("analysis.knockout_pool", "random", "expected one of 'rock_score', 'rocks_and_controls'"),
    ("analysis.knockout_max_new_tokens", -1, "expected >= 0"),
    ("analysis.early_step", -5, "expected >= 0"),
    ("analysis.control_match_list", "/no/such/list.txt", "no such file"),
  ],
)
def test_the_new_analysis_fields_are_checked_in_one_line(field, value, expected):
  c = tiny.get_config()
  c.update_from_flattened_dict({field: value})
  with pytest.raises(errors.ConfigError) as err:
    config_check.validate(c, device_count=8)
  message = str(err.value)
  assert message.startswith(f"{field}={value!r}") and expected in message
  assert "\n" not in message


def test_the_new_fields_are_documented_defaults():
  c = tiny.get_config()
  a = c.analysis
  assert (a.knockout_test, a.knockout_pool) == ("bootstrap", "rock_score")
  assert (a.knockout_max_new_tokens, a.early_step, a.control_match_list) == (0, 0, "")
  assert isinstance(c, ml_collections.ConfigDict)
