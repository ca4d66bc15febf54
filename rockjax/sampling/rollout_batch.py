"""A rollout as the train step's token batch, under the truncated-rollout policy."""

import jax
import jax.numpy as jnp

from rockjax.batch import TokenBatch
from rockjax.sampling.sampler import Rollout


TRUNCATED_POLICIES = ("keep", "drop")  # config field opd.truncated_rollouts


def train_batch(
  rollout: Rollout, truncated: str = "keep"
) -> tuple[TokenBatch, dict[str, tuple[jax.Array, jax.Array]]]:
  """The train step's token batch from a rollout, and its `rollout/truncated` metric.

  truncated='keep' trains on every row as sampled; 'drop' zeroes the response mask of rows
  that hit max_new_tokens without an EOS (no loss, no rock statistics; the batch keeps its
  shape and those rows still cost their forward). The metric is (truncated rows, rows) under
  either policy.
  """
  if truncated not in TRUNCATED_POLICIES:
    raise ValueError(
      f"opd.truncated_rollouts must be one of {TRUNCATED_POLICIES}, got {truncated!r}"
    )
  response_mask = rollout.response_mask
  if truncated == "drop":
    response_mask = jnp.where(rollout.truncated[:, None], 0, response_mask)
  batch = TokenBatch(rollout.tokens, rollout.attention_mask, response_mask)
  rows = rollout.truncated.shape[0]
  metric = (jnp.sum(rollout.truncated, dtype=jnp.float32), jnp.float32(rows))
  return batch, {"rollout/truncated": metric}
