"""Prompts against data.max_prompt_len: left-truncate, drop or refuse the over-long, counted.

Letters: P = max_prompt_len.

Every prompt is formatted (chat template, system prompt) and measured once, when a pipeline or
an evaluation set is built, before any record index is shuffled or sharded: a dropped prompt is
left out of the record list itself, so the dataset length, grain's order and the resumable
position are those of the kept records, the same on every host.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from rockjax import errors
from rockjax.data import records as records_lib

_log = logging.getLogger(__name__)

# data.prompt_overflow: keep the last P ids | leave the record out | stop with an error.
OVERFLOW_POLICIES = ("truncate", "drop", "error")


@dataclasses.dataclass(frozen=True)
class FittedPrompts:
  """Records whose prompts fit the policy, their prompt ids, and how many were cut or left out."""

  records: list[dict[str, Any]]  # kept records, in their original order
  # Each kept record's formatted prompt ids before any truncation, int32 (4 bytes an id, not a
  # Python int's ~36: a 10k-prompt set of 800 ids holds 32 MB).
  ids: list[np.ndarray]
  truncated: int  # kept prompts longer than P (left-truncated when padded)
  dropped: int  # prompts longer than P that were left out

  def counts(self) -> dict[str, int]:
    """The metric names the run writes once: data/prompts_truncated, data/prompts_dropped."""
    return {"data/prompts_truncated": self.truncated, "data/prompts_dropped": self.dropped}


def _where(record: dict[str, Any], index: int) -> str:
  """file:line of a loaded record (records_lib.Record), else its index in the list."""
  return getattr(record, "where", "") or f"record {index}"


def source_name(records: Sequence[dict[str, Any]]) -> str:
  """The file the records came from (their file:line without the line), else 'records'."""
  where = getattr(records[0], "where", "") if records else ""
  return where.rsplit(":", 1)[0] if where else "records"


def fit_prompts(
  records: Sequence[dict[str, Any]],
  tokenizer: Any,
  *,
  max_prompt_len: int,
  overflow: str,
  prompt_format: records_lib.PromptFormat,
  label: str = "prompts",
) -> FittedPrompts:
  """Formats every prompt and applies `overflow` to those over max_prompt_len ids.

  'error' raises an InputError naming the record's file:line, its length and the limit; a
  record list left empty by 'drop' raises one naming the file. `label` names the set in the log.
  """
  if overflow not in OVERFLOW_POLICIES:
    raise errors.ConfigError(
      f"data.prompt_overflow={overflow!r}: expected one of {OVERFLOW_POLICIES}"
    )
  fmt = dataclasses.asdict(prompt_format)
  kept, kept_ids, truncated, dropped = [], [], 0, 0
  for i, record in enumerate(records):
    ids = records_lib.format_prompt(tokenizer, record["prompt"], **fmt)
    if len(ids) > max_prompt_len:
      if overflow == "error":
        raise errors.InputError(
          f"{_where(record, i)}: prompt is {len(ids)} tokens, over data.max_prompt_len="
          f"{max_prompt_len} (data.prompt_overflow='error'; 'truncate' or 'drop' to go on)"
        )
      if overflow == "drop":
        dropped += 1
        continue
      truncated += 1
    kept.append(record)
    kept_ids.append(np.asarray(ids, np.int32))
  if not kept:
    raise errors.InputError(
      f"{source_name(records)}: all {len(records)} {label} are longer than data.max_prompt_len="
      f"{max_prompt_len} and were dropped (data.prompt_overflow='drop')"
    )
  if truncated or dropped:
    # Left truncation cuts the start of the prompt (a system message, the question's opening).
    _log.warning(
      "%s (%s): %d of %d prompts are longer than data.max_prompt_len=%d: %d left-truncated, "
      "%d dropped",
      label,
      source_name(records),
      truncated + dropped,
      len(records),
      max_prompt_len,
      truncated,
      dropped,
    )
  return FittedPrompts(kept, kept_ids, truncated, dropped)


def padded_prompts(
  fitted: FittedPrompts, max_prompt_len: int, pad: int
) -> tuple[np.ndarray, np.ndarray]:
  """(ids_SxP, mask_SxP) int32 of every kept prompt, left-padded (left-truncated) to P."""
  rows = [records_lib.left_pad(ids, max_prompt_len, pad) for ids in fitted.ids]
  return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def eval_prompts(c: Any, tokenizer: Any, path: str, num_prompts: int) -> FittedPrompts:
  """The first num_prompts evaluation records whose prompts the config's policy keeps.

  The evaluation file is read with the same rules as the training file (data.skip_bad_records,
  data.prompt_overflow, the prompt format), so a prompt too long for training is too long here.
  """
  loaded = records_lib.read_records(
    path,
    prompt_field=c.data.prompt_field,
    answer_field=c.data.answer_field,
    skip_bad=c.data.skip_bad_records,
  )
  fitted = fit_prompts(
    loaded.records,
    tokenizer,
    max_prompt_len=c.data.max_prompt_len,
    overflow=c.data.prompt_overflow,
    prompt_format=records_lib.PromptFormat.from_config(c.data),
    label="evaluation prompts",
  )
  ids = fitted.ids[:num_prompts]
  truncated = sum(len(x) > c.data.max_prompt_len for x in ids)
  return FittedPrompts(fitted.records[:num_prompts], ids, truncated, fitted.dropped)
