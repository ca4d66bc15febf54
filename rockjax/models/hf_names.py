"""Where each rockjax parameter lives in a Hugging Face checkpoint, and how its layout differs.

A `Source` says which HF tensor(s) hold one of our parameters and how to go from the HF
layout to ours: restrict to a window (fused gate/up experts), split HF dims into factors
(e.g. q_proj rows H*E -> (H, E)), then permute. Because the mapping is a pure re-indexing,
any box of our parameter can be read as a box of the HF tensor (see `read_box`), which is how
a sharded load reads only the slice each device needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rockjax.models.config import ModelConfig

Box = tuple[tuple[int, int], ...]  # per-dimension [start, stop)


@dataclasses.dataclass(frozen=True)
class Source:
  """One of our parameters as a re-indexing of HF tensor(s).

  keys: one HF name, or one per expert stacked as our dimension 0.
  hf_shape: the full shape each HF tensor must have.
  split: per HF dim, its factors (row-major); `window` (offset, size) per HF dim restricts
    the tensor first (None = whole dims). Our array = reshaped.transpose(perm).
  """

  keys: tuple[str, ...]
  hf_shape: tuple[int, ...]
  split: tuple[tuple[int, ...], ...]
  perm: tuple[int, ...]
  stacked: bool = False
  window: tuple[tuple[int, int], ...] | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    """Our parameter's shape."""
    flat = [f for factors in self.split for f in factors]
    inner = tuple(flat[p] for p in self.perm)
    return ((len(self.keys),) + inner) if self.stacked else inner


def _linear(
  key: str, out_factors: Sequence[int], in_factors: Sequence[int], perm: Sequence[int]
) -> Source:
  """An HF nn.Linear weight [out, in] whose dims split into factors, then permuted."""
  hf_shape = (math.prod(out_factors), math.prod(in_factors))
  return Source((key,), hf_shape, (tuple(out_factors), tuple(in_factors)), tuple(perm))


def _vector(key: str, factors: Sequence[int]) -> Source:
  """A 1-D HF tensor (norm weight, bias), optionally split into factors."""
  return Source((key,), (math.prod(factors),), (tuple(factors),), tuple(range(len(factors))))


def moe_layout(cfg: ModelConfig, has_key: Callable[[str], bool], layer: int) -> str:
  """'per_expert' (hub layout: experts.E.gate_proj.weight) or 'fused' (experts.gate_up_proj)."""
  n = cfg.preset.names
  prefix = f"{n.model}.layers.{layer}.{n.experts}"
  if has_key(f"{prefix}.0.gate_proj.weight"):
    return "per_expert"
  if has_key(f"{prefix}.gate_up_proj"):
    return "fused"
  return "per_expert"  # reported as missing per-expert tensors by the reader


def param_sources(
  cfg: ModelConfig,
  moe_layouts: dict[int, str] | None = None,
) -> dict[str, Source]:
  """Our parameter path ('layers.0.self_attn.q_proj.kernel', ...) -> its HF Source."""
  D, H, K, E, V = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size
  n = cfg.preset.names
  out: dict[str, Source] = {
    "embed_tokens": _linear(f"{n.model}.embed_tokens.weight", (V,), (D,), (0, 1)),
    "norm.weight": _vector(f"{n.model}.norm.weight", (D,)),
  }
  if not cfg.tie_word_embeddings:
    out["lm_head"] = _linear(n.lm_head, (V,), (D,), (1, 0))
  for i in range(cfg.num_layers):
    ours, hf = f"layers.{i}", f"{n.model}.layers.{i}"
    a, ha = f"{ours}.self_attn", f"{hf}.self_attn"
    out[f"{ours}.input_layernorm.weight"] = _vector(f"{hf}.input_layernorm.weight", (D,))
    out[f"{ours}.post_attention_layernorm.weight"] = _vector(
      f"{hf}.post_attention_layernorm.weight", (D,)
    )
    # HF rows are head-major (h * E + e); ours keep heads and head_dim as separate dims.
    out[f"{a}.q_proj.kernel"] = _linear(f"{ha}.q_proj.weight", (H, E), (D,), (2, 0, 1))
    out[f"{a}.k_proj.kernel"] = _linear(f"{ha}.k_proj.weight", (K, E), (D,), (2, 0, 1))
    out[f"{a}.v_proj.kernel"] = _linear(f"{ha}.v_proj.weight", (K, E), (D,), (2, 0, 1))
    out[f"{a}.o_proj.kernel"] = _linear(f"{ha}.o_proj.weight", (D,), (H, E), (1, 2, 0))
    if cfg.qkv_bias:
      out[f"{a}.q_proj.bias"] = _vector(f"{ha}.q_proj.bias", (H, E))
      out[f"{a}.k_proj.bias"] = _vector(f"{ha}.k_proj.bias", (K, E))
      out[f"{a}.v_proj.bias"] = _vector(f"{ha}.v_proj.bias", (K, E))
    if cfg.o_bias:
      out[f"{a}.o_proj.bias"] = _vector(f"{ha}.o_proj.bias", (D,))
    if cfg.qk_norm:
      out[f"{a}.q_norm.weight"] = _vector(f"{ha}.q_norm.weight", (E,))
      out[f"{a}.k_norm.weight"] = _vector(f"{ha}.k_norm.weight", (E,))
    m, hm = f"{ours}.mlp", f"{hf}.mlp"
    if cfg.is_moe_layer(i):
      layout = (moe_layouts or {}).get(i, "per_expert")
      out.update(_moe_sources(cfg, m, hf, layout))
    else:
      F = cfg.intermediate_size
      out[f"{m}.gate_proj.kernel"] = _linear(f"{hm}.gate_proj.weight", (F,), (D,), (1, 0))
      out[f"{m}.up_proj.kernel"] = _linear(f"{hm}.up_proj.weight", (F,), (D,), (1, 0))
      out[f"{m}.down_proj.kernel"] = _linear(f"{hm}.down_proj.weight", (D,), (F,), (1, 0))
  return out


def _moe_sources(cfg: ModelConfig, m: str, hf: str, layout: str) -> dict[str, Source]:
  """Router + stacked expert weights, from the per-expert (hub) or fused (3-D) layout."""
  D, X, F = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
  n = cfg.preset.names
  out = {f"{m}.router": _linear(f"{hf}.{n.router}.weight", (X,), (D,), (1, 0))}
  experts = f"{hf}.{n.experts}"
  if layout == "fused":
    # transformers' in-memory layout: gate_up_proj [X, 2F, D] (gate rows first), down [X, D, F].
    gate_up = f"{experts}.gate_up_proj"
    for name, offset in (("gate_proj", 0), ("up_proj", F)):
      out[f"{m}.{name}"] = Source(
        (gate_up,),
        (X, 2 * F, D),
        ((X,), (F,), (D,)),
        (0, 2, 1),
        window=((0, X), (offset, F), (0, D)),
      )
    out[f"{m}.down_proj"] = Source(
      (f"{experts}.down_proj",), (X, D, F), ((X,), (D,), (F,)), (0, 2, 1)
    )
    return out
  for name, hf_shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
    keys = tuple(f"{experts}.{e}.{name}.weight" for e in range(X))
    out[f"{m}.{name}"] = Source(
      keys, hf_shape, ((hf_shape[0],), (hf_shape[1],)), (1, 0), stacked=True
    )
  return out


def read_box(
  source: Source,
  box: Box,
  read: Callable[[str, tuple[slice, ...]], np.ndarray],
) -> np.ndarray:
  """Reads box [start, stop) per our dim; `read(key, hf_slices)` returns that HF sub-tensor."""
  if source.stacked:
    (e0, e1), rest = box[0], box[1:]
    return np.stack([_read_one(source, source.keys[e], rest, read) for e in range(e0, e1)])
  return _read_one(source, source.keys[0], box, read)


def _read_one(
  source: Source, key: str, box: Box, read: Callable[[str, tuple[slice, ...]], np.ndarray]
) -> np.ndarray:
  """One HF tensor's contribution: read the enclosing HF box, then slice inner factors."""
  flat_box: list[tuple[int, int]] = [None] * len(source.perm)  # type: ignore[list-item]
  for ours_dim, flat_dim in enumerate(source.perm):
    flat_box[flat_dim] = box[ours_dim]
  hf_slices, shape, inner_slices, r = [], [], [], 0
  for hf_dim, factors in enumerate(source.split):
    offset = source.window[hf_dim][0] if source.window else 0
    (s0, e0), inner = flat_box[r], math.prod(factors[1:])
    # Only the outermost factor of an HF dim maps to a contiguous HF range; inner factors are
    # read whole and sliced afterwards (at worst one head_dim row, never the whole tensor).
    hf_slices.append(slice(offset + s0 * inner, offset + e0 * inner))
    shape += [e0 - s0, *factors[1:]]
    inner_slices += [slice(None)] + [slice(*flat_box[r + k]) for k in range(1, len(factors))]
    r += len(factors)
  part = np.asarray(read(key, tuple(hf_slices))).reshape(shape)[tuple(inner_slices)]
  return part.transpose(source.perm)


def to_hf(source: Source, value: Any) -> dict[str, np.ndarray]:
  """The inverse of the Source mapping for a whole parameter: HF key -> HF-layout array."""
  if source.window is not None:
    raise ValueError("export writes the per-expert layout; fused sources are load-only")
  value = np.asarray(value)
  inverse = tuple(np.argsort(source.perm))
  one = lambda v: np.ascontiguousarray(v.transpose(inverse).reshape(source.hf_shape))
  if source.stacked:
    return {key: one(value[e]) for e, key in enumerate(source.keys)}
  return {source.keys[0]: one(value)}
