"""Attention over packed rows (data.pack): segment ids 1, 2, 3, ... per sequence, 0 padding.

References: float64 numpy masked softmax attention on a hand-built segment layout (a query
sees the keys of its own segment at or before it), and each sequence's attention computed
alone; `cudnn` (padding as key lengths only) must give way to `blocked` for packed rows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockjax import sharding as shd
from rockjax.models import attention

B, H, K, E = 2, 4, 2, 8  # GQA: 2 query heads per key/value head


def packed_segments(L: int) -> np.ndarray:
  """Row 0: three sequences of 5, 7 and 9 tokens, then padding; row 1: one of 3 tokens, one
  that runs to the end. Boundaries fall inside and across 4-token blocks."""
  assert L >= 24
  seg = np.zeros((B, L), np.int32)
  seg[0, 0:5], seg[0, 5:12], seg[0, 12:21] = 1, 2, 3
  seg[1, 0:3], seg[1, 3:] = 1, 2
  return seg


def qkv(L: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return draw(B, L, H, E), draw(B, L, K, E), draw(B, L, K, E), draw(B, L, H, E)


def numpy_packed_attention(q, k, v, seg):
  """Float64, written from the definition: for each row, each segment s > 0 alone, plain
  causal softmax attention over its own tokens (query head h reads key/value head h // G)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  G = q.shape[2] // k.shape[2]
  out = np.zeros(q.shape)
  for b in range(q.shape[0]):
    for s in set(seg[b].tolist()) - {0}:
      idx = np.flatnonzero(seg[b] == s)
      n = idx.size
      for h in range(q.shape[2]):
        scores = q[b, idx, h] @ k[b, idx, h // G].T * E**-0.5  # [n, n]
        scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        out[b, idx, h] = (p / p.sum(-1, keepdims=True)) @ v[b, idx, h // G]
  return out


def test_hand_layout_means_what_it_says():
  """The layout helper itself: segment sizes and padding as documented."""
  seg = packed_segments(24)
  assert [int((seg[0] == s).sum()) for s in (0, 1, 2, 3)] == [3, 5, 7, 9]
  assert [int((seg[1] == s).sum()) for s in (0, 1, 2)] == [0, 3, 21]


# (name, L, block): blocked with blocks smaller than a segment and L not a multiple of them.
CASES = [("einsum", 24, 0), ("blocked", 26, 4), ("blocked", 24, 16), ("splash", 256, 128)]


@pytest.mark.parametrize("name,L,block", CASES, ids=[f"{c[0]}-L{c[1]}-b{c[2]}" for c in CASES])
def test_packed_attention_matches_float64_numpy(name, L, block, devices8):
  q, k, v, _ = qkv(L)
  seg = packed_segments(L)
  fn = functools.partial(
    attention.attend,
    segment_ids_BxL=jnp.asarray(seg),
    implementation=name,
    block_size=block or 512,
    interpret=True,
    packed=True,
  )
  if name == "splash":  # shard_map: rows over data x fsdp, heads over tensor
    with jax.set_mesh(shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)):
      got = np.asarray(jax.jit(fn)(q, k, v))
  else:
    got = np.asarray(jax.jit(fn)(q, k, v))
  want = numpy_packed_attention(q, k, v, seg)
  real = seg > 0
  np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,block", [("blocked", 4), ("cudnn", 0)])
def test_packed_gradients_match_einsum(name, block):
  """q/k/v gradients through the packed mask (blocked's own backward; cudnn runs blocked
  here: on a CPU the cuDNN kernel itself would fail to run at all)."""
  L = 26
  q, k, v, ct = qkv(L, seed=1)
  seg = jnp.asarray(packed_segments(L))
  ct = ct * (seg > 0)[:, :, None, None]

  def grads(impl, blk):
    fn = lambda q, k, v: jnp.sum(
      attention.attend(q, k, v, seg, implementation=impl, block_size=blk, packed=True) * ct
    )
    return jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(q, k, v)

  for g, w, what in zip(grads(name, block or 512), grads("einsum", 512), "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=what)


def test_cudnn_gives_way_to_blocked_for_packed_rows(monkeypatch):
  """packed=True never reaches the cuDNN wrapper, whose key lengths hold one segment a row:
  with it, the packed layout would attend across sequences."""
  L = 24
  q, k, v, _ = qkv(L, seed=2)
  seg = packed_segments(L)
  want = numpy_packed_attention(q, k, v, seg)
  real = seg > 0
  # The wrapper itself (jax's XLA implementation here) takes every nonzero id for one
  # segment: on this layout it attends across sequences.
  one_segment = attention.cudnn_attention(
    q, k, v, jnp.asarray(seg), causal=True, scale=E**-0.5, implementation="xla"
  )
  assert np.abs(np.asarray(one_segment)[real] - want[real]).max() > 1e-2

  def refuse(*args, **kwargs):
    raise AssertionError("cudnn_attention called for packed rows")

  monkeypatch.setattr(attention, "cudnn_attention", refuse)
  got = attention.attend(q, k, v, jnp.asarray(seg), implementation="cudnn", packed=True)
  np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,block", [("blocked", 4), ("einsum", 0)])
def test_packed_context_sharded_matches_numpy(name, block, devices8):
  """Queries split over 'context' (keys and their segment ids gathered): the same masks."""
  L = 32
  q, k, v, _ = qkv(L, seed=3)
  seg = packed_segments(L)
  fn = lambda q, k, v: attention.attend(
    q, k, v, jnp.asarray(seg), implementation=name, block_size=block or 512, packed=True
  )
  with jax.set_mesh(shd.make_mesh({"fsdp": 2, "context": 4}, devices8)):
    got = np.asarray(jax.jit(fn)(q, k, v))
  want = numpy_packed_attention(q, k, v, seg)
  real = seg > 0
  np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)
