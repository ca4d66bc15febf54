"""Token-blocked fused divergence: the weighted loss and its gradient in one pass over the heads.

`chunked_divergence` keeps a per-token output, so its backward pass must recompute both models'
logits (six `[N, D] x [D, V]` matmuls where autodiff of the full-logits form does four). When
the per-token weights of the reduction are known up front (they are in OPD: the masking
function depends on token ids and the response mask, never on the parameters), the gradient
can be formed in the forward pass instead, block of tokens by block of tokens:

    for each block of R tokens:   s, t = h_s @ W_s, h_t @ W_t          [R, V] float32
                                  value, g = divergence, w * d value / d s
                                  dh[block] = g @ W_s^T;  dW += h_s^T @ g  (both in vocab chunks)

That is the four matmuls of the naive path, with working memory O(R*V) instead of O(N*V).
The backward pass only scales the stored (dh, dW) by the incoming scalar cotangent.

On a mesh the blocks run under `shard_map`, laid out by `sharding=`:

- 'tokens': tokens are split over every mesh axis, the heads are gathered whole on each device
  (as FSDP gathers any weight it uses) and the head gradient is summed across devices once, by
  the transpose of that gather, not once per block.
- 'vocab': the heads' vocabulary is split over the mesh axes that divide it (all devices when
  they do) and each device keeps only its [D, V/s] columns. Per block, the s devices sharing a
  vocabulary split gather their R token rows ([s*R, D], never [B, L, D]), form [s*R, V/s]
  float32 logits and combine the log-sum-exp and every sum over V with collectives (pmax, psum).
  dh = g @ W_slice^T goes back to the rows' owners by psum_scatter; dW_slice stays local. The
  custom VJP sits outside this shard_map, whose collectives are all explicit.

Shape letters: N flattened tokens (B*L), R tokens per block, D hidden width (student Ds,
teacher Dt), V vocabulary, C vocabulary columns per chunk of the head-gradient accumulation,
G gathered rows of a block (g*R for g devices sharing a vocabulary split), U = V / s local
vocabulary columns.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rockjax.losses import registry
from rockjax.losses import vocab_layout as vl
from rockjax.losses.chunked import check_hidden_and_heads


class FusedDivergence(NamedTuple):
  """What `fused_divergence` returns.

  weighted_sum: sum over tokens of weights * divergence; the only differentiable output.
  per_token [B, L]: the divergence itself (no gradient), e.g. for the rock statistics.
  grad_norm [B, L]: per-token L2 norm of d divergence / d (tempered) student logits, the
    paper's |g| (no gradient; free here, it costs two extra passes on the chunked path).
  """

  weighted_sum: jax.Array
  per_token: jax.Array
  grad_norm: jax.Array


def _vocab_sum(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """Sum over the last axis and across the vocabulary shards."""
  total = jnp.sum(x, axis=-1)
  return jax.lax.psum(total, axes) if axes else total


def _log_softmax(x_GxU: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """log_softmax over a vocabulary split over `axes`: max and sum of exps combined by collectives."""
  if not axes:
    return jax.nn.log_softmax(x_GxU, axis=-1)
  m_G = jax.lax.pmax(jnp.max(x_GxU, axis=-1), axes)
  lse_G = m_G + jnp.log(_vocab_sum(jnp.exp(x_GxU - m_G[:, None]), axes))
  return x_GxU - lse_G[:, None]


def _block(h_s_RxD, w_s, h_t_RxD, w_t, w_R, spec, vocab=()):
  """One block: divergence [R], |g| [R] and the weighted logit gradient [R, V] (float32).

  With `vocab` axes the heads are [D, U] slices and g is this shard's [R, U] columns.
  """
  s = jnp.dot(h_s_RxD, w_s, preferred_element_type=jnp.float32) / spec.temperature
  t = jnp.dot(h_t_RxD, w_t, preferred_element_type=jnp.float32) / spec.temperature
  logp_s, logp_t = _log_softmax(s, vocab), _log_softmax(t, vocab)
  vsum = functools.partial(_vocab_sum, axes=vocab)
  value_R, aux_R = registry.value_and_aux(logp_s, logp_t, spec, vsum)
  g_RxV = registry.logit_grad(logp_s, logp_t, aux_R, spec)
  norm_R = jnp.sqrt(vsum(jnp.square(g_RxV)))
  # Chain rule through the 1/T of the tempered logits, folded into the weights; `where`, not a
  # product, so a zero-weight row contributes exactly 0 even if its logits were garbage.
  scale_R = w_R / spec.temperature
  g_RxV = jnp.where(scale_R[:, None] != 0, g_RxV * scale_R[:, None], 0.0)
  return value_R, norm_R, g_RxV


def _head_grads(dw_DxV, h_RxD, g_RxV, w_DxV, chunk):
  """(dh = g @ W^T, dW + h^T @ g), C vocabulary columns at a time.

  Chunking both keeps every temporary at [*, C]: a whole-vocabulary `g @ W^T` makes XLA:CPU
  copy the transposed head ([V, D], as large as dW) on every block.
  """
  vocab = dw_DxV.shape[1]
  ragged = vocab % chunk != 0
  if not ragged and chunk == vocab:  # one chunk: no loop, no slices (no copies of g or dW)
    dh_RxD = jnp.einsum("rv,dv->rd", g_RxV, w_DxV, preferred_element_type=jnp.float32)
    return dh_RxD, dw_DxV + jnp.einsum(
      "rd,rv->dv", h_RxD, g_RxV, preferred_element_type=jnp.float32
    )

  def body(c, carry):
    dh, dw = carry
    start = jnp.minimum(c * chunk, vocab - chunk)  # last chunk shifted left, as in chunked
    g_RxC = jax.lax.dynamic_slice_in_dim(g_RxV, start, chunk, 1)
    if ragged:  # zero the columns the shifted last chunk shares with the one before
      g_RxC = jnp.where((start + jnp.arange(chunk) >= c * chunk)[None, :], g_RxC, 0.0)
    w_DxC = jax.lax.dynamic_slice_in_dim(w_DxV, start, chunk, 1)
    dh = dh + jnp.einsum("rc,dc->rd", g_RxC, w_DxC, preferred_element_type=jnp.float32)
    old_DxC = jax.lax.dynamic_slice_in_dim(dw, start, chunk, 1)
    new_DxC = old_DxC + jnp.einsum("rd,rc->dc", h_RxD, g_RxC, preferred_element_type=jnp.float32)
    return dh, jax.lax.dynamic_update_slice_in_dim(dw, new_DxC, start, 1)

  dh_RxD = jnp.zeros((g_RxV.shape[0], w_DxV.shape[0]), jnp.float32)
  return jax.lax.fori_loop(0, math.ceil(vocab / chunk), body, (dh_RxD, dw_DxV))


def _forward(h_s, w_s, h_t, w_t, w_N, spec, layout=vl.Layout()):
  """(weighted sum, value [N], |g| [N], dh [N, Ds], dW [Ds, V]) over this device's tokens.

  Under a vocabulary layout the heads are this device's [D, U] slices and dW is its slice.
  """
  n = h_s.shape[0]
  nblk = math.ceil(n / spec.block_size)
  # Equal blocks of at most block_size rows (a multiple of 8): 1,100 tokens in blocks of 512
  # are 3 x 368, not 3 x 512 with 436 rows of padding computed for nothing.
  block = n if nblk == 1 else min(spec.block_size, -(-math.ceil(n / nblk) // 8) * 8)
  pad = nblk * block - n
  if pad:  # zero rows with zero weight: finite logits, no contribution
    h_s, h_t = (jnp.pad(x, ((0, pad), (0, 0))) for x in (h_s, h_t))
    w_N = jnp.pad(w_N, (0, pad))

  gather = layout.gather
  # The block's rows of the devices sharing this vocabulary split: [R, ...] -> [G, ...].
  rows_of_all = lambda x: jax.lax.all_gather(x, gather, axis=0, tiled=True) if gather else x
  # This device's R rows of a gathered [G] vector (all_gather's order is axis_index's).
  own = lambda x_G: jax.lax.dynamic_slice_in_dim(
    x_G, jax.lax.axis_index(gather) * block if gather else 0, block, 0
  )

  def body(i, carry):
    value, norm, dh, dw = carry
    rows = lambda x: rows_of_all(jax.lax.dynamic_slice_in_dim(x, i * block, block, 0))
    h_GxD = rows(h_s)
    value_G, norm_G, g_GxU = _block(h_GxD, w_s, rows(h_t), w_t, rows(w_N), spec, layout.vocab)
    dh_GxD, dw = _head_grads(dw, h_GxD, g_GxU, w_s, spec.chunk_size)
    dh_RxD = (
      jax.lax.psum_scatter(dh_GxD, gather, scatter_dimension=0, tiled=True) if gather else dh_GxD
    )
    if layout.spread:
      dh_RxD = jax.lax.psum(dh_RxD, layout.spread)
    value_R, norm_R = own(value_G), own(norm_G)
    put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x, i * block, 0)
    return put(value, value_R), put(norm, norm_R), put(dh, dh_RxD), dw

  m = nblk * block
  init = (
    jnp.zeros((m,), jnp.float32),
    jnp.zeros((m,), jnp.float32),
    jnp.zeros((m, h_s.shape[1]), jnp.float32),
    jnp.zeros(w_s.shape, jnp.float32),
  )
  value, norm, dh, dw = jax.lax.fori_loop(0, nblk, body, init)
  if layout.reduce_dw:  # in float32, before the cast to the head's dtype
    dw = jax.lax.psum(dw, layout.reduce_dw)
  total = jnp.sum(jnp.where(w_N != 0, w_N * value, 0.0))
  return total, value[:n], norm[:n], dh[:n].astype(h_s.dtype), dw.astype(w_s.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fused(h_s, w_s, h_t, w_t, w_N, spec):
  return _forward(h_s, w_s, h_t, w_t, w_N, spec)[:3]


def _fused_fwd(h_s, w_s, h_t, w_t, w_N, spec):
  total, value, norm, dh, dw = _forward(h_s, w_s, h_t, w_t, w_N, spec)
  return (total, value, norm), (dh, dw)


def _fused_bwd(spec, residuals, cts):
  # Only the weighted sum is differentiable: the public wrapper stops the gradient of the
  # per-token outputs, so their cotangents are zero here.
  del spec
  dh, dw = residuals
  ct = cts[0]
  return (ct.astype(dh.dtype) * dh, ct.astype(dw.dtype) * dw, None, None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused_vocab(h_s, w_s, h_t, w_t, w_N, spec, plan):
  return _vocab_forward(h_s, w_s, h_t, w_t, w_N, spec, plan)[:3]


def _fused_vocab_fwd(h_s, w_s, h_t, w_t, w_N, spec, plan):
  total, value, norm, dh, dw = _vocab_forward(h_s, w_s, h_t, w_t, w_N, spec, plan)
  return (total, value, norm), (dh, dw)


def _fused_vocab_bwd(spec, plan, residuals, cts):
  del plan
  return _fused_bwd(spec, residuals, cts)


_fused_vocab.defvjp(_fused_vocab_fwd, _fused_vocab_bwd)


def _vocab_forward(h_s, w_s, h_t, w_t, w_N, spec, plan):
  """`_forward` under shard_map with the heads' V split over `plan.layout.vocab`.

  Every cross-device sum is an explicit collective inside (no autodiff runs through this
  shard_map), so the head gradient leaves as the slices it was formed in.
  """
  tokens, layout, heads = plan
  rows = PartitionSpec(tokens or None)
  cols = (
    PartitionSpec(None, layout.vocab)
    if heads is None
    else PartitionSpec(heads.embed or None, heads.vocab or None)
  )

  def local(h_s, w_s, h_t, w_t, w_N):
    if heads is not None:
      w_s, w_t = vl.to_slices(w_s, heads), vl.to_slices(w_t, heads)
    total, value, norm, dh, dw = _forward(h_s, w_s, h_t, w_t, w_N, spec, layout)
    dw = dw if heads is None else vl.from_slices(dw, heads)
    return (jax.lax.psum(total, tokens) if tokens else total), value, norm, dh, dw

  return jax.shard_map(
    local,
    in_specs=(rows, cols, rows, cols, rows),
    out_specs=(PartitionSpec(), rows, rows, rows, cols),
    axis_names=set(tokens) | set(layout.vocab),
    check_vma=False,
  )(h_s, w_s, h_t, w_t, w_N)


SHARDINGS = ("tokens", "vocab")  # the layouts of `fused_divergence(sharding=...)`


def fused_divergence(
  student_hidden: jax.Array,
  student_head: jax.Array,
  teacher_hidden: jax.Array,
  teacher_head: jax.Array,
  weights: jax.Array,
  *,
  kind: str = "reverse_kl",
  temperature: float = 1.0,
  beta: float = 0.5,
  alpha: float = 0.9,
  block_size: int = 512,
  chunk_size: int = 8192,
  sharding: str = "tokens",
  spec: registry.DivergenceSpec | None = None,
) -> FusedDivergence:
  """`sum(weights * divergence(h_s @ W_s, h_t @ W_t))` with its gradient formed in the forward.

  Hidden states `[B, L, D]` (student and teacher widths may differ), heads `[D, V]`, weights
  `[B, L]` (0 off the loss: masked positions may hold anything finite). Gradients flow from
  `weighted_sum` to the student hidden states and head only, and cost no extra matmul: use
  this inside `jax.grad` when the weights are known (`chunked_divergence` when a per-token
  cotangent is needed). Working memory is a few `[block_size, V]` float32 blocks. Under a
  mesh (`jax.set_mesh`) the tokens are split over every mesh axis that divides them and
  `sharding` picks the heads' layout (module docstring): 'tokens' gathers them whole, 'vocab'
  splits V over the mesh axes that divide it (then a block is [g*block_size, V/s] per device).
  """
  if sharding not in SHARDINGS:
    raise ValueError(f"fused_divergence sharding must be one of {SHARDINGS}, got {sharding!r}")
  spec = registry.spec_from(
    spec,
    kind=kind,
    temperature=temperature,
    beta=beta,
    alpha=alpha,
    chunk_size=chunk_size,
    block_size=block_size,
  )
  lead, d_s, d_t = check_hidden_and_heads(
    student_hidden, student_head, teacher_hidden, teacher_head
  )
  if tuple(weights.shape) != tuple(lead):
    raise ValueError(
      f"weights {weights.shape} must have the hidden states' batch/length dims {tuple(lead)}"
    )
  n = math.prod(lead)
  axes, plan, spec = _device_layout(spec, sharding, n, student_head.shape, teacher_head.shape)
  args = (
    student_hidden.reshape(n, d_s),
    student_head,
    teacher_hidden.reshape(n, d_t),
    teacher_head,
    weights.reshape(n).astype(jnp.float32),
  )
  total, value, norm = _fused_by_layout(args, spec, axes, plan)
  value, norm = jax.lax.stop_gradient((value, norm))
  return FusedDivergence(total, value.reshape(lead), norm.reshape(lead))


def _device_layout(
  spec: registry.DivergenceSpec,
  sharding: str,
  n: int,
  student_head_shape: tuple[int, ...],
  teacher_head_shape: tuple[int, ...],
) -> tuple[tuple[str, ...], vl.Plan | None, registry.DivergenceSpec]:
  """(token mesh axes, vocabulary plan or None, spec with block/chunk sizes fitted per device)."""
  axes, shards = vl.split_axes(n)
  plan = None
  if sharding == "vocab" and not jax.sharding.get_abstract_mesh().empty:
    plan = vl.plan(axes, student_head_shape, teacher_head_shape)
  vocab_shards = 1 if plan is None else math.prod(vl.mesh_sizes()[a] for a in plan.layout.vocab)
  # Equal chunks over this device's columns: the last chunk is shifted left onto counted
  # columns (`_head_grads`), which costs up to a whole chunk of matmul when chunks are ragged
  # (V/8 = 18,992 in 8,192-column chunks would compute 24,576).
  cols = student_head_shape[1] // vocab_shards
  spec = dataclasses.replace(
    spec,
    block_size=min(spec.block_size, n // shards),
    chunk_size=-(-cols // -(-cols // min(spec.chunk_size, cols))),
  )
  return axes, plan, spec


def _fused_by_layout(
  args: tuple[jax.Array, ...],
  spec: registry.DivergenceSpec,
  axes: tuple[str, ...],
  plan: vl.Plan | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(weighted sum, value [N], |g| [N]) of the flat args: vocab plan, else one device or tokens."""
  if plan is not None:  # (a vocabulary no mesh axis divides falls back to whole heads)
    return _fused_vocab(*args, spec, plan)
  if not axes:
    return _fused(*args, spec)
  tokens, whole = PartitionSpec(axes), PartitionSpec()

  def local(h_s, w_s, h_t, w_t, w_N):
    total, value, norm = _fused(h_s, w_s, h_t, w_t, w_N, spec)
    return jax.lax.psum(total, axes), value, norm

  return jax.shard_map(
    local,
    in_specs=(tokens, whole, tokens, whole, tokens),
    out_specs=(whole, tokens, tokens),
    axis_names=set(axes),
    check_vma=False,
  )(*args)
