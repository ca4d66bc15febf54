"""Mesh layouts of the vocabulary-sharded fused divergence (rockjax.losses.fused).

Which mesh axes split the tokens and the heads' vocabulary, how a block's rows meet the
vocabulary shards (gather, spread, reduce), and how a head's own [D, V] layout becomes this
device's [D, U] columns without a whole-head gather. Shape letters as in rockjax.losses.fused.
"""

import math
from typing import NamedTuple

import jax

from rockjax import sharding as shd


class Layout(NamedTuple):
  """Mesh axes of the vocabulary-sharded layout (all empty: whole heads, no collectives here).

  vocab: axes splitting the heads' V (sums over V are psums over them).
  gather: vocab axes that also split the tokens: a block's rows are gathered over them and
    dh is psum_scattered back.
  spread: vocab axes that do not split the tokens (the rows are already alike there): dh is
    psummed over them.
  reduce_dw: token axes that do not split V: the head gradient is psummed over them.
  """

  vocab: tuple[str, ...] = ()
  gather: tuple[str, ...] = ()
  spread: tuple[str, ...] = ()
  reduce_dw: tuple[str, ...] = ()


class HeadSpec(NamedTuple):
  """How both heads [D, V] lie on the mesh: D over `embed`, V over `vocab`, alike over `extra`.

  The loss turns such a layout into [D, U] slices (V over vocab + embed + extra) itself: an
  all_to_all over `embed` and a local slice over `extra`, never a whole-head gather.
  """

  embed: tuple[str, ...]
  vocab: tuple[str, ...]
  extra: tuple[str, ...]


class Plan(NamedTuple):
  """Static layout of the vocabulary-sharded loss: rows over `tokens`, `layout`, and the heads'
  own sharding (None: XLA reshards them to [D, U] slices)."""

  tokens: tuple[str, ...]
  layout: Layout
  heads: HeadSpec | None


def to_slices(w_DxV: jax.Array, heads: HeadSpec) -> jax.Array:
  """This device's [D, U] columns from its block of a head laid out as `heads` says."""
  if heads.embed:  # trade D rows for V columns with the devices along embed
    w_DxV = jax.lax.all_to_all(w_DxV, heads.embed, split_axis=1, concat_axis=0, tiled=True)
  if heads.extra:  # the block is alike along extra: keep this device's part of it
    cols = w_DxV.shape[1] // math.prod(jax.lax.axis_size(a) for a in heads.extra)
    w_DxV = jax.lax.dynamic_slice_in_dim(w_DxV, jax.lax.axis_index(heads.extra) * cols, cols, 1)
  return w_DxV


def from_slices(dw_DxU: jax.Array, heads: HeadSpec) -> jax.Array:
  """The inverse of `to_slices`: [D, U] gradient columns back to the head's own block."""
  if heads.extra:
    dw_DxU = jax.lax.all_gather(dw_DxU, heads.extra, axis=1, tiled=True)
  if heads.embed:
    dw_DxU = jax.lax.all_to_all(dw_DxU, heads.embed, split_axis=0, concat_axis=1, tiled=True)
  return dw_DxU


def head_spec(shape_DxV: tuple[int, int]) -> HeadSpec:
  """The layout the logical rules give a head [D, V] ('embed', 'vocab') on the current mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  embed, vocab = (
    shd.spec_axes(e) for e in shd.logical_to_spec(("embed", "vocab"), shape_DxV, mesh)
  )
  sizes = mesh_sizes()
  extra = tuple(a for a in mesh.axis_names if sizes[a] > 1 and a not in embed + vocab)
  return HeadSpec(embed, vocab, extra)


def mesh_sizes() -> dict[str, int]:
  """Axis name -> size of the current (abstract) mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def plan(tokens: tuple[str, ...], shape_s, shape_t) -> Plan | None:
  """The vocabulary layout for heads of these shapes; None when no mesh axis divides V.

  When both heads lie alike and V divides over every mesh axis, the slices come from the
  heads' own layout (`to_slices`); otherwise V is split over the axes that divide it and
  XLA reshards the heads.
  """
  heads = head_spec(shape_s)
  vocab = heads.vocab + heads.embed + heads.extra
  if heads != head_spec(shape_t) or shape_s[1] % math.prod(mesh_sizes()[a] for a in vocab):
    heads, vocab = None, split_axes(shape_s[1])[0]
  if not vocab:
    return None
  return Plan(tokens, layout_for(tokens, vocab), heads)


def split_axes(size: int) -> tuple[tuple[str, ...], int]:
  """Mesh axes (major to minor) that split `size` evenly, and the number of shards.

  A dimension gets every mesh axis; `logical_to_spec` drops the ones that do not divide it.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return (), 1
  (axes,) = shd.logical_to_spec(
    ("split",), (size,), mesh, rules=(("split", tuple(mesh.axis_names)),)
  )
  axes = shd.spec_axes(axes)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return axes, math.prod(sizes[a] for a in axes)


def layout_for(tokens: tuple[str, ...], vocab: tuple[str, ...]) -> Layout:
  """How rows and vocabulary columns meet, given the axes that split each (see Layout)."""
  return Layout(
    vocab=vocab,
    gather=tuple(a for a in vocab if a in tokens),
    spread=tuple(a for a in vocab if a not in tokens),
    reduce_dw=tuple(a for a in tokens if a not in vocab),
  )
