"""Blocked (flash-style) attention in pure XLA: online softmax over key blocks, custom backward.

Memory is O(L) instead of O(L^2): the forward keeps, per query block, a running max, a running
sum and an output accumulator while it walks the key blocks; the backward recomputes each
`[C, C]` score tile from q, k, v, the output and the per-query log-sum-exp. With `causal`, key
blocks after the query block are skipped in both passes. The queries may be one sequence shard
of the keys (context parallelism, rockjax.models.attention_context): query i sits at global
position q_offset + i, and the causal mask and block skipping use global positions.

Shape letters: B batch, L query positions, S key positions (each padded to a multiple of C),
C block, K key/value heads, G query heads per key/value head, E head_dim.
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
  k_BxSxKxE: jax.Array,
  v_BxSxKxE: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  causal: bool,
  scale: float,
  block_size: int,
  kv_segment_ids_BxS: jax.Array | None = None,
  q_offset: jax.Array | int = 0,
) -> jax.Array:
  """softmax(q k^T * scale, masked) v with query i seeing key j iff j <= q_offset + i (when
  causal) and segment_ids[i] == kv_segment_ids[j]; output [B, L, H, E] in q's dtype.

  Keys default to the queries' positions (kv_segment_ids = segment_ids, q_offset 0). L and S
  need not be multiples of block_size (padded internally); a query shard shorter than
  block_size is one block.
  """
  B, L, H, E = q_BxLxHxE.shape
  S, K = k_BxSxKxE.shape[1:3]
  C = min(block_size, L)
  seg_q_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
  seg_kv_BxS = (
    seg_q_BxL if kv_segment_ids_BxS is None else jnp.asarray(kv_segment_ids_BxS, jnp.int32)
  )
  pad_q, pad_kv = -L % C, -S % C
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0))) if n else x
  pad_seg = lambda s, n: jnp.pad(s, ((0, 0), (0, n)), constant_values=_PAD_SEGMENT) if n else s
  q_BxLxKxGxE = pad(q_BxLxHxE, pad_q).reshape(B, L + pad_q, K, H // K, E)
  offset = jnp.asarray(q_offset, jnp.int32)
  out_BxLxKxGxE = _flash(
    q_BxLxKxGxE,
    pad(k_BxSxKxE, pad_kv),
    pad(v_BxSxKxE, pad_kv),
    pad_seg(seg_q_BxL, pad_q),
    pad_seg(seg_kv_BxS, pad_kv),
    offset,
    causal,
    float(scale),
    C,
  )
  return out_BxLxKxGxE.reshape(B, L + pad_q, H, E)[:, :L]


def _block(x: jax.Array, i: jax.Array, C: int, axis: int = 1) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, i * C, C, axis)


def _tile(q_BxCxKxGxE, k_BxCxKxE, seg_q_BxC, seg_k_BxC, i, j, offset, causal, scale, C):
  """Float32 scores [B, K, G, C(q), C(k)] of one tile and where they are allowed."""
  s_BxKxGxCxC = (
    jnp.einsum("bqkge,bske->bkgqs", q_BxCxKxGxE, k_BxCxKxE, preferred_element_type=jnp.float32)
    * scale
  )
  ok_BxCxC = seg_q_BxC[:, :, None] == seg_k_BxC[:, None, :]
  if causal:
    pos_q, pos_k = offset + i * C + jnp.arange(C), j * C + jnp.arange(C)
    ok_BxCxC = ok_BxCxC & (pos_k[None, :] <= pos_q[:, None])[None]
  ok_Bx1x1xCxC = ok_BxCxC[:, None, None]
  return jnp.where(ok_Bx1x1xCxC, s_BxKxGxCxC, MASK_VALUE), ok_Bx1x1xCxC


def _kv_blocks_seen(i, offset, C: int, num_kv: int):
  """Number of key blocks query block i sees under the causal mask (its last global position
  offset + (i + 1) * C - 1 lies in key block that // C)."""
  return jnp.minimum(num_kv, (offset + (i + 1) * C - 1) // C + 1)


def _forward(q, k, v, seg_q, seg_kv, offset, causal, scale, C):
  """(out [B, L, K, G, E] in q's dtype, lse [B, K, G, L] float32)."""
  B, L, K, G, E = q.shape
  N, NK = L // C, k.shape[1] // C

  def q_block(i, carry):
    out, lse = carry
    q_i, seg_i = _block(q, i, C), _block(seg_q, i, C)

    def kv_block(j, state):
      m, l, acc = state
      s, ok = _tile(
        q_i, _block(k, j, C), seg_i, _block(seg_kv, j, C), i, j, offset, causal, scale, C
      )
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
    seen = _kv_blocks_seen(i, offset, C, NK) if causal else NK
    m, l, acc = jax.lax.fori_loop(0, seen, kv_block, init)
    l = jnp.maximum(l, np.finfo(np.float32).tiny)
    o_BxCxKxGxE = (acc / l[..., None]).transpose(0, 3, 1, 2, 4).astype(out.dtype)
    out = jax.lax.dynamic_update_slice_in_dim(out, o_BxCxKxGxE, i * C, 1)
    lse = jax.lax.dynamic_update_slice_in_dim(lse, m + jnp.log(l), i * C, 3)
    return out, lse

  init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((B, K, G, L), jnp.float32))
  return jax.lax.fori_loop(0, N, q_block, init)


def _backward(q, k, v, seg_q, seg_kv, offset, out, lse, do, causal, scale, C):
  """(dq, dk, dv) in the inputs' dtypes, recomputing each tile's probabilities from lse."""
  B, L, K, G, E = q.shape
  N, NK = L // C, k.shape[1] // C
  # delta_i = sum_e do_ie * o_ie = sum_j p_ij dp_ij: the softmax-backward row term.
  delta_BxKxGxL = jnp.einsum(
    "blkge,blkge->bkgl", do, out.astype(do.dtype), preferred_element_type=jnp.float32
  )

  def kv_block(j, carry):
    dq, dk, dv = carry
    k_j, v_j, seg_j = _block(k, j, C), _block(v, j, C), _block(seg_kv, j, C)

    def q_block(i, state):
      dq, dk_j, dv_j = state
      q_i, do_i = _block(q, i, C), _block(do, i, C)
      s, ok = _tile(q_i, k_j, _block(seg_q, i, C), seg_j, i, j, offset, causal, scale, C)
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
    # Causal: query blocks before the first whose last global position reaches key block j
    # see none of it (offset 0: block j itself).
    first = jnp.clip((j * C - offset) // C, 0, N) if causal else 0
    dq, dk_j, dv_j = jax.lax.fori_loop(first, N, q_block, (dq, zeros, zeros))
    dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_j, j * C, 1)
    dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_j, j * C, 1)
    return dq, dk, dv

  zeros_like = lambda x: jnp.zeros(x.shape, jnp.float32)
  dq, dk, dv = jax.lax.fori_loop(0, NK, kv_block, tuple(map(zeros_like, (q, k, v))))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _flash(q, k, v, seg_q, seg_kv, offset, causal, scale, C):
  return _forward(q, k, v, seg_q, seg_kv, offset, causal, scale, C)[0]


def _flash_fwd(q, k, v, seg_q, seg_kv, offset, causal, scale, C):
  out, lse = _forward(q, k, v, seg_q, seg_kv, offset, causal, scale, C)
  return out, (q, k, v, seg_q, seg_kv, offset, out, lse)


def _flash_bwd(causal, scale, C, residuals, do):
  q, k, v, seg_q, seg_kv, offset, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, seg_q, seg_kv, offset, out, lse, do, causal, scale, C)
  return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
