"""MoE routing as functions of one device's tokens: top-k routing, expert-grouped SwiGLU, and
the expert-parallel variant that exchanges routed rows with all_to_all.

`routed_experts` runs all X experts over the given tokens (the whole batch without a mesh, one
device's tokens under the MoE's `jax.shard_map`). `exchanged_experts` runs under a shard_map
whose experts axis `axis` splits the experts (E devices, Y = X / E each): each device routes
its own tokens, sends every routed row to the device holding its expert, runs its Y experts
over what it received and sends the results back. Capacity-free: a device may send all its M
rows to one peer, so each send buffer holds M rows per peer ([E, M, D], `jax.lax.all_to_all`;
XLA:CPU has no `ragged_all_to_all`, which would send only the rows in use).

Shape letters: N tokens, D hidden size, X experts, K experts per token, M routed rows (N*K),
F expert width, S source rows, E devices on the experts axis, Y experts per device, R rows
received (E*M).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rockjax.models.grouped_matmul import grouped_matmul


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


def grouped_swiglu(
  source_SxD: jax.Array,
  row_source_M: jax.Array,
  expert_M: jax.Array,
  gate_XxDxF: jax.Array,
  up_XxDxF: jax.Array,
  down_XxFxD: jax.Array,
  implementation: str = "auto",
) -> jax.Array:
  """Row m = source_SxD[row_source_M[m]] through expert expert_M[m]'s SwiGLU -> [M, D].

  Rows whose expert id is X (no expert) are sorted last, into no group; their output is
  unspecified (zero with ragged_dot) and callers mask it.
  """
  X = gate_XxDxF.shape[0]
  # Group the rows by expert so each expert is one contiguous block of rows: a stable sort,
  # then one grouped matmul per projection over all experts at once.
  order_M = jnp.argsort(expert_M, stable=True)
  rows_MxD = source_SxD[row_source_M[order_M]]
  group_sizes_X = jnp.bincount(expert_M, length=X + 1)[:X].astype(jnp.int32)
  matmul = lambda rows, w: grouped_matmul(rows, w, group_sizes_X, implementation)
  h_MxF = jax.nn.silu(matmul(rows_MxD, gate_XxDxF)) * matmul(rows_MxD, up_XxDxF)
  out_sorted_MxD = matmul(h_MxF, down_XxFxD)
  # Undo the sort (a permutation, so a scatter-set, not an add).
  return jnp.zeros_like(out_sorted_MxD).at[order_M].set(out_sorted_MxD)


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
  weights_NxK, experts_NxK = route(x_NxD, router_DxX, top_k, norm_topk_prob)
  token_M = jnp.arange(N * top_k) // top_k  # routed row m is token m // K
  out_MxD = grouped_swiglu(
    x_NxD, token_M, experts_NxK.reshape(-1), gate_XxDxF, up_XxDxF, down_XxFxD, implementation
  )
  out_NxKxD = out_MxD.reshape(N, top_k, D)
  return jnp.einsum("nkd,nk->nd", out_NxKxD, weights_NxK.astype(x_NxD.dtype))


def exchanged_experts(
  x_NxD: jax.Array,
  router_DxX: jax.Array,
  gate_YxDxF: jax.Array,
  up_YxDxF: jax.Array,
  down_YxFxD: jax.Array,
  *,
  axis: str,
  top_k: int,
  norm_topk_prob: bool,
  implementation: str = "auto",
) -> jax.Array:
  """This device's N tokens through their top-k experts (held across `axis`) -> [N, D]."""
  N, D = x_NxD.shape
  E = jax.lax.axis_size(axis)
  Y = gate_YxDxF.shape[0]
  weights_NxK, experts_NxK = route(x_NxD, router_DxX, top_k, norm_topk_prob)
  # Sort the routed rows by expert: then the rows for each device are contiguous, and row j
  # goes to slot j - start[dest] of that device's block in the send buffer.
  experts_M = experts_NxK.reshape(-1)
  order_M = jnp.argsort(experts_M, stable=True)
  sorted_experts_M = experts_M[order_M]
  dest_M = sorted_experts_M // Y
  count_E = jnp.bincount(dest_M, length=E)
  slot_M = jnp.arange(N * top_k) - (jnp.cumsum(count_E) - count_E)[dest_M]
  send_ExMxD = jnp.zeros((E, N * top_k, D), x_NxD.dtype)
  send_ExMxD = send_ExMxD.at[dest_M, slot_M].set(x_NxD[order_M // top_k])
  # Unused slots carry expert id Y: no local expert, so grouped_swiglu leaves them out.
  ids_ExM = jnp.full((E, N * top_k), Y, jnp.int32).at[dest_M, slot_M].set(sorted_experts_M % Y)
  to_owner = lambda a: jax.lax.all_to_all(a, axis, 0, 0, tiled=True)
  recv_RxD = to_owner(send_ExMxD).reshape(-1, D)
  ids_R = to_owner(ids_ExM).reshape(-1)
  out_RxD = grouped_swiglu(
    recv_RxD, jnp.arange(ids_R.shape[0]), ids_R, gate_YxDxF, up_YxDxF, down_YxFxD, implementation
  )
  out_RxD = jnp.where((ids_R < Y)[:, None], out_RxD, 0)  # unused slots: unspecified values
  # The reverse exchange returns each block to its sender, in the slots it was sent from.
  back_ExMxD = to_owner(out_RxD.reshape(E, N * top_k, D))
  out_MxD = jnp.zeros((N * top_k, D), out_RxD.dtype).at[order_M].set(back_ExMxD[dest_M, slot_M])
  out_NxKxD = out_MxD.reshape(N, top_k, D)
  return jnp.einsum("nkd,nk->nd", out_NxKxD, weights_NxK.astype(x_NxD.dtype))
