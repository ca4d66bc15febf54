"""Choosing one token per row from the decode step's logits: the processor hook and bans, then
greedy argmax or temperature / top-k / top-p and an inverse-CDF draw; `emit` records the choice
in the decode loop's buffers (pad and mask 0 once a row has ended)."""

import jax
import jax.numpy as jnp

from rockjax.sampling import processors as lp
from rockjax.sampling.options import SamplingConfig


def process(
  logits_NxV: jax.Array, step: jax.Array, cfg: SamplingConfig, banned_NxK: jax.Array | None
) -> jax.Array:
  """Processor hook then bans (so a ban always wins); the greedy / pre-temperature logits."""
  if cfg.logit_processor is not None:
    logits_NxV = cfg.logit_processor(logits_NxV, step).astype(jnp.float32)
  logits_NxV = lp.ban_ids(logits_NxV, cfg.banned_ids)
  return logits_NxV if banned_NxK is None else lp.ban_row_ids(logits_NxV, banned_NxK)


def choose(
  logits_NxV: jax.Array,
  step: jax.Array,
  row_keys_N: jax.Array,
  temperature: jax.Array,
  cfg: SamplingConfig,
  banned_NxK: jax.Array | None = None,
  blocks: int = 1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Picks one token per row: (tokens_N, unprocessed logprob_N, sampled-distribution logprob_N).

  blocks: how many devices the vocabulary of the logits is split over (vocab_blocks); the
  choice then reduces per block and moves [N, blocks] numbers, never the logits.
  """
  processed_NxV = process(logits_NxV, step, cfg, banned_NxK)
  if cfg.greedy:
    tokens_N = lp.greedy(processed_NxV, blocks=blocks)
    sample_logprob_N = jnp.zeros(tokens_N.shape, jnp.float32)
  else:
    final_NxV = lp.sampling_logits(processed_NxV, temperature, cfg.top_k, cfg.top_p)
    step_keys_N = jax.vmap(jax.random.fold_in, (0, None))(row_keys_N, step)
    tokens_N = lp.inverse_cdf_sample(final_NxV, step_keys_N, blocks=blocks)
    sample_logprob_N = lp.token_logprob(final_NxV, tokens_N)
  return tokens_N, lp.token_logprob(logits_NxV, tokens_N), sample_logprob_N


def emit(
  carry: tuple,
  logits_NxV: jax.Array,
  step: jax.Array,
  *,
  row_keys_N: jax.Array,
  temperature: jax.Array,
  eos_E: jax.Array,
  cfg: SamplingConfig,
  banned_NxK: jax.Array | None,
  blocks: int,
) -> tuple[tuple, jax.Array]:
  """Chooses token `step` for every row and records it (pad + mask 0 once a row is done)."""
  tokens_NxT, mask_NxT, logp_NxT, slogp_NxT, done_N = carry
  tokens_N, logp_N, slogp_N = choose(
    logits_NxV, step, row_keys_N, temperature, cfg, banned_NxK, blocks
  )
  live_N = ~done_N
  tokens_N = jnp.where(live_N, tokens_N, cfg.pad_id)
  put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, step))
  carry = (
    put(tokens_NxT, tokens_N),
    put(mask_NxT, live_N),
    put(logp_NxT, jnp.where(live_N, logp_N, 0.0)),
    put(slogp_NxT, jnp.where(live_N, slogp_N, 0.0)),
    done_N | (live_N & jnp.isin(tokens_N, eos_E)),
  )
  return carry, tokens_N
