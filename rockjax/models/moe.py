"""Qwen3-MoE sparse block: softmax router, top-k experts, grouped matmuls (grouped_matmul).

Under a mesh (`jax.set_mesh`) routing runs inside `jax.shard_map`: each device routes only its
own tokens (their mesh axes come from the logical names ('batch', 'length')) with a local
stable sort and grouped matmuls over all experts, so no sort, gather or scatter spans the
mesh. The expert weights enter gathered over their 'experts' and 'embed' axes (as FSDP gathers
any weight it uses) and split over the mesh axes of 'mlp' (tensor parallelism: each device
computes a slice of every expert's width and the outputs are summed over those axes). Without
a mesh the same routing runs over all tokens at once (the reference). With
cfg.moe_experts_axis the experts split over that mesh axis instead of being gathered, and the
routed rows travel to their experts' devices and back (moe_routing.exchanged_experts).

Shape letters: B batch, L positions, D hidden size, N tokens (B*L), X experts, K experts per
token, M routed rows (N*K), F expert MLP width (b, l, n, f: the local shards under shard_map).
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import PartitionSpec

from rockjax import sharding as shd
from rockjax.models.config import ModelConfig
from rockjax.models.layers import param, token_chunked
from rockjax.models.moe_routing import exchanged_experts, route, routed_experts


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
    self.experts_axis = cfg.moe_experts_axis  # '' or the mesh axis the experts split over

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
    kw = dict(
      top_k=self.top_k, norm_topk_prob=self.norm_topk_prob, implementation=self.implementation
    )
    x_BxLxD = x_BxLxD.astype(self.dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return routed_experts(x_BxLxD.reshape(B * L, D), *weights, **kw).reshape(B, L, D)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    token_spec = shd.logical_to_spec(("batch", "length", None), x_BxLxD.shape, mesh)
    token_axes = {a for entry in token_spec for a in shd.spec_axes(entry)}
    X, _, F = self.gate_proj.shape
    experts_axis = self.experts_axis if sizes.get(self.experts_axis, 1) > 1 else None
    if experts_axis and X % sizes[experts_axis]:
      raise ValueError(
        f"moe_experts_axis={experts_axis!r}: the {X} experts do not split over its "
        f"{sizes[experts_axis]} devices"
      )
    # The experts' width F splits over the mesh axes of 'mlp' the tokens and experts do not use.
    mlp_axes = shd.spec_axes(shd.logical_to_spec(("mlp",), (F,), mesh)[0])
    mlp_axes = tuple(a for a in mlp_axes if a not in token_axes and a != experts_axis)
    if F % math.prod(sizes[a] for a in mlp_axes):
      mlp_axes = ()
    mlp = mlp_axes or None

    def local(x_bxlxD, router_DxX, gate_YxDxf, up_YxDxf, down_YxfxD):
      b, l, _ = x_bxlxD.shape
      w = (router_DxX, gate_YxDxf, up_YxDxf, down_YxfxD)
      x_nxD = x_bxlxD.reshape(b * l, D)
      if experts_axis:
        y_nxD = exchanged_experts(x_nxD, *w, axis=experts_axis, **kw)
      else:
        y_nxD = routed_experts(x_nxD, *w, **kw)
      if mlp_axes:
        y_nxD = jax.lax.psum(y_nxD, mlp_axes)  # partial sums over the width shards
      return y_nxD.reshape(b, l, D)

    in_specs = (
      token_spec,
      PartitionSpec(),
      PartitionSpec(experts_axis, None, mlp),
      PartitionSpec(experts_axis, None, mlp),
      PartitionSpec(experts_axis, mlp, None),
    )
    # check_vma=False: the megablox Pallas call does not declare how its output varies.
    return jax.shard_map(local, in_specs=in_specs, out_specs=token_spec, check_vma=False)(
      x_BxLxD, *weights
    )
