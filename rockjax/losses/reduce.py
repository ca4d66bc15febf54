"""Masked, weighted reductions of per-token losses `[B, L]` to (sum, count)."""

import jax
import jax.numpy as jnp


def reduce(
  per_token_BxL: jax.Array,
  mask_BxL: jax.Array,
  weights_BxL: jax.Array | None = None,
  *,
  normalizer: str = "tokens",
) -> tuple[jax.Array, jax.Array]:
  """Masked, weighted reduction -> `(sum, count)`; the loss is `sum / count`.

  normalizer='tokens' counts the response tokens (the paper's baseline: lambda changes the loss
  scale); 'weights' divides by the sum of weights (the authors' freeze code: lambda changes the
  effective learning rate instead). Sums, not means, so callers can add micro-batches and hosts
  before dividing once.
  """
  mask = mask_BxL.astype(bool)
  w = (
    jnp.ones(per_token_BxL.shape, jnp.float32)
    if weights_BxL is None
    else (weights_BxL.astype(jnp.float32))
  )
  # where, not multiply: garbage (inf/nan) at padded positions must not leak into the sum.
  total = jnp.sum(jnp.where(mask, per_token_BxL.astype(jnp.float32) * w, 0.0))
  return total, count(mask, w, normalizer=normalizer)


def count(mask_BxL: jax.Array, weights_BxL: jax.Array, *, normalizer: str = "tokens") -> jax.Array:
  """The `count` of `reduce`: masked tokens ('tokens') or the masked sum of weights ('weights')."""
  mask = mask_BxL.astype(bool)
  if normalizer == "tokens":
    return jnp.sum(mask, dtype=jnp.float32)
  if normalizer == "weights":
    return jnp.sum(jnp.where(mask, weights_BxL.astype(jnp.float32), 0.0))
  raise ValueError(f"unknown normalizer {normalizer!r}; expected 'tokens' or 'weights'")
