"""TokenBatch: the one token batch every stage trains on, and the padding that goes with it.

The grain pipelines (off-policy: prompt + completion) and the sampler (on-policy: prompt +
rollout) both produce it; the train step, the loss and the analysis read it. Rows are
sequences, columns positions: `tokens_BxL` holds prompt and response, `attention_mask_BxL` the
real (non-padding) positions, `response_mask_BxL` the positions the loss may score (the step
shifts it to the targets, rockjax.objective.shift).

Packed rows (data.pack, off-policy only; rockjax.data.packing) hold several sequences each and
add `segment_ids_BxL` (1, 2, 3, ... per sequence, 0 on padding: attention stays inside a
segment) and `positions_BxL` (RoPE positions, restarting at 0 for each sequence). Unpacked
batches leave both None: no extra leaves, the step compiles to the same program.
"""

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

FIELDS = ("tokens_BxL", "attention_mask_BxL", "response_mask_BxL")
PACKED_FIELDS = ("segment_ids_BxL", "positions_BxL")  # optional: packed rows only


@flax.struct.dataclass
class TokenBatch:
  """One batch of token rows, `[B, L]` int arrays (numpy on a host, jax.Array in a step)."""

  tokens_BxL: Any
  attention_mask_BxL: Any
  response_mask_BxL: Any
  segment_ids_BxL: Any = None  # packed rows: sequence id per position (0 padding), else None
  positions_BxL: Any = None  # packed rows: position within its sequence, else None

  @classmethod
  def of(cls, batch: "TokenBatch | Mapping[str, Any]") -> "TokenBatch":
    """A TokenBatch from itself or a mapping: the pipelines' keys (`tokens_BxL`, ...; other
    keys such as `index_B` are left out) or the short ones (`tokens`, `attention_mask`,
    `response_mask`) that users' own dicts and the tests use. `segment_ids(_BxL)` and
    `positions(_BxL)` are taken when present (packed rows)."""
    if isinstance(batch, TokenBatch):
      return batch
    get = lambda f: batch[f] if f in batch else batch[f.removesuffix("_BxL")]
    try:
      fields = [get(f) for f in FIELDS]
    except KeyError as err:
      raise KeyError(
        f"a token batch needs {FIELDS} (or without _BxL); got {sorted(batch)}"
      ) from err
    packed = [
      get(f) if f in batch or f.removesuffix("_BxL") in batch else None for f in PACKED_FIELDS
    ]
    if (packed[0] is None) != (packed[1] is None):
      raise KeyError(f"a packed token batch needs both {PACKED_FIELDS}; got {sorted(batch)}")
    return cls(*fields, *packed)

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.tokens_BxL.shape)

  @property
  def packed(self) -> bool:
    """Whether the rows hold several sequences each (segment ids and positions are set)."""
    return self.segment_ids_BxL is not None

  def arrays(self) -> dict[str, Any]:
    """The fields that are set, by name (the three token fields, plus the packed ones)."""
    names = FIELDS + (PACKED_FIELDS if self.packed else ())
    return {f: getattr(self, f) for f in names}

  def pad(self, multiple: int) -> "TokenBatch":
    """Right-padded with zeros to a multiple of `multiple` columns (itself if it is one).

    Zeros are right for every field: token 0, attention mask 0 and response mask 0, so padded
    columns are never attended to and never scored; the loss, the metrics and the rock
    statistics do not change. Packed rows get segment id 0 (padding) and position 0 there.
    """
    length = self.shape[1]
    extra = padded_length(length, multiple) - length
    if extra == 0:
      return self
    return jax.tree.map(lambda x: jnp.pad(x, ((0, 0), (0, extra))), self)


def padded_length(length: int, multiple: int) -> int:
  """`length` rounded up to a multiple of `multiple` (config field data.pad_to_multiple)."""
  return -(-length // multiple) * multiple
