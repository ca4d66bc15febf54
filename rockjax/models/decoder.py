"""Decoder: the decoder-only language model (Qwen3, Qwen3-MoE, Qwen2, Llama 3) as an NNX module.

Shape letters: N decoder layers, B batch, L positions of this call (T in the cache docs: new
tokens per decode call), S cache slots, K key/value heads, E head_dim, D hidden size,
V vocabulary.

Layer stack: with `cfg.scans_layers` the layers are one DecoderLayer whose parameters carry a
leading [N] axis (logical axis 'layers'), built with nnx.vmap and applied with nnx.scan, so
XLA compiles one layer instead of N. Otherwise `layers` is an nnx.List of N DecoderLayers run
in a Python loop. Both apply the same remat policy (rockjax.models.remat) to each layer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from rockjax import sharding as shd
from rockjax.models import remat as remat_lib
from rockjax.models.cache import KVCache
from rockjax.models.config import ModelConfig
from rockjax.models.embed import embed_lookup
from rockjax.models.layers import MLP, Attention, RMSNorm, param
from rockjax.models.moe import MoE


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) (dense SwiGLU or MoE)."""

  def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
    self.input_layernorm = norm()
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = norm()
    self.mlp = MoE(cfg, rngs=rngs) if cfg.is_moe_layer(layer) else MLP(cfg, rngs=rngs)

  def __call__(
    self,
    x_BxLxD: jax.Array,
    positions_BxL: jax.Array,
    mask: jax.Array,
    kv: tuple[jax.Array, jax.Array] | None = None,
    cache_index: jax.Array | None = None,
    layer: jax.Array | int = 0,
    packed: bool = False,
  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """mask: the attention mask [B, L] (packed: the segment ids) without kv,
    (allowed_old_BxLxS, allowed_new_BxLxL) with it; kv: all layers' stacked cache, this one's
    at index `layer` (layers.Attention)."""
    h_BxLxD, new_kv = self.self_attn(
      self.input_layernorm(x_BxLxD), positions_BxL, mask, kv, cache_index, layer, packed=packed
    )
    # Named for the 'save_names' / 'offload' remat policies (identity otherwise).
    x_BxLxD = x_BxLxD + checkpoint_name(h_BxLxD, remat_lib.ATTN_OUT)
    mlp_in_BxLxD = checkpoint_name(self.post_attention_layernorm(x_BxLxD), remat_lib.MLP_IN)
    x_BxLxD = x_BxLxD + self.mlp(mlp_in_BxLxD)
    return x_BxLxD, new_kv


def _positions(mask_BxL: jax.Array, offset_B: jax.Array | int = 0) -> jax.Array:
  """Position of each token = number of real tokens before it (so left padding is skipped)."""
  return jnp.maximum(offset_B + jnp.cumsum(mask_BxL, axis=-1) - 1, 0).astype(jnp.int32)


def _segment_positions(segment_ids_BxL: jax.Array) -> jax.Array:
  """Position of each token within its run of equal segment ids (packed rows: 0 at the first
  token of every sequence), for segments that are contiguous, as the packer lays them out."""
  seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
  cols_BxL = jnp.broadcast_to(jnp.arange(seg_BxL.shape[1], dtype=jnp.int32), seg_BxL.shape)
  starts_BxL = jnp.concatenate(
    [jnp.ones_like(seg_BxL[:, :1], bool), seg_BxL[:, 1:] != seg_BxL[:, :-1]], axis=1
  )
  first_BxL = jax.lax.cummax(jnp.where(starts_BxL, cols_BxL, 0), axis=1)
  return cols_BxL - first_BxL


class Decoder(nnx.Module):
  """A causal LM. `model(ids_BxL, mask_BxL)` -> float32 logits [B, L, V].

  Full forward: `model(input_ids_BxL, attention_mask_BxL, positions_BxL=None,
  return_hidden=False)`; positions default to cumsum(mask) - 1 (clipped at 0), so a
  left-padded row gives the same outputs at its real tokens as the unpadded row.

  Packed rows (sample packing, rockjax.data.packing): `segment_ids_BxL` (1, 2, 3, ... per
  sequence, 0 padding) replaces the attention mask as attention's segment ids, so a token
  sees only earlier tokens of its own sequence, and positions default to each token's index
  within its sequence; every sequence of a row then gets the outputs it gets alone.

  Decoding with a cache (`cache = model.init_cache(B, S)`):
  `logits_BxTxV, cache = model(ids_BxT, mask_BxT, cache=cache, cache_index=None,
  positions_BxT=None, kv_mask_BxS=None)` writes the T tokens' keys/values at slots
  [cache_index, cache_index + T) (default: `cache.index`; may be a traced scalar under jit),
  marks those slots valid where `mask_BxT` is 1, and lets each query attend to the valid slots
  at or before its own slot. Default positions continue from the number of valid slots before
  `cache_index`. `kv_mask_BxS`, if given, replaces the validity mask used for attention (it
  must already include this call's slots). Prefill a left-padded prompt with T = P, then feed
  one token per step with mask 1; the returned cache has `index` advanced by T.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = param(
      rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.param_dtype
    )
    self.layers = _make_layers(cfg, rngs)
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
    self.lm_head = (
      None
      if cfg.tie_word_embeddings
      else param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.param_dtype)
    )

  def lm_head_weight(self) -> jax.Array:
    """The output projection [D, V] (the transposed embedding when embeddings are tied)."""
    if self.lm_head is None:
      return self.embed_tokens[...].T
    return self.lm_head[...]

  def logits(self, hidden_BxLxD: jax.Array, *, strict: bool = True) -> jax.Array:
    """Float32 logits [B, L, V] = hidden @ lm_head_weight(); strict=False for the sampler's
    rows, which may be fewer than the batch axes (rockjax.sharding.constrain)."""
    head_DxV = self.lm_head_weight().astype(self.cfg.dtype)
    logits_BxLxV = jnp.einsum(
      "bld,dv->blv", hidden_BxLxD, head_DxV, preferred_element_type=jnp.float32
    )
    return shd.constrain(logits_BxLxV, ("batch", "length", "act_vocab"), strict=strict)

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty KVCache with `max_len` slots (dtype defaults to the compute dtype), laid out
    by the current mesh's rules (KVCache.constrained; as created without one)."""
    cfg = self.cfg
    cache = KVCache.init(
      cfg.num_layers,
      batch,
      max_len,
      cfg.num_kv_heads,
      cfg.head_dim,
      cfg.dtype if dtype is None else dtype,
    )
    return cache.constrained()

  def hidden_states(
    self,
    input_ids_BxL: jax.Array,
    attention_mask_BxL: jax.Array | None = None,
    *,
    positions_BxL: jax.Array | None = None,
    segment_ids_BxL: jax.Array | None = None,
  ) -> jax.Array:
    """Final normed hidden states [B, L, D] (no cache); logits == hidden @ lm_head_weight()."""
    return self(
      input_ids_BxL,
      attention_mask_BxL,
      positions_BxL=positions_BxL,
      segment_ids_BxL=segment_ids_BxL,
      return_hidden=True,
    )

  def __call__(
    self,
    input_ids_BxL: jax.Array,
    attention_mask_BxL: jax.Array | None = None,
    *,
    positions_BxL: jax.Array | None = None,
    cache: KVCache | None = None,
    cache_index: jax.Array | int | None = None,
    kv_mask_BxS: jax.Array | None = None,
    return_hidden: bool = False,
    segment_ids_BxL: jax.Array | None = None,
  ) -> jax.Array | tuple[jax.Array, KVCache]:
    """Logits [B, L, V] (float32) or, with return_hidden, normed hidden [B, L, D]; see class doc.

    With `cache`, returns (logits or hidden, new_cache). `segment_ids_BxL` (packed rows) is
    for the whole-sequence forward only.
    """
    B, L = input_ids_BxL.shape
    if segment_ids_BxL is not None and cache is not None:
      raise ValueError("segment_ids_BxL (packed rows) works without a KV cache only")
    mask_BxL = (
      jnp.ones((B, L), jnp.int32)
      if attention_mask_BxL is None
      else jnp.asarray(attention_mask_BxL, jnp.int32)
    )
    # The whole-sequence forward (train step, teacher scoring) shards rows and the sequence
    # ('context'), strictly; decoding (a few rows, one token) keeps the length whole.
    train = cache is None
    ids_axes = ("batch", "length" if train else None)
    x_BxLxD = embed_lookup(self.embed_tokens[...], input_ids_BxL, ids_axes=ids_axes)
    x_BxLxD = shd.constrain(x_BxLxD.astype(self.cfg.dtype), (*ids_axes, "act_embed"), strict=train)

    if cache is None and segment_ids_BxL is not None:
      seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
      if positions_BxL is None:
        positions_BxL = _segment_positions(seg_BxL)
      x_BxLxD = self._run_layers(x_BxLxD, positions_BxL, seg_BxL, packed=True)
      new_cache = None
    elif cache is None:
      if positions_BxL is None:
        positions_BxL = _positions(mask_BxL)
      x_BxLxD = self._run_layers(x_BxLxD, positions_BxL, mask_BxL)
      new_cache = None
    else:
      x_BxLxD, new_cache = self._run_layers_cached(
        x_BxLxD, mask_BxL, positions_BxL, cache, cache_index, kv_mask_BxS
      )

    hidden_BxLxD = self.norm(x_BxLxD)
    out = hidden_BxLxD if return_hidden else self.logits(hidden_BxLxD, strict=train)
    return out if new_cache is None else (out, new_cache)

  def _block(self, packed: bool = False):
    """(layer, x_BxLxD, positions_BxL, mask) -> x_BxLxD, wrapped in the config's remat policy;
    `packed`: the mask holds packed rows' segment ids."""

    def block(layer: DecoderLayer, x_BxLxD, positions_BxL, mask):
      # Pin each layer input to rows x sequence shards (GSPMD propagates it through the layer).
      x_BxLxD = shd.constrain(x_BxLxD, ("batch", "length", "act_embed"))
      return layer(x_BxLxD, positions_BxL, mask, packed=packed)[0]

    if self.cfg.remat == "none":
      return block
    # Inside a scan the loop already keeps XLA from merging recomputation into the forward.
    return nnx.remat(
      block,
      policy=remat_lib.checkpoint_policy(self.cfg.remat),
      prevent_cse=not self.cfg.scans_layers,
    )

  def _run_layers(
    self, x_BxLxD: jax.Array, positions_BxL: jax.Array, mask: jax.Array, packed: bool = False
  ) -> jax.Array:
    """The no-cache stack (scanned or unrolled); `mask` is passed to every layer unchanged
    (the attention mask, or with `packed` the segment ids)."""
    block = self._block(packed)
    if not self.cfg.scans_layers:
      for layer in self.layers:
        x_BxLxD = block(layer, x_BxLxD, positions_BxL, mask)
      return x_BxLxD

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, graph_updates=False)
    def scan(layer: DecoderLayer, x_BxLxD: jax.Array) -> jax.Array:
      return block(layer, x_BxLxD, positions_BxL, mask)

    return scan(self.layers, x_BxLxD)

  def _run_layers_cached(
    self,
    x_BxLxD: jax.Array,
    mask_BxL: jax.Array,
    positions_BxL: jax.Array | None,
    cache: KVCache,
    cache_index: jax.Array | int | None,
    kv_mask_BxS: jax.Array | None,
  ) -> tuple[jax.Array, KVCache]:
    """The stack over a KV cache: write L entries at cache_index, attend over valid slots."""
    L = x_BxLxD.shape[1]
    S = cache.max_len
    index = cache.index if cache_index is None else jnp.asarray(cache_index, jnp.int32)
    slots_S = jnp.arange(S, dtype=jnp.int32)
    if positions_BxL is None:
      # Continue numbering after the real tokens already cached (left padding is skipped).
      before_B = jnp.sum(cache.mask_BxS * (slots_S < index)[None], axis=-1)
      positions_BxL = _positions(mask_BxL, before_B[:, None])
    mask_BxS = jax.lax.dynamic_update_slice(cache.mask_BxS, mask_BxL, (0, index))
    valid_BxS = mask_BxS if kv_mask_BxS is None else kv_mask_BxS.astype(jnp.int32)
    query_slots_L = index + jnp.arange(L, dtype=jnp.int32)
    allowed_BxLxS = (slots_S[None, None, :] <= query_slots_L[None, :, None]) & (
      valid_BxS[:, None, :] > 0
    )
    # Split once for all layers: slots cached before this call, and this call's own L slots.
    allowed = (
      allowed_BxLxS & (slots_S < index)[None, None, :],
      jax.lax.dynamic_slice_in_dim(allowed_BxLxS, index, L, axis=2),
    )

    # The stacked cache is a carry, not scanned xs -> ys: each layer writes its L new slots in
    # place and reads its own slice where it lies (layers.Attention), so nothing else moves.
    def block(layer: DecoderLayer, x_BxLxD, k_NxBxKxSxE, v_NxBxKxSxE, i):
      kv = (k_NxBxKxSxE, v_NxBxKxSxE)
      x_BxLxD, kv = layer(x_BxLxD, positions_BxL, allowed, kv, index, i)
      return (x_BxLxD, *kv)

    # The stacked cache is a carry, not scanned xs -> ys (which copied each layer's whole
    # cache out and back every step): each layer reads its slice where it lies, then writes its
    # L new slots in place (layers.Attention).
    k_NxBxKxSxE, v_NxBxKxSxE = cache.k, cache.v
    if self.cfg.scans_layers:

      @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, graph_updates=False)
      def scan(layer: DecoderLayer, carry):
        x_BxLxD, k_NxBxKxSxE, v_NxBxKxSxE, i = carry
        return (*block(layer, x_BxLxD, k_NxBxKxSxE, v_NxBxKxSxE, i), i + 1)

      carry = (x_BxLxD, k_NxBxKxSxE, v_NxBxKxSxE, jnp.int32(0))
      x_BxLxD, k_NxBxKxSxE, v_NxBxKxSxE, _ = scan(self.layers, carry)
    else:
      for i, layer in enumerate(self.layers):
        x_BxLxD, k_NxBxKxSxE, v_NxBxKxSxE = block(layer, x_BxLxD, k_NxBxKxSxE, v_NxBxKxSxE, i)
    new_cache = KVCache(k=k_NxBxKxSxE, v=v_NxBxKxSxE, mask_BxS=mask_BxS, index=index + L)
    return x_BxLxD, new_cache


# nnx.vmap metadata: the stacked axis is named 'layers' in the parameters' logical axes
# (rockjax.sharding maps it to no mesh axis: every device holds all layers of its shard).
# The scans use nnx's tree mode (graph_updates=False): the layers are read-only there, and it
# also works when the model is called inside a plain jax loop (the sampler's while_loop),
# where graph mode refuses modules from the enclosing trace.
_LAYER_AXIS = {nnx.PARTITION_NAME: "layers"}


def _make_layers(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """One DecoderLayer with [N]-stacked parameters (scanned), or an nnx.List of N layers."""
  if not cfg.scans_layers:
    return nnx.List([DecoderLayer(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_AXIS)
  def make(rngs: nnx.Rngs) -> DecoderLayer:
    return DecoderLayer(cfg, 0, rngs=rngs)  # all layers alike: layer 0 stands for every one

  return make(rngs)
