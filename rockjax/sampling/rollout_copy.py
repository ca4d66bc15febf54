"""The student's sampling copy: cast and laid out for decoding once per step, freed before the update.

Sampling from the train state's FSDP-sharded parameters makes every decode step of the
while_loop all-gather every weight (thousands of times per rollout). Instead, once per step,
one jitted function casts the parameters to `opd.rollout_dtype` and reshards them onto the
decode mesh (`opd.rollout_sharding`): the same devices as the train mesh, in the same order,
arranged as data x tensor with fsdp = context = 1, so no decode row is computed twice:

- 'tensor': heads, KV heads, MLP and vocabulary over `tensor` devices (opd.rollout_tensor;
  0 = the most that the device count and the KV heads allow), rows over the rest ('data').
  Each device reads 1/tensor of the weights and of the KV cache per token; a layer
  all-reduces its [rows, D] activations twice; the embedding lookup and the LM head use the
  table where it lies (vocabulary-parallel: the sampler reduces the sharded logits per shard,
  rockjax.sampling.vocab_blocks), so no weight moves inside the decode loop.
- 'replicated': tensor = 1: every device holds the whole model and decodes its own rows.
- 'train': no copy; decode reads the train state's parameters in their training layout.

The copy lives for the duration of one `generate` call: `release` deletes its buffers right
after, before the train step runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh

from rockjax import errors
from rockjax import sharding as shd

LAYOUTS = ("replicated", "tensor", "train")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _kv_head_sizes(params: nnx.State) -> set[int]:
  """The sizes of every parameter dimension named 'kv_heads' (what tensor must divide)."""
  sizes = set()
  for x in jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable)):
    if isinstance(x, nnx.Variable):
      for name, dim in zip(shd.variable_logical_axes(x), x.get_value().shape):
        if name == "kv_heads":
          sizes.add(dim)
  return sizes


def decode_tensor(params: nnx.State, devices: int, layout: str, tensor: int = 0) -> int:
  """The decode mesh's tensor size: 1 for 'replicated'; for 'tensor' `tensor`, or when 0 the
  largest divisor of `devices` that divides the KV heads (each device keeps whole KV heads)."""
  if layout == "replicated":
    return 1
  if tensor:
    if devices % tensor:
      raise errors.ConfigError(f"opd.rollout_tensor={tensor} does not divide the {devices} devices")
    return tensor
  kv = _kv_head_sizes(params)
  return max(t for t in range(1, devices + 1) if devices % t == 0 and all(k % t == 0 for k in kv))


def decode_mesh(
  params: nnx.State, mesh: Mesh | AbstractMesh, layout: str, tensor: int = 0
) -> Mesh | AbstractMesh:
  """The mesh the sampler runs on: `mesh` itself for 'train', else `mesh`'s devices (same
  order, so the copy is a reshard within one device assignment) as data x 1 x 1 x tensor."""
  if layout not in LAYOUTS:
    raise ValueError(f"rollout layout {layout!r}; expected one of {LAYOUTS}")
  if layout == "train":
    return mesh
  n = math.prod(mesh.axis_sizes)
  t = decode_tensor(params, n, layout, tensor)
  shape = (n // t, 1, 1, t)
  if isinstance(mesh, AbstractMesh):
    return AbstractMesh(shape, shd.MESH_AXES)
  return Mesh(np.asarray(list(mesh.devices.flat)).reshape(shape), shd.MESH_AXES)


def copy_shardings(params: nnx.State, mesh: Mesh, layout: str, tensor: int = 0) -> Any:
  """NamedShardings of the sampling copy of `params` (concrete or abstract): the logical
  rules on the decode mesh (rockjax.sharding.DEFAULT_RULES; 'embed' has no axis there)."""
  if layout == "train":
    raise ValueError(f"rollout layout {layout!r} has no copy; expected one of {LAYOUTS[:2]}")
  return shd.tree_shardings(params, decode_mesh(params, mesh, layout, tensor))


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
  """Floating arrays to `dtype`; integer / bool leaves (if any) unchanged."""
  return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def make_copier(
  params: nnx.State, mesh: Mesh, *, dtype: str, layout: str, tensor: int = 0
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
  out_shardings = copy_shardings(params, mesh, layout, tensor)
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


def bytes_per_device(
  params: nnx.State, mesh: Mesh, *, dtype: str, layout: str, tensor: int = 0
) -> int:
  """Bytes one device holds for the sampling copy of `params` (0 for 'train': no copy)."""
  if layout == "train":
    return 0
  itemsize = jnp.dtype(DTYPES[dtype]).itemsize
  total = 0
  for x, s in zip(
    jax.tree.leaves(params), jax.tree.leaves(copy_shardings(params, mesh, layout, tensor))
  ):
    shard = s.shard_shape(x.shape)
    size = itemsize if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(x.dtype).itemsize
    total += math.prod(shard) * size
  return total
