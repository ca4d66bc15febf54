"""grain input pipelines: records on disk -> per-host, fixed-shape numpy batches.

Letters: B = per-host batch, P = max_prompt_len, L = max_len (prompt + completion region).

Two pipelines share one recipe (grain MapDataset over record indices):
  fit prompts to P (rockjax.data.prompt_fit: format once; drop, refuse or mark the over-long) ->
  host shard -> shuffle(seed, reshuffled each epoch) -> repeat(num_epochs) -> pad -> batch
- `PromptPipeline` (on-policy OPD): `prompt_ids_BxP` LEFT-padded (what the sampler expects),
  `prompt_mask_BxP`, `index_B` (record index; look the answer up in `pipeline.answers`).
- `CompletionPipeline` (off-policy stage-1 KD/SFT): the same layout as a rollout, so one
  train step serves both: columns [0, P) hold the left-padded prompt, columns [P, L) the
  completion + eos, right-padded. `response_mask_BxL` is 1 exactly on completion + eos.
  `pack=True` (data.pack): several sequences per row, plus `segment_ids_BxL`, `positions_BxL`
  (rockjax.data.packing); items are then packed rows (`pipeline.rows`), `index_B` a row index.

Many hosts: `host_share` (rockjax.data.hosts) is the one rule for which rows of a global batch
a host reads (its own disjoint shard, or the whole batch when the batch cannot be split across
the hosts); pass its rows / shard / shards as a pipeline's batch_size / process_index /
process_count.

Resuming: each pipeline's `iterator` is a grain `DatasetIterator` whose state is
{'next_batch': batches consumed, 'fingerprint': hash of data + settings}. rockjax.checkpoint
saves it in the same orbax checkpoint as the train state with grain's handler
(`grain.checkpoint.CheckpointSave(pipeline.iterator)` / `CheckpointRestore(...)`): every host
writes and reads back its own file, `data/process_<i>-of-<n>.json`. `get_state()` /
`set_state()` give the same state as JSON; the fingerprint covers the kept records, the prompt
format and the over-length policy. Build the pipeline with the same settings before
restoring; a mismatch raises instead of silently replaying or skipping data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

import grain
import numpy as np

from rockjax import errors
from rockjax.data import packing, prompt_fit
from rockjax.data import records as records_lib

# The multi-host rule is part of the data API (rockjax.data.host_share): re-exported.
from rockjax.data.hosts import (  # noqa: F401
  FILLER_INDEX,
  HostShare,
  host_indices,
  host_share,
  resolve_process_count,
)


def _batch_name(row_key: str) -> str:
  """'prompt_ids_P' -> 'prompt_ids_BxP'; 'index' -> 'index_B'."""
  if row_key == "index":
    return "index_B"
  base, letters = row_key.rsplit("_", 1)
  return f"{base}_Bx{letters}"


def _stack_batch(batch_size: int) -> Callable[[Sequence[dict[str, np.ndarray]]], dict]:
  """grain batch_fn: stacks rows, pads a short final batch with filler copies of row 0."""

  def batch_fn(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    fillers = [dict(rows[0], index=np.int32(FILLER_INDEX))] * (batch_size - len(rows))
    rows = list(rows) + fillers
    # Row keys carry their per-row shape letter ('prompt_ids_P'); batches gain 'B'.
    return {_batch_name(k): np.stack([r[k] for r in rows]) for k in rows[0]}

  return batch_fn


def build_dataset(
  num_records: int,
  row_fn: Callable[[int], dict[str, np.ndarray]],
  *,
  batch_size: int,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  drop_remainder: bool = True,
) -> grain.MapDataset:
  """The shared grain recipe: shard -> shuffle -> repeat -> row_fn(record index) -> batch."""
  if process_index is None:
    import jax

    process_index = jax.process_index()
  process_count = resolve_process_count(process_count)
  if batch_size < 1 or (num_epochs is not None and num_epochs < 1):
    raise ValueError(
      f"need batch_size >= 1 and num_epochs >= 1 or None, got "
      f"batch_size={batch_size}, num_epochs={num_epochs}"
    )
  indices = host_indices(
    num_records,
    process_index=process_index,
    process_count=process_count,
    drop_remainder=drop_remainder,
  )
  if drop_remainder and num_epochs is not None and indices.size * num_epochs < batch_size:
    raise ValueError(
      f"{indices.size} records per host x {num_epochs} epochs cannot fill one batch of {batch_size}"
    )
  ds = grain.MapDataset.source(indices.tolist())
  if shuffle:
    ds = ds.shuffle(seed=seed)  # grain folds the epoch into the seed: a new order every epoch
  ds = ds.repeat(num_epochs)
  ds = ds.map(lambda i: dict(row_fn(int(i)), index=np.int32(i)))
  return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_stack_batch(batch_size))


class BatchIterator(grain.DatasetIterator):
  """Iterator over a pipeline's batches whose state refuses a pipeline with other settings."""

  def __init__(self, dataset: grain.MapDataset, fingerprint: str, read_options: grain.ReadOptions):
    super().__init__(dataset.to_iter_dataset(read_options).__iter__())
    self._fingerprint = fingerprint

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    """{'next_batch': batches consumed, 'fingerprint': settings hash}; JSON-serialisable."""
    return dict(
      next_batch=int(self._parent.get_state()["next_index"]), fingerprint=self._fingerprint
    )

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues after state['next_batch'] batches; ValueError if the settings changed."""
    if state.get("fingerprint") != self._fingerprint:
      raise errors.CheckpointMismatch(
        f"data iterator state was saved by a pipeline with other settings "
        f"(fingerprint {state.get('fingerprint')} != {self._fingerprint}): "
        "data, batch size, seed, epochs, lengths and process count must match"
      )
    self._parent.set_state(dict(next_index=int(state["next_batch"])))


def _digest(obj: Any) -> str:
  """Short stable hash of a JSON-able object."""
  return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fit_training_prompts(
  records: Sequence[dict[str, Any]],
  tokenizer: Any,
  max_prompt_len: int,
  prompt_format: records_lib.PromptFormat,
  prompt_overflow: str,
) -> prompt_fit.FittedPrompts:
  """The records' prompts formatted and fitted to max_prompt_len; ValueError without records."""
  if not records:
    raise ValueError("pipeline: no records")
  # Over-long prompts are dropped (or refused) here, before indices are shuffled or sharded.
  return prompt_fit.fit_prompts(
    records,
    tokenizer,
    max_prompt_len=max_prompt_len,
    overflow=prompt_overflow,
    prompt_format=prompt_format,
    label="training prompts",
  )


class _Pipeline:
  """Common part: prompts fitted to P, grain dataset, resumable iterator, answers lookup."""

  def __init__(
    self,
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    row_fn: Callable[[int], dict],
    *,
    settings: dict[str, Any],
    max_prompt_len: int,
    prompt_format: records_lib.PromptFormat,
    prompt_overflow: str,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    process_index: int | None,
    process_count: int | None,
    drop_remainder: bool,
    num_threads: int,
    prefetch: int,
  ):
    fitted = _fit_training_prompts(
      records, tokenizer, max_prompt_len, prompt_format, prompt_overflow
    )
    self.records, self.prompt_ids = fitted.records, fitted.ids
    # Counts the run writes once (data/prompts_truncated, data/prompts_dropped, ...).
    self.counts: dict[str, int] = fitted.counts()
    self._num_epochs = num_epochs
    self.answers = [str(r.get("answer", "")) for r in self.records]  # by global record index
    self.dataset = build_dataset(
      self._num_items(),
      row_fn,
      batch_size=batch_size,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      process_index=process_index,
      process_count=process_count,
      drop_remainder=drop_remainder,
    )
    # Everything that decides which batch comes n-th, except which shard (process_index): every
    # host checks its own saved state against this.
    settings = dict(
      settings,
      max_prompt_len=max_prompt_len,
      prompt_format=dataclasses.asdict(prompt_format),
      prompt_overflow=prompt_overflow,
      num_records=len(self.records),
      batch_size=batch_size,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      drop_remainder=drop_remainder,
      process_count=resolve_process_count(process_count),
      data=_digest(self.records),
    )
    fingerprint = _digest(settings)
    # Few threads and a short buffer: tokenising is cheap next to a train step.
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    self.iterator = BatchIterator(self.dataset, fingerprint, read_options)

  def _num_items(self) -> int:
    """How many items the dataset indexes (records; packed rows in a packing pipeline)."""
    return len(self.records)

  @property
  def num_batches(self) -> int | None:
    """Batches per host in total, or None when repeating forever."""
    return None if self._num_epochs is None else len(self.dataset)

  def __iter__(self) -> BatchIterator:
    return self.iterator

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self.iterator)

  def get_state(self) -> dict[str, Any]:
    """The iterator state (save it with the train state)."""
    return self.iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    """Resumes from a state returned by get_state()."""
    self.iterator.set_state(state)

  def close(self) -> None:
    """Stops the prefetch threads."""
    self.iterator.close()


class PromptPipeline(_Pipeline):
  """On-policy prompts: {prompt_ids_BxP, prompt_mask_BxP} int32 left-padded, index_B int32."""

  def __init__(
    self,
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    batch_size: int,
    max_prompt_len: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
    prompt_format: records_lib.PromptFormat = records_lib.PromptFormat(),
    prompt_overflow: str = "drop",
    num_threads: int = 1,
    prefetch: int = 2,
  ):
    pad = records_lib.pad_id(tokenizer)

    def row_fn(i: int) -> dict[str, np.ndarray]:
      # Fillers (i = -1) repeat record 0, flagged by index_B.
      ids_P, mask_P = records_lib.left_pad(self.prompt_ids[max(i, 0)], max_prompt_len, pad)
      return dict(prompt_ids_P=ids_P, prompt_mask_P=mask_P)

    super().__init__(
      records,
      tokenizer,
      row_fn,
      settings=dict(kind="prompt"),
      max_prompt_len=max_prompt_len,
      prompt_format=prompt_format,
      prompt_overflow=prompt_overflow,
      batch_size=batch_size,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      process_index=process_index,
      process_count=process_count,
      drop_remainder=drop_remainder,
      num_threads=num_threads,
      prefetch=prefetch,
    )


class CompletionPipeline(_Pipeline):
  """Off-policy prompt + completion: tokens/attention_mask/response_mask_BxL int32, index_B.

  Columns [0, max_prompt_len) hold the left-padded prompt; the completion + eos starts at
  column max_prompt_len and is right-padded to max_len. A completion too long for its region
  is cut at the right and loses its eos (the model must not learn to stop there).
  pack: rows of several sequences cut the same way (rockjax.data.packing), planned here.
  """

  def __init__(
    self,
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    batch_size: int,
    max_prompt_len: int,
    max_len: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
    prompt_format: records_lib.PromptFormat = records_lib.PromptFormat(),
    prompt_overflow: str = "drop",
    num_threads: int = 1,
    prefetch: int = 2,
    pack: bool = False,
  ):
    if max_len <= max_prompt_len:
      raise ValueError(f"max_len={max_len} must exceed max_prompt_len={max_prompt_len}")
    if any("completion" not in r for r in records):
      raise ValueError(
        "CompletionPipeline: records need a completion; load them with "
        "load_records(..., completion_field=...)"
      )
    self._tokenizer, self._pad = tokenizer, records_lib.pad_id(tokenizer)
    self._lens = dict(max_prompt_len=max_prompt_len, max_len=max_len)
    self._pack, self._seed, self._shuffle = pack, seed, shuffle
    self.rows: list[list[int]] = []  # packed rows' record indices (pack=True)
    row_fn = self._packed_row if pack else self._row
    super().__init__(
      records,
      tokenizer,
      row_fn,
      settings=dict(
        kind="completion", max_len=max_len, **({"pack": packing.OPEN_ROWS} if pack else {})
      ),
      max_prompt_len=max_prompt_len,
      prompt_format=prompt_format,
      prompt_overflow=prompt_overflow,
      batch_size=batch_size,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      process_index=process_index,
      process_count=process_count,
      drop_remainder=drop_remainder,
      num_threads=num_threads,
      prefetch=prefetch,
    )

  def _row(self, i: int) -> dict[str, np.ndarray]:
    """Record i's row (fillers, i = -1, repeat record 0, flagged by index_B)."""
    (max_prompt_len, max_len), pad = self._lens.values(), self._pad
    seq = self._sequence(max(i, 0))
    prompt_P, prompt_mask_P = records_lib.left_pad(seq.ids[: seq.prompt_len], max_prompt_len, pad)
    n = len(seq.ids) - seq.prompt_len  # completion tokens, eos included unless cut
    response_C = np.full(max_len - max_prompt_len, pad, np.int32)
    response_C[:n] = seq.ids[seq.prompt_len :]
    response_mask_C = (np.arange(response_C.size) < n).astype(np.int32)
    return dict(
      tokens_L=np.concatenate([prompt_P, response_C]),
      attention_mask_L=np.concatenate([prompt_mask_P, response_mask_C]),
      response_mask_L=np.concatenate([np.zeros_like(prompt_mask_P), response_mask_C]),
    )

  def _sequence(self, r: int) -> packing.PackedSequence:
    """Record r's prompt + completion, cut as its unpacked row cuts them."""
    return packing.record_sequence(
      self.records[r], self.prompt_ids[r], self._tokenizer, **self._lens
    )

  def _packed_row(self, i: int) -> dict[str, np.ndarray]:
    """Packed row i (fillers, i = -1, repeat row 0, flagged by index_B)."""
    sequences = [self._sequence(r) for r in self.rows[max(i, 0)]]
    return packing.packed_row(sequences, self._lens["max_len"], self._pad)

  def _num_items(self) -> int:
    """Packed rows (planned here, the same on every host), or the records unpacked."""
    if not self._pack:
      return len(self.records)
    self.rows = packing.plan_records(
      self.records,
      self.prompt_ids,
      self._tokenizer,
      seed=self._seed,
      shuffle=self._shuffle,
      **self._lens,
    )
    return len(self.rows)
