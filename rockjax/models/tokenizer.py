"""Tokenizer loading, the end-of-sequence ids (and an export's special ids), and the
teacher/student vocabulary check."""

from __future__ import annotations

import os
from typing import Any

from rockjax import errors, storage
from rockjax.models import families, hf_dirs
from rockjax.models.config import ModelConfig

# Files of a HF directory a tokenizer never reads (not copied from a cloud directory).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.msgpack", "*.h5")
_SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def load_tokenizer(path: str | os.PathLike, *, field: str = "data.tokenizer_path") -> Any:
  """transformers.AutoTokenizer from a directory (never downloads, never runs remote code; a
  gs:// or s3:// one is copied to a local temporary directory first, its weight files left
  out). A directory transformers cannot load is a one-line InputError naming `field`."""
  import transformers

  hf_dirs.check_tokenizer_dir(path, field)
  with storage.local_copy(path, exclude=WEIGHT_FILES) as local:
    try:
      return transformers.AutoTokenizer.from_pretrained(
        local, local_files_only=True, trust_remote_code=False
      )
    except (OSError, ValueError, KeyError, TypeError) as e:  # what transformers raises on bad files
      text = " ".join(str(e).split())[:300]
      raise errors.InputError(
        f"{field}={os.fspath(path)!r}: transformers cannot load this tokenizer "
        f"({type(e).__name__}: {text})"
      ) from e


def eos_ids(tokenizer: Any, family: str | None = None) -> tuple[int, ...]:
  """Sorted ids ending a sample: eos_token_id + the family's (None: all) end-of-turn tokens."""
  vocab = tokenizer.get_vocab()
  ids = {tokenizer.eos_token_id} | {
    tokenizer.convert_tokens_to_ids(t) for t in families.eos_tokens(family) if t in vocab
  }
  return tuple(sorted(i for i in ids if i is not None))


def export_token_ids(tokenizer: Any, family: str | None = None) -> dict[str, dict[str, Any]]:
  """The special ids of a HF export: {'config': config.json's, 'generation': those of
  generation_config.json}.

  config.json gets the tokenizer's bos/eos/pad ids (eos one id, as transformers configs carry
  it). generation_config.json's eos_token_id lists every id a sample ends at -- the tokenizer's
  eos first, then the chat template's end-of-turn tokens (`eos_ids`; one id stays an int) --
  and its pad_token_id falls back to the eos when the tokenizer has no pad token.
  """
  eos, bos, pad = tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id
  stop = [i for i in (eos,) if i is not None]
  stop += [i for i in eos_ids(tokenizer, family) if i != eos]
  return {
    "config": {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad},
    "generation": {
      "bos_token_id": bos,
      "eos_token_id": stop[0] if len(stop) == 1 else (stop or None),
      "pad_token_id": eos if pad is None else pad,
    },
  }


def _describe(obj: Any) -> tuple[str, int, dict[str, Any]]:
  """(kind, vocab size, special ids) of a tokenizer, HF config, ModelConfig or Decoder.

  Configs and models report their embedding rows (`vocab_size`); tokenizers report len(tok),
  which includes added tokens (the embedding may be padded beyond it).
  """
  if hasattr(obj, "cfg") and isinstance(obj.cfg, ModelConfig):  # a Decoder
    obj = obj.cfg
  if isinstance(obj, ModelConfig):
    import json

    hf = json.loads(obj.hf_config_json) if obj.hf_config_json else {}
    return "config", obj.vocab_size, {k: hf.get(k) for k in _SPECIAL}
  if hasattr(obj, "convert_tokens_to_ids"):  # a transformers tokenizer
    return "tokenizer", len(obj), {k: getattr(obj, k, None) for k in _SPECIAL}
  if hasattr(obj, "vocab_size"):  # a transformers PretrainedConfig
    return "config", int(obj.vocab_size), {k: getattr(obj, k, None) for k in _SPECIAL}
  raise TypeError(
    f"cannot read a vocabulary from {type(obj).__name__}; pass a tokenizer, "
    "a transformers config, a ModelConfig or a Decoder"
  )


def check_vocab_compatible(teacher: Any, student: Any) -> int:
  """Raises ValueError (one line) unless teacher and student share vocab size and special ids.

  Both arguments must be of the same kind (two tokenizers, or two configs/models). Special ids
  are compared where both sides define them. Returns the shared vocabulary size.
  """
  t_kind, t_size, t_special = _describe(teacher)
  s_kind, s_size, s_special = _describe(student)
  if t_kind != s_kind:
    raise TypeError(f"compare like with like: teacher is a {t_kind}, student a {s_kind}")
  problems = ["vocab sizes differ"] if t_size != s_size else []
  for key in _SPECIAL:
    t, s = t_special.get(key), s_special.get(key)
    if t is not None and s is not None and t != s:
      problems.append(f"{key} teacher={t} student={s}")
  if problems:
    raise errors.ConfigError(
      f"teacher/student {t_kind}s are incompatible (vocab size teacher={t_size}, "
      f"student={s_size}): " + "; ".join(problems)
    )
  return t_size
