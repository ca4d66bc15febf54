"""Data records on disk and their tokenisation: JSONL/Parquet rows -> prompts and completions.

A record is a dict with a prompt (text or chat messages), an optional answer and, for
off-policy stages, a completion. Every bad row is reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from rockjax import errors

_log = logging.getLogger(__name__)
# Appended to a bad row's error (every read_records caller passes data.skip_bad_records).
SKIP_HINT = "set data.skip_bad_records=True to skip bad records (counted as data/records_skipped)"


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
    and value
    and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
  ):
    return value
  kind = "a string or a list of {role, content} messages" if allow_messages else "a string"
  raise errors.InputError(f"{where}: field {field!r} must be {kind}, got {type(value).__name__}")


class Record(dict):
  """A loaded record: a plain dict (what is hashed and compared) that remembers its file:line."""

  where: str = ""  # 'file:line' (or 'file:row i') it was read from; set by read_records


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What read_records read: the good records and, with skip_bad, what it skipped."""

  records: list[Record]
  skipped: list[str]  # one 'file:line: what is wrong' per skipped row


def _json_rows(path: epath.Path) -> Iterator[tuple[str, Any]]:
  """(file:line, parsed object or the InputError of a bad line) for each non-blank JSONL line."""
  with path.open("rb") as f:
    for line_no, raw in enumerate(f, start=1):
      where = f"{path}:{line_no}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield where, errors.InputError(f"{where}: not UTF-8 text (byte {e.start} of the line)")
        continue
      if not line.strip():
        continue  # tolerate blank lines, e.g. a trailing newline
      try:
        yield where, json.loads(line.rstrip("\r\n"))
      except json.JSONDecodeError as e:
        # e.msg may end in "at" ("Unterminated string starting at"); the column is 1-based
        what = e.msg.removesuffix(" at")
        yield where, errors.InputError(f"{where}: invalid JSON: {what} at column {e.pos + 1}")


def _parquet_rows(path: epath.Path, fields: Sequence[str]) -> Iterator[tuple[str, Any]]:
  """(file:row i, row dict) of a Parquet file whose schema holds every one of `fields`."""
  try:
    with path.open("rb") as f:
      table = pq.read_table(f)
  except pa.ArrowException as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise errors.InputError(f"{path}: not a readable Parquet file ({reason})") from None
  missing = [name for name in fields if name not in table.column_names]
  if missing:  # a schema problem, never skipped row by row
    raise errors.InputError(
      f"{path}: no column {missing[0]!r} (columns: {sorted(table.column_names)})"
    )
  for i, row in enumerate(table.to_pylist()):
    yield f"{path}:row {i}", row


def _record(row: Any, where: str, fields: tuple[str, str | None, str | None]) -> Record:
  """One row -> Record(prompt, answer[, completion]); InputError names where and the field."""
  prompt_field, answer_field, completion_field = fields
  if not isinstance(row, dict):
    raise errors.InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
  answer = _field(row, answer_field, where, allow_number=True) if answer_field else ""
  record = Record(prompt=_field(row, prompt_field, where, allow_messages=True), answer=answer)
  if completion_field:
    record["completion"] = _field(row, completion_field, where)
  record.where = where
  return record


def read_records(
  path: str | os.PathLike,
  *,
  prompt_field: str = "prompt",
  answer_field: str | None = "answer",
  completion_field: str | None = None,
  skip_bad: bool = False,
) -> Loaded:
  """JSONL/Parquet rows -> Records; a bad row raises (file:line: field) or, skip_bad, is skipped.

  Whatever cannot be skipped row by row raises: a missing or unreadable file, a Parquet file
  without the fields' columns, and a file left with no records.
  """
  path = epath.Path(path)  # local, or a URL (gs://...)
  if not path.exists():
    raise errors.InputError(f"{path}: no such file")
  if path.is_dir():
    raise errors.InputError(f"{path}: is a directory, expected a JSONL or Parquet file")
  fields = (prompt_field, answer_field, completion_field)
  records, skipped = [], []
  try:
    if path.suffix == ".parquet":
      rows = _parquet_rows(path, [f for f in fields if f])
    else:
      rows = _json_rows(path)
    for where, row in rows:
      try:
        if isinstance(row, errors.InputError):
          raise row
        records.append(_record(row, where, fields))
      except errors.InputError as e:
        if not skip_bad:
          raise errors.InputError(f"{e}; {SKIP_HINT}") from None
        skipped.append(str(e))
  except OSError as e:
    raise errors.InputError(f"{path}: cannot read ({e.strerror or e})") from None
  if skipped:
    _log.warning(
      "%s: skipped %d bad records (data.skip_bad_records); first: %s",
      path,
      len(skipped),
      skipped[0],
    )
  if not records:
    why = f" ({len(skipped)} bad records skipped; first: {skipped[0]})" if skipped else ""
    raise errors.InputError(f"{path}: no records{why}")
  return Loaded(records, skipped)


def load_records(
  path: str | os.PathLike,
  *,
  prompt_field: str = "prompt",
  answer_field: str | None = "answer",
  completion_field: str | None = None,
) -> list[Record]:
  """JSONL/Parquet rows -> [{prompt, answer[, completion]}]; InputError names file:line:field."""
  return read_records(
    path, prompt_field=prompt_field, answer_field=answer_field, completion_field=completion_field
  ).records


# One lock per process: HF fast tokenizers raise "Already borrowed" when one instance is used
# from several threads at once, and grain maps on its prefetch threads.
_TOKENIZER_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How a prompt becomes ids (data.use_chat_template, data.system_prompt, data.enable_thinking)."""

  use_chat_template: bool = True  # the tokenizer's chat template with a generation prompt
  system_prompt: str = ""  # '' = no system message; else one before the user's message
  enable_thinking: bool = False  # passed to templates with a thinking switch (Qwen3 hybrid)

  @classmethod
  def from_config(cls, data: Any) -> "PromptFormat":
    """The format a config's data group asks for."""
    return cls(data.use_chat_template, data.system_prompt, data.enable_thinking)


def format_prompt(
  tokenizer: Any,
  text: str | list[dict[str, str]],
  *,
  use_chat_template: bool = True,
  system_prompt: str = "",
  enable_thinking: bool = False,
) -> list[int]:
  """Prompt token ids: the chat template with a generation prompt, else BOS + plain encoding."""
  template = getattr(tokenizer, "chat_template", None) if use_chat_template else None
  if template:
    messages = text if isinstance(text, list) else [dict(role="user", content=text)]
    if system_prompt and not (
      messages and messages[0]["role"] == "system"
    ):  # a record's own system message wins
      messages = [dict(role="system", content=system_prompt), *messages]
    # Only a template with a thinking switch is given the flag: the others have no such mode.
    switch = "enable_thinking" in str(template)
    if enable_thinking and not switch:
      raise errors.ConfigError(
        "data.enable_thinking=True: the tokenizer's chat template has no enable_thinking switch"
      )
    kwargs = dict(enable_thinking=enable_thinking) if switch else {}
    with _TOKENIZER_LOCK:
      # Render to text, then encode: the template already holds any BOS/special tokens.
      rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kwargs
      )
      return list(tokenizer.encode(rendered, add_special_tokens=False))
  if isinstance(text, list):
    raise ValueError("format_prompt: a message list needs a tokenizer with a chat template")
  if system_prompt:
    raise errors.ConfigError(
      "data.system_prompt is set but prompts are not chat-formatted (data.use_chat_template "
      "is False or the tokenizer has no chat template)"
    )
  bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
  with _TOKENIZER_LOCK:
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
