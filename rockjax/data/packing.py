"""Sample packing for the off-policy stages (data.pack): several sequences in each row.

Letters: L = max_len (a row), P = max_prompt_len, C = L - P (the completion region of an
unpacked row).

A sequence is one record's prompt + completion, cut exactly as the unpacked layout cuts it
(rockjax.data.pipelines.CompletionPipeline): the prompt's last P fitted ids, then the
completion + eos cut at C tokens (a cut completion loses its eos). So a sequence is at most
P + C = L tokens and always fits a row, and a packed row scores exactly the tokens the
unpacked rows of its sequences score.

The plan is made once, when the pipeline is built, the same on every host: the records in a
seeded random order (data order does not decide which sequences share a row), then greedy
first-fit: each sequence goes into the first open row with room for it, else into a new row;
at most OPEN_ROWS rows stay open (the oldest is closed to open another), which bounds the
work per sequence. Rows keep the order they were opened in; grain then shards, shuffles
(every epoch) and batches the rows as it does unpacked records, so the resumable iterator
position and the exact number of batches stay those of an indexed dataset.

A packed row (`packed_row`), sequences back to back from column 0, right-padded to L:
  tokens_L          the ids, pad id on padding
  attention_mask_L  1 on every sequence's tokens, 0 on padding
  response_mask_L   1 on completion tokens (eos included), 0 on prompts and padding
  segment_ids_L     k + 1 on the k-th sequence of the row, 0 on padding
  positions_L       0, 1, 2, ... within each sequence (RoPE positions), 0 on padding
rockjax.objective.shift never scores a target in another segment than its input (the first
token of the next sequence predicted from the last of the previous one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rockjax.data import records as records_lib

OPEN_ROWS = 1024  # rows the first-fit packer keeps open at once (the oldest closes first)


@dataclasses.dataclass(frozen=True)
class PackedSequence:
  """One record's sequence as it goes into a row: ids and how many of them are prompt."""

  ids: np.ndarray  # int32 [n]: the prompt ids, then the completion ids
  prompt_len: int


def sequence(
  prompt_ids: Sequence[int], completion_ids: Sequence[int], *, max_prompt_len: int, max_len: int
) -> PackedSequence:
  """A record's prompt (its last max_prompt_len ids) + completion (its first
  max_len - max_prompt_len ids), the tokens its unpacked row holds."""
  prompt = list(prompt_ids)[-max_prompt_len:]
  completion = list(completion_ids)[: max_len - max_prompt_len]
  return PackedSequence(np.asarray(prompt + completion, np.int32), len(prompt))


def record_sequence(
  record: dict, prompt_ids: Sequence[int], tokenizer, *, max_prompt_len: int, max_len: int
) -> PackedSequence:
  """`sequence` of a record with a given completion and its fitted prompt ids."""
  completion = records_lib.encode_completion(tokenizer, record["completion"])
  return sequence(prompt_ids, completion, max_prompt_len=max_prompt_len, max_len=max_len)


def plan_records(
  records: Sequence[dict],
  prompt_ids: Sequence[Sequence[int]],
  tokenizer,
  *,
  max_prompt_len: int,
  max_len: int,
  seed: int,
  shuffle: bool = True,
) -> list[list[int]]:
  """The packed rows (record indices) of records with completions and fitted prompt ids: what
  CompletionPipeline(pack=True) trains on; len() is the packed rows of one epoch."""
  lens = dict(max_prompt_len=max_prompt_len, max_len=max_len)
  lengths = [
    len(record_sequence(r, ids, tokenizer, **lens).ids) for r, ids in zip(records, prompt_ids)
  ]
  return plan(lengths, max_len, seed=seed, shuffle=shuffle)


def first_fit(
  lengths: Sequence[int], capacity: int, *, open_rows: int = OPEN_ROWS
) -> list[list[int]]:
  """Rows of positions into `lengths`: each length goes into the first open row it fits,
  else a new row; at most `open_rows` rows are open (opening one more closes the oldest).

  Rows are listed in the order they were opened, their members in arrival order. ValueError
  for a length above `capacity` (the caller cuts sequences first) or below 1.
  """
  if open_rows < 1:
    raise ValueError(f"open_rows={open_rows}: expected >= 1")
  rows: list[list[int]] = []
  room = np.zeros(0, np.int64)  # room left in the open rows, rows[first:]
  first = 0
  for i, n in enumerate(lengths):
    if not 1 <= n <= capacity:
      raise ValueError(f"sequence {i} has {n} tokens: expected 1 to {capacity} (the row length)")
    fits = np.flatnonzero(room >= n)
    if fits.size:
      j = int(fits[0])
    else:
      if room.size == open_rows:
        room, first = room[1:], first + 1
      rows.append([])
      room, j = np.append(room, capacity), room.size
    rows[first + j].append(i)
    room[j] -= n
  return rows


def plan(
  lengths: Sequence[int], capacity: int, *, seed: int, shuffle: bool = True
) -> list[list[int]]:
  """Rows of record indices: the records in a seeded random order (or as given), first-fit
  into rows of `capacity` tokens. The same lengths and seed give the same rows anywhere."""
  order = np.arange(len(lengths))
  if shuffle:
    order = np.random.default_rng(seed).permutation(len(lengths))
  rows = first_fit([int(lengths[i]) for i in order], capacity)
  return [[int(order[i]) for i in row] for row in rows]


def packed_row(
  sequences: Sequence[PackedSequence], max_len: int, pad: int
) -> dict[str, np.ndarray]:
  """One row of `max_len` columns holding `sequences` back to back (see the module doc)."""
  tokens_L = np.full(max_len, pad, np.int32)
  attention_mask_L, response_mask_L, segment_ids_L, positions_L = (
    np.zeros(max_len, np.int32) for _ in range(4)
  )
  start = 0
  for k, s in enumerate(sequences):
    n = len(s.ids)
    if start + n > max_len:
      raise ValueError(f"sequences of {start + n} tokens do not fit a row of {max_len}")
    row = slice(start, start + n)
    tokens_L[row] = s.ids
    attention_mask_L[row] = 1
    response_mask_L[start + s.prompt_len : start + n] = 1
    segment_ids_L[row] = k + 1
    positions_L[row] = np.arange(n)
    start += n
  return dict(
    tokens_L=tokens_L,
    attention_mask_L=attention_mask_L,
    response_mask_L=response_mask_L,
    segment_ids_L=segment_ids_L,
    positions_L=positions_L,
  )
