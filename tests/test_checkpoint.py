"""Checkpoints: atomic saves, the data position travels with the state, broken latest -> previous."""
import glob
import os

import jax
import numpy as np

from rockjax import checkpoint
from test_step import build, one_device_mesh


def test_broken_latest_checkpoint_falls_back_to_previous(tmp_path):
  mesh = one_device_mesh()
  _, state, _ = build(mesh, rock_mode="off")
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, state, {"next_batch": 1})
  later = state.replace(step=state.step + 5, rock_mask=~state.rock_mask)
  ckpt.save(2, later, {"next_batch": 2})
  assert ckpt.steps() == [1, 2]
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

  restored, data, step = ckpt.restore(like)
  assert (step, data, int(restored.step)) == (2, {"next_batch": 2}, 5)
  np.testing.assert_array_equal(restored.rock_mask, ~np.asarray(state.rock_mask))

  for f in glob.glob(str(tmp_path / "2" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"garbage")
  restored, data, step = ckpt.restore(like)
  assert (step, data, int(restored.step)) == (1, {"next_batch": 1}, 0)
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  ckpt.close()
