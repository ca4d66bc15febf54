"""The sampler's settings: `generate`'s keywords checked into one static SamplingConfig.

Every check raises a one-line ValueError naming the bad setting before anything compiles;
per-prompt bans (`banned_ids_BxK`) are checked as data (shape, ids in the vocabulary).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

LogitProcessor = Callable[[jax.Array, jax.Array], jax.Array]  # (logits_NxV, step) -> logits_NxV


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """The static (compile-time) settings of one sampler program; hashable."""

  max_new_tokens: int
  top_p: float = 1.0
  top_k: int = 0
  greedy: bool = False
  eos_ids: tuple[int, ...] = ()
  banned_ids: tuple[int, ...] = ()
  num_samples: int = 1
  pad_id: int = 0
  logit_processor: LogitProcessor | None = None  # hashed by identity: reuse one function
  cache_dtype: Any = None  # None: the model's compute dtype


def sampling_config(
  vocab: int,
  num_prompts: int,
  banned_ids_BxK: Any,
  *,
  max_new_tokens: int,
  temperature: float,
  top_p: float,
  top_k: int,
  greedy: bool,
  eos_ids: Sequence[int],
  banned_ids: Sequence[int],
  num_samples: int,
  pad_id: int | None,
  logit_processor: LogitProcessor | None,
  cache_dtype: Any,
) -> tuple[SamplingConfig, Any]:
  """`generate`'s settings checked (ValueError) as one SamplingConfig; its per-prompt bans."""
  if max_new_tokens < 1 or num_samples < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} and num_samples={num_samples} must be >= 1")
  if not greedy and not temperature > 0:
    raise ValueError(f"temperature={temperature} must be > 0 when sampling; use greedy=True")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p} must be in (0, 1]")
  bad = [i for i in (*eos_ids, *banned_ids) if not 0 <= int(i) < vocab]
  if bad:
    raise ValueError(f"eos/banned ids {bad} outside the vocabulary [0, {vocab})")
  eos_ids = tuple(int(i) for i in eos_ids)
  if banned_ids_BxK is not None:
    banned_ids_BxK = check_row_bans(banned_ids_BxK, num_prompts, vocab)
  cfg = SamplingConfig(
    max_new_tokens=int(max_new_tokens),
    top_p=float(top_p),
    top_k=int(top_k),
    greedy=bool(greedy),
    eos_ids=eos_ids,
    banned_ids=tuple(sorted({int(i) for i in banned_ids})),
    num_samples=int(num_samples),
    pad_id=(eos_ids[0] if eos_ids else 0) if pad_id is None else int(pad_id),
    logit_processor=logit_processor,
    cache_dtype=cache_dtype,
  )
  return cfg, banned_ids_BxK


def check_row_bans(banned_ids_BxK: Any, num_prompts: int, vocab: int) -> Any:
  """Per-prompt bans as int32 [B, K] after checking the shape and that every id is -1 or in V."""
  shape = np.shape(banned_ids_BxK)
  if len(shape) != 2 or shape[0] != num_prompts:
    raise ValueError(f"banned_ids_BxK has shape {shape}; expected [{num_prompts}, K]")
  if isinstance(banned_ids_BxK, jax.Array):  # maybe global over hosts: not read back to check
    return banned_ids_BxK
  ids_BxK = np.asarray(banned_ids_BxK)
  bad = sorted({int(i) for i in ids_BxK.ravel() if not -1 <= int(i) < vocab})
  if bad:
    raise ValueError(f"banned_ids_BxK ids {bad} outside the vocabulary [0, {vocab}) (-1 pads)")
  return ids_BxK.astype(np.int32)
