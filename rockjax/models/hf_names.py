"""Where each rockjax parameter lives in a Hugging Face checkpoint, and how its layout differs.

A `Source` says which HF tensor(s) hold one of our parameters and how to go from the HF
layout to ours: restrict to a window (fused gate/up experts), split HF dims into factors
(e.g. q_proj rows H*E -> (H, E)), then permute. Because the mapping is a pure re-indexing,
any box of our parameter can be read as a box of the HF tensor (see `read_box`), which is how
a sharded load reads only the slice each device needs. A `Stack` puts several Sources (or
Stacks) on a new leading dimension: MoE experts (one HF tensor per expert) and, in a scanned
decoder, the layers (one HF tensor per layer), so a layer-stacked MoE weight is a Stack of
Stacks.
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
  """One of our parameters as a re-indexing of one HF tensor.

  key: the HF name; hf_shape: the full shape that HF tensor must have.
  split: per HF dim, its factors (row-major); `window` (offset, size) per HF dim restricts
    the tensor first (None = whole dims). Our array = reshaped.transpose(perm).
  """

  key: str
  hf_shape: tuple[int, ...]
  split: tuple[tuple[int, ...], ...]
  perm: tuple[int, ...]
  window: tuple[tuple[int, int], ...] | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    """Our parameter's shape."""
    flat = [f for factors in self.split for f in factors]
    return tuple(flat[p] for p in self.perm)

  @property
  def leaves(self) -> tuple[tuple[tuple[int, ...], "Source"], ...]:
    """((index into our leading stacked dims, Source), ...): here just this one."""
    return (((), self),)


@dataclasses.dataclass(frozen=True)
class Stack:
  """Our parameter = the parts' arrays stacked on a new leading dimension (all parts alike)."""

  parts: tuple["Source | Stack", ...]

  @property
  def shape(self) -> tuple[int, ...]:
    """Our parameter's shape."""
    return (len(self.parts),) + self.parts[0].shape

  @property
  def leaves(self) -> tuple[tuple[tuple[int, ...], Source], ...]:
    """Every HF tensor's Source with its index into our leading stacked dims, in order."""
    return tuple(((i,) + idx, leaf) for i, p in enumerate(self.parts) for idx, leaf in p.leaves)


Mapping = Source | Stack


def _linear(
  key: str, out_factors: Sequence[int], in_factors: Sequence[int], perm: Sequence[int]
) -> Source:
  """An HF nn.Linear weight [out, in] whose dims split into factors, then permuted."""
  hf_shape = (math.prod(out_factors), math.prod(in_factors))
  return Source(key, hf_shape, (tuple(out_factors), tuple(in_factors)), tuple(perm))


def _vector(key: str, factors: Sequence[int]) -> Source:
  """A 1-D HF tensor (norm weight, bias), optionally split into factors."""
  return Source(key, (math.prod(factors),), (tuple(factors),), tuple(range(len(factors))))


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
) -> dict[str, Mapping]:
  """Our parameter path ('layers.0.self_attn.q_proj.kernel', ...) -> its HF mapping.

  In a scanned decoder (cfg.scans_layers) the layer parameters are 'layers.self_attn...':
  a Stack of the N layers' mappings.
  """
  D, V = cfg.hidden_size, cfg.vocab_size
  n = cfg.preset.names
  out: dict[str, Mapping] = {
    "embed_tokens": _linear(f"{n.model}.embed_tokens.weight", (V,), (D,), (0, 1)),
    "norm.weight": _vector(f"{n.model}.norm.weight", (D,)),
  }
  if not cfg.tie_word_embeddings:
    out["lm_head"] = _linear(n.lm_head, (V,), (D,), (1, 0))
  per_layer = [_layer_sources(cfg, i, (moe_layouts or {}).get(i)) for i in range(cfg.num_layers)]
  if cfg.scans_layers:
    for name in per_layer[0]:
      out[f"layers.{name}"] = Stack(tuple(layer[name] for layer in per_layer))
  else:
    for i, layer in enumerate(per_layer):
      out.update({f"layers.{i}.{name}": m for name, m in layer.items()})
  return out


def _layer_sources(cfg: ModelConfig, i: int, moe_layout_: str | None) -> dict[str, Mapping]:
  """Decoder layer i: our name within the layer ('self_attn.q_proj.kernel') -> HF mapping."""
  D, H, K, E = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  hf = f"{cfg.preset.names.model}.layers.{i}"
  a, ha = "self_attn", f"{hf}.self_attn"
  out: dict[str, Mapping] = {
    "input_layernorm.weight": _vector(f"{hf}.input_layernorm.weight", (D,)),
    "post_attention_layernorm.weight": _vector(f"{hf}.post_attention_layernorm.weight", (D,)),
    # HF rows are head-major (h * E + e); ours keep heads and head_dim as separate dims.
    f"{a}.q_proj.kernel": _linear(f"{ha}.q_proj.weight", (H, E), (D,), (2, 0, 1)),
    f"{a}.k_proj.kernel": _linear(f"{ha}.k_proj.weight", (K, E), (D,), (2, 0, 1)),
    f"{a}.v_proj.kernel": _linear(f"{ha}.v_proj.weight", (K, E), (D,), (2, 0, 1)),
    f"{a}.o_proj.kernel": _linear(f"{ha}.o_proj.weight", (D,), (H, E), (1, 2, 0)),
  }
  if cfg.qkv_bias:
    out[f"{a}.q_proj.bias"] = _vector(f"{ha}.q_proj.bias", (H, E))
    out[f"{a}.k_proj.bias"] = _vector(f"{ha}.k_proj.bias", (K, E))
    out[f"{a}.v_proj.bias"] = _vector(f"{ha}.v_proj.bias", (K, E))
  if cfg.o_bias:
    out[f"{a}.o_proj.bias"] = _vector(f"{ha}.o_proj.bias", (D,))
  if cfg.qk_norm:
    out[f"{a}.q_norm.weight"] = _vector(f"{ha}.q_norm.weight", (E,))
    out[f"{a}.k_norm.weight"] = _vector(f"{ha}.k_norm.weight", (E,))
  hm = f"{hf}.mlp"
  if cfg.is_moe_layer(i):
    out.update(_moe_sources(cfg, "mlp", hf, moe_layout_ or "per_expert"))
  else:
    F = cfg.intermediate_size
    out["mlp.gate_proj.kernel"] = _linear(f"{hm}.gate_proj.weight", (F,), (D,), (1, 0))
    out["mlp.up_proj.kernel"] = _linear(f"{hm}.up_proj.weight", (F,), (D,), (1, 0))
    out["mlp.down_proj.kernel"] = _linear(f"{hm}.down_proj.weight", (D,), (F,), (1, 0))
  return out


def _moe_sources(cfg: ModelConfig, m: str, hf: str, layout: str) -> dict[str, Mapping]:
  """Router + stacked expert weights, from the per-expert (hub) or fused (3-D) layout."""
  D, X, F = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
  n = cfg.preset.names
  out: dict[str, Mapping] = {f"{m}.router": _linear(f"{hf}.{n.router}.weight", (X,), (D,), (1, 0))}
  experts = f"{hf}.{n.experts}"
  if layout == "fused":
    # transformers' in-memory layout: gate_up_proj [X, 2F, D] (gate rows first), down [X, D, F].
    gate_up = f"{experts}.gate_up_proj"
    for name, offset in (("gate_proj", 0), ("up_proj", F)):
      out[f"{m}.{name}"] = Source(
        gate_up,
        (X, 2 * F, D),
        ((X,), (F,), (D,)),
        (0, 2, 1),
        window=((0, X), (offset, F), (0, D)),
      )
    out[f"{m}.down_proj"] = Source(f"{experts}.down_proj", (X, D, F), ((X,), (D,), (F,)), (0, 2, 1))
    return out
  for name, hf_shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
    out[f"{m}.{name}"] = Stack(
      tuple(
        _linear(f"{experts}.{e}.{name}.weight", hf_shape[:1], hf_shape[1:], (1, 0))
        for e in range(X)
      )
    )
  return out


def read_box(
  mapping: Mapping,
  box: Box,
  read: Callable[[str, tuple[slice, ...]], np.ndarray],
) -> np.ndarray:
  """Reads box [start, stop) per our dim; `read(key, hf_slices)` returns that HF sub-tensor."""
  if isinstance(mapping, Stack):
    (s0, s1), rest = box[0], box[1:]
    return np.stack([read_box(mapping.parts[i], rest, read) for i in range(s0, s1)])
  return _read_one(mapping, box, read)


def _read_one(
  source: Source, box: Box, read: Callable[[str, tuple[slice, ...]], np.ndarray]
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
  part = np.asarray(read(source.key, tuple(hf_slices))).reshape(shape)[tuple(inner_slices)]
  return part.transpose(source.perm)


def to_hf(source: Source, value: Any) -> dict[str, np.ndarray]:
  """The inverse of one HF tensor's Source (value = our array at that leaf): {key: HF array}."""
  if source.window is not None:
    raise ValueError("export writes the per-expert layout; fused sources are load-only")
  inverse = tuple(np.argsort(source.perm))
  hf = np.asarray(value).transpose(inverse).reshape(source.hf_shape)
  return {source.key: np.ascontiguousarray(hf)}
