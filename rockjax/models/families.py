"""Model-family presets: everything that differs between the supported Hugging Face families.

ModelConfig.from_hf / to_hf_dict, the checkpoint names (hf_names.py), the `arch`-built configs
(rockjax.models.loading, rockjax.config.check) and the EOS helper (tokenizer.eos_ids) all read
`PRESETS`. A new family whose layers the decoder already implements is one `Family` entry here
(and one row of expectations in tests/models/test_families.py); a new kind of layer (activation, norm,
attention) also needs rockjax/models/layers.py and the check in `Family.__post_init__`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ACTIVATIONS = ("silu",)  # HF hidden_act values layers.MLP and moe.MoE implement (SwiGLU)
ATTN_BIAS_RULES = ("flag", "qkv")


@dataclasses.dataclass(frozen=True)
class HFNames:
  """Where the decoder's tensors live in a family's HF state dict (read by hf_names.py)."""

  model: str = "model"  # prefix of embed_tokens, layers.{i} and the final norm
  lm_head: str = "lm_head.weight"
  router: str = "mlp.gate"  # in a layer: the MoE router (`.weight`)
  experts: str = "mlp.experts"  # in a layer: `{e}.gate_proj.weight`... or fused `gate_up_proj`


@dataclasses.dataclass(frozen=True)
class Family:
  """One HF model family: how its config.json, checkpoint and chat format map to rockjax."""

  name: str
  model_types: tuple[str, ...]  # HF `model_type`s read as this family; the first is exported
  architecture: str  # the `architectures` entry (transformers CausalLM class) written on export
  qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE
  # 'flag': HF `attention_bias` biases q, k, v and o together; 'qkv': q/k/v always, o never.
  attn_bias: str = "flag"
  activation: str = "silu"  # HF `hidden_act` of the gated MLP
  moe: bool = False  # sparse MoE blocks configured by the Qwen3-MoE keys (num_experts, ...)
  tie_word_embeddings: bool = False  # when config.json does not say
  rope_theta: float = 10000.0  # when config.json does not say
  eos_tokens: tuple[str, ...] = ()  # end-of-turn / end-of-text strings of its chat format
  names: HFNames = HFNames()

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(
        f"family {self.name!r}: activation {self.activation!r} is not "
        f"implemented (layers.py has {ACTIVATIONS})"
      )
    if self.attn_bias not in ATTN_BIAS_RULES:
      raise ValueError(
        f"family {self.name!r}: attn_bias {self.attn_bias!r} not in {ATTN_BIAS_RULES}"
      )

  @property
  def model_type(self) -> str:
    """The HF `model_type` written on export."""
    return self.model_types[0]

  def layer_flags(self, attention_bias: bool = False) -> dict[str, Any]:
    """ModelConfig qkv_bias / o_bias / qk_norm for HF `attention_bias` (unused by 'qkv')."""
    qkv, o = (True, False) if self.attn_bias == "qkv" else (attention_bias, attention_bias)
    return {"qkv_bias": qkv, "o_bias": o, "qk_norm": self.qk_norm}

  def hf_problems(self, qkv_bias: bool, o_bias: bool, qk_norm: bool, num_experts: int) -> list[str]:
    """Why transformers' class for this family cannot express these settings ([] if it can)."""
    problems = []
    if self.attn_bias == "qkv" and not (qkv_bias and not o_bias):
      problems.append(f"{self.name} needs qkv_bias=True, o_bias=False")
    if self.attn_bias == "flag" and qkv_bias != o_bias:
      problems.append(f"{self.name} has one attention_bias flag: qkv_bias must equal o_bias")
    if qk_norm != self.qk_norm:
      problems.append(f"qk_norm={qk_norm} does not match family {self.name}")
    if (num_experts > 0) != self.moe:
      problems.append(f"num_experts={num_experts} does not match family {self.name}")
    return problems


_QWEN_EOS = ("<|im_end|>", "<|endoftext|>")  # ChatML end of turn; end of text

PRESETS: dict[str, Family] = {
  f.name: f
  for f in (
    Family("qwen3", ("qwen3",), "Qwen3ForCausalLM", qk_norm=True, eos_tokens=_QWEN_EOS),
    Family(
      "qwen3_moe",
      ("qwen3_moe",),
      "Qwen3MoeForCausalLM",
      qk_norm=True,
      moe=True,
      eos_tokens=_QWEN_EOS,
    ),
    Family("qwen2", ("qwen2",), "Qwen2ForCausalLM", attn_bias="qkv", eos_tokens=_QWEN_EOS),
    Family("llama", ("llama",), "LlamaForCausalLM", eos_tokens=("<|eot_id|>",)),
  )
}

# HF `model_type` -> family name.
MODEL_TYPES: dict[str, str] = {t: f.name for f in PRESETS.values() for t in f.model_types}


def get(name: str) -> Family:
  """The preset of family `name`; ValueError (one line) naming the known ones otherwise."""
  if name not in PRESETS:
    raise ValueError(f"unknown family {name!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[name]


def for_model_type(model_type: Any) -> Family:
  """The preset an HF `model_type` maps to; ValueError (one line) if none does."""
  if model_type not in MODEL_TYPES:
    raise ValueError(
      f"unsupported model_type {model_type!r}; rockjax supports {sorted(MODEL_TYPES)}"
    )
  return PRESETS[MODEL_TYPES[model_type]]


def eos_tokens(name: str | None = None) -> tuple[str, ...]:
  """The EOS / end-of-turn strings of family `name`, or of every family (None), deduplicated."""
  fams = PRESETS.values() if name is None else (get(name),)
  return tuple(dict.fromkeys(t for f in fams for t in f.eos_tokens))
