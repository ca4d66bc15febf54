"""Sequence (context) sharding: a tiny Qwen3 and Qwen3-MoE under meshes with a 'context' axis
give the logits and parameter gradients of the single-device unsharded einsum run, for the
blocked, einsum and splash (interpret) attention; each device keeps its own tokens."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import rockjax.models as rm
from rockjax import sharding as shd
from rockjax.models import attention
from tests.fixtures import left_padded_batch, random_model

QWEN3 = rm.ModelConfig(
  family="qwen3",
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  qk_norm=True,
  rope=rm.RopeConfig(theta=1000.0),
)
QWEN3_MOE = QWEN3.replace(
  family="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16
)
CONFIGS = {"qwen3": QWEN3, "qwen3_moe": QWEN3_MOE}
MESHES = {
  "fsdp2-context2-tensor2": {"data": 1, "fsdp": 2, "context": 2, "tensor": 2},
  "context8": {"data": 1, "fsdp": 1, "context": 8, "tensor": 1},
}
ROWS = 4


def _batch(length: int):
  """Left-padded rows (2*b pads) plus one right-padded row: padding on both sides of shards."""
  ids, mask = left_padded_batch(64, batch=ROWS, length=length, seed=1)
  mask[1, length - length // 3 :] = 0
  return ids, mask


def _loss(graphdef, state, ids, mask):
  """A loss reading every real position's logits (tanh keeps the gradient scale moderate)."""
  logits = nnx.merge(graphdef, state)(ids, mask)
  return jnp.sum(jnp.where(mask[..., None] > 0, jnp.tanh(logits), 0.0)), logits


@functools.lru_cache(maxsize=None)
def _reference(name: str, length: int):
  """Unsharded, no mesh, einsum attention: (logits, gradients by path)."""
  model = random_model(CONFIGS[name].replace(attention="einsum"))
  graphdef, state = nnx.split(model)
  ids, mask = _batch(length)
  grad = jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True)
  (_, logits), grads = jax.jit(grad)(state, ids, mask)
  return np.asarray(logits), {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}


def _sharded(name: str, length: int, implementation: str, block: int, mesh_shape: dict):
  """The same model with parameters sharded over `mesh_shape`, rows over data x fsdp and
  the sequence over context, as in the train step: (logits, gradients, logits' sharding)."""
  cfg = CONFIGS[name].replace(attention=implementation, attention_block=block)
  mesh = shd.make_mesh(mesh_shape)
  graphdef, state = nnx.split(shd.shard_model(random_model(cfg), mesh))
  ids, mask = _batch(length)
  put = lambda x: jax.device_put(x, shd.batch_sharding(x.shape, mesh))
  grad = jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True)
  with jax.set_mesh(mesh):
    (_, logits), grads = jax.jit(grad)(state, put(ids), put(mask))
  flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
  return np.asarray(logits), flat, logits.sharding.spec


# (attention, block, length): splash needs whole 128-blocks per shard (interpret mode on CPU).
IMPLEMENTATIONS = [("blocked", 8, 40), ("einsum", 0, 40), ("splash", 128, 256)]


# The default run covers each implementation, each config and each mesh once; the rest slow.
FAST = {
  ("qwen3", "blocked", "fsdp2-context2-tensor2"),
  ("qwen3", "einsum", "context8"),
  ("qwen3", "splash", "fsdp2-context2-tensor2"),
  ("qwen3_moe", "blocked", "context8"),
}
CASES = [
  pytest.param(
    name, *impl, mesh_name, marks=() if (name, impl[0], mesh_name) in FAST else pytest.mark.slow
  )
  for name in CONFIGS
  for impl in IMPLEMENTATIONS
  for mesh_name in MESHES
]


@pytest.mark.parametrize("name,implementation,block,length,mesh_name", CASES)
def test_context_sharded_equals_unsharded(name, implementation, block, length, mesh_name):
  mesh_shape = MESHES[mesh_name]
  if implementation == "splash" and mesh_shape["context"] == 8:
    length = 1024  # 128 tokens per shard
  want_logits, want_grads = _reference(name, length)
  got_logits, got_grads, spec = _sharded(name, length, implementation, block or 512, mesh_shape)
  # The logits stay split over the sequence: rows over fsdp, positions over context.
  assert spec[1] == "context", spec
  real = _batch(length)[1] > 0
  np.testing.assert_allclose(got_logits[real], want_logits[real], rtol=2e-5, atol=2e-5)
  assert want_grads.keys() == got_grads.keys()
  for path, want in want_grads.items():
    # float32 sums in another order: tolerance relative to each gradient's scale (the
    # embedding's entries reach ~50).
    atol = 2e-6 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got_grads[path], want, rtol=1e-4, atol=atol, err_msg=str(path))


def test_parameters_shard_over_context_too(devices8):
  """Context shards hold the same weights: 'embed' dims split over fsdp x context, so the
  parameters per chip do not grow when chips move from fsdp to context."""
  mesh = shd.make_mesh({"fsdp": 4, "context": 2})
  spec = shd.logical_to_spec(("embed", "mlp"), (2560, 9728), mesh)
  assert spec == P(("fsdp", "context"), None)


def test_attention_shard_length_must_divide(devices8):
  """A padded length the context axis cannot divide fails loudly in attention as in constrain."""
  q = jnp.zeros((2, 6, 4, 8))
  kv = jnp.zeros((2, 6, 2, 8))
  with jax.set_mesh(shd.make_mesh({"fsdp": 2, "context": 4})):
    with pytest.raises(
      ValueError, match=r"'length'.* size 6, not divisible by mesh axes context=4"
    ):
      jax.jit(lambda q, k: attention.attend(q, k, k, jnp.ones((2, 6)), implementation="einsum"))(
        q, kv
      )
