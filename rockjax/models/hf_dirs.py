"""What a Hugging Face directory must hold before rockjax reads it, checked file by file.

A model directory needs a config.json (a JSON object whose model_type transformers and rockjax
both know) and safetensors weights; a tokenizer directory a tokenizer rockjax can load as is.
rockjax never enables `trust_remote_code` and never unpickles: a directory that asks for
remote code (`auto_map`) or holds its weights only as pickles (pytorch_model.bin, *.pt) is
refused with one line naming it. Paths may be local or gs:// / s3:// (read through epath).
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from rockjax import errors
from rockjax.models import families

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weight formats that are pickles underneath (torch.load would run arbitrary code).
PICKLED = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_REMOTE = "asks for remote code (auto_map); rockjax never enables trust_remote_code"


def _read_json(path: epath.Path, where: str) -> dict[str, Any]:
  """A JSON object from file `path`, or a one-line InputError starting with `where`."""
  what = path.name
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError) as e:
    raise errors.InputError(f"{where}: cannot read {what} ({type(e).__name__}: {e})") from e
  except ValueError as e:  # json.JSONDecodeError
    raise errors.InputError(f"{where}: {what} is not valid JSON ({e})") from e
  if not isinstance(value, dict):
    raise errors.InputError(f"{where}: {what} is not a JSON object")
  return value


def _directory(path: str | os.PathLike, field: str) -> epath.Path:
  """The directory at `path`, or a one-line InputError naming the field and path."""
  if not os.fspath(path):
    raise errors.InputError(f"{field}='': no directory given")
  root = epath.Path(path)
  if not root.exists():
    raise errors.InputError(f"{field}={os.fspath(path)!r}: no such directory")
  if not root.is_dir():
    raise errors.InputError(f"{field}={os.fspath(path)!r}: not a directory")
  return root


def _transformers_knows(model_type: str) -> bool:
  """Whether transformers has a built-in config class for `model_type` (no remote code)."""
  from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

  return model_type in CONFIG_MAPPING_NAMES


def check_model_dir(path: str | os.PathLike, field: str = "model.path") -> dict[str, Any]:
  """Its parsed config.json, after checking the directory can be loaded without remote code
  or pickles; else a one-line InputError naming `field`, the path and the problem."""
  root = _directory(path, field)
  where = f"{field}={os.fspath(path)!r}"
  if not (root / "config.json").exists():
    raise errors.InputError(f"{where}: no config.json (not a Hugging Face checkpoint directory)")
  hf = _read_json(root / "config.json", where)
  if "auto_map" in hf:
    raise errors.InputError(f"{where}: config.json {_REMOTE}")
  model_type = hf.get("model_type")
  if not isinstance(model_type, str) or not _transformers_knows(model_type):
    raise errors.InputError(
      f"{where}: config.json model_type={model_type!r} is not a transformers model type "
      "(it would need remote code; rockjax never enables trust_remote_code)"
    )
  if model_type not in families.MODEL_TYPES:
    raise errors.InputError(
      f"{where}: model_type={model_type!r} is not one rockjax implements "
      f"({', '.join(sorted(families.MODEL_TYPES))})"
    )
  _check_weights(root, where)
  return hf


def _check_weights(root: epath.Path, where: str) -> None:
  """safetensors weights present (single file, or an index whose shard files all exist)."""
  if (root / SAFETENSORS_INDEX).exists():
    index = _read_json(root / SAFETENSORS_INDEX, where)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise errors.InputError(f"{where}: {SAFETENSORS_INDEX} has no weight_map")
    missing = sorted(f for f in set(weight_map.values()) if not (root / str(f)).exists())
    if missing:
      raise errors.InputError(
        f"{where}: {SAFETENSORS_INDEX} names {len(missing)} missing file(s), e.g. {missing[0]}"
      )
    return
  if (root / SAFETENSORS).exists():
    return
  pickled = sorted(p.name for pattern in PICKLED for p in root.glob(pattern))
  if pickled:
    raise errors.InputError(
      f"{where}: weights only as {pickled[0]} (a pickle); rockjax loads weights only from "
      "safetensors, convert them first (e.g. transformers' save_pretrained(..., "
      "safe_serialization=True))"
    )
  raise errors.InputError(f"{where}: no {SAFETENSORS} or {SAFETENSORS_INDEX} (no weights)")


def check_tokenizer_dir(path: str | os.PathLike, field: str = "data.tokenizer_path") -> None:
  """A one-line InputError unless `path` holds a tokenizer that needs no remote code."""
  root = _directory(path, field)
  where = f"{field}={os.fspath(path)!r}"
  if not any((root / name).exists() for name in TOKENIZER_FILES):
    raise errors.InputError(f"{where}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
  if (root / "tokenizer_config.json").exists():
    tok = _read_json(root / "tokenizer_config.json", where)
    if "auto_map" in tok:
      raise errors.InputError(f"{where}: tokenizer_config.json {_REMOTE}")


def has_tokenizer(path: str | os.PathLike) -> bool:
  """Whether the directory at `path` holds tokenizer files (a model directory may not)."""
  root = epath.Path(path)
  return any((root / name).exists() for name in TOKENIZER_FILES)
