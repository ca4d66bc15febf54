"""The student's sampling copy: cast and resharded once per step, freed before the update.

Sampling from the train state's FSDP-sharded parameters makes every decode step of the
while_loop all-gather every weight (thousands of times per rollout). Instead, once per step,
one jitted function casts the parameters to `opd.rollout_dtype` and lays them out for decoding
(`opd.rollout_sharding`):

- 'replicated': every device holds the whole model; decode needs no parameter collective.
- 'tensor': heads / MLP / vocabulary over the 'tensor' mesh axis (Megatron-style), replicated
  over the other axes; decode all-reduces activations, never gathers a weight.
- 'train': no copy; decode reads the train state's parameters in their training layout.

The decode rows follow the usual 'batch' rule (sharded over the batch axes when they divide,
else replicated); the copy's layout decides only the weights. The copy lives for the duration
of one `generate` call: `release` deletes its buffers right after, before the train step runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rockjax import sharding as shd

LAYOUTS = ("replicated", "tensor", "train")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def tensor_rules(rules: shd.LogicalRules | None = None) -> shd.LogicalRules:
  """The logical rules with every mesh axis but 'tensor' dropped (replicated over the rest)."""
  out = []
  for name, target in shd.DEFAULT_RULES if rules is None else rules:
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    out.append((name, "tensor" if "tensor" in axes else None))
  return tuple(out)


def copy_shardings(params: nnx.State, mesh: Mesh, layout: str) -> Any:
  """NamedShardings of the sampling copy of `params` (concrete or abstract) on `mesh`."""
  if layout == "replicated":
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda _: replicated, params)
  if layout == "tensor":
    return shd.tree_shardings(params, mesh, tensor_rules())
  raise ValueError(f"rollout layout {layout!r} has no copy; expected one of {LAYOUTS[:2]}")


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
  """Floating arrays to `dtype`; integer / bool leaves (if any) unchanged."""
  return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def make_copier(
  params: nnx.State, mesh: Mesh, *, dtype: str, layout: str
) -> Callable[[nnx.State], nnx.State]:
  """params -> their sampling copy (`dtype`, `layout`), one jitted program; identity for 'train'.

  `params` (concrete or abstract) fixes the tree and the output shardings; call the result
  with parameters of that structure (any input sharding: jit reshards them).
  """
  if dtype not in DTYPES:
    raise ValueError(f"rollout dtype {dtype!r}; expected one of {sorted(DTYPES)}")
  if layout == "train":
    # Today's path: sample from the train state's own arrays (float32 only, no copy to make).
    if DTYPES[dtype] != jnp.float32:
      raise ValueError(f"rollout layout 'train' samples the train parameters: dtype {dtype!r}")
    return lambda p: p
  out_shardings = copy_shardings(params, mesh, layout)
  cast = functools.partial(_cast, dtype=DTYPES[dtype])
  return jax.jit(lambda p: jax.tree.map(cast, p), out_shardings=out_shardings)


def release(copy: nnx.State, params: nnx.State) -> None:
  """Deletes the copy's device buffers now (those that are not the train parameters' own).

  Deleting instead of waiting for the last Python reference to go makes the freeing explicit
  and independent of who still holds the tree (a traceback, an NNX module graph, a debugger).
  PJRT frees a deleted buffer only once the computations already enqueued on it (the decode
  loop) have finished, so this is safe to call right after dispatching `generate`. A leaf jit
  returned unchanged (same dtype and layout: JAX forwards the input array) is the train
  state's own and is kept.
  """
  own = {id(x) for x in jax.tree.leaves(params)}
  for x in jax.tree.leaves(copy):
    if isinstance(x, jax.Array) and id(x) not in own and not x.is_deleted():
      x.delete()


@contextlib.contextmanager
def sampling_model(
  copier: Callable[[nnx.State], nnx.State], graphdef: nnx.GraphDef, params: nnx.State
) -> Iterator[nnx.Module]:
  """The student as a module over its sampling copy; the copy is released on leaving the block.

  Use the module only inside the block (its arrays are deleted after): the train step that
  follows then runs without the copy's memory.
  """
  copy = copier(params)
  try:
    yield nnx.merge(graphdef, copy)
  finally:
    release(copy, params)


def bytes_per_device(params: nnx.State, mesh: Mesh, *, dtype: str, layout: str) -> int:
  """Bytes one device holds for the sampling copy of `params` (0 for 'train': no copy)."""
  if layout == "train":
    return 0
  itemsize = jnp.dtype(DTYPES[dtype]).itemsize
  total = 0
  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(copy_shardings(params, mesh, layout))):
    shard = s.shard_shape(x.shape)
    size = itemsize if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(x.dtype).itemsize
    total += math.prod(shard) * size
  return total
