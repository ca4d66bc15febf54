"""MoE routed per device under shard_map (rockjax.models.moe) and the grouped-matmul backends
(rockjax.models.grouped_matmul), against a float64 numpy MoE and the unsharded MoE."""

import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rockjax.models as rm
from rockjax import sharding as shd
from rockjax.models import grouped_matmul as gm
from rockjax.models.moe import MoE
from tests.fixtures import random_model

# Shape letters: B batch, L positions, D hidden, X experts, K experts per token, F expert width.
B, L, D, X, K, F = 8, 6, 16, 8, 2, 8
CFG = rm.ModelConfig(
  family="qwen3_moe",
  vocab_size=64,
  hidden_size=D,
  intermediate_size=24,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=4,
  qk_norm=True,
  num_experts=X,
  num_experts_per_tok=K,
  moe_intermediate_size=F,
  norm_topk_prob=True,
)
MESHES = {
  "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
  "fsdp8": {"data": 1, "fsdp": 8, "tensor": 1},
}


def _moe(cfg=CFG, seed=0):
  """(graphdef, state) of a MoE block with numpy-random weights (std 0.5: distinct routes)."""
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: MoE(cfg, rngs=nnx.Rngs(0))))
  fill = lambda v: jnp.asarray(0.5 * rng.standard_normal(v.shape), v.dtype)
  return graphdef, jax.tree.map(fill, state)


def _x(b=B, l=L, seed=1):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((b, l, D)), jnp.float32)


def assert_close(actual, want, err_msg=""):
  """Equal within float32 rounding at the array's scale (sums in another order differ)."""
  want = np.asarray(want)
  atol = 5e-6 * max(float(np.abs(want).max()), 1.0)
  np.testing.assert_allclose(actual, want, rtol=1e-5, atol=atol, err_msg=err_msg)


def np_moe(x_NxD, router, gate, up, down, top_k, norm):
  """Float64 reference: each token through its top-k experts, one token at a time."""
  x_NxD, router, gate, up, down = (
    np.asarray(a, np.float64) for a in (x_NxD, router, gate, up, down)
  )
  out = np.zeros_like(x_NxD)
  for n, x in enumerate(x_NxD):
    logits = x @ router
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[:top_k]
    w = p[top] / p[top].sum() if norm else p[top]
    for e, we in zip(top, w):
      g = x @ gate[e]
      out[n] += we * ((g / (1 + np.exp(-g))) * (x @ up[e])) @ down[e]
  return out


def _value_and_grads(graphdef, state, x, mesh=None):
  """(y, grads w.r.t. the weights, grad w.r.t. x) of sum(sin(MoE(x))), on `mesh` if given."""

  def loss(state, x):
    y = nnx.merge(graphdef, state)(x)
    return jnp.sum(jnp.sin(y)), y

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  if mesh is None:
    (_, y), (g_state, g_x) = fn(state, x)
  else:
    with jax.set_mesh(mesh):
      state = jax.device_put(state, shd.tree_shardings(state, mesh))
      x = jax.device_put(x, shd.logical_sharding(("batch", "length", None), x.shape, mesh))
      (_, y), (g_state, g_x) = fn(state, x)
  grads = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(g_state)}
  return np.asarray(y), grads, np.asarray(g_x)


def test_unsharded_moe_equals_numpy_reference():
  graphdef, state = _moe()
  x = _x()
  y, _, _ = _value_and_grads(graphdef, state, x)
  w = {p[0]: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}
  want = np_moe(
    x.reshape(-1, D), w["router"], w["gate_proj"], w["up_proj"], w["down_proj"], K, True
  )
  np.testing.assert_allclose(y.reshape(-1, D), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [0, 4], ids=["whole", "chunked"])
@pytest.mark.parametrize("mesh_shape", list(MESHES.values()), ids=list(MESHES))
def test_local_moe_equals_global_values_and_grads(devices8, mesh_shape, chunk):
  cfg = CFG.replace(mlp_chunk=chunk)
  graphdef, state = _moe(cfg)
  x = _x()
  ref_y, ref_grads, ref_gx = _value_and_grads(graphdef, state, x)
  y, grads, gx = _value_and_grads(graphdef, state, x, shd.make_mesh(mesh_shape, devices8))
  assert_close(y, ref_y)
  assert_close(gx, ref_gx)
  assert set(grads) == {("router",), ("gate_proj",), ("up_proj",), ("down_proj",)}
  for path, g in grads.items():
    assert np.abs(ref_grads[path]).max() > 0, path
    assert_close(g, ref_grads[path], err_msg=str(path))


def _sort_shapes(hlo: str) -> list[tuple[int, ...]]:
  """The result shapes of every sort and TopK in a compiled HLO module's text."""
  shapes = []
  for line in hlo.splitlines():
    found = re.search(r"= (.*?) (sort|custom-call)\(", line)
    if found and (found[2] == "sort" or 'custom_call_target="TopK"' in line):
      dims = re.findall(r"\[([\d,]*)\]", found[1])
      shapes += [tuple(int(d) for d in s.split(",") if d) for s in dims]
  return shapes


def test_sharded_moe_sorts_only_local_tokens(devices8):
  # fsdp 8 over B = 8 rows of 16 positions: 16 tokens, 32 routed rows per device (256 in all).
  graphdef, state = _moe()
  x = _x(l=16)
  mesh = shd.make_mesh(MESHES["fsdp8"], devices8)
  loss = lambda state, x: jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x)))
  with jax.set_mesh(mesh):
    state = jax.device_put(state, shd.tree_shardings(state, mesh))
    x = jax.device_put(x, shd.logical_sharding(("batch", "length", None), x.shape, mesh))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x).compile().as_text()
  shapes = _sort_shapes(hlo)
  local_rows, global_tokens = 16 * K, B * 16
  assert (local_rows,) in shapes, shapes  # the routing sort, of this device's rows only
  assert (16, K) in shapes, shapes  # the router's top-k, of this device's tokens only
  assert all(max(s, default=0) < global_tokens for s in shapes), shapes


def test_scanned_decoder_under_mesh_equals_unsharded(devices8):
  model = random_model(CFG.replace(scan_layers=True, mlp_chunk=4))
  graphdef, state = nnx.split(model)
  ids = np.random.default_rng(2).integers(0, CFG.vocab_size, (B, L)).astype(np.int32)
  mask = np.ones_like(ids)

  def loss(state):
    logits = nnx.merge(graphdef, state)(ids, mask)
    return jnp.sum(jnp.tanh(logits)), logits

  fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, ref_logits), ref_grads = fn(state)
  mesh = shd.make_mesh(MESHES["data2_fsdp2_tensor2"], devices8)
  with jax.set_mesh(mesh):
    (_, logits), grads = fn(jax.device_put(state, shd.tree_shardings(state, mesh)))
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  flat = lambda g: {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(g)}
  ref = flat(ref_grads)
  for path, g in flat(grads).items():
    np.testing.assert_allclose(g, ref[path], rtol=1e-5, atol=2e-5, err_msg=str(path))


def test_grouped_matmul_backends_match_numpy():
  # Megablox runs through the Pallas interpreter off TPU. Rows 0-9 expert 0, none for expert
  # 1, 10-31 expert 2, 32-36 expert 3: M = 37 is not a multiple of the row tile.
  rng = np.random.default_rng(3)
  x_MxI = jnp.asarray(rng.standard_normal((37, 16)), jnp.float32)
  w_XxIxO = jnp.asarray(rng.standard_normal((4, 16, 24)), jnp.float32)
  sizes = np.array([10, 0, 22, 5], np.int32)
  experts_M = np.repeat(np.arange(4), sizes)
  want = np.einsum("mi,mio->mo", np.float64(x_MxI), np.float64(w_XxIxO)[experts_M])
  loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(gm.grouped_matmul(x, w, sizes, impl)))
  grads = {}
  for impl in ("ragged_dot", "megablox"):
    np.testing.assert_allclose(
      gm.grouped_matmul(x_MxI, w_XxIxO, sizes, impl), want, rtol=1e-5, atol=1e-4
    )
    grads[impl] = jax.grad(loss(impl), argnums=(0, 1))(x_MxI, w_XxIxO)
  # d/dx of sum(sin(x W_e)) = cos(x W_e) W_e^T, per row's expert e.
  want_gx = np.einsum("mo,mio->mi", np.cos(want), np.float64(w_XxIxO)[experts_M])
  for impl, (gx, gw) in grads.items():
    np.testing.assert_allclose(gx, want_gx, rtol=1e-4, atol=1e-4, err_msg=impl)
    np.testing.assert_allclose(gw, grads["ragged_dot"][1], rtol=1e-5, atol=1e-4, err_msg=impl)


def test_moe_impl_auto_resolves_by_platform():
  assert gm.resolve("auto", "tpu") == "megablox"
  assert gm.resolve("auto", "gpu") == gm.resolve("auto", "cpu") == "ragged_dot"
  assert gm.resolve("ragged_dot", "tpu") == "ragged_dot"
  assert gm.resolve("megablox", "cpu") == "megablox"
  with pytest.raises(ValueError, match="moe_impl"):
    gm.resolve("sorted")
  # The paper teacher's shapes (D 2048, F 768): whole tiles that divide each dim; rows by 8.
  assert gm.megablox_tiling(294912, 2048, 768) == (512, 512, 384)
  assert gm.megablox_tiling(37, 16, 24) == (40, 16, 24)
  with pytest.raises(ValueError, match="moe_impl='sorted'"):
    CFG.replace(moe_impl="sorted")


def test_megablox_moe_under_mesh_equals_ragged_dot(devices8):
  graphdef, state = _moe()
  mega_graphdef, _ = _moe(CFG.replace(moe_impl="megablox"))
  x = _x()
  mesh = shd.make_mesh(MESHES["data2_fsdp2_tensor2"], devices8)
  ref_y, ref_grads, ref_gx = _value_and_grads(graphdef, state, x)
  y, grads, gx = _value_and_grads(mega_graphdef, state, x, mesh)
  assert_close(y, ref_y)
  assert_close(gx, ref_gx)
  for path, g in grads.items():
    assert_close(g, ref_grads[path], err_msg=str(path))


@pytest.mark.parametrize(
  "mesh_shape,axis",
  [(MESHES["fsdp8"], "fsdp"), (MESHES["data2_fsdp2_tensor2"], "data")],
  ids=["fsdp8_experts_fsdp", "data2_fsdp2_tensor2_experts_data"],
)
def test_expert_parallel_moe_equals_global_values_and_grads(devices8, mesh_shape, axis):
  # fsdp 8: one expert per device; data 2: four experts per device, width split over tensor.
  graphdef, state = _moe()
  ep_graphdef, _ = _moe(CFG.replace(moe_experts_axis=axis))
  x = _x()
  mesh = shd.make_mesh(mesh_shape, devices8)
  ref_y, ref_grads, ref_gx = _value_and_grads(graphdef, state, x)
  y, grads, gx = _value_and_grads(ep_graphdef, state, x, mesh)
  assert_close(y, ref_y)
  assert_close(gx, ref_gx)
  for path, g in grads.items():
    assert_close(g, ref_grads[path], err_msg=str(path))


def test_expert_parallel_hlo_exchanges_rows_and_holds_its_experts_only(devices8):
  graphdef, _ = _moe(CFG.replace(moe_experts_axis="fsdp"))
  _, state = _moe()
  x = _x()
  mesh = shd.make_mesh(MESHES["fsdp8"], devices8)
  fn = lambda state, x: nnx.merge(graphdef, state)(x)
  with jax.set_mesh(mesh):
    state = jax.device_put(state, shd.tree_shardings(state, mesh))
    x = jax.device_put(x, shd.logical_sharding(("batch", "length", None), x.shape, mesh))
    hlo = jax.jit(fn).lower(state, x).compile().as_text()
  # One expert per device: its gate weights [1, D, F] are never gathered to all [X, D, F].
  assert "all-to-all" in hlo
  assert f"f32[{X},{D},{F}]" not in hlo


def test_experts_axis_must_divide_the_experts(devices8):
  graphdef, state = _moe(CFG.replace(num_experts=6, moe_experts_axis="fsdp"))
  mesh = shd.make_mesh(MESHES["fsdp8"], devices8)
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="moe_experts_axis='fsdp'.*6 experts"):
    jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, _x())


@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None, reason='needs the aot extra: pip install ".[aot]"'
)
def test_auto_moe_compiles_megablox_per_device_for_a_tpu_topology():
  """Compiled for v5p:2x2x2 from this CPU machine, `auto` picks megablox (the Mosaic kernel,
  not the interpreter), and each chip sorts only its own routed rows."""
  from rockjax.dry_run import report as dry_run  # pylint: disable=g-import-not-at-top

  cfg = CFG.replace(hidden_size=256, moe_intermediate_size=128, dtype=jnp.bfloat16)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: MoE(cfg, rngs=nnx.Rngs(0))))
  devices = dry_run.topology_devices("v5p:2x2x2")
  mesh = shd.make_mesh({"fsdp": 8}, devices)
  x = jax.ShapeDtypeStruct((8, 64, 256), jnp.bfloat16)
  with jax.set_mesh(mesh):
    assert gm.resolve("auto") == "megablox"
    shardings = shd.tree_shardings(state, mesh)
    state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings
    )
    x = jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=shd.logical_sharding(("batch", "length", None), x.shape, mesh)
    )
    loss = lambda s, x: jnp.sum(nnx.merge(graphdef, s)(x).astype(jnp.float32))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x).compile().as_text()
  assert "tpu_custom_call" in hlo  # the megablox kernels (forward and backward)
  assert (64 * K,) in _sort_shapes(hlo)  # one row of 64 tokens, K routed rows each, per chip
