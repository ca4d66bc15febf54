"""Flax NNX decoders (Qwen3, Qwen3-MoE, Qwen2, Llama 3) and Hugging Face checkpoint I/O.

model = rockjax.models.from_pretrained(path, dtype=jnp.bfloat16, mesh=mesh)
logits_BxLxV = model(input_ids_BxL, attention_mask_BxL)          # float32
hidden_BxLxD = model.hidden_states(input_ids_BxL, attention_mask_BxL)
head_DxV = model.lm_head_weight()                                 # logits == hidden @ head
cache = model.init_cache(batch, max_len)
logits_BxTxV, cache = model(ids_BxT, mask_BxT, cache=cache)       # see Decoder's docstring
rockjax.models.save_pretrained(model, out_dir)                    # transformers can load it
"""

from rockjax.models.cache import KVCache
from rockjax.models.config import ModelConfig, RopeConfig
from rockjax.models.decoder import Decoder
from rockjax.models.hf_io import from_pretrained, save_pretrained
from rockjax.models.tokenizer import check_vocab_compatible, eos_ids, load_tokenizer

__all__ = [
  "Decoder",
  "KVCache",
  "ModelConfig",
  "RopeConfig",
  "check_vocab_compatible",
  "eos_ids",
  "from_pretrained",
  "load_tokenizer",
  "save_pretrained",
]
