"""Pure logit transforms used by the sampler: id bans, top-k, top-p, temperature, sampling.

Shape letters: N rows (prompts x samples), V vocabulary. Every function is jittable and
works on float32 logits; a removed id gets -inf (so its probability is exactly 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def ban_ids(logits_NxV: jax.Array, banned_ids: Sequence[int]) -> jax.Array:
  """Adds -inf to the logits of `banned_ids` (the paper's knockout: nothing is substituted)."""
  if not banned_ids:
    return logits_NxV
  banned_V = jnp.zeros(logits_NxV.shape[-1], bool).at[jnp.asarray(banned_ids)].set(True)
  return jnp.where(banned_V, NEG_INF, logits_NxV)


def ban_row_ids(logits_NxV: jax.Array, banned_ids_NxK: jax.Array) -> jax.Array:
  """-inf at row n's ids banned_ids_NxK[n] (traced data, so any ids share one program); -1: none."""
  ids_V = jnp.arange(logits_NxV.shape[-1], dtype=jnp.int32)
  # An elementwise compare against the id iota (not a scatter): XLA fuses it into the reduction,
  # and it stays sharded like the logits when the vocabulary is split. -1 matches no id.
  hit_NxKxV = ids_V[None, None, :] == banned_ids_NxK.astype(jnp.int32)[:, :, None]
  return jnp.where(jnp.any(hit_NxKxV, axis=1), NEG_INF, logits_NxV)


def top_k_filter(logits_NxV: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits per row (ids tied with the k-th are kept too); k <= 0: all."""
  if k <= 0 or k >= logits_NxV.shape[-1]:
    return logits_NxV
  kth_Nx1 = jax.lax.top_k(logits_NxV, k)[0][:, -1:]
  return jnp.where(logits_NxV < kth_Nx1, NEG_INF, logits_NxV)


def top_p_filter(logits_NxV: jax.Array, p: float) -> jax.Array:
  """Nucleus filter (HF's rule): an id survives if the probability mass of the ids *more*
  likely than it is < p, so the most likely id always survives and a tiny p is greedy.
  Ids tied in probability survive or go together (a sort would split ties arbitrarily).

  No sort: with f(t) = mass of ids whose probability is > t (non-increasing), the survivors
  are exactly the ids with probability >= t0, t0 the smallest float32 with f(t0) < p. t0 is
  found by bisection over float32 bit patterns (ordered like the values for t >= 0): 31 masked
  sums over V per row, which also stay vocab-sharded (a sort would gather the vocabulary).
  p >= 1: no-op.
  """
  if p >= 1.0:
    return logits_NxV
  probs_NxV = jax.nn.softmax(logits_NxV.astype(jnp.float32), axis=-1)
  as_float = lambda bits_N: jax.lax.bitcast_convert_type(bits_N, jnp.float32)
  mass_above = lambda bits_N: jnp.sum(
    jnp.where(probs_NxV > as_float(bits_N)[:, None], probs_NxV, 0.0), axis=-1
  )

  def halve(_, lo_hi):
    # Invariant: f(hi) < p <= f(lo) (hi = 1.0 at the start: nothing is more likely than 1;
    # lo = -1 stands for "below 0.0"), so t0 is in (lo, hi]; rows already at width 1 stay.
    lo_N, hi_N = lo_hi
    mid_N = lo_N + (hi_N - lo_N) // 2
    below_N = mass_above(mid_N) < p
    open_N = hi_N - lo_N > 1
    return (jnp.where(open_N & ~below_N, mid_N, lo_N), jnp.where(open_N & below_N, mid_N, hi_N))

  N = logits_NxV.shape[0]
  one = jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32)
  lo_N, hi_N = jnp.full((N,), -1, jnp.int32), jnp.full((N,), one, jnp.int32)
  _, hi_N = jax.lax.fori_loop(0, 31, halve, (lo_N, hi_N))  # hi - lo <= 2**30 at the start
  t0_Nx1 = as_float(hi_N)[:, None]
  return jnp.where(probs_NxV >= t0_Nx1, logits_NxV, NEG_INF)


def sampling_logits(
  logits_NxV: jax.Array, temperature: jax.Array | float, top_k: int, top_p: float
) -> jax.Array:
  """The logits of the distribution actually sampled: /temperature, then top-k, then top-p."""
  scaled_NxV = logits_NxV / jnp.asarray(temperature, jnp.float32)
  return top_p_filter(top_k_filter(scaled_NxV, top_k), top_p)


def _blocked(x_NxV: jax.Array, blocks: int) -> jax.Array:
  """[N, V] -> [N, G, V/G] (G = blocks): block g holds ids [g V/G, (g+1) V/G), so with the
  vocabulary split over G devices each block is one device's shard (no data moves)."""
  N, V = x_NxV.shape
  if blocks < 1 or V % blocks:
    raise ValueError(f"vocabulary {V} does not split into {blocks} equal blocks")
  return x_NxV.reshape(N, blocks, V // blocks)


def inverse_cdf_sample(
  logits_NxV: jax.Array, row_keys_N: jax.Array, *, blocks: int = 1
) -> jax.Array:
  """One draw per row from softmax(logits) by inverting its CDF, row i using key i only.

  One uniform u per row: the draw is the first id whose cumulative probability exceeds u times
  the total, so an id of probability 0 (-inf logit: banned, filtered) is never drawn. Exact, and
  far cheaper per decode step than Gumbel-max, which needs V random numbers per row. Per-row
  keys make each row's draw independent of how the batch is split over devices.

  blocks=G: the CDF is a cumulative sum within each of G equal vocabulary blocks plus the
  exclusive sum of the block totals ([N, G]), so with the logits split over G devices (the
  sampler's vocabulary-parallel head) only G numbers per row cross devices, never the
  logits. G=1 is the plain cumulative sum.
  """
  V = logits_NxV.shape[-1]
  probs_NxV = jax.nn.softmax(logits_NxV.astype(jnp.float32), axis=-1)
  cdf_NxGxU = jnp.cumsum(_blocked(probs_NxV, blocks), axis=-1)
  total_NxG = cdf_NxGxU[..., -1]
  before_NxG = jnp.cumsum(total_NxG, axis=-1) - total_NxG if blocks > 1 else 0.0 * total_NxG
  cdf_NxGxU = cdf_NxGxU + before_NxG[..., None]
  u_N = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(row_keys_N)
  target_N = u_N * (before_NxG[:, -1] + total_NxG[:, -1])
  draw_N = jnp.sum(cdf_NxGxU <= target_N[:, None, None], axis=(1, 2))
  # u * total < total, so some id is always past the target; the clamp to the last id with
  # mass only guards float rounding at the very top.
  ids_V = jnp.arange(V, dtype=jnp.int32)
  last_live_N = jnp.max(jnp.where(probs_NxV > 0, ids_V[None], -1), axis=-1)
  return jnp.minimum(draw_N, last_live_N).astype(jnp.int32)


def greedy(logits_NxV: jax.Array, *, blocks: int = 1) -> jax.Array:
  """argmax per row (the first id on ties), as int32; blocks=G takes each of G equal
  vocabulary blocks' first maximum, then the first block holding the row's maximum, so a
  vocabulary split over G devices moves [N, G] pairs, not the logits."""
  if blocks == 1:
    return jnp.argmax(logits_NxV, axis=-1).astype(jnp.int32)
  logits_NxGxU = _blocked(logits_NxV, blocks)
  best_NxG = jnp.max(logits_NxGxU, axis=-1)
  where_NxG = jnp.argmax(logits_NxGxU, axis=-1).astype(jnp.int32)
  g_N = jnp.argmax(best_NxG, axis=-1)
  local_N = jnp.take_along_axis(where_NxG, g_N[:, None], axis=-1)[:, 0]
  return (g_N * logits_NxGxU.shape[-1] + local_N).astype(jnp.int32)


def token_logprob(logits_NxV: jax.Array, tokens_N: jax.Array) -> jax.Array:
  """log softmax(logits)[token] per row, in float32 (a masked sum over the vocabulary, not a
  gather: it stays a reduction when the vocabulary is split over devices)."""
  logp_NxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
  ids_V = jnp.arange(logp_NxV.shape[-1], dtype=jnp.int32)
  return jnp.sum(jnp.where(ids_V[None] == tokens_N[:, None], logp_NxV, 0.0), axis=-1)
