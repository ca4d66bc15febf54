"""Checkpoints: atomic saves, the data position travels with the state, broken latest -> previous."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from rockjax import checkpoint, errors
from tests.fixtures import STUDENT, batches, build, one_device_mesh, position


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_broken_latest_checkpoint_falls_back_to_previous(tmp_path):
  mesh = one_device_mesh()
  _, state, _ = build(mesh, rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, state, batches(1))
  later = state.replace(step=state.step + 5, rock_mask=~state.rock_mask)
  ckpt.save(2, later, batches(2))
  assert ckpt.steps() == [1, 2]
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

  it = batches()
  restored, data_state, step = ckpt.restore(like, data_iterator=it)
  assert (step, data_state, int(restored.step)) == (2, position(2), 5)
  np.testing.assert_array_equal(next(it), [4, 5])  # the restored iterator continues there
  np.testing.assert_array_equal(restored.rock_mask, ~np.asarray(state.rock_mask))

  for f in glob.glob(str(tmp_path / "2" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"garbage")
  restored, data_state, step = ckpt.restore(like, data_iterator=batches())
  assert (step, data_state, int(restored.step)) == (1, position(1), 0)
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  ckpt.close()


def test_truncated_newest_checkpoint_falls_back_with_a_warning_naming_it(tmp_path, caplog):
  _, state, _ = build(one_device_mesh(), rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, state, batches(1))
  ckpt.save(2, state.replace(step=state.step + 1), batches(2))
  data_files = [
    f
    for f in glob.glob(str(tmp_path / "2" / "state" / "**" / "*"), recursive=True)
    if os.path.isfile(f) and os.path.getsize(f) > 64 and "METADATA" not in f
  ]
  for f in data_files:  # a save cut short: every array file loses its second half
    os.truncate(f, os.path.getsize(f) // 2)
  restored, data_state, step = checkpoint.Checkpointer(str(tmp_path)).restore(
    abstract(state), data_iterator=batches()
  )
  assert (step, data_state) == (1, position(1))
  assert any(f"{tmp_path}/2 unreadable" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_of_another_state_structure_raises_naming_the_keys(tmp_path):
  _, state, _ = build(one_device_mesh(), rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, state)
  # Other model sizes: the same keys, other shapes (mlp width 48 -> 64).
  _, other, _ = build(
    one_device_mesh(), student_cfg=STUDENT.replace(intermediate_size=64), rock_mode="off"
  )
  with pytest.raises(
    errors.CheckpointMismatch,
    match=r"/1 does not match.*different shape/dtype: .*mlp/down_proj/kernel",
  ):
    checkpoint.Checkpointer(str(tmp_path)).restore(abstract(other))
  # A missing state field: the keys are named, and nothing is restored from scratch.
  saved = checkpoint.Checkpointer(str(tmp_path))._saved_specs(1)
  wanted = dict(saved, **{"rock/new_field": ((4,), "float32")})
  del wanted["rng"]
  msg = checkpoint.structure_mismatch(saved, wanted)
  assert "missing from the checkpoint: rock/new_field" in msg
  assert "not in this config's state: rng" in msg
  assert len(os.listdir(tmp_path)) == 1  # the checkpoint is still there


def test_every_checkpoint_unreadable_raises_instead_of_starting_over(tmp_path):
  _, state, _ = build(one_device_mesh(), rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, state)
  for f in glob.glob(str(tmp_path / "1" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(f):
      os.truncate(f, 0)
  with pytest.raises(errors.WorkdirError, match=r"no checkpoint in .* is readable \(steps \[1\]\)"):
    checkpoint.Checkpointer(str(tmp_path)).restore(abstract(state))


def test_each_host_saves_its_own_data_position(tmp_path):
  """One file per process; a data position of other settings or another process count is an
  error naming it, never a silent fall back to an older checkpoint."""
  _, state, _ = build(one_device_mesh(), rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, state, batches(3))
  ckpt.save(2, state, batches(5))
  data_dir = tmp_path / "2" / "data"
  assert [f for f in os.listdir(data_dir) if f.endswith(".json")] == ["process_0-of-1.json"]
  assert json.loads((data_dir / "process_0-of-1.json").read_text()) == position(5)
  with pytest.raises(errors.CheckpointMismatch, match="other settings"):
    ckpt.restore(abstract(state), data_iterator=batches(fingerprint="g"))
  for i in range(2):
    (data_dir / f"process_{i}-of-2.json").write_text(json.dumps(position(5)))
  (data_dir / "process_0-of-1.json").unlink()
  with pytest.raises(
    errors.CheckpointMismatch,
    match=r"/2 holds data positions \['process_0-of-2.json', 'process_1-of-2.json'\], none "
    r"for process_0-of-1.json",
  ):
    ckpt.restore(abstract(state), data_iterator=batches())
  ckpt.close()


def test_resuming_unrolled_layers_with_scan_layers_names_the_flag(tmp_path):
  _, state, _ = build(one_device_mesh(), rock_mode="off")  # fixtures' STUDENT: unrolled
  checkpoint.Checkpointer(str(tmp_path)).save(1, state)
  _, scanned, _ = build(
    one_device_mesh(), student_cfg=STUDENT.replace(scan_layers=True), rock_mode="off"
  )
  with pytest.raises(errors.CheckpointMismatch) as info:
    checkpoint.Checkpointer(str(tmp_path)).restore(abstract(scanned))
  msg = str(info.value)
  assert "unrolled layers" in msg and "--config.model.scan_layers=False" in msg
  assert "\n" not in msg
  # And the other way round: a scanned checkpoint, an unrolled config.
  other = tmp_path / "scanned"
  checkpoint.Checkpointer(str(other)).save(1, scanned)
  with pytest.raises(errors.CheckpointMismatch, match=r"--config.model.scan_layers=True$"):
    checkpoint.Checkpointer(str(other)).restore(abstract(state))


def test_async_saves_keep_the_position_at_save_time_and_the_chosen_steps(tmp_path):
  """An async save returns before its files are written; what it writes is the data position
  at the call, though the iterator moves on (2 more batches) right after it: at save s it had
  drawn s + 2(s - 1) = 3s - 2 batches. Kept: the 2 latest plus keep_steps=(2,), i.e. steps
  2, 5, 6 of 1..6."""
  mesh = one_device_mesh()
  _, state, _ = build(mesh, rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, keep_steps=(2,), async_save=True)
  it = batches()
  for step in range(1, 7):
    next(it)
    ckpt.save(step, state.replace(step=state.step + step), it)
    next(it), next(it)  # drawn while the save may still be writing: not part of it
  ckpt.close()
  assert checkpoint.Checkpointer(str(tmp_path)).steps() == [2, 5, 6]
  for step in (2, 5, 6):
    saved = json.loads((tmp_path / str(step) / "data" / "process_0-of-1.json").read_text())
    assert saved["next_batch"] == 3 * step - 2, (step, saved)
  restored, data_state, step = checkpoint.Checkpointer(str(tmp_path)).restore(
    abstract(state), data_iterator=batches()
  )
  assert (step, int(restored.step), data_state) == (6, 6, position(16))


def test_a_step_saved_already_is_left_as_it_is(tmp_path):
  mesh = one_device_mesh()
  _, state, _ = build(mesh, rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=True)
  ckpt.save(3, state, batches(3))
  ckpt.save(3, state.replace(step=state.step + 9), batches(7))  # e.g. a stop right after it
  ckpt.close()
  restored, data_state, step = checkpoint.Checkpointer(str(tmp_path)).restore(
    abstract(state), data_iterator=batches()
  )
  assert (step, int(restored.step), data_state) == (3, 0, position(3))
