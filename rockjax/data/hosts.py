"""Which records and batch rows each host reads: the one multi-host data rule.

`host_share` decides, from the mesh's row blocks and the process count, whether every host
reads its own disjoint record shard or the whole batch; `host_indices` gives a shard's record
indices. rockjax.data builds its pipelines on them (and re-exports both).
"""

from __future__ import annotations

import dataclasses

import numpy as np

FILLER_INDEX = -1  # index_B of padding rows (only when drop_remainder=False): ignore them


@dataclasses.dataclass(frozen=True)
class HostShare:
  """The part of every global batch one host reads (rockjax.data.host_share decides)."""

  rows: int  # rows of each global batch this host reads (its pipeline's batch_size)
  shard: int  # which record shard it reads (its pipeline's process_index)
  shards: int  # into how many disjoint record shards the records split (process_count)


def host_share(
  global_batch: int,
  *,
  batch_shards: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> HostShare:
  """Which rows of a `global_batch`-row batch this host reads; the one multi-host data rule.

  `batch_shards` is how many row blocks the mesh splits the batch into
  (rockjax.sharding.batch_shards). When that is a multiple of the process count, every
  host's devices hold rows of their own: host i reads record shard i (disjoint from the
  others), global_batch / process_count rows per batch. Otherwise (fewer prompts than hosts,
  such as one prompt per step on two hosts, or a batch the mesh replicates) every host reads
  the whole global batch, the same records in the same order, and
  rockjax.sharding.host_to_global keeps on each device the rows it holds; on-policy, the
  rollout's rows (prompts x samples) are then split across devices by the sampler.
  """
  if process_index is None:
    import jax

    process_index = jax.process_index()
  process_count = resolve_process_count(process_count)
  if global_batch < 1 or batch_shards < 1 or global_batch % batch_shards:
    raise ValueError(f"batch_shards={batch_shards} does not split a batch of {global_batch} rows")
  if batch_shards % process_count:
    return HostShare(rows=global_batch, shard=0, shards=1)
  return HostShare(rows=global_batch // process_count, shard=process_index, shards=process_count)


def resolve_process_count(process_count: int | None) -> int:
  """process_count, defaulting to jax's."""
  if process_count is None:
    import jax

    return jax.process_count()
  return process_count


def host_indices(
  num_records: int, *, process_index: int, process_count: int, drop_remainder: bool
) -> np.ndarray:
  """Record indices of one host: a strided, equal-sized, disjoint shard.

  Every host needs the same number of batches or the collectives of a step would hang, so
  shards are equalised: drop_remainder drops the last num_records % process_count records;
  otherwise short shards are padded with FILLER_INDEX.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  per_host = num_records // process_count if drop_remainder else -(-num_records // process_count)
  if per_host == 0:
    raise ValueError(f"{num_records} records cannot feed {process_count} processes")
  idx = np.arange(process_index, num_records, process_count, dtype=np.int64)[:per_host]
  return np.pad(idx, (0, per_host - idx.size), constant_values=FILLER_INDEX)
