"""Attention of a decode (or prefill) call over a KV cache, the cache read where it lies.

Shape letters: B batch, L this call's positions, H query heads, K key/value heads, G = H / K,
E head_dim, S cached slots read.

The same dense float32 maths as `attention.masked_attention` over the cache with the call's
keys/values written in, in two parts: the cached slots (read in place, written before this
call) and the call's own L keys/values (given apart), joined in one softmax. Writing first and
reading the updated buffer made XLA copy each layer's cache slice out at every decode step.
"""

import jax
import jax.numpy as jnp

from rockjax.models.attention_blocked import MASK_VALUE


def cached_attention(
  q_BxLxHxE: jax.Array,
  k_BxKxSxE: jax.Array,
  v_BxKxSxE: jax.Array,
  k_BxLxKxE: jax.Array,
  v_BxLxKxE: jax.Array,
  allowed_old_BxLxS: jax.Array,
  allowed_new_BxLxL: jax.Array,
  scale: float,
) -> jax.Array:
  """Attention over a KV cache plus this call's L keys/values given apart -> [B, L, H, E].

  Equals `masked_attention` over the cache with the L new entries written in, without
  writing them first: the cached slots are read where they lie (a decode step moves no cache
  data) and the write can follow. allowed_old_BxLxS: which cached slots each query sees
  (those written before this call); allowed_new_BxLxL: which of the call's own tokens (causal
  within the call). One softmax over both parts, normalised after the value matmuls (so the
  [.., S] probabilities are never divided); scores in float32.
  """
  B, L, H, E = q_BxLxHxE.shape
  K = k_BxKxSxE.shape[1]
  q_BxKxGxLxE = q_BxLxHxE.reshape(B, L, K, H // K, E).transpose(0, 2, 3, 1, 4)
  k_BxKxLxE, v_BxKxLxE = jnp.swapaxes(k_BxLxKxE, 1, 2), jnp.swapaxes(v_BxLxKxE, 1, 2)

  def scores(k_BxKxSxE, allowed_BxLxS):
    s = jnp.einsum("bkgle,bkse->bkgls", q_BxKxGxLxE, k_BxKxSxE, preferred_element_type=jnp.float32)
    return jnp.where(allowed_BxLxS[:, None, None], s * scale, MASK_VALUE)

  old_BxKxGxLxS = scores(k_BxKxSxE, allowed_old_BxLxS)
  new_BxKxGxLxL = scores(k_BxKxLxE, allowed_new_BxLxL)
  max_BxKxGxLx1 = jnp.maximum(
    jnp.max(old_BxKxGxLxS, axis=-1, keepdims=True), jnp.max(new_BxKxGxLxL, axis=-1, keepdims=True)
  )
  p_old = jnp.exp(old_BxKxGxLxS - max_BxKxGxLx1)
  p_new = jnp.exp(new_BxKxGxLxL - max_BxKxGxLx1)
  total_BxKxGxLx1 = jnp.sum(p_old, axis=-1, keepdims=True) + jnp.sum(p_new, axis=-1, keepdims=True)
  dtype = q_BxLxHxE.dtype
  out_BxKxGxLxE = jnp.einsum(
    "bkgls,bkse->bkgle", p_old.astype(dtype), v_BxKxSxE, preferred_element_type=jnp.float32
  ) + jnp.einsum(
    "bkgls,bkse->bkgle", p_new.astype(dtype), v_BxKxLxE, preferred_element_type=jnp.float32
  )
  out_BxKxGxLxE = (out_BxKxGxLxE / total_BxKxGxLx1).astype(dtype)
  return out_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(B, L, H, E)
