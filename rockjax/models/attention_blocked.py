"""Blocked (flash-style) attention in pure XLA: online softmax over key blocks, custom backward.

Memory is O(L) instead of O(L^2): the forward keeps, per query block, a running max, a running
sum and an output accumulator while it walks the key blocks; the backward recomputes each
`[C, C]` score tile from q, k, v, the output and the per-query log-sum-exp. With `causal`, key
blocks after the query block are skipped in both passes.

Shape letters: B batch, L positions (queries and keys, padded to a multiple of C), C block,
K key/value heads, G query heads per key/value head, E head_dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Finite instead of -inf: a fully masked row (a padded query of the KV-cache path) softmaxes to
# uniform rather than NaN; its output is garbage but finite and never read at real positions.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_PAD_SEGMENT = -1  # segment id of the positions added to reach a multiple of the block size


def blocked_attention(
  q_BxLxHxE: jax.Array,
  k_BxLxKxE: jax.Array,
  v_BxLxKxE: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  causal: bool,
  scale: float,
  block_size: int,
) -> jax.Array:
  """softmax(q k^T * scale, masked) v with query i seeing key j iff j <= i (when causal) and
  segment_ids[i] == segment_ids[j]; output [B, L, H, E] in q's dtype.

  L need not be a multiple of block_size (the sequence is padded internally); a sequence
  shorter than block_size is one block.
  """
  B, L, H, E = q_BxLxHxE.shape
  K = k_BxLxKxE.shape[2]
  C = min(block_size, L)
  pad = -L % C
  seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q_BxLxHxE, k_BxLxKxE, v_BxLxKxE = (
      jnp.pad(x, widths) for x in (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE)
    )
    seg_BxL = jnp.pad(seg_BxL, ((0, 0), (0, pad)), constant_values=_PAD_SEGMENT)
  q_BxLxKxGxE = q_BxLxHxE.reshape(B, L + pad, K, H // K, E)
  out_BxLxKxGxE = _flash(q_BxLxKxGxE, k_BxLxKxE, v_BxLxKxE, seg_BxL, causal, float(scale), C)
  return out_BxLxKxGxE.reshape(B, L + pad, H, E)[:, :L]


def _block(x: jax.Array, i: jax.Array, C: int, axis: int = 1) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, i * C, C, axis)


def _tile(q_BxCxKxGxE, k_BxCxKxE, seg_q_BxC, seg_k_BxC, i, j, causal, scale, C):
  """Float32 scores [B, K, G, C(q), C(k)] of one tile and where they are allowed."""
  s_BxKxGxCxC = (
    jnp.einsum("bqkge,bske->bkgqs", q_BxCxKxGxE, k_BxCxKxE, preferred_element_type=jnp.float32)
    * scale
  )
  ok_BxCxC = seg_q_BxC[:, :, None] == seg_k_BxC[:, None, :]
  if causal:
    pos_q, pos_k = i * C + jnp.arange(C), j * C + jnp.arange(C)
    ok_BxCxC = ok_BxCxC & (pos_k[None, :] <= pos_q[:, None])[None]
  ok_Bx1x1xCxC = ok_BxCxC[:, None, None]
  return jnp.where(ok_Bx1x1xCxC, s_BxKxGxCxC, MASK_VALUE), ok_Bx1x1xCxC


def _forward(q, k, v, seg, causal, scale, C):
  """(out [B, L, K, G, E] in q's dtype, lse [B, K, G, L] float32)."""
  B, L, K, G, E = q.shape
  N = L // C

  def q_block(i, carry):
    out, lse = carry
    q_i, seg_i = _block(q, i, C), _block(seg, i, C)

    def kv_block(j, state):
      m, l, acc = state
      s, ok = _tile(q_i, _block(k, j, C), seg_i, _block(seg, j, C), i, j, causal, scale, C)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
      corr = jnp.exp(m - m_new)
      pv = jnp.einsum(
        "bkgqs,bske->bkgqe", p.astype(v.dtype), _block(v, j, C), preferred_element_type=jnp.float32
      )
      return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

    init = (
      jnp.full((B, K, G, C), MASK_VALUE, jnp.float32),
      jnp.zeros((B, K, G, C), jnp.float32),
      jnp.zeros((B, K, G, C, E), jnp.float32),
    )
    # Every query sees at least itself, so l > 0; the guard only keeps a bug finite.
    m, l, acc = jax.lax.fori_loop(0, i + 1 if causal else N, kv_block, init)
    l = jnp.maximum(l, np.finfo(np.float32).tiny)
    o_BxCxKxGxE = (acc / l[..., None]).transpose(0, 3, 1, 2, 4).astype(out.dtype)
    out = jax.lax.dynamic_update_slice_in_dim(out, o_BxCxKxGxE, i * C, 1)
    lse = jax.lax.dynamic_update_slice_in_dim(lse, m + jnp.log(l), i * C, 3)
    return out, lse

  init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((B, K, G, L), jnp.float32))
  return jax.lax.fori_loop(0, N, q_block, init)


def _backward(q, k, v, seg, out, lse, do, causal, scale, C):
  """(dq, dk, dv) in the inputs' dtypes, recomputing each tile's probabilities from lse."""
  B, L, K, G, E = q.shape
  N = L // C
  # delta_i = sum_e do_ie * o_ie = sum_j p_ij dp_ij: the softmax-backward row term.
  delta_BxKxGxL = jnp.einsum(
    "blkge,blkge->bkgl", do, out.astype(do.dtype), preferred_element_type=jnp.float32
  )

  def kv_block(j, carry):
    dq, dk, dv = carry
    k_j, v_j, seg_j = _block(k, j, C), _block(v, j, C), _block(seg, j, C)

    def q_block(i, state):
      dq, dk_j, dv_j = state
      q_i, do_i = _block(q, i, C), _block(do, i, C)
      s, ok = _tile(q_i, k_j, _block(seg, i, C), seg_j, i, j, causal, scale, C)
      p = jnp.where(ok, jnp.exp(s - _block(lse, i, C, 3)[..., None]), 0.0)
      dv_j += jnp.einsum(
        "bkgqs,bqkge->bske", p.astype(do.dtype), do_i, preferred_element_type=jnp.float32
      )
      dp = jnp.einsum("bqkge,bske->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = p * (dp - _block(delta_BxKxGxL, i, C, 3)[..., None]) * scale
      dq_i = jnp.einsum(
        "bkgqs,bske->bqkge", ds.astype(k.dtype), k_j, preferred_element_type=jnp.float32
      )
      dq = jax.lax.dynamic_update_slice_in_dim(dq, _block(dq, i, C) + dq_i, i * C, 1)
      dk_j += jnp.einsum(
        "bkgqs,bqkge->bske", ds.astype(q.dtype), q_i, preferred_element_type=jnp.float32
      )
      return dq, dk_j, dv_j

    zeros = jnp.zeros((B, C, K, E), jnp.float32)
    dq, dk_j, dv_j = jax.lax.fori_loop(j if causal else 0, N, q_block, (dq, zeros, zeros))
    dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_j, j * C, 1)
    dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_j, j * C, 1)
    return dq, dk, dv

  zeros_like = lambda x: jnp.zeros(x.shape, jnp.float32)
  dq, dk, dv = jax.lax.fori_loop(0, N, kv_block, tuple(map(zeros_like, (q, k, v))))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, seg, causal, scale, C):
  return _forward(q, k, v, seg, causal, scale, C)[0]


def _flash_fwd(q, k, v, seg, causal, scale, C):
  out, lse = _forward(q, k, v, seg, causal, scale, C)
  return out, (q, k, v, seg, out, lse)


def _flash_bwd(causal, scale, C, residuals, do):
  q, k, v, seg, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, seg, out, lse, do, causal, scale, C)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)
