"""Grouped matmul of expert-sorted rows, by backend: XLA's ragged_dot or TPU megablox gmm.

`grouped_matmul(rows_MxI, weights_XxIxO, group_sizes_X, implementation)`: rows
[offset_x, offset_x + group_sizes_X[x]) are multiplied by expert x's weights (the groups are
contiguous, in expert order; rows past sum(group_sizes_X) come out zero with ragged_dot and
unspecified with megablox, so MoE routing makes the groups cover all M rows). Implementations
(model.moe_impl):

- `ragged_dot`: `jax.lax.ragged_dot` (any platform; the reference).
- `megablox`: the Pallas TPU kernel `jax.experimental.pallas.ops.tpu.megablox.gmm` (custom VJP);
  its row tile must divide M, so M is zero-padded to a multiple of the row tile. Off TPU it runs
  through the Pallas interpreter (tests only: slow).
- `auto`: megablox on TPU, ragged_dot elsewhere.

Shape letters: M rows, I input width, O output width, X experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

from rockjax.models.attention import current_platform

IMPLEMENTATIONS = ("auto", "ragged_dot", "megablox")
# Megablox tiles (rows, contraction, output). Row tiles are multiples of 8 (sublanes); the
# other two are either the whole dimension or a multiple of 128 (lanes), as Mosaic requires.
_TILE_M, _TILE_IO = 512, 512


def resolve(implementation: str, platform: str | None = None) -> str:
  """The implementation `auto` stands for on `platform` (default: current_platform())."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown moe_impl {implementation!r}; expected one of {IMPLEMENTATIONS}")
  if implementation != "auto":
    return implementation
  return "megablox" if (platform or current_platform()) == "tpu" else "ragged_dot"


def _lane_tile(dim: int) -> int:
  """A contraction/output tile: the whole dim if small, else a 128-multiple that divides it
  (Mosaic masks a ragged last tile, but whole tiles waste nothing)."""
  if dim <= _TILE_IO:
    return dim
  return next((t for t in range(_TILE_IO, 0, -128) if dim % t == 0), _TILE_IO)


def megablox_tiling(m: int, i: int, o: int) -> tuple[int, int, int]:
  """(row, contraction, output) tiles of megablox gmm for an [m, i] x [i, o] problem."""
  return min(_TILE_M, -(-m // 8) * 8), _lane_tile(i), _lane_tile(o)


def grouped_matmul(
  rows_MxI: jax.Array,
  weights_XxIxO: jax.Array,
  group_sizes_X: jax.Array,
  implementation: str = "auto",
  *,
  interpret: bool | None = None,
) -> jax.Array:
  """rows_MxI @ weights_XxIxO[x] per contiguous group x -> [M, O] in rows_MxI's dtype.

  interpret: run megablox through the Pallas interpreter (default: when not on a TPU).
  """
  impl = resolve(implementation)
  if impl == "ragged_dot":
    return jax.lax.ragged_dot(rows_MxI, weights_XxIxO, group_sizes_X)
  M, I = rows_MxI.shape
  tiling = megablox_tiling(M, I, weights_XxIxO.shape[2])
  padded = -(-M // tiling[0]) * tiling[0]
  # The padding rows belong to no group; whatever megablox leaves there is dropped.
  rows_PxI = jnp.pad(rows_MxI, ((0, padded - M), (0, 0)))
  if interpret is None:
    interpret = current_platform() != "tpu"
  out_PxO = megablox.gmm(
    rows_PxI,
    weights_XxIxO,
    group_sizes_X.astype(jnp.int32),
    rows_MxI.dtype,
    tiling,
    None,  # group_offset: all experts are local
    None,  # existing_out
    False,  # transpose_rhs
    interpret,
  )
  return out_PxO[:M]
