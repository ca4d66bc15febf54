"""Every family preset (rockjax.models.families) against transformers' own config classes."""

import json

import pytest
import transformers
from flax import nnx
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import rockjax.models as rm
from configs import default
from rockjax.models import loading
from rockjax.models import families
from rockjax.models.config import FAMILIES
from tests.fixtures import make_tokenizer

_QWEN_EOS = ("<|im_end|>", "<|endoftext|>")
# What each family must be, written independently of the table. A family added to the table
# without a row here fails test_every_family_has_expectations. qkv_bias/o_bias: for the `hf`
# config below; plain_bias: (qkv_bias, o_bias) when config.json sets no attention_bias.
EXPECTED = {
  "qwen3": dict(
    config="Qwen3Config",
    arch="Qwen3ForCausalLM",
    qkv_bias=False,
    o_bias=False,
    plain_bias=(False, False),
    qk_norm=True,
    moe=False,
    eos=_QWEN_EOS,
    hf={},
  ),
  "qwen3_moe": dict(
    config="Qwen3MoeConfig",
    arch="Qwen3MoeForCausalLM",
    qkv_bias=False,
    o_bias=False,
    plain_bias=(False, False),
    qk_norm=True,
    moe=True,
    eos=_QWEN_EOS,
    hf=dict(
      num_experts=4,
      num_experts_per_tok=2,
      moe_intermediate_size=16,
      norm_topk_prob=True,
      decoder_sparse_step=1,
      mlp_only_layers=[0],
    ),
  ),
  "qwen2": dict(
    config="Qwen2Config",
    arch="Qwen2ForCausalLM",
    qkv_bias=True,
    o_bias=False,
    plain_bias=(True, False),
    qk_norm=False,
    moe=False,
    eos=_QWEN_EOS,
    hf=dict(tie_word_embeddings=True),
  ),
  "llama": dict(
    config="LlamaConfig",
    arch="LlamaForCausalLM",
    qkv_bias=True,
    o_bias=True,
    plain_bias=(False, False),
    qk_norm=False,
    moe=False,
    eos=("<|eot_id|>",),
    hf=dict(
      attention_bias=True,
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=16,
      ),
    ),
  ),
}
_TINY = dict(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=8,
  rms_norm_eps=1e-5,
  max_position_embeddings=64,
  tie_word_embeddings=False,
  rope_parameters=dict(rope_type="default", rope_theta=1000.0),
)
# config.json fields that define the model (plus each family's own `hf` keys above).
_FIELDS = (
  "model_type",
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "rms_norm_eps",
  "rope_parameters",
  "hidden_act",
  "max_position_embeddings",
  "tie_word_embeddings",
)
NAMES = sorted(families.PRESETS)


def _hf_config(name: str):
  """A tiny transformers config of family `name`, built by its own config class."""
  return getattr(transformers, EXPECTED[name]["config"])(**{**_TINY, **EXPECTED[name]["hf"]})


def test_every_family_has_expectations():
  assert set(EXPECTED) == set(families.PRESETS)
  assert set(FAMILIES.values()) == set(families.PRESETS)  # rockjax.config.check's view
  assert all(FAMILIES[t] == f.name for f in families.PRESETS.values() for t in f.model_types)


@pytest.mark.parametrize("name", NAMES)
def test_preset_matches_transformers(name):
  want, preset = EXPECTED[name], families.PRESETS[name]
  hf = _hf_config(name)
  assert preset.model_type == hf.model_type and hf.model_type in preset.model_types
  assert preset.architecture == want["arch"] == MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[hf.model_type]
  assert preset.activation == hf.hidden_act
  assert preset.eos_tokens == want["eos"]
  cfg = rm.ModelConfig.from_hf(hf)
  assert cfg.family == name and cfg.preset is preset
  assert (cfg.qkv_bias, cfg.o_bias, cfg.qk_norm) == (
    want["qkv_bias"],
    want["o_bias"],
    want["qk_norm"],
  )
  assert (cfg.num_experts > 0) == want["moe"] == preset.moe
  # A config built without a checkpoint (rockjax.models.loading.arch_config) gets the same flags.
  attention_bias = bool(hf.to_dict().get("attention_bias"))
  built = rm.ModelConfig.for_family(
    name,
    attention_bias=attention_bias,
    **{
      k: getattr(cfg, k)
      for k in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "rms_norm_eps",
        "rope",
        "max_position_embeddings",
        "tie_word_embeddings",
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "norm_topk_prob",
        "decoder_sparse_step",
        "mlp_only_layers",
      )
    },
  )
  assert built == cfg
  arch = loading.arch_config(
    default.model_group(
      family=name,
      num_experts=4 * want["moe"],
      num_experts_per_tok=2 * want["moe"],
      moe_intermediate_size=16 * want["moe"],
    )
  )
  assert (arch.qkv_bias, arch.o_bias, arch.qk_norm) == (*want["plain_bias"], want["qk_norm"])
  arch.check_hf_representable()


@pytest.mark.parametrize("name", NAMES)
def test_export_config_matches_transformers(name, tmp_path):
  hf = _hf_config(name)
  hf.save_pretrained(tmp_path / "hf")
  cfg = rm.ModelConfig.from_pretrained(tmp_path / "hf")
  assert cfg == rm.ModelConfig.from_hf(hf)
  fields = _FIELDS + tuple(EXPECTED[name]["hf"])
  # Attributes, not to_dict(): transformers maps e.g. num_experts onto num_local_experts.
  theirs = {k: getattr(hf, k, None) for k in fields}
  assert None not in theirs.values(), theirs
  # Exported with and without the checkpoint's own config.json to start from.
  for i, c in enumerate((cfg, cfg.replace(hf_config_json=""))):
    out = tmp_path / f"ours{i}"
    rm.save_pretrained(rm.Decoder(c, rngs=nnx.Rngs(0)), out)
    with open(out / "config.json") as f:
      written = json.load(f)
    assert written["architectures"] == [EXPECTED[name]["arch"]]
    again = transformers.AutoConfig.from_pretrained(out)
    assert {k: getattr(again, k, None) for k in fields} == theirs
    assert rm.ModelConfig.from_pretrained(out) == cfg


def _specials() -> list[str]:
  """Every family's expected end-of-turn strings, deduplicated, in a fixed order."""
  return list(dict.fromkeys(t for want in EXPECTED.values() for t in want["eos"]))


@pytest.mark.parametrize("name", NAMES)
def test_eos_ids_finds_the_family_tokens(name, tmp_path):
  words = ["<unk>", "</s>", "<pad>", "hello", "world"]
  own = rm.load_tokenizer(make_tokenizer(tmp_path / "own", words + list(EXPECTED[name]["eos"])))
  ids = lambda tok, tokens: tuple(sorted({tok.eos_token_id, *tok.convert_tokens_to_ids(tokens)}))
  expected = ids(own, list(EXPECTED[name]["eos"]))
  assert len(expected) == 1 + len(EXPECTED[name]["eos"])
  assert rm.eos_ids(own, name) == expected
  assert rm.eos_ids(own) == expected  # None: every family's tokens the vocabulary holds
  # A vocabulary holding every family's tokens: the family picks only its own.
  every = rm.load_tokenizer(make_tokenizer(tmp_path / "all", words + _specials()))
  assert rm.eos_ids(every, name) == ids(every, list(EXPECTED[name]["eos"]))
  assert rm.eos_ids(every) == ids(every, _specials())
  plain = rm.load_tokenizer(make_tokenizer(tmp_path / "plain", words))
  assert rm.eos_ids(plain, name) == (plain.eos_token_id,)
  with pytest.raises(ValueError, match="unknown family"):
    rm.eos_ids(plain, "gpt2")
