"""Qwen3-MoE sparse block: softmax router, top-k experts, grouped matmuls via lax.ragged_dot.

Shape letters: B batch, L positions, D hidden size, N tokens (B*L), X experts, K experts per
token, M routed rows (N*K), F expert MLP width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rockjax.models.config import ModelConfig
from rockjax.models.layers import param, token_chunked


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

  def route(self, x_NxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-k expert weights [N, K] (float32) and ids [N, K] from a float32 softmax router."""
    logits_NxX = jnp.einsum(
      "nd,dx->nx", x_NxD.astype(jnp.float32), self.router[...].astype(jnp.float32)
    )
    probs_NxX = jax.nn.softmax(logits_NxX, axis=-1)
    weights_NxK, experts_NxK = jax.lax.top_k(probs_NxX, self.top_k)
    if self.norm_topk_prob:
      weights_NxK = weights_NxK / jnp.sum(weights_NxK, axis=-1, keepdims=True)
    return weights_NxK, experts_NxK

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    """The routed experts over cfg.mlp_chunk positions at a time (layers.token_chunked)."""
    return token_chunked(self.experts, x_BxLxD, self.chunk)

  def experts(self, x_BxLxD: jax.Array) -> jax.Array:
    """Routing and experts of all B*L tokens at once (holds [B*L*K, F] intermediates)."""
    B, L, D = x_BxLxD.shape
    X = self.gate_proj.shape[0]
    x_NxD = x_BxLxD.reshape(B * L, D).astype(self.dtype)
    weights_NxK, experts_NxK = self.route(x_NxD)
    # Group the N*K (token, expert) pairs by expert so each expert is one contiguous block of
    # rows: a stable sort, then one ragged matmul per projection over all experts at once.
    experts_M = experts_NxK.reshape(-1)
    order_M = jnp.argsort(experts_M, stable=True)
    rows_MxD = x_NxD[order_M // self.top_k]
    group_sizes_X = jnp.bincount(experts_M, length=X).astype(jnp.int32)
    cast = lambda w: w[...].astype(self.dtype)
    gate_MxF = jax.lax.ragged_dot(rows_MxD, cast(self.gate_proj), group_sizes_X)
    up_MxF = jax.lax.ragged_dot(rows_MxD, cast(self.up_proj), group_sizes_X)
    h_MxF = jax.nn.silu(gate_MxF) * up_MxF
    out_sorted_MxD = jax.lax.ragged_dot(h_MxF, cast(self.down_proj), group_sizes_X)
    # Undo the sort (a permutation, so a scatter-set, not an add), then mix the K experts.
    out_MxD = jnp.zeros_like(out_sorted_MxD).at[order_M].set(out_sorted_MxD)
    out_NxKxD = out_MxD.reshape(B * L, self.top_k, D)
    y_NxD = jnp.einsum("nkd,nk->nd", out_NxKxD, weights_NxK.astype(self.dtype))
    return y_NxD.reshape(B, L, D)
