"""rockjax.sharding: mesh construction, logical-axis rules, sharded == unsharded."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import rockjax.models as rm
from rockjax import sharding as shd
from tests.fixtures import forward, random_model


def test_make_mesh_fills_one_axis(devices8):
  mesh = shd.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
  assert mesh.axis_names == ("data", "fsdp", "context", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  four = shd.make_mesh((1, -1, 1, 4)).shape
  assert dict(four) == {"data": 1, "fsdp": 2, "context": 1, "tensor": 4}
  assert dict(shd.make_mesh().shape) == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
  ctx = shd.make_mesh({"fsdp": 4, "context": -1}).shape
  assert dict(ctx) == {"data": 1, "fsdp": 4, "context": 2, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
  "shape, message",
  [
    ({"tensor": 3, "fsdp": -1}, "does not divide the 8"),
    ({"data": -1, "fsdp": -1}, "one may be -1"),
    ({"model": 2}, "unknown mesh axes"),
    ((2, 2, 2), "must have 4 entries"),
  ],
)
def test_make_mesh_errors(devices8, shape, message):
  with pytest.raises(ValueError, match=message):
    shd.make_mesh(shape)


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What mesh_utils reads from a device: a TPU chip (coords) or a GPU (process = node)."""

  id: int
  process_index: int
  platform: str = "tpu"
  device_kind: str = "TPU test"  # no per-generation layout table: the generic torus path
  coords: tuple[int, int, int] = (0, 0, 0)
  core_on_chip: int = 0
  slice_index: int | None = None


def tpu_slices(num_slices, hosts_per_slice=1):
  """Slices of 2x2x1 chips, listed interleaved across slices (so order alone proves nothing)."""
  devs = [
    FakeDevice(
      id=s * 4 + y * 2 + x,
      process_index=s * hosts_per_slice + y * hosts_per_slice // 2,
      coords=(x, y, 0),
      slice_index=s,
    )
    for y in range(2)
    for x in range(2)
    for s in range(num_slices)
  ]
  return devs[::-1]


def where(mesh):
  """(slice, x, y) of every device, in mesh order, as [data, fsdp, tensor] (context is 1)."""
  assert mesh.shape["context"] == 1
  devices = mesh.devices[:, :, 0]
  return np.vectorize(lambda d: (d.slice_index, *d.coords[:2]), otypes=[object])(devices)


def test_multislice_data_across_slices():
  """data over 2 slices (DCN), fsdp x tensor inside each slice's 2x2 chips (ICI)."""
  mesh = shd.make_mesh({"fsdp": 2, "tensor": -1}, tpu_slices(2), dcn={"data": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  # data index = slice; tensor walks x, fsdp walks y (each one physical ring of the slice).
  want = [[[(s, x, y) for x in range(2)] for y in range(2)] for s in range(2)]
  assert where(mesh).tolist() == want


def test_multislice_fsdp_spans_slices_in_its_outer_part():
  """fsdp = 2 slices x 2 chips: index f lies on slice f // 2, chip row f % 2."""
  mesh = shd.make_mesh({"fsdp": 2, "tensor": 2}, tpu_slices(2, hosts_per_slice=2), dcn=(1, 2, 1, 1))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  want = [[[(f // 2, x, f % 2) for x in range(2)] for f in range(4)]]
  assert where(mesh).tolist() == want


@pytest.mark.parametrize("slice_index", [None, 0])  # GPUs may report one slice or none
def test_gpu_nodes_data_across_nodes(slice_index):
  """2 nodes x 4 GPUs, one process per node: fsdp node-local, data across nodes."""
  devs = [
    FakeDevice(id=n * 4 + g, process_index=n, platform="gpu", slice_index=slice_index)
    for g in (3, 1, 0, 2)
    for n in (1, 0)
  ]
  mesh = shd.make_mesh({"fsdp": -1}, devs, dcn={"data": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  np.testing.assert_array_equal(ids[:, :, 0, 0], [[0, 1, 2, 3], [4, 5, 6, 7]])
  procs = np.vectorize(lambda d: d.process_index)(mesh.devices)
  np.testing.assert_array_equal(procs[:, :, 0, 0], [[0] * 4, [1] * 4])


@pytest.mark.parametrize(
  "devices, shape, dcn, message",
  [
    (tpu_slices(2), {"fsdp": -1}, {"data": 3}, "does not divide the 8"),
    (tpu_slices(2), {"fsdp": 1}, {"data": 2}, "must use all 8 devices"),
    (tpu_slices(2), {"fsdp": -1}, {"data": 4}, "has 4 slices/nodes .* span 2 TPU slice"),
    (tpu_slices(2), {"fsdp": -1}, None, "span 2 TPU slices: set mesh.dcn_data"),
    (tpu_slices(2), {"fsdp": -1}, {"data": 0}, "sizes must be >= 1"),
    (tpu_slices(2), {"fsdp": -1}, {"pipeline": 2}, "unknown dcn mesh axes"),
  ],
)
def test_hybrid_mesh_errors(devices, shape, dcn, message):
  with pytest.raises(ValueError, match=message):
    shd.make_mesh(shape, devices, dcn=dcn)


def test_single_slice_dcn_of_ones_is_the_plain_mesh(devices8):
  """All DCN sizes 1: the same mesh as without dcn; one CPU process cannot hold 2 granules."""
  plain = shd.make_mesh({"data": 2, "fsdp": -1})
  ones = shd.make_mesh({"data": 2, "fsdp": -1}, dcn={"data": 1, "fsdp": 1, "tensor": 1})
  assert ones.devices.tolist() == plain.devices.tolist()
  assert dict(ones.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
  with pytest.raises(ValueError, match="1 process"):
    shd.make_mesh({"fsdp": -1}, dcn={"data": 2})


def test_resolve_mesh_shape_multiplies_ici_by_dcn():
  assert shd.resolve_mesh_shape({"fsdp": -1, "tensor": 2}, 64, {"data": 4}) == {
    "data": 4,
    "fsdp": 8,
    "context": 1,
    "tensor": 2,
  }
  want = {"data": 2, "fsdp": 8, "context": 2, "tensor": 1}
  assert shd.resolve_mesh_shape((1, 4, 1, 1), 64, (2, 2, 2, 1)) == want
  # A mesh group without `context` (configs older than the axis) gets 1.
  c = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "dcn_fsdp": 2})
  assert shd.config_mesh_shapes(c) == (
    {"data": 1, "fsdp": -1, "context": 1, "tensor": 1},
    {"data": 1, "fsdp": 2, "context": 1, "tensor": 1},
  )


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


def test_constrain_is_strict_for_activations(devices8):
  """An activation dimension its mesh axes cannot divide is an error naming the logical name,
  the axes, the dimension and the sizes, instead of a silent replication; strict=False (the
  sampler) keeps the lenient rule. Parameters stay lenient (logical_to_spec's default)."""
  mesh = shd.make_mesh({"fsdp": 2, "context": 2, "tensor": 2})
  x = np.zeros((2, 6, 4), np.float32)
  with jax.set_mesh(mesh):
    y = jax.jit(lambda x: shd.constrain(x, ("batch", "length", "act_embed")))(x)
    assert y.sharding.spec == P("fsdp", "context")
    with pytest.raises(
      ValueError,
      match=r"dimension 1 \('length'\) .* size 5, not divisible by "
      r"mesh axes context=2",
    ):
      jax.jit(lambda x: shd.constrain(x, ("batch", "length", None)))(np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"'batch'.* size 1, not divisible by mesh axes fsdp=2"):
      jax.jit(lambda x: shd.constrain(x, ("batch", None)))(np.zeros((1, 4)))
    lenient = jax.jit(lambda x: shd.constrain(x, ("batch", None), strict=False))(np.zeros((1, 4)))
    assert lenient.sharding.is_fully_replicated


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
