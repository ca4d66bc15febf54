"""Masked, weighted reductions of per-token losses `[B, L]` to (sum, count).

Normalisers (`opd.normalizer`; docs/method.md, "Normalisers"), with `w` the masking function's
weights and `W_b = sum_t w_bt` the weight of sequence b:
  'tokens'    sum_bt w_bt l_bt / (response tokens of the batch)        the paper's baseline
  'weights'   sum_bt w_bt l_bt / sum_bt w_bt                           batch-wide weight mean
  'sequence'  mean over sequences of sum_t w_bt l_bt / max(W_b, 1)     the authors' freeze code
Every one is `sum / count` with per-token factors (`normalized_weights`) and a `count` that
depend on the weights and the mask only, so micro-batches and hosts add their sums and share
one count of the whole batch.
"""

import jax
import jax.numpy as jnp

NORMALIZERS = ("tokens", "weights", "sequence")


def _check(normalizer: str) -> None:
  if normalizer not in NORMALIZERS:
    allowed = ", ".join(repr(n) for n in NORMALIZERS)
    raise ValueError(f"unknown normalizer {normalizer!r}; expected one of {allowed}")


def normalized_weights(
  mask_BxL: jax.Array, weights_BxL: jax.Array, *, normalizer: str = "tokens"
) -> jax.Array:
  """Per-token factors of the `sum`: the masked weights, divided by max(W_b, 1) under 'sequence'.

  The max(., 1) is the authors': a sequence whose kept weight is below 1 (every token frozen,
  or a few tokens at lambda < 1) is not scaled up, it keeps its raw weights.
  """
  _check(normalizer)
  w_BxL = jnp.where(mask_BxL.astype(bool), weights_BxL.astype(jnp.float32), 0.0)
  if normalizer != "sequence":
    return w_BxL
  return w_BxL / jnp.maximum(jnp.sum(w_BxL, axis=-1, keepdims=True), 1.0)


def reduce(
  per_token_BxL: jax.Array,
  mask_BxL: jax.Array,
  weights_BxL: jax.Array | None = None,
  *,
  normalizer: str = "tokens",
) -> tuple[jax.Array, jax.Array]:
  """Masked, weighted reduction -> `(sum, count)`; the loss is `sum / count`.

  Sums, not means, so callers can add micro-batches and hosts before dividing once; the
  normalisers are described in this module's docstring.
  """
  mask = mask_BxL.astype(bool)
  raw = jnp.ones(per_token_BxL.shape, jnp.float32) if weights_BxL is None else weights_BxL
  w = normalized_weights(mask, raw, normalizer=normalizer)
  # where, not multiply: garbage (inf/nan) at padded positions must not leak into the sum.
  total = jnp.sum(jnp.where(mask, per_token_BxL.astype(jnp.float32) * w, 0.0))
  return total, count(mask, raw, normalizer=normalizer)


def count(mask_BxL: jax.Array, weights_BxL: jax.Array, *, normalizer: str = "tokens") -> jax.Array:
  """The `count` of `reduce`: masked tokens ('tokens'), the masked sum of weights ('weights'),
  or the sequences (rows) with at least one masked token ('sequence')."""
  _check(normalizer)
  mask = mask_BxL.astype(bool)
  if normalizer == "tokens":
    return jnp.sum(mask, dtype=jnp.float32)
  if normalizer == "weights":
    return jnp.sum(jnp.where(mask, weights_BxL.astype(jnp.float32), 0.0))
  # A row with no response token (an empty rollout, a filler row) adds nothing to the sum
  # and is not counted; a row whose tokens are all frozen is (sum 0 / max(0, 1), as theirs).
  return jnp.sum(jnp.any(mask, axis=-1), dtype=jnp.float32)
