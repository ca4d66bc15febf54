"""KVCache: the decoding state of a Decoder (all layers' keys/values plus slot validity).

Shape letters: N decoder layers, B batch, T tokens written by one call, S cache slots,
K key/value heads, E head_dim. Keys and values are one stacked buffer each, [N, B, K, S, E]
(layer i is `k[i]`), so a scanned decoder scans over the cache together with its stacked
layers. Per layer the buffers are heads-major, [B, K, S, E]: a decode step's attention is then
a plain batched matmul over (B, K) with no transpose of the cache.

Calling convention (see `Decoder.__call__`): slots are written strictly left to right. A call
with T new tokens writes them at slots [cache_index, cache_index + T), marks those slots valid
where the call's attention mask is 1, and every query attends to the valid slots at or before
its own slot. `index` is the next free slot; the returned cache has it advanced by T.
Size the cache for prompt + generated tokens: XLA clamps a write past slot S - T (it would
overwrite the last slots instead of failing).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rockjax import sharding as shd

# Logical axes of the stacked k or v buffer, and of the slot mask.
KV_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")
MASK_AXES = ("batch", "cache_length")


class KVCache(NamedTuple):
  """Pytree: k, v = [N, B, K, S, E]; mask_BxS (int32, 1 = valid); index ()."""

  k: jax.Array
  v: jax.Array
  mask_BxS: jax.Array
  index: jax.Array

  @classmethod
  def init(
    cls,
    num_layers: int,
    batch: int,
    max_len: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: Any = jnp.float32,
  ) -> "KVCache":
    """An empty cache: all slots invalid, index 0."""
    shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
    return cls(
      k=jnp.zeros(shape, dtype),
      v=jnp.zeros(shape, dtype),
      mask_BxS=jnp.zeros((batch, max_len), jnp.int32),
      index=jnp.zeros((), jnp.int32),
    )

  @property
  def max_len(self) -> int:
    """Number of slots S."""
    return self.mask_BxS.shape[1]

  def repeat_rows(self, n: int) -> "KVCache":
    """Each batch row repeated n times in place (row i*n + j <- row i), sharding constrained."""
    rep = lambda x, axis: jnp.repeat(x, n, axis=axis) if n > 1 else x
    return KVCache(
      k=shd.constrain(rep(self.k, 1), KV_AXES, strict=False),
      v=shd.constrain(rep(self.v, 1), KV_AXES, strict=False),
      mask_BxS=shd.constrain(rep(self.mask_BxS, 0), MASK_AXES, strict=False),
      index=self.index,
    )

  def constrained(self) -> "KVCache":
    """The cache with its layout pinned under the current mesh (rows on 'batch', kv heads on
    'kv_heads'; a no-op without one), so XLA allocates it in place where decoding reads it."""
    kv = lambda x: shd.constrain(x, KV_AXES, strict=False)
    mask = shd.constrain(self.mask_BxS, MASK_AXES, strict=False)
    return KVCache(k=kv(self.k), v=kv(self.v), mask_BxS=mask, index=self.index)

  def shardings(self, mesh: Mesh, rules: shd.LogicalRules | None = None) -> "KVCache":
    """NamedShardings for every leaf (batch on 'batch', kv heads on 'kv_heads')."""
    kv = lambda x: shd.logical_sharding(KV_AXES, x.shape, mesh, rules)
    return KVCache(
      k=kv(self.k),
      v=kv(self.v),
      mask_BxS=shd.logical_sharding(MASK_AXES, self.mask_BxS.shape, mesh, rules),
      index=shd.logical_sharding((), (), mesh, rules),
    )
