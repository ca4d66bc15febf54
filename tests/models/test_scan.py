"""Scanned decoder layers (scan_layers=True) against the unrolled stack with the same weights:
logits, gradients under every remat policy, KV-cache decoding, and the unrolled fallback."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rockjax.models as rm
from rockjax.models import remat
from rockjax.models.moe import MoE
from tests.fixtures import forward, left_padded_batch, random_model, stacked_copy

DENSE = rm.ModelConfig(
  family="qwen3",
  vocab_size=96,
  hidden_size=32,
  intermediate_size=48,
  num_layers=3,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  qk_norm=True,
  rope=rm.RopeConfig(theta=1000.0),
)
MOE = DENSE.replace(
  family="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16
)
LLAMA = rm.ModelConfig.for_family(
  "llama",
  vocab_size=96,
  hidden_size=32,
  intermediate_size=48,
  num_layers=3,
  num_heads=4,
  num_kv_heads=1,
  head_dim=8,
  tie_word_embeddings=False,
  rope=rm.RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0),
)
CONFIGS = {"dense": DENSE, "moe": MOE, "llama": LLAMA}


@functools.lru_cache(maxsize=None)
def _unrolled(name):
  """(unrolled model, ids, mask, its logits, its gradients by path) for a config name."""
  ids, mask = left_padded_batch(96, batch=3, length=7)
  model = random_model(CONFIGS[name])
  return (model, ids, mask, *_loss_and_grads(model, ids, mask))


def _loss_and_grads(model, ids, mask):
  graphdef, state = nnx.split(model)

  def loss(state):
    logits = nnx.merge(graphdef, state)(ids, mask)
    return jnp.sum(jnp.where(mask[..., None] > 0, jnp.tanh(logits), 0.0)), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
  return np.asarray(logits), {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}


# Every (config, policy) pair; the default run covers each config and each policy once.
FAST = {("dense", "none"), ("dense", "save_names"), ("moe", "full"), ("llama", "dots_saveable")}
FAST.add(("moe", "offload"))
PAIRS = [
  pytest.param(n, p, marks=() if (n, p) in FAST else pytest.mark.slow)
  for n in CONFIGS
  for p in remat.POLICIES
]


@pytest.mark.parametrize("name,policy", PAIRS)
def test_scanned_equals_unrolled_logits_and_grads(name, policy):
  unrolled, ids, mask, ref_logits, ref_grads = _unrolled(name)
  assert not unrolled.cfg.scan_layers and len(unrolled.layers) == 3
  model = stacked_copy(unrolled, remat=policy)
  assert model.layers.self_attn.q_proj.kernel.shape[0] == 3  # one module, stacked params
  logits, grads = _loss_and_grads(model, ids, mask)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  assert len(grads) < len(ref_grads)
  for path, g in grads.items():
    if path[0] == "layers":  # stacked [N, ...]: compare with the per-layer gradients
      want = np.stack([ref_grads[("layers", i, *path[1:])] for i in range(3)])
    else:
      want = ref_grads[path]
    # Float32 summation order differs between the scan and the unrolled loop (the embedding
    # gradient sums over every position): absolute tolerance relative to the array's scale.
    atol = 2e-5 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=atol, err_msg=str(path))


def test_offload_policy_moves_named_activations_to_host():
  # CPU has no separate host memory, so only the program is checked here: the two named
  # activations of the scanned layer are device_put to pinned host memory and back.
  model = random_model(DENSE.replace(scan_layers=True, remat="offload"))
  graphdef, state = nnx.split(model)
  ids, mask = left_padded_batch(96, batch=2, length=5)
  grad = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(ids, mask)))
  jaxpr = str(jax.make_jaxpr(grad)(state))
  to_host = [line for line in jaxpr.splitlines() if "<host>" in line and "device_put" in line]
  assert len(to_host) == len(remat.SAVED_NAMES)


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_scanned_cached_decode_equals_no_cache_forward(name):
  model = random_model(CONFIGS[name].replace(scan_layers=True))
  B, P, T = 3, 6, 3
  ids, mask = left_padded_batch(96, batch=B, length=P + T)
  mask[:, P:] = 1
  full = np.asarray(forward(model, ids, mask))
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, ids, mask, cache):
    return nnx.merge(graphdef, state)(ids, mask, cache=cache)

  cache = model.init_cache(B, P + T + 1)
  assert cache.k.shape == (3, B, 2, P + T + 1, 8)  # [layers, B, K, S, E]
  logits, cache = step(state, ids[:, :P], mask[:, :P], cache)
  real = mask[:, :P] > 0
  np.testing.assert_allclose(np.asarray(logits)[real], full[:, :P][real], atol=1e-5)
  for t in range(P, P + T):
    logits, cache = step(state, ids[:, t : t + 1], mask[:, t : t + 1], cache)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, t], atol=1e-5)


def test_layers_that_differ_stay_unrolled():
  # Dense layers 0 and 2 between MoE layers: two layer structures, so no scan.
  cfg = MOE.replace(decoder_sparse_step=2, scan_layers=True)
  assert not cfg.scans_layers and MOE.replace(scan_layers=True).scans_layers
  model = random_model(cfg)
  assert isinstance(model.layers, nnx.List) and isinstance(model.layers[1].mlp, MoE)
  ids, mask = left_padded_batch(96, batch=2, length=5)
  ref = random_model(cfg.replace(scan_layers=False))
  np.testing.assert_allclose(forward(model, ids, mask), forward(ref, ids, mask), atol=0)


def test_remat_names_and_legacy_booleans():
  assert DENSE.replace(remat=True).remat == "full" and DENSE.replace(remat=False).remat == "none"
  assert remat.policy_name("True") == "full" and remat.policy_name("dots_saveable")
  with pytest.raises(ValueError, match=r"remat='dots': expected one of 'none', 'full'"):
    DENSE.replace(remat="dots")
