"""Qwen3-MoE sparse block: softmax router, top-k experts, grouped matmuls (grouped_matmul).

Under a mesh (`jax.set_mesh`) routing runs inside `jax.shard_map`: each device routes only its
own tokens (their mesh axes come from the logical names ('batch', 'length')) with a local
stable sort and grouped matmuls over all experts, so no sort, gather or scatter spans the
mesh. The expert weights enter gathered over their 'experts' and 'embed' axes (as FSDP gathers
any weight it uses) and split over the mesh axes of 'mlp' (tensor parallelism: each device
computes a slice of every expert's width and the outputs are summed over those axes). Without
a mesh the same routing runs over all tokens at once (the reference).

Shape letters: B batch, L positions, D hidden size, N tokens (B*L), X experts, K experts per
token, M routed rows (N*K), F expert MLP width (b, l, n, f: the local shards under shard_map).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from rockjax import sharding as shd
from rockjax.models.config import ModelConfig
from rockjax.models.grouped_matmul import grouped_matmul
from rockjax.models.layers import param, token_chunked


def route(
  x_NxD: jax.Array, router_DxX: jax.Array, top_k: int, norm_topk_prob: bool
) -> tuple[jax.Array, jax.Array]:
  """Top-k expert weights [N, K] (float32) and ids [N, K] from a float32 softmax router."""
  logits_NxX = jnp.einsum("nd,dx->nx", x_NxD.astype(jnp.float32), router_DxX.astype(jnp.float32))
  probs_NxX = jax.nn.softmax(logits_NxX, axis=-1)
  weights_NxK, experts_NxK = jax.lax.top_k(probs_NxX, top_k)
  if norm_topk_prob:
    weights_NxK = weights_NxK / jnp.sum(weights_NxK, axis=-1, keepdims=True)
  return weights_NxK, experts_NxK


def routed_experts(
  x_NxD: jax.Array,
  router_DxX: jax.Array,
  gate_XxDxF: jax.Array,
  up_XxDxF: jax.Array,
  down_XxFxD: jax.Array,
  *,
  top_k: int,
  norm_topk_prob: bool,
  implementation: str = "auto",
) -> jax.Array:
  """The N tokens through their top-k experts, mixed by router weight -> [N, D] (x's dtype).

  With F a shard of the experts' width the result is that shard's partial sum.
  """
  N, D = x_NxD.shape
  X = gate_XxDxF.shape[0]
  weights_NxK, experts_NxK = route(x_NxD, router_DxX, top_k, norm_topk_prob)
  # Group the N*K (token, expert) pairs by expert so each expert is one contiguous block of
  # rows: a stable sort, then one grouped matmul per projection over all experts at once.
  experts_M = experts_NxK.reshape(-1)
  order_M = jnp.argsort(experts_M, stable=True)
  rows_MxD = x_NxD[order_M // top_k]
  group_sizes_X = jnp.bincount(experts_M, length=X).astype(jnp.int32)
  matmul = lambda rows, w: grouped_matmul(rows, w, group_sizes_X, implementation)
  h_MxF = jax.nn.silu(matmul(rows_MxD, gate_XxDxF)) * matmul(rows_MxD, up_XxDxF)
  out_sorted_MxD = matmul(h_MxF, down_XxFxD)
  # Undo the sort (a permutation, so a scatter-set, not an add), then mix the K experts.
  out_MxD = jnp.zeros_like(out_sorted_MxD).at[order_M].set(out_sorted_MxD)
  out_NxKxD = out_MxD.reshape(N, top_k, D)
  return jnp.einsum("nkd,nk->nd", out_NxKxD, weights_NxK.astype(x_NxD.dtype))


def _spec_axes(entry: Any) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name or a tuple of names)."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


class MoE(nnx.Module):
  """Top-k routed SwiGLU experts with HF Qwen3-MoE routing semantics."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    D, X, F = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
    self.router = param(rngs, (D, X), ("embed", None), cfg.param_dtype)
    self.gate_proj = param(rngs, (X, D, F), ("experts", "embed", "mlp"), cfg.param_dtype)
    self.up_proj = param(rngs, (X, D, F), ("experts", "embed", "mlp"), cfg.param_dtype)
    self.down_proj = param(rngs, (X, F, D), ("experts", "mlp", "embed"), cfg.param_dtype)
    self.top_k = cfg.num_experts_per_tok
    self.norm_topk_prob = cfg.norm_topk_prob
    self.dtype = cfg.dtype
    self.chunk = cfg.mlp_chunk
    self.implementation = cfg.moe_impl  # grouped matmul backend (rockjax.models.grouped_matmul)

  def route(self, x_NxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-k expert weights [N, K] (float32) and ids [N, K] from a float32 softmax router."""
    return route(x_NxD, self.router[...], self.top_k, self.norm_topk_prob)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    """The routed experts over cfg.mlp_chunk positions at a time (layers.token_chunked)."""
    return token_chunked(self.experts, x_BxLxD, self.chunk)

  def experts(self, x_BxLxD: jax.Array) -> jax.Array:
    """Routing and experts of the B*L tokens: per device under a mesh, else all at once."""
    B, L, D = x_BxLxD.shape
    # Cast before shard_map, so FSDP gathers the weights in the compute dtype.
    cast = lambda w: w[...].astype(self.dtype)
    weights = (self.router[...], cast(self.gate_proj), cast(self.up_proj), cast(self.down_proj))
    run = lambda x_NxD, *w: routed_experts(
      x_NxD,
      *w,
      top_k=self.top_k,
      norm_topk_prob=self.norm_topk_prob,
      implementation=self.implementation,
    )
    x_BxLxD = x_BxLxD.astype(self.dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return run(x_BxLxD.reshape(B * L, D), *weights).reshape(B, L, D)
    token_spec = shd.logical_to_spec(("batch", "length", None), x_BxLxD.shape, mesh)
    token_axes = {a for entry in token_spec for a in _spec_axes(entry)}
    # The experts' width F splits over the mesh axes of 'mlp' the tokens do not use.
    F = self.gate_proj.shape[2]
    mlp_axes = _spec_axes(shd.logical_to_spec(("mlp",), (F,), mesh)[0])
    mlp_axes = tuple(a for a in mlp_axes if a not in token_axes)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    if F % math.prod(sizes[a] for a in mlp_axes):
      mlp_axes = ()
    mlp = mlp_axes or None

    def local(x_bxlxD, router_DxX, gate_XxDxf, up_XxDxf, down_XxfxD):
      b, l, _ = x_bxlxD.shape
      y_nxD = run(x_bxlxD.reshape(b * l, D), router_DxX, gate_XxDxf, up_XxDxf, down_XxfxD)
      if mlp_axes:
        y_nxD = jax.lax.psum(y_nxD, mlp_axes)  # partial sums over the width shards
      return y_nxD.reshape(b, l, D)

    in_specs = (
      token_spec,
      PartitionSpec(),
      PartitionSpec(None, None, mlp),
      PartitionSpec(None, None, mlp),
      PartitionSpec(None, mlp, None),
    )
    return jax.shard_map(local, in_specs=in_specs, out_specs=token_spec, check_vma=False)(
      x_BxLxD, *weights
    )
