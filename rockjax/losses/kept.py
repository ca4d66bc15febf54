"""Slots of the positions the loss keeps: which ones, their gather into a buffer and back.

Rock-Freeze skipping (opd.kept_capacity) runs the LM heads and the divergence only on the
positions that need them. Every position gets a rank: 0 kept (weight > 0), 1 tracked (on the
response with weight 0: a frozen rock, whose divergence the rock statistics still read), 2
skipped (prompt, padding). A stable sort of the ranks within each group of rows gives slots
in that order: the first `kept` slots hold every kept position (then frozen ones, if room),
the next `tracked - kept` slots the remaining frozen ones. A batch with more kept (or tracked)
positions than slots overflows; the caller then runs the full computation instead.

Groups are the row blocks of the batch sharding (the mesh's 'batch' axes, one group without
a mesh): the sort, gather and scatter run per device under `jax.shard_map`, so no hidden
state crosses devices. A group of several rows shares its slots, so one long response and one
short one balance out (per-row slots would have to fit the longest row).

Shape letters: B batch rows, L length, D hidden width, G groups, P = B/G*L positions of a
group, S slots of a group.
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rockjax import sharding as shd

KEPT, TRACKED, SKIPPED = 0, 1, 2  # slot ranks, in slot order


class Slots(NamedTuple):
  """Where each slot of each group comes from."""

  index_GxS: jax.Array  # int32 position in the group's flattened [P] positions (all distinct)
  rank_GxS: jax.Array  # int32 KEPT / TRACKED / SKIPPED rank of that position
  kept_G: jax.Array  # int32 number of kept positions per group
  tracked_G: jax.Array  # int32 number of kept or tracked positions per group


def group_axes(rows: int) -> tuple[tuple[str, ...], int]:
  """The mesh axes that split the batch rows (as the batch sharding does) and their product."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return (), 1
  axes = shd.spec_axes(shd.logical_to_spec(("batch",), (rows,), mesh)[0])
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return axes, math.prod(sizes[a] for a in axes)


def slot_count(wanted: int, group_devices: int, block_size: int, positions: int) -> int:
  """`wanted` slots of a group split evenly over the group's devices, at most `positions`;
  more than one block per device is rounded up to a multiple of 8 (the fused loss cuts them
  into equal blocks of a multiple of 8 rows, so no block is mostly padding)."""
  per_device = -(-wanted // group_devices)
  if per_device > block_size:
    per_device = -(-per_device // 8) * 8
  return min(per_device * group_devices, positions)


def _per_group(fn: Callable, axes: tuple[str, ...], n_out: int) -> Callable:
  """`fn` on each device's row block (dim 0 of every input and output split over `axes`)."""
  if not axes:
    return fn
  spec = PartitionSpec(axes)
  return jax.shard_map(
    fn,
    in_specs=spec,
    out_specs=(spec,) * n_out if n_out > 1 else spec,
    axis_names=set(axes),
    check_vma=False,
  )


def plan(
  weights_BxL: jax.Array, tracked_BxL: jax.Array, num_slots: int, axes: tuple[str, ...]
) -> Slots:
  """Slots of every group: kept positions (weight > 0) first, then tracked ones, then the rest."""

  def local(w_BxL, t_BxL):
    rank_P = jnp.where(w_BxL > 0, KEPT, jnp.where(t_BxL > 0, TRACKED, SKIPPED)).reshape(-1)
    index_S = jnp.argsort(rank_P, stable=True)[:num_slots].astype(jnp.int32)
    kept = jnp.sum(rank_P == KEPT, dtype=jnp.int32)
    tracked = kept + jnp.sum(rank_P == TRACKED, dtype=jnp.int32)
    return index_S[None], rank_P[index_S][None], kept[None], tracked[None]

  return Slots(*_per_group(local, axes, 4)(weights_BxL, tracked_BxL))


def gather(x_BxLx: jax.Array, slots: Slots, axes: tuple[str, ...]) -> jax.Array:
  """[B, L, ...] -> [G, S, ...]: each group's values at its slots (differentiable)."""

  def local(x, index_1xS):
    flat = x.reshape(1, -1, *x.shape[2:])
    index = index_1xS.reshape(1, -1, *(1,) * (x.ndim - 2))
    return jnp.take_along_axis(flat, index, axis=1)

  return _per_group(local, axes, 1)(x_BxLx, slots.index_GxS)


def scatter(values_GxS: jax.Array, slots: Slots, shape_BxL: tuple[int, int], axes) -> jax.Array:
  """[G, S] -> [B, L]: each slot's value back at its position, 0 where no slot points."""
  rows_per_group = shape_BxL[0] // values_GxS.shape[0]

  def local(v_1xS, index_1xS):
    out_P = jnp.zeros((rows_per_group * shape_BxL[1],), values_GxS.dtype)
    return out_P.at[index_1xS[0]].set(v_1xS[0], unique_indices=True).reshape(-1, shape_BxL[1])

  return _per_group(local, axes, 1)(values_GxS, slots.index_GxS)
