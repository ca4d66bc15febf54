"""rockjax.models.attention: every implementation equals the einsum reference (value and
gradient, GQA, padding as segment ids), the einsum path equals float64 numpy, the Decoder gives
the same logits with each, and `blocked` never holds [L, L] scores at the Qwen3-4B shape (one
decoder layer, with the token-chunked MLP, fits 2 GiB of temporaries at L = 9216)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rockjax.models as rm
from rockjax import sharding as shd
from rockjax.models import attention
from rockjax.models.decoder import DecoderLayer
from tests.fixtures import left_padded_batch, random_model

B, H, K, E = 4, 4, 2, 16  # GQA: 2 query heads per key/value head
GIB = 2**30


def segments(L: int) -> np.ndarray:
  """Rows: left-padded, right-padded, all padding, no padding (1 real, 0 padding)."""
  seg = np.ones((B, L), np.int32)
  seg[0, : L // 3] = 0
  seg[1, L - L // 4 :] = 0
  seg[2] = 0
  return seg


def qkv(L: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return draw(B, L, H, E), draw(B, L, K, E), draw(B, L, K, E), draw(B, L, H, E)


def numpy_attention(q, k, v, seg, causal, scale):
  """Float64 reference: per query head h the key/value head h // G, segment + causal mask."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  G = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
  s = np.einsum("blhe,bshe->bhls", q, k) * scale
  allowed = seg[:, :, None] == seg[:, None, :]
  if causal:
    allowed = allowed & np.tril(np.ones((seg.shape[1],) * 2, bool))
  s = np.where(allowed[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("bhls,bshe->blhe", p / p.sum(-1, keepdims=True), v)


def value_and_grads(fn, q, k, v, ct, seg):
  """fn's output and d<out * ct>/d(q, k, v) with the cotangent zero on padded queries."""
  ct = ct * (seg > 0)[:, :, None, None]
  loss = lambda q, k, v: jnp.sum(fn(q, k, v) * ct)
  return jax.jit(fn)(q, k, v), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("causal", [True, False])
def test_einsum_matches_float64_numpy(causal):
  L = 24
  q, k, v, _ = qkv(L)
  seg = segments(L)
  out = attention.attend(q, k, v, seg, causal=causal, implementation="einsum")
  want = numpy_attention(q, k, v, seg, causal, E**-0.5)
  real = seg > 0
  np.testing.assert_allclose(np.asarray(out)[real], want[real], rtol=1e-5, atol=1e-5)


# (name, L, block, causal): blocked with L not a multiple of the block (padded inside).
CASES = [
  ("blocked", 100, 32, True),
  ("blocked", 100, 24, False),
  ("cudnn", 40, 0, True),  # the cudnn wrapper with implementation='xla'
  ("splash", 256, 128, True),  # interpret=True, shard_map over 8 devices
]


@pytest.mark.parametrize(
  "name,L,block,causal",
  CASES,
  ids=[f"{c[0]}-L{c[1]}-{'causal' if c[3] else 'full'}" for c in CASES],
)
def test_implementation_matches_einsum(name, L, block, causal, devices8):
  q, k, v, ct = qkv(L)
  seg = jnp.asarray(segments(L))
  ref = functools.partial(
    attention.attend, segment_ids_BxL=seg, causal=causal, implementation="einsum"
  )
  if name == "cudnn":
    fn = lambda q, k, v: attention.cudnn_attention(
      q, k, v, seg, causal=causal, scale=E**-0.5, implementation="xla"
    )
  else:
    fn = lambda q, k, v: attention.attend(
      q, k, v, seg, causal=causal, implementation=name, block_size=block, interpret=True
    )
  want, want_grads = value_and_grads(ref, q, k, v, ct, seg)
  if name == "splash":  # shard_map: rows over data x fsdp, heads over tensor
    with jax.set_mesh(shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)):
      got, got_grads = value_and_grads(fn, q, k, v, ct, seg)
  else:
    got, got_grads = value_and_grads(fn, q, k, v, ct, seg)
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)
  for g, w, what in zip(got_grads, want_grads, "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=what)
  assert np.isfinite(np.asarray(got)).all()  # padded queries: garbage, but finite


def test_auto_picks_by_platform_and_splash_needs_whole_blocks():
  pick = lambda platform, length, dtype=jnp.bfloat16, block=512: attention.resolve(
    "auto", length=length, block_size=block, dtype=dtype, platform=platform
  )
  assert pick("tpu", 9216) == "splash"
  assert pick("tpu", 9000) == "blocked"  # not a multiple of the block
  assert pick("tpu", 9216, block=96) == "blocked"  # splash blocks are multiples of 128
  assert pick("gpu", 9000) == "cudnn"
  assert pick("gpu", 9000, jnp.float32) == "blocked"  # cuDNN flash attention is 16-bit only
  assert pick("cpu", 9216) == "blocked"
  assert pick("cpu", 512) == pick("gpu", 256, jnp.float32) == "einsum"  # one block: no saving
  assert attention.resolve("einsum", length=8, block_size=512, dtype=jnp.float32) == "einsum"
  q, k, v, _ = qkv(192)
  with pytest.raises(ValueError, match="L=192 to be a multiple of the block size 128"):
    attention.attend(q, k, v, segments(192), implementation="splash", block_size=128)


TINY = rm.ModelConfig(
  family="qwen3",
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_layers=2,
  num_heads=H,
  num_kv_heads=K,
  head_dim=8,
  qk_norm=True,
)


@pytest.mark.parametrize(
  "name,block", [("blocked", 48), ("cudnn", 512), ("splash", 128)], ids=lambda x: str(x)
)
def test_decoder_logits_match_einsum(name, block, devices8, monkeypatch):
  # The cudnn wrapper runs with jax's XLA implementation here (no GPU).
  monkeypatch.setattr(
    attention, "cudnn_attention", functools.partial(attention.cudnn_attention, implementation="xla")
  )
  ids, mask = left_padded_batch(TINY.vocab_size, batch=B, length=128)
  mask[1, 100:] = 0  # a right-padded row too
  want = np.asarray(nnx.jit(lambda m: m(ids, mask))(random_model(TINY.replace(attention="einsum"))))
  # As in training: parameters sharded over the mesh, rows over data x fsdp, heads over tensor.
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)
  model = shd.shard_model(random_model(TINY.replace(attention=name, attention_block=block)), mesh)
  graphdef, state = nnx.split(model)
  put = lambda x: jax.device_put(x, shd.batch_sharding(x.shape, mesh))
  with jax.set_mesh(mesh):
    got = jax.jit(lambda s, i, a: nnx.merge(graphdef, s)(i, a))(state, put(ids), put(mask))
  got = np.asarray(got)
  real = mask > 0
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


def _temp_bytes(fn, *shapes) -> int:
  """Temporary memory of fn's value and gradient, compiled (never run) for CPU."""
  grad = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(shapes)))))
  return grad.lower(*shapes).compile().memory_analysis().temp_size_in_bytes


# Qwen3-4B: hidden 2560, 32 heads, 8 kv heads, head_dim 128, MLP 9728; one row of 9216 tokens.
QWEN3_4B = rm.ModelConfig(
  family="qwen3",
  vocab_size=151936,
  hidden_size=2560,
  intermediate_size=9728,
  num_layers=1,
  num_heads=32,
  num_kv_heads=8,
  head_dim=128,
  qk_norm=True,
  attention="blocked",
)
LONG = 9216


def test_blocked_attention_memory_at_qwen3_4b_shape():
  """float32 forward + backward of the attention alone: einsum needs ~30 GiB here (the
  [32, L, L] float32 scores are 10 GiB each); blocked ~0.3 GiB (q, k, v, dq and block tiles)."""
  S = jax.ShapeDtypeStruct
  seg = jnp.ones((1, LONG), jnp.int32)
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, seg, implementation="blocked"))
  temp = _temp_bytes(
    loss, S((1, LONG, 32, 128), jnp.float32), *[S((1, LONG, 8, 128), jnp.float32)] * 2
  )
  assert temp <= 1 * GIB, f"{temp / GIB:.2f} GiB"


def test_decoder_layer_memory_at_qwen3_4b_shape():
  """One float32 DecoderLayer (params and compute), value_and_grad w.r.t. params and input,
  blocked attention and the MLP over 1024 positions at a time (model.mlp_chunk).

  Measured on CPU (whole layer / MLP alone): unchunked 3.98 / 3.01 GiB (the MLP's [L, 9728]
  float32 activations and their CPU transposes); mlp_chunk 4096: 3.06 / 1.84, 2048: 2.32 /
  1.04, 1024: 1.85 / 0.55, 512: 1.81 / 0.50. With einsum attention: 34.1 GiB (one [32, L, L]
  float32 score tensor is 10.1 GiB).
  """
  cfg = QWEN3_4B.replace(mlp_chunk=1024)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: DecoderLayer(cfg, 0, rngs=nnx.Rngs(0))))
  positions = jnp.arange(LONG, dtype=jnp.int32)[None]
  mask = jnp.ones((1, LONG), jnp.int32)

  def loss(params, x):
    return jnp.sum(nnx.merge(graphdef, params)(x, positions, mask)[0])

  temp = _temp_bytes(loss, params, jax.ShapeDtypeStruct((1, LONG, 2560), jnp.float32))
  assert temp <= 2 * GIB, f"{temp / GIB:.2f} GiB"


CONTEXT_MESHES = {
  "fsdp2-context2-tensor2": {"fsdp": 2, "context": 2, "tensor": 2},
  "context8": {"fsdp": 1, "context": 8},
}
# (name, L, block): blocked with shards shorter than / not a multiple of the block.
CONTEXT_CASES = [
  (name, L, block, mesh)
  for name, L, block in [
    ("blocked", 40, 8),
    ("einsum", 40, 0),
    ("cudnn", 40, 0),
    ("splash", 256, 128),
  ]
  for mesh in CONTEXT_MESHES
  if not (name == "splash" and mesh == "context8")  # 1024 tokens interpreted: test_context
]


@pytest.mark.parametrize("name,L,block,mesh_name", CONTEXT_CASES)
def test_context_sharded_matches_unsharded_einsum(name, L, block, mesh_name, devices8, monkeypatch):
  """Queries split over 'context' (K/V gathered, global causal positions) give the unsharded
  einsum's output and q/k/v gradients; the cudnn path runs with jax's XLA implementation."""
  monkeypatch.setattr(attention, "_CUDNN_CONTEXT_IMPLEMENTATION", None)
  q, k, v, ct = qkv(L)
  seg = jnp.asarray(segments(L))
  ref = functools.partial(
    attention.attend, segment_ids_BxL=seg, causal=True, implementation="einsum"
  )
  fn = lambda q, k, v: attention.attend(
    q, k, v, seg, implementation=name, block_size=block or 512, interpret=True
  )
  want, want_grads = value_and_grads(ref, q, k, v, ct, seg)
  with jax.set_mesh(shd.make_mesh(CONTEXT_MESHES[mesh_name], devices8)):
    got, got_grads = value_and_grads(fn, q, k, v, ct, seg)
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)
  for g, w, what in zip(got_grads, want_grads, "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=what)
  assert np.isfinite(np.asarray(got)).all()
