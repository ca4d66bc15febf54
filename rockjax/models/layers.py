"""Decoder building blocks: parameters with logical axes, RMSNorm, RoPE, GQA attention, SwiGLU.

Shape letters: B batch, L query positions, S key positions (cache slots, or L without a cache),
D hidden size, H query heads, K key/value heads, G query heads per key/value head (H // K),
E head_dim, F MLP width, C chunks of P positions (token-chunked MLP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rockjax.models import attention, cached_attention
from rockjax.models.config import ModelConfig, RopeConfig

_INIT_STD = 0.02


def param(
  rngs: nnx.Rngs | None,
  shape: Sequence[int],
  axes: Sequence[str | None],
  dtype: Any,
  init: str = "normal",
) -> nnx.Param:
  """An nnx.Param carrying logical axis names (sharding is applied later, by rockjax.sharding)."""
  shape = tuple(shape)
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  # eager_sharding=False: logical names are metadata only, so building needs no mesh context.
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32 (HF Llama/Qwen semantics: weight * x / rms(x))."""

  def __init__(self, size: int, eps: float, *, param_dtype: Any):
    self.weight = param(None, (size,), ("norm",), param_dtype, init="ones")
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.weight[...].astype(jnp.float32)).astype(x.dtype)


class Linear(nnx.Module):
  """An einsum projection with a named multi-dim kernel and optional bias over the output dims."""

  def __init__(
    self,
    equation: str,
    kernel_shape: Sequence[int],
    kernel_axes: Sequence[str],
    *,
    bias_ndim: int = 0,
    use_bias: bool = False,
    cfg: ModelConfig,
    rngs: nnx.Rngs,
  ):
    self.equation = equation
    self.kernel = param(rngs, kernel_shape, kernel_axes, cfg.param_dtype)
    self.bias = (
      param(
        None, kernel_shape[-bias_ndim:], kernel_axes[-bias_ndim:], cfg.param_dtype, init="zeros"
      )
      if use_bias
      else None
    )
    self.dtype = cfg.dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum(self.equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def rope_inv_freq(head_dim: int, rope: RopeConfig) -> np.ndarray:
  """Inverse frequencies [E/2] for default, linear and Llama-3 scaled RoPE (as in transformers)."""
  inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if rope.rope_type == "linear":
    inv = inv / rope.factor
  elif rope.rope_type == "llama3":
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    old = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = old / rope.low_freq_factor, old / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x_BxLxNxE: jax.Array, positions_BxL: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates halves of the head dim (HF `rotate_half` convention), in float32."""
  freqs_BxLx1xE2 = (positions_BxL.astype(jnp.float32)[..., None] * inv_freq)[:, :, None, :]
  cos, sin = jnp.cos(freqs_BxLx1xE2), jnp.sin(freqs_BxLx1xE2)
  x1, x2 = jnp.split(x_BxLxNxE.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxE.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, optional q/k norm and an optional KV cache."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    D, H, K, E = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(cfg=cfg, rngs=rngs)
    self.q_proj = Linear(
      "bld,dhe->blhe",
      (D, H, E),
      ("embed", "heads", "head_dim"),
      bias_ndim=2,
      use_bias=cfg.qkv_bias,
      **kw,
    )
    self.k_proj = Linear(
      "bld,dke->blke",
      (D, K, E),
      ("embed", "kv_heads", "head_dim"),
      bias_ndim=2,
      use_bias=cfg.qkv_bias,
      **kw,
    )
    self.v_proj = Linear(
      "bld,dke->blke",
      (D, K, E),
      ("embed", "kv_heads", "head_dim"),
      bias_ndim=2,
      use_bias=cfg.qkv_bias,
      **kw,
    )
    self.o_proj = Linear(
      "blhe,hed->bld",
      (H, E, D),
      ("heads", "head_dim", "embed"),
      bias_ndim=1,
      use_bias=cfg.o_bias,
      **kw,
    )
    norm = lambda: RMSNorm(E, cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
    self.q_norm = norm() if cfg.qk_norm else None
    self.k_norm = norm() if cfg.qk_norm else None
    self.inv_freq = tuple(float(f) for f in rope_inv_freq(E, cfg.rope))  # static, hashable
    self.scale = E**-0.5
    self.dtype = cfg.dtype
    self.implementation = cfg.attention  # no-cache attention (rockjax.models.attention)
    self.attention_block = cfg.attention_block

  def __call__(
    self,
    x_BxLxD: jax.Array,
    positions_BxL: jax.Array,
    mask: jax.Array,
    kv: tuple[jax.Array, jax.Array] | None = None,
    cache_index: jax.Array | int | None = None,
    layer: jax.Array | int = 0,
    packed: bool = False,
  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Self-attention of the L positions; with `kv`, over a KV cache after writing L entries.

    Without kv, `mask` is the attention mask [B, L] (1 real, 0 padding), used as segment ids
    by `attention.attend` with the configured implementation (cfg.attention); with `packed`,
    it holds packed rows' segment ids (1, 2, 3, ... per sequence, 0 padding).
    With kv, `mask` is (allowed_old_BxLxS, allowed_new_BxLxL) (rockjax.models.cached_attention)
    and kv all layers' stacked cache (k_NxBxKxSxE,
    v_NxBxKxSxE): this step's keys/values are written at slots [cache_index, cache_index + L)
    of layer `layer` in place (only those L slots move), and the queries attend over that
    layer's S slots where allowed (dense einsum reading the buffer where it lies).
    """
    q_BxLxHxE = self.q_proj(x_BxLxD)
    k_BxLxKxE = self.k_proj(x_BxLxD)
    v_BxLxKxE = self.v_proj(x_BxLxD)
    if self.q_norm is not None:
      q_BxLxHxE, k_BxLxKxE = self.q_norm(q_BxLxHxE), self.k_norm(k_BxLxKxE)
    inv_freq = np.asarray(self.inv_freq, np.float32)
    q_BxLxHxE = apply_rope(q_BxLxHxE, positions_BxL, inv_freq)
    k_BxLxKxE = apply_rope(k_BxLxKxE, positions_BxL, inv_freq)

    if kv is None:
      out_BxLxHxE = attention.attend(
        q_BxLxHxE,
        k_BxLxKxE,
        v_BxLxKxE,
        mask,
        scale=self.scale,
        implementation=self.implementation,
        block_size=self.attention_block,
        packed=packed,
      )
      return self.o_proj(out_BxLxHxE), None
    k_NxBxKxSxE, v_NxBxKxSxE = kv
    layer = jnp.asarray(layer, jnp.int32)
    index = jnp.asarray(cache_index, jnp.int32)
    # Read this layer's cached slots where they lie (before this call's write, so XLA can fuse
    # the read into the attention matmuls), with this call's keys/values attended separately.
    read = lambda x: jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False).astype(self.dtype)
    out_BxLxHxE = cached_attention.cached_attention(
      q_BxLxHxE,
      read(k_NxBxKxSxE),
      read(v_NxBxKxSxE),
      k_BxLxKxE.astype(k_NxBxKxSxE.dtype).astype(self.dtype),
      v_BxLxKxE.astype(v_NxBxKxSxE.dtype).astype(self.dtype),
      *mask,
      self.scale,
    )
    # Then write the L new slots: a dynamic_update_slice of a buffer nothing reads afterwards is
    # done in place, so a decode step moves 2 x B x K x E values per layer, not the cache.
    for_cache = lambda x: jnp.swapaxes(x, 1, 2)[None].astype(k_NxBxKxSxE.dtype)
    start = (layer, 0, 0, index, 0)
    k_NxBxKxSxE = jax.lax.dynamic_update_slice(k_NxBxKxSxE, for_cache(k_BxLxKxE), start)
    v_NxBxKxSxE = jax.lax.dynamic_update_slice(v_NxBxKxSxE, for_cache(v_BxLxKxE), start)
    return self.o_proj(out_BxLxHxE), (k_NxBxKxSxE, v_NxBxKxSxE)


def token_chunked(
  fn: Callable[[jax.Array], jax.Array], x_BxLxD: jax.Array, chunk: int
) -> jax.Array:
  """fn (position-wise, [B, P, D] -> [B, P, D]) applied P = `chunk` positions at a time.

  A lax.map over the C chunks with jax.checkpoint on each, so fn's intermediates (the MLP's
  [B, P, F]) exist one chunk at a time in the forward pass and are recomputed per chunk in the
  backward pass. The batch axis is kept whole (and sharded as before); L is padded with zeros
  to a multiple of `chunk` and the padding dropped. chunk == 0 or L <= chunk: fn(x) as is.
  """
  B, L, D = x_BxLxD.shape
  if chunk <= 0 or L <= chunk:
    return fn(x_BxLxD)
  C = -(-L // chunk)
  x_BxCPxD = jnp.pad(x_BxLxD, ((0, 0), (0, C * chunk - L), (0, 0)))
  x_CxBxPxD = jnp.swapaxes(x_BxCPxD.reshape(B, C, chunk, D), 0, 1)
  y_CxBxPxD = jax.lax.map(jax.checkpoint(fn), x_CxBxPxD)
  y_BxCPxD = jnp.swapaxes(y_CxBxPxD, 0, 1).reshape(B, C * chunk, y_CxBxPxD.shape[-1])
  return y_BxCPxD[:, :L]


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), over cfg.mlp_chunk positions at a time."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    D, F = cfg.hidden_size, cfg.intermediate_size
    kw = dict(cfg=cfg, rngs=rngs)
    self.gate_proj = Linear("bld,df->blf", (D, F), ("embed", "mlp"), **kw)
    self.up_proj = Linear("bld,df->blf", (D, F), ("embed", "mlp"), **kw)
    self.down_proj = Linear("blf,fd->bld", (F, D), ("mlp", "embed"), **kw)
    self.chunk = cfg.mlp_chunk

  def swiglu(self, x_BxLxD: jax.Array) -> jax.Array:
    """The unchunked SwiGLU (holds [B, L, F] intermediates)."""
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BxLxD)) * self.up_proj(x_BxLxD))

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    return token_chunked(self.swiglu, x_BxLxD, self.chunk)
