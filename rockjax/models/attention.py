"""Self-attention over a whole sequence (no KV cache), with the implementation chosen by name.

`attend(q, k, v, segment_ids)`: query i attends key j iff j <= i (causal) and
segment_ids[i] == segment_ids[j]. Decoders pass the attention mask as segment ids (1 real,
0 padding), so real tokens never see padding and padded queries give finite values that
nobody reads; packed rows (data.pack) pass their own segment ids (1, 2, 3, ... one per packed
sequence, 0 padding) with `packed=True`, so no sequence sees another. Implementations
(model.attention):

- `einsum`: dense float32 scores `[B, H, L, S]` and softmax; the reference. The KV-cache
  decode path always uses its two-part form (rockjax.models.cached_attention).
- `blocked`: pure XLA online softmax over key blocks with a recomputing backward
  (rockjax.models.attention_blocked); memory O(L). Any platform; the CPU default.
- `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn')` (GPU, bfloat16/float16).
  It takes padding only as key lengths (one segment per row), so packed rows run `blocked`.
- `splash`: the TPU Pallas splash-attention kernel under `jax.shard_map`.
- `auto`: splash on TPU (blocked if L is not a multiple of the block), cudnn on GPU with a
  16-bit compute dtype, otherwise blocked, or einsum when L fits in one block (blocked would
  hold the same [L, L] scores and recompute them in the backward pass).

Under a mesh with a 'context' axis every implementation runs context-parallel
(rockjax.models.attention_context): queries stay in their sequence shard, K/V are gathered.

Shape letters: B batch, L query positions, S key positions, H query heads, K key/value heads,
G query heads per key/value head (H // K), E head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from rockjax import sharding as shd
from rockjax.models import attention_context as ctx
from rockjax.models.attention_blocked import MASK_VALUE, blocked_attention

IMPLEMENTATIONS = ("auto", "einsum", "blocked", "cudnn", "splash")
SPLASH_LANES = 128  # splash block sizes must be multiples of this


def current_platform() -> str:
  """The platform the step is compiled for: that of the mesh set with jax.set_mesh (e.g. the
  TPU devices of an ahead-of-time topology on a CPU machine), else jax's default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  platform = getattr(device, "platform", None)
  return platform or jax.default_backend()


def resolve(
  implementation: str, *, length: int, block_size: int, dtype, platform: str | None = None
) -> str:
  """The implementation `auto` stands for on `platform` (default: current_platform())."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention {implementation!r}; expected one of {IMPLEMENTATIONS}")
  if implementation != "auto":
    return implementation
  platform = platform or current_platform()
  if platform == "tpu":
    fits = block_size % SPLASH_LANES == 0 and length % block_size == 0
    return "splash" if fits else "blocked"
  if platform == "gpu" and jnp.dtype(dtype).itemsize == 2:
    return "cudnn"
  # One block: blocked saves no memory, only adds its recomputing backward (3% of the CPU step
  # time at L=256 in benchmarks/step.py).
  return "einsum" if length <= block_size else "blocked"


def attend(
  q_BxLxHxE: jax.Array,
  k_BxLxKxE: jax.Array,
  v_BxLxKxE: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  causal: bool = True,
  scale: float | None = None,
  implementation: str = "auto",
  block_size: int = 512,
  interpret: bool | None = None,
  packed: bool = False,
) -> jax.Array:
  """Masked softmax(q k^T * scale) v -> [B, L, H, E] in q's dtype (GQA: H a multiple of K).

  scale defaults to E ** -0.5. block_size: key/query block of `blocked` and `splash`.
  interpret: run splash through the Pallas interpreter (default: when not on a TPU).
  packed: the segment ids may hold several sequences per row (sample packing); einsum, blocked
  and splash mask them as they are, cudnn (padding as key lengths only) gives way to blocked.
  """
  B, L, H, E = q_BxLxHxE.shape
  K = k_BxLxKxE.shape[2]
  if H % K:
    raise ValueError(f"query heads H={H} must be a multiple of key/value heads K={K}")
  scale = E**-0.5 if scale is None else float(scale)
  shards = ctx.shards()
  name = resolve(implementation, length=L // shards, block_size=block_size, dtype=q_BxLxHxE.dtype)
  if packed and name == "cudnn":
    name = "blocked"  # cuDNN's key lengths describe one segment per row, not several
  args = (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, segment_ids_BxL)
  if name == "splash":
    return splash_attention(
      *args, causal=causal, scale=scale, block_size=block_size, interpret=interpret
    )
  if shards > 1:
    return ctx.context_attention(_context_local(name, causal, scale, block_size), *args)
  if name == "einsum":
    return einsum_attention(*args, causal=causal, scale=scale)
  if name == "blocked":
    return blocked_attention(*args, causal=causal, scale=scale, block_size=block_size)
  return cudnn_attention(*args, causal=causal, scale=scale)


def _context_local(name: str, causal: bool, scale: float, block_size: int) -> ctx.LocalAttention:
  """Implementation `name` over one query shard and all keys (attention_context)."""

  def local(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, seg_BxL, seg_BxS, offset):
    kw = dict(causal=causal, scale=scale, kv_segment_ids_BxS=seg_BxS, q_offset=offset)
    if name == "einsum":
      return einsum_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, seg_BxL, **kw)
    if name == "blocked":
      return blocked_attention(
        q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, seg_BxL, block_size=block_size, **kw
      )
    # cudnn: the shard's queries do not line up with the keys, so the padding-as-key-lengths
    # trick does not apply; the segment + causal mask is passed explicitly.
    allowed_BxLxS = segment_mask(seg_BxL, causal, seg_BxS, offset)
    return jax.nn.dot_product_attention(
      q_BxLxHxE,
      k_BxSxKxE,
      v_BxSxKxE,
      mask=allowed_BxLxS[:, None],
      scale=scale,
      implementation=_CUDNN_CONTEXT_IMPLEMENTATION,
    )

  return local


# What the context-parallel cudnn path asks jax.nn.dot_product_attention for (tests on CPU set
# None: jax's XLA implementation).
_CUDNN_CONTEXT_IMPLEMENTATION: str | None = "cudnn"


def masked_attention(
  q_BxLxHxE: jax.Array,
  k_BxKxSxE: jax.Array,
  v_BxKxSxE: jax.Array,
  allowed_BxLxS: jax.Array,
  scale: float,
) -> jax.Array:
  """Dense attention of L queries over S heads-major keys where `allowed_BxLxS` -> [B, L, H, E].

  Scores and softmax in float32 whatever the compute dtype; the probabilities are cast to q's
  dtype for the value matmul. A fully masked query softmaxes to uniform (finite garbage).
  """
  B, L, H, E = q_BxLxHxE.shape
  K = k_BxKxSxE.shape[1]
  # Heads-major: (B, K) are the batch dims of both matmuls (no transpose of a KV cache).
  q_BxKxGxLxE = q_BxLxHxE.reshape(B, L, K, H // K, E).transpose(0, 2, 3, 1, 4)
  scores_BxKxGxLxS = (
    jnp.einsum("bkgle,bkse->bkgls", q_BxKxGxLxE, k_BxKxSxE, preferred_element_type=jnp.float32)
    * scale
  )
  scores_BxKxGxLxS = jnp.where(allowed_BxLxS[:, None, None], scores_BxKxGxLxS, MASK_VALUE)
  probs_BxKxGxLxS = jax.nn.softmax(scores_BxKxGxLxS, axis=-1).astype(q_BxLxHxE.dtype)
  out_BxKxGxLxE = jnp.einsum("bkgls,bkse->bkgle", probs_BxKxGxLxS, v_BxKxSxE)
  return out_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(B, L, H, E)


def segment_mask(
  segment_ids_BxL: jax.Array,
  causal: bool,
  kv_segment_ids_BxS: jax.Array | None = None,
  q_offset: jax.Array | int = 0,
) -> jax.Array:
  """allowed [B, L, S]: same segment and, when causal, key at or before the query's global
  position q_offset + i (keys default to the queries: S = L, offset 0)."""
  seg_BxL = jnp.asarray(segment_ids_BxL)
  seg_BxS = seg_BxL if kv_segment_ids_BxS is None else jnp.asarray(kv_segment_ids_BxS)
  allowed_BxLxS = seg_BxL[:, :, None] == seg_BxS[:, None, :]
  if causal:
    L, S = seg_BxL.shape[1], seg_BxS.shape[1]
    pos_L = q_offset + jnp.arange(L, dtype=jnp.int32)
    allowed_BxLxS = (
      allowed_BxLxS & (jnp.arange(S, dtype=jnp.int32)[None, :] <= pos_L[:, None])[None]
    )
  return allowed_BxLxS


def einsum_attention(
  q_BxLxHxE: jax.Array,
  k_BxSxKxE: jax.Array,
  v_BxSxKxE: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  causal: bool,
  scale: float,
  kv_segment_ids_BxS: jax.Array | None = None,
  q_offset: jax.Array | int = 0,
) -> jax.Array:
  """The reference: `masked_attention` with the dense segment mask (queries at global
  positions q_offset + i when they are one sequence shard of the keys)."""
  k_BxKxSxE, v_BxKxSxE = jnp.swapaxes(k_BxSxKxE, 1, 2), jnp.swapaxes(v_BxSxKxE, 1, 2)
  allowed_BxLxS = segment_mask(segment_ids_BxL, causal, kv_segment_ids_BxS, q_offset)
  return masked_attention(q_BxLxHxE, k_BxKxSxE, v_BxKxSxE, allowed_BxLxS, scale)


def cudnn_attention(
  q_BxLxHxE: jax.Array,
  k_BxLxKxE: jax.Array,
  v_BxLxKxE: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  causal: bool,
  scale: float,
  implementation: str | None = "cudnn",
) -> jax.Array:
  """`jax.nn.dot_product_attention` with padding given as key lengths (every nonzero id is one
  segment: the real tokens).

  cuDNN's padding mask keeps the first n keys of a row, so each row's real tokens are first
  moved to the front in order (a stable sort; left padding, right padding or holes alike),
  attended with the causal mask and key length n, and moved back. Every query row stays
  valid (padded ones see the real keys, or key 0 in an all-padding row: finite garbage).
  `implementation` is passed through ('xla' or None run the same wrapper on any platform).
  """
  real_BxL = jnp.asarray(segment_ids_BxL) != 0
  order_BxL = jnp.argsort(~real_BxL, axis=1, stable=True)
  take = lambda x, idx: jnp.take_along_axis(x, idx[:, :, None, None], axis=1)
  lengths_B = jnp.maximum(real_BxL.sum(axis=1), 1).astype(jnp.int32)
  out_BxLxHxE = jax.nn.dot_product_attention(
    take(q_BxLxHxE, order_BxL),
    take(k_BxLxKxE, order_BxL),
    take(v_BxLxKxE, order_BxL),
    scale=scale,
    is_causal=causal,
    key_value_seq_lengths=lengths_B,
    implementation=implementation,
  )
  return take(out_BxLxHxE, jnp.argsort(order_BxL, axis=1))


def splash_attention(
  q_BxLxHxE: jax.Array,
  k_BxLxKxE: jax.Array,
  v_BxLxKxE: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  causal: bool,
  scale: float,
  block_size: int,
  interpret: bool | None = None,
) -> jax.Array:
  """The TPU splash kernel (GQA, padding as segment ids), vmapped over rows.

  Under a mesh (`jax.set_mesh`) it runs in `jax.shard_map`: rows over the 'batch' mesh axes and
  heads over 'tensor' when the key/value heads divide it (rockjax.sharding's rules).
  """
  B, L, H, E = q_BxLxHxE.shape
  if L % block_size or block_size % SPLASH_LANES:
    raise ValueError(
      f"splash attention needs the sequence length L={L} to be a multiple of the block size "
      f"{block_size} (model.attention_block), itself a multiple of {SPLASH_LANES}; "
      "use attention 'blocked' (or 'auto') for other lengths"
    )
  if interpret is None:
    interpret = current_platform() != "tpu"
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  q_BxHxLxE = heads_major((q_BxLxHxE * scale).astype(q_BxLxHxE.dtype))
  k_BxKxLxE, v_BxKxLxE = heads_major(k_BxLxKxE), heads_major(v_BxLxKxE)
  seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
  sizes = splash.BlockSizes(
    block_q=block_size,
    block_kv=block_size,
    block_kv_compute=block_size,
    block_q_dkv=block_size,
    block_kv_dkv=block_size,
    block_kv_dkv_compute=block_size,
    block_q_dq=block_size,
    block_kv_dq=block_size,
  )

  def local(q_bxhxLxE, k_bxkxLxE, v_bxkxLxE, seg_bxL):
    one = splash.CausalMask((L, L)) if causal else splash.FullMask((L, L))
    mask = splash.MultiHeadMask([one] * q_bxhxLxE.shape[1])
    kernel = splash.make_splash_mha(
      mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )
    row = lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s))
    return jax.vmap(row)(q_bxhxLxE, k_bxkxLxE, v_bxkxLxE, seg_bxL)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out_BxHxLxE = local(q_BxHxLxE, k_BxKxLxE, v_BxKxLxE, seg_BxL)
  elif ctx.shards() > 1:
    return _splash_context(
      q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, seg_BxL, causal, scale, sizes, interpret
    )
  else:
    # The kv heads decide: sharding them shards the query heads in whole groups.
    spec = shd.logical_to_spec(("batch", "act_heads", "length", None), k_BxKxLxE.shape, mesh)
    seg_spec = PartitionSpec(spec[0], None)
    out_BxHxLxE = jax.shard_map(
      local, in_specs=(spec, spec, spec, seg_spec), out_specs=spec, check_vma=False
    )(q_BxHxLxE, k_BxKxLxE, v_BxKxLxE, seg_BxL)
  return heads_major(out_BxHxLxE).astype(q_BxLxHxE.dtype)


def _splash_context(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, seg_BxL, causal, scale, sizes, interpret):
  """Splash over query shards (attention_context): the kernel is built for the whole [L, L]
  mask with q_seq_shards = the context size, and its mask info is split over 'context' as
  shard_map input, so each shard's kernel masks with global query positions."""
  mesh = jax.sharding.get_abstract_mesh()
  B, L, H, E = q_BxLxHxE.shape
  shards = ctx.shards()
  if (L // shards) % sizes.block_q:
    raise ValueError(
      f"splash attention with {shards} sequence shards needs the shard length {L // shards} "
      f"to be a multiple of the block size {sizes.block_q} (model.attention_block)"
    )
  kv_spec = shd.logical_to_spec(("batch", "length", "act_heads", None), k_BxLxKxE.shape, mesh)
  heads = {None: 1, **dict(zip(mesh.axis_names, mesh.axis_sizes))}
  local_heads = H // (1 if kv_spec[2] is None else _size(kv_spec[2], heads))
  one = splash.CausalMask((L, L)) if causal else splash.FullMask((L, L))
  kernel = splash.make_splash_mha(
    splash.MultiHeadMask([one] * local_heads),
    block_sizes=sizes,
    head_shards=1,
    q_seq_shards=shards,
    interpret=interpret,
  )
  kernel_spec = kernel.manual_sharding_spec(
    jax.sharding.NamedSharding(mesh, PartitionSpec(None, kv_spec[1]))
  )

  def local(q_bxlxhxE, k_bxSxkxE, v_bxSxkxE, seg_bxl, seg_bxS, offset, kernel):
    del offset  # the sharded mask info holds the global query positions
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)
    row = lambda q, k, v, sq, skv: kernel(q, k, v, segment_ids=splash.SegmentIds(q=sq, kv=skv))
    q_bxhxlxE = heads_major((q_bxlxhxE * scale).astype(q_bxlxhxE.dtype))
    out = jax.vmap(row)(q_bxhxlxE, heads_major(k_bxSxkxE), heads_major(v_bxSxkxE), seg_bxl, seg_bxS)
    return heads_major(out)

  out_BxLxHxE = ctx.context_attention(
    local,
    q_BxLxHxE,
    k_BxLxKxE,
    v_BxLxKxE,
    seg_BxL,
    extra=(kernel,),
    extra_specs=(kernel_spec,),
  )
  return out_BxLxHxE.astype(q_BxLxHxE.dtype)


def _size(axes, sizes: dict) -> int:
  """Product of the sizes of a PartitionSpec entry's mesh axes."""
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  n = 1
  for a in axes:
    n *= sizes[a]
  return n
