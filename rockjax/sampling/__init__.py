"""Sampling: the jitted KV-cache sampler, its logit transforms and the student's rollout copy.

`rockjax.sampling.generate(model, prompt_ids_BxP, prompt_mask_BxP, *, key, max_new_tokens,
...)` -> `Rollout` is the public entry; `sampler.py` holds it, `options.py` its checked settings,
`processors.py` the pure logit transforms, `rollout_copy.py` the cast, decode-mesh copy of the student the sampler runs on.
"""

from rockjax.sampling.options import LogitProcessor, SamplingConfig
from rockjax.sampling.rollout_batch import TRUNCATED_POLICIES, train_batch
from rockjax.sampling.sampler import (
  LOOP_SCOPE,
  RolloutStopped,
  Rollout,
  decode,
  decode_jit,
  generate,
  vocab_blocks,
)

__all__ = [
  "LOOP_SCOPE",
  "RolloutStopped",
  "TRUNCATED_POLICIES",
  "LogitProcessor",
  "Rollout",
  "SamplingConfig",
  "decode",
  "decode_jit",
  "generate",
  "train_batch",
  "vocab_blocks",
]
