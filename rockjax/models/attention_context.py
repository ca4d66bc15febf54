"""Context (sequence) parallel attention: each device keeps its query shard, K/V are gathered.

Under a mesh whose 'context' axis splits the sequence (rockjax.sharding maps the logical
'length' to it), `context_attention` runs an attention implementation in `jax.shard_map`:
rows over the 'batch' axes, heads over 'tensor' (in whole GQA groups: the key/value heads
decide), queries over 'context'. Inside, keys, values and key segment ids are all-gathered over
'context' (RoPE was already applied with global positions, so gathered keys are final), and
the local queries sit at global positions offset + i with offset = shard index x local length;
causal and segment masks use those global positions. The backward pass of the gather is a
reduce-scatter of dK/dV, so each shard gets the key gradients of its own positions.

Cost per layer: one all-gather of K and V ([B, L, K, E] each, K the key/value heads) over
'context' in the forward pass, one reduce-scatter of their gradients in the backward pass.
Causal work is unbalanced (the last shard's queries see every key, the first's only its own).

Shape letters: B batch, L query positions (one shard: l), S key positions (all), H query
heads, K key/value heads, E head_dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec

from rockjax import sharding as shd

# local(q_bxlxhxE, k_bxSxkxE, v_bxSxkxE, seg_q_bxl, seg_kv_bxS, offset, *extra) -> [b, l, h, E]
LocalAttention = Callable[..., jax.Array]


def length_axes() -> tuple[str, ...]:
  """The mesh axes the current mesh (jax.set_mesh) splits the sequence over; () when none."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  return _axes(shd.logical_to_spec(("length",), (0,), mesh)[0])


def _axes(entry: Any) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def shards() -> int:
  """Into how many sequence shards the current mesh splits the queries (1: no context axis)."""
  mesh = jax.sharding.get_abstract_mesh()
  sizes = {} if mesh.empty else dict(zip(mesh.axis_names, mesh.axis_sizes))
  n = 1
  for a in length_axes():
    n *= sizes[a]
  return n


def context_attention(
  local: LocalAttention,
  q_BxLxHxE: jax.Array,
  k_BxLxKxE: jax.Array,
  v_BxLxKxE: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  extra: tuple[Any, ...] = (),
  extra_specs: tuple[Any, ...] = (),
) -> jax.Array:
  """`local` over (query shard, all keys) per device under jax.shard_map; see the module doc.

  `extra` are further arguments of `local` with their shard_map specs (the splash kernel's
  sharded mask). The rows must divide the 'batch' axes and L the 'context' axes (else a
  ValueError naming them, as rockjax.sharding.constrain raises for activations).
  """
  mesh = jax.sharding.get_abstract_mesh()
  B, L = segment_ids_BxL.shape
  shd.logical_to_spec(("batch", "length"), (B, L), mesh, strict=True)
  # The key/value heads decide the head split: the query heads follow in whole groups.
  spec = shd.logical_to_spec(("batch", "length", "act_heads", None), k_BxLxKxE.shape, mesh)
  seg_spec = PartitionSpec(spec[0], spec[1])
  context = _axes(spec[1])

  def body(q_bxlxhxE, k_bxlxkxE, v_bxlxkxE, seg_bxl, *rest):
    gather = lambda x: jax.lax.all_gather(x, context, axis=1, tiled=True)
    offset = jax.lax.axis_index(context) * q_bxlxhxE.shape[1]
    return local(
      q_bxlxhxE, gather(k_bxlxkxE), gather(v_bxlxkxE), seg_bxl, gather(seg_bxl), offset, *rest
    )

  return jax.shard_map(
    body,
    in_specs=(spec, spec, spec, seg_spec, *extra_specs),
    out_specs=spec,
    check_vma=False,
  )(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, segment_ids_BxL, *extra)
