"""Embedding lookup on a sharded table without gathering the table.

`jnp.take` on a table whose vocabulary or hidden dimension is sharded, with ids sharded on the
batch, leaves XLA's SPMD partitioner no layout for the gather: it replicates the table ("involuntary
full rematerialization"). Here the lookup runs under `shard_map` in the layout the rules give:

    ids: each device gathers the ids of the devices that hold other slices of the table (tiny);
    rows: each device looks up its [U, F] slice of the table: ids outside its vocabulary rows
          give zeros, so a sum over the vocabulary shards (psum_scatter back to the ids' owners)
          is the lookup;
    columns: the hidden-dimension slices go back to the ids' owners by all_to_all (gathered
          where the ids are alike across devices).

The table is never gathered and no device holds more than its own rows of the result (plus
a same-sized [g*n, F] partial). Autodiff runs through the shard_map: the table's gradient is a
scatter-add into each device's own slice.

Shape letters: V vocabulary, D hidden size, U = V / (vocabulary shards) local rows, F = D /
(hidden shards) local columns, N local ids, M gathered ids.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rockjax import sharding as shd


def embed_lookup(
  table_VxD: jax.Array,
  ids: jax.Array,
  *,
  table_axes: Sequence[str] = ("vocab", "embed"),
  ids_axes: Sequence[str | None] = ("batch", "length"),
) -> jax.Array:
  """`jnp.take(table_VxD, ids, axis=0)` ([*ids.shape, D]), laid out by the logical rules.

  `table_axes` and `ids_axes` are the logical names the table and the ids are sharded by;
  without a mesh (jax.set_mesh) this is `jnp.take`.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return jnp.take(table_VxD, ids, axis=0)
  vocab_spec, embed_spec = shd.logical_to_spec(table_axes, table_VxD.shape, mesh)
  ids_spec = shd.logical_to_spec(ids_axes, ids.shape, mesh)
  vocab, embed = shd.spec_axes(vocab_spec), shd.spec_axes(embed_spec)
  id_axes = tuple(a for entry in ids_spec for a in shd.spec_axes(entry))
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  # Table axes that split the ids (their devices hold different ids: gather, then send back)
  # and those that do not (the ids are alike there: sum or gather the results in place).
  gather_v = tuple(a for a in vocab if a in id_axes)
  gather_d = tuple(a for a in embed if a in id_axes)
  spread_v = tuple(a for a in vocab if a not in id_axes)
  spread_d = tuple(a for a in embed if a not in id_axes)

  def local(table_UxF, ids_local):
    ids_N = ids_local.reshape(-1)
    n = ids_N.shape[0]
    gathered = gather_v + gather_d  # vocabulary axes major: psum_scatter peels them first
    ids_M = jax.lax.all_gather(ids_N, gathered, axis=0, tiled=True) if gathered else ids_N
    rows = table_UxF.shape[0]
    local_M = ids_M - (jax.lax.axis_index(vocab) * rows if vocab else 0)
    inside_M = (local_M >= 0) & (local_M < rows)
    x_MxF = jnp.take(table_UxF, jnp.where(inside_M, local_M, 0), axis=0)
    x_MxF = jnp.where(inside_M[:, None], x_MxF, jnp.zeros((), x_MxF.dtype))
    if spread_v:
      x_MxF = jax.lax.psum(x_MxF, spread_v)
    if gather_v:
      x_MxF = jax.lax.psum_scatter(x_MxF, gather_v, scatter_dimension=0, tiled=True)
    # [g, N, F] blocks: after the all_to_all, block j is this device's rows in the columns of
    # the device with index j along gather_d; all_gather over spread_d adds the rest.
    x = x_MxF.reshape(-1, n, x_MxF.shape[-1])
    if gather_d:
      x = jax.lax.all_to_all(x, gather_d, split_axis=0, concat_axis=0, tiled=True)
    if spread_d:
      # An all_gather whose result is the same on every device: the psum of each device's
      # block in its own slot (a psum's result is replicated; all_gather's counts as varying).
      blocks = jnp.zeros((math.prod(sizes[a] for a in spread_d),) + x.shape, x.dtype)
      x = jax.lax.dynamic_update_index_in_dim(blocks, x, jax.lax.axis_index(spread_d), 0)
      x = jax.lax.psum(x, spread_d)
    # Blocks are indexed (spread_d..., gather_d...); the table's columns go in `embed` order.
    order = spread_d + gather_d
    x = x.reshape(*(sizes[a] for a in order), n, x.shape[-1])
    x = jnp.moveaxis(x, tuple(range(len(order))), tuple(1 + embed.index(a) for a in order))
    x = x.reshape(n, x.shape[-1] * math.prod(sizes[a] for a in embed))
    return x.reshape(*ids_local.shape, x.shape[-1])

  return jax.shard_map(
    local,
    in_specs=(PartitionSpec(vocab_spec, embed_spec), ids_spec),
    out_specs=PartitionSpec(*ids_spec, None),
  )(table_VxD, ids)
