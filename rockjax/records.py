"""Data records on disk and their tokenisation: JSONL/Parquet rows -> prompts and completions.

A record is a dict with a prompt (text or chat messages), an optional answer and, for
off-policy stages, a completion. Every bad row is reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq
from etils import epath

from rockjax import errors


def _field(
  record: dict[str, Any],
  field: str,
  where: str,
  *,
  allow_messages: bool = False,
  allow_number: bool = False,
) -> Any:
  """record[field] as a string (numbers converted if allowed), or a chat message list."""
  if field not in record:
    raise errors.InputError(f"{where}: missing field {field!r} (fields: {sorted(record)})")
  value = record[field]
  if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)  # numeric answers such as 66 are compared as text
  if isinstance(value, str) or (
    allow_messages
    and isinstance(value, list)
    and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
  ):
    return value
  kind = "a string or a list of {role, content} messages" if allow_messages else "a string"
  raise errors.InputError(f"{where}: field {field!r} must be {kind}, got {type(value).__name__}")


def _read_rows(path: epath.Path) -> list[tuple[str, Any]]:
  """(location, parsed row) pairs of a JSONL or Parquet file; location is 'file:line'."""
  if path.suffix == ".parquet":
    with path.open("rb") as f:
      rows = pq.read_table(f).to_pylist()
    return [(f"{path}:row {i}", row) for i, row in enumerate(rows)]
  rows = []
  with path.open(encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue  # tolerate blank lines, e.g. a trailing newline
      try:
        rows.append((f"{path}:{line_no}", json.loads(line)))
      except json.JSONDecodeError as e:
        raise errors.InputError(
          f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})"
        ) from None
  return rows


def load_records(
  path: str | os.PathLike,
  *,
  prompt_field: str = "prompt",
  answer_field: str | None = "answer",
  completion_field: str | None = None,
) -> list[dict[str, Any]]:
  """JSONL/Parquet rows -> [{prompt, answer[, completion]}]; ValueError names file:line:field."""
  path = epath.Path(path)  # local, or a URL (gs://...)
  if not path.is_file():
    raise errors.InputError(f"{path}: no such file")
  records = []
  for where, row in _read_rows(path):
    if not isinstance(row, dict):
      raise errors.InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    answer = _field(row, answer_field, where, allow_number=True) if answer_field else ""
    record = dict(prompt=_field(row, prompt_field, where, allow_messages=True), answer=answer)
    if completion_field:
      record["completion"] = _field(row, completion_field, where)
    records.append(record)
  if not records:
    raise errors.InputError(f"{path}: no records")
  return records


# One lock per process: HF fast tokenizers raise "Already borrowed" when one instance is used
# from several threads at once, and grain maps on its prefetch threads.
_TOKENIZER_LOCK = threading.Lock()


def format_prompt(
  tokenizer: Any, text: str | list[dict[str, str]], *, use_chat_template: bool = True
) -> list[int]:
  """Prompt token ids: the chat template with a generation prompt, else BOS + plain encoding."""
  with _TOKENIZER_LOCK:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
      messages = text if isinstance(text, list) else [dict(role="user", content=text)]
      # Render to text, then encode: the template already holds any BOS/special tokens.
      rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
      return list(tokenizer.encode(rendered, add_special_tokens=False))
    if isinstance(text, list):
      raise ValueError("format_prompt: a message list needs a tokenizer with a chat template")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer.encode(text, add_special_tokens=False))


def encode_completion(tokenizer: Any, text: str) -> list[int]:
  """Completion ids followed by EOS (the end-of-turn token of a chat model)."""
  if tokenizer.eos_token_id is None:
    raise ValueError("encode_completion: the tokenizer has no eos_token_id")
  with _TOKENIZER_LOCK:
    return list(tokenizer.encode(text, add_special_tokens=False)) + [tokenizer.eos_token_id]


def pad_id(tokenizer: Any) -> int:
  """The padding id: pad, else eos (Llama 3 has no pad), else 0; padding is always masked."""
  for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
    if candidate is not None:
      return int(candidate)
  return 0


def left_pad(ids: Sequence[int], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids_P, mask_P) int32: the last `length` ids right-aligned (left truncation keeps the end)."""
  ids = list(ids)[-length:] if length > 0 else []
  ids_P = np.full(length, pad, np.int32)
  mask_P = np.zeros(length, np.int32)
  if ids:
    ids_P[length - len(ids) :] = ids
    mask_P[length - len(ids) :] = 1
  return ids_P, mask_P
