"""ModelConfig: the frozen, hashable description of a decoder, built from a transformers config."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from rockjax import storage
from rockjax.models import families
from rockjax.models import remat as remat_lib
from rockjax.models.attention import IMPLEMENTATIONS
from rockjax.models.grouped_matmul import IMPLEMENTATIONS as MOE_IMPLEMENTATIONS

# transformers `model_type` -> our family name (derived from the preset table).
FAMILIES = dict(families.MODEL_TYPES)
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding parameters (HF `rope_parameters`); `rope_type` in default|linear|llama3."""

  theta: float = 10000.0
  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture + numerics of one decoder; static (hashable) so it can live in jit closures."""

  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = False
  # Per-family rules (families.Family.layer_flags) fix these; ModelConfig.for_family sets them.
  qkv_bias: bool = False
  o_bias: bool = False
  qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE
  # Mixture of experts (a `moe` family); num_experts == 0 means a dense model.
  num_experts: int = 0
  num_experts_per_tok: int = 0
  moe_intermediate_size: int = 0
  norm_topk_prob: bool = False
  decoder_sparse_step: int = 1
  mlp_only_layers: tuple[int, ...] = ()
  # Numerics and memory (not part of the checkpoint).
  dtype: Any = jnp.float32  # compute dtype of matmuls; norms and softmax always run in float32
  param_dtype: Any = jnp.float32
  # Remat policy of each decoder layer in the no-cache forward (rockjax.models.remat.POLICIES;
  # the legacy booleans True / False mean 'full' / 'none').
  remat: str = "none"
  # Parameters of all layers stacked on a leading 'layers' axis and applied with nnx.scan (one
  # compiled layer instead of num_layers). Used only when every layer has the same structure
  # (see `scans_layers`); otherwise the layers stay an unrolled list.
  scan_layers: bool = False
  # No-cache attention (training, scoring): auto | einsum | blocked | cudnn | splash, and the
  # query/key block of blocked and splash (rockjax.models.attention). Decoding uses einsum.
  attention: str = "auto"
  attention_block: int = 512
  # Positions per chunk of the token-chunked MLP (layers.token_chunked); 0 = whole sequence.
  mlp_chunk: int = 0
  # Grouped matmul of the routed experts: auto | ragged_dot | megablox (auto: megablox on TPU,
  # ragged_dot elsewhere; rockjax.models.grouped_matmul).
  moe_impl: str = "auto"
  # Under a mesh: '' = every device holds all experts (gathered like any FSDP weight); a mesh
  # axis name = the experts split over that axis, routed rows exchanged by all_to_all.
  moe_experts_axis: str = ""
  # The checkpoint's own config.json (as JSON text, to stay hashable), reused on export.
  hf_config_json: str = dataclasses.field(default="", compare=False, repr=False)

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
      )
    families.get(self.family)  # ValueError naming the known families
    if self.attention not in IMPLEMENTATIONS:
      raise ValueError(f"attention={self.attention!r}: expected one of {IMPLEMENTATIONS}")
    if self.moe_impl not in MOE_IMPLEMENTATIONS:
      raise ValueError(f"moe_impl={self.moe_impl!r}: expected one of {MOE_IMPLEMENTATIONS}")
    if self.attention_block < 1:
      raise ValueError(f"attention_block={self.attention_block}: expected >= 1")
    if self.mlp_chunk < 0:
      raise ValueError(f"mlp_chunk={self.mlp_chunk}: expected >= 0")
    object.__setattr__(self, "remat", remat_lib.policy_name(self.remat))

  @property
  def scans_layers(self) -> bool:
    """Whether the layers are stacked and scanned: scan_layers and all layers alike.

    Qwen3-MoE configs whose mlp_only_layers / decoder_sparse_step make some layers dense have
    two layer structures and run unrolled.
    """
    kinds = {self.is_moe_layer(i) for i in range(self.num_layers)}
    return self.scan_layers and len(kinds) == 1

  def is_moe_layer(self, layer: int) -> bool:
    """Whether decoder layer `layer` uses the sparse MoE block (HF Qwen3-MoE rule)."""
    return (
      self.num_experts > 0
      and layer not in self.mlp_only_layers
      and (layer + 1) % self.decoder_sparse_step == 0
    )

  @property
  def preset(self) -> families.Family:
    """This config's family preset (rockjax.models.families)."""
    return families.get(self.family)

  def replace(self, **changes: Any) -> "ModelConfig":
    """A copy with some fields changed."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def for_family(cls, family: str, attention_bias: bool = False, **fields: Any) -> "ModelConfig":
    """A ModelConfig whose family-fixed fields (biases, qk-norm) come from the preset."""
    return cls(family=family, **{**families.get(family).layer_flags(attention_bias), **fields})

  @classmethod
  def from_hf(cls, hf_config: Any, **overrides: Any) -> "ModelConfig":
    """Builds a ModelConfig from a transformers PretrainedConfig (or its dict)."""
    d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    fam = families.for_model_type(d.get("model_type"))
    if d.get("hidden_act", fam.activation) != fam.activation:
      raise ValueError(
        f"unsupported hidden_act {d['hidden_act']!r} for {fam.name}; expected {fam.activation!r}"
      )
    if d.get("mlp_bias", False):
      raise ValueError("unsupported: mlp_bias=True")
    if d.get("use_sliding_window", False) and "sliding_attention" in (d.get("layer_types") or ()):
      raise ValueError("unsupported: sliding-window attention layers (use_sliding_window=True)")
    num_heads = d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // num_heads
    moe = fam.moe
    kwargs = dict(
      **fam.layer_flags(bool(d.get("attention_bias", False))),
      family=fam.name,
      vocab_size=d["vocab_size"],
      hidden_size=d["hidden_size"],
      intermediate_size=d["intermediate_size"],
      num_layers=d["num_hidden_layers"],
      num_heads=num_heads,
      num_kv_heads=d.get("num_key_value_heads") or num_heads,
      head_dim=head_dim,
      rms_norm_eps=d.get("rms_norm_eps", 1e-6),
      rope=_rope_from_hf(d, fam.rope_theta),
      max_position_embeddings=d.get("max_position_embeddings", 32768),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", fam.tie_word_embeddings)),
      num_experts=(d.get("num_experts") or d.get("num_local_experts") or 0) if moe else 0,
      num_experts_per_tok=d.get("num_experts_per_tok", 0) if moe else 0,
      moe_intermediate_size=d.get("moe_intermediate_size", 0) if moe else 0,
      norm_topk_prob=bool(d.get("norm_topk_prob", False)),
      decoder_sparse_step=d.get("decoder_sparse_step", 1) or 1,
      mlp_only_layers=tuple(d.get("mlp_only_layers") or ()),
      hf_config_json=json.dumps(d, sort_keys=True, default=str),
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "ModelConfig":
    """Reads `path/config.json` with transformers.AutoConfig (never downloads; a gs:// or
    s3:// directory's config.json is copied to a local temporary directory first)."""
    import transformers  # local import: keeps `import rockjax.models` light

    with storage.local_copy(path, include=("config.json",)) as local:
      hf = transformers.AutoConfig.from_pretrained(local, local_files_only=True)
    return cls.from_hf(hf, **overrides)

  def check_hf_representable(self) -> None:
    """Raises ValueError if transformers' class for this family cannot express the config."""
    problems = self.preset.hf_problems(self.qkv_bias, self.o_bias, self.qk_norm, self.num_experts)
    if problems:
      raise ValueError(
        "config not expressible as a transformers checkpoint: " + "; ".join(problems)
      )

  def to_hf_dict(self) -> dict[str, Any]:
    """A config.json dict for transformers: the stored checkpoint config updated with our fields."""
    self.check_hf_representable()
    fam = self.preset
    d = json.loads(self.hf_config_json) if self.hf_config_json else {}
    rope = {"rope_theta": self.rope.theta, "rope_type": self.rope.rope_type}
    if self.rope.rope_type in ("linear", "llama3"):
      rope["factor"] = self.rope.factor
    if self.rope.rope_type == "llama3":
      rope.update(
        low_freq_factor=self.rope.low_freq_factor,
        high_freq_factor=self.rope.high_freq_factor,
        original_max_position_embeddings=self.rope.original_max_position_embeddings,
      )
    d.update(
      model_type=fam.model_type,
      architectures=[fam.architecture],
      vocab_size=self.vocab_size,
      hidden_size=self.hidden_size,
      intermediate_size=self.intermediate_size,
      num_hidden_layers=self.num_layers,
      num_attention_heads=self.num_heads,
      num_key_value_heads=self.num_kv_heads,
      head_dim=self.head_dim,
      rms_norm_eps=self.rms_norm_eps,
      rope_parameters=rope,
      hidden_act=fam.activation,
      max_position_embeddings=self.max_position_embeddings,
      tie_word_embeddings=self.tie_word_embeddings,
    )
    for stale in (
      "rope_theta",
      "rope_scaling",
      "torch_dtype",
      "_name_or_path",
      "transformers_version",
    ):
      d.pop(stale, None)
    if fam.attn_bias == "flag":
      d["attention_bias"] = self.o_bias
    if fam.moe:
      d.update(
        num_experts=self.num_experts,
        num_experts_per_tok=self.num_experts_per_tok,
        moe_intermediate_size=self.moe_intermediate_size,
        norm_topk_prob=self.norm_topk_prob,
        decoder_sparse_step=self.decoder_sparse_step,
        mlp_only_layers=list(self.mlp_only_layers),
      )
      d.pop("num_local_experts", None)
    d["dtype"] = jnp.dtype(self.param_dtype).name
    return d


def _rope_from_hf(d: dict[str, Any], default_theta: float) -> RopeConfig:
  """Reads RoPE settings from either `rope_parameters` (transformers 5) or `rope_scaling`."""
  params = dict(d.get("rope_parameters") or {})
  legacy = d.get("rope_scaling") or {}
  # Per-layer-type rope dicts ({'full_attention': {...}}) are not used by these families.
  if params and all(isinstance(v, dict) for v in params.values()):
    raise ValueError("unsupported: per-layer-type rope_parameters")
  params = {**legacy, **params}
  rope_type = params.get("rope_type", params.get("type", "default")) or "default"
  if rope_type not in _ROPE_TYPES:
    raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {_ROPE_TYPES}")
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError("unsupported: partial_rotary_factor != 1")
  theta = float(params.get("rope_theta", d.get("rope_theta") or default_theta))
  if rope_type == "default":
    return RopeConfig(theta=theta)
  if rope_type == "linear":
    return RopeConfig(theta=theta, rope_type=rope_type, factor=float(params["factor"]))
  return RopeConfig(
    theta=theta,
    rope_type=rope_type,
    factor=float(params.get("factor", 1.0)),
    low_freq_factor=float(params.get("low_freq_factor", 1.0)),
    high_freq_factor=float(params.get("high_freq_factor", 4.0)),
    original_max_position_embeddings=int(
      params.get("original_max_position_embeddings", d.get("max_position_embeddings", 8192))
    ),
  )
