"""rockjax.sharding: mesh construction, logical-axis rules, sharded == unsharded."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import rockjax.models as rm
from fixtures import forward, random_model
from rockjax import sharding as shd


def test_make_mesh_fills_one_axis(devices8):
  mesh = shd.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(shd.make_mesh((1, -1, 4)).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
  assert dict(shd.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
  "shape, message",
  [
    ({"tensor": 3, "fsdp": -1}, "does not divide the 8"),
    ({"data": -1, "fsdp": -1}, "one may be -1"),
    ({"model": 2}, "unknown mesh axes"),
    ((2, 2), "must have 3 entries"),
  ],
)
def test_make_mesh_errors(devices8, shape, message):
  with pytest.raises(ValueError, match=message):
    shd.make_mesh(shape)


def test_logical_to_spec_rules(devices8):
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  spec = lambda axes, shape: shd.logical_to_spec(axes, shape, mesh)
  assert spec(("batch", "length"), (8, 5)) == P(("data", "fsdp"), None)
  assert spec(("batch", "length"), (6, 5)) == P("data", None)  # 6 % 4 != 0: drop 'fsdp'
  assert spec(("batch", "length"), (3, 5)) == P(None, None)
  assert spec(("vocab", "embed"), (7, 64)) == P(None, "fsdp")  # indivisible -> replicated
  # 'experts' and 'mlp' both map to 'tensor': a mesh axis shards one dim only.
  assert spec(("experts", "embed", "mlp"), (4, 64, 32)) == P("tensor", "fsdp", None)
  custom = (("embed", "tensor"), ("mlp", ("fsdp", "data")))
  assert shd.logical_to_spec(("embed", "mlp"), (64, 32), mesh, custom) == P(
    "tensor", ("fsdp", "data")
  )
  with pytest.raises(ValueError, match="do not match shape"):
    spec(("embed",), (2, 2))


def test_shard_model_keeps_logits(devices8):
  cfg = rm.ModelConfig(
    family="qwen2",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qkv_bias=True,
  )
  model = random_model(cfg)
  ids = np.arange(16, dtype=np.int32).reshape(2, 8) % cfg.vocab_size
  mask = np.ones_like(ids)
  ref = np.asarray(forward(model, ids, mask))
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shd.shard_model(model, mesh)
  kernel = model.layers[0].mlp.gate_proj.kernel[...]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert len(kernel.addressable_shards) == 8
  cache = model.init_cache(2, 8)
  assert cache.shardings(mesh).k.spec == P(None, "data", "tensor", None, None)
  np.testing.assert_allclose(np.asarray(forward(model, ids, mask)), ref, atol=1e-5)
