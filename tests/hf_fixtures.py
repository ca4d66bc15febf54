"""Tiny random Hugging Face checkpoints and tokenizers, built locally (never downloaded)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

# Each family's tiny config; together they cover untied/tied embeddings, head_dim != D/H,
# GQA (H/K = 2), MoE with top-2 of 4 experts (plus a dense layer via mlp_only_layers),
# Llama-3 rope scaling (small original context so the scaling bites) and Qwen2 qkv bias.
_COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
               max_position_embeddings=128)
CONFIGS: dict[str, dict[str, Any]] = {
    'qwen3': dict(_COMMON, model_type='qwen3', head_dim=24, tie_word_embeddings=False,
                  rope_theta=1000.0),
    'qwen3_moe': dict(_COMMON, model_type='qwen3_moe', head_dim=16, tie_word_embeddings=False,
                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[0]),
    'qwen2': dict(_COMMON, model_type='qwen2', tie_word_embeddings=True),
    'llama': dict(_COMMON, model_type='llama', head_dim=16, tie_word_embeddings=False,
                  attention_bias=True,
                  rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=16),
                  rope_theta=500000.0),
}


def make_hf_model(family: str, seed: int = 0, **overrides: Any):
  """A float32 transformers CausalLM with every weight random (biases, norms included)."""
  import torch
  import transformers
  kw = dict(CONFIGS[family], **overrides)
  model_type = kw.pop('model_type')
  config = transformers.AutoConfig.for_model(model_type, **kw)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      config, attn_implementation='eager', dtype=torch.float32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))  # not all ones, so norm weights are tested
      else:
        p.normal_(0.0, 0.1)
  return model


def save_hf_checkpoint(model, path: str | os.PathLike, **kwargs: Any) -> str:
  """model.save_pretrained(path, **kwargs) and return the path as a string."""
  model.save_pretrained(os.fspath(path), **kwargs)
  return os.fspath(path)


def left_padded_batch(vocab_size: int, batch: int = 3, length: int = 9,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random ids [B, L] and a mask with row b left-padded by 2*b tokens (row 0 unpadded)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  for b in range(batch):
    mask[b, :min(2 * b, length - 1)] = 0
  return ids, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
  """HF position_ids for left padding: cumsum(mask) - 1, clipped at 0."""
  return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Float32 logits [B, L, V] of a transformers model with explicit left-pad positions."""
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                attention_mask=torch.as_tensor(mask, dtype=torch.long),
                position_ids=torch.as_tensor(hf_positions(mask), dtype=torch.long))
  return out.logits.float().numpy()


def make_tokenizer(path: str | os.PathLike, tokens: list[str], **special: str) -> str:
  """A WordLevel PreTrainedTokenizerFast over `tokens` in order (missing specials appended)."""
  import tokenizers
  import transformers
  specials = {'unk_token': '<unk>', 'eos_token': '</s>', 'pad_token': '<pad>', **special}
  vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*tokens, *specials.values()]))}
  core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=specials['unk_token']))
  core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, **specials)
  tok.save_pretrained(os.fspath(path))
  return os.fspath(path)
