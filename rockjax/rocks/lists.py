"""Static rock id lists: read, write and turn into `[V]` masks (V: vocabulary size).

File format: integer ids separated by whitespace or newlines, in rank order; `#` starts a
comment that runs to the end of the line. Static lists and dynamic `rocks.select` produce the
same bool `[V]` mask, so both go through one masking path (`rocks.token_weights`).
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
from etils import epath

from rockjax import errors

# The 100 Qwen3 ids the paper's authors froze, in Rock Score rank order
# (docs/method.md, "The published freeze list").
PAPER_QWEN3_ROCKS_PATH = pathlib.Path(__file__).parents[1] / "resources" / "qwen3_paper_rocks.txt"
QWEN3_VOCAB_SIZE = 151936  # rows of the Qwen3 embedding (the tokenizer itself uses fewer)

_INT = re.compile(r"[+-]?[0-9]+")
_INT32_MAX = np.iinfo(np.int32).max


def load_id_list(path: str | os.PathLike, *, vocab_size: int | None = None) -> np.ndarray:
  """Reads ids (file order kept) as int32 `[N]`; a bad entry raises a one-line ValueError."""
  ids, first_line = [], {}
  if not epath.Path(path).is_file():  # a one-line error, also for a gs:// list
    raise errors.InputError(f"{os.fspath(path)}: no such id list file")
  with epath.Path(path).open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      for token in line.split("#", 1)[0].split():
        where = f"{os.fspath(path)}:{lineno}: id list entry {token!r}"
        if not _INT.fullmatch(token):
          raise errors.InputError(f"{where} is not an integer")
        value = int(token)
        if value < 0:
          raise errors.InputError(f"{where} is negative")
        if vocab_size is not None and value >= vocab_size:
          raise errors.InputError(f"{where} is out of range for vocab_size {vocab_size}")
        if value > _INT32_MAX:  # ids are stored as int32 like the token arrays they index
          raise errors.InputError(f"{where} does not fit in int32")
        if value in first_line:
          raise errors.InputError(f"{where} is a duplicate (first on line {first_line[value]})")
        first_line[value] = lineno
        ids.append(value)
  return np.asarray(ids, np.int32)


def save_id_list(path: str | os.PathLike, ids, *, header: str = "") -> None:
  """Writes ids one per line (rank order kept) after an optional `#` comment header."""
  lines = [f"# {h}".rstrip() for h in header.splitlines()]
  lines += [str(int(i)) for i in np.asarray(ids).reshape(-1)]
  epath.Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def ids_to_mask(ids, vocab_size: int) -> np.ndarray:
  """Bool `[V]` mask with True at `ids`; raises ValueError for an id outside [0, V)."""
  ids_N = np.asarray(ids, np.int64).reshape(-1)
  bad = ids_N[(ids_N < 0) | (ids_N >= vocab_size)]
  if bad.size:
    raise ValueError(f"ids out of range for vocab_size {vocab_size}: {bad[:5].tolist()}")
  mask_V = np.zeros((vocab_size,), bool)
  mask_V[ids_N] = True
  return mask_V


def paper_rock_ids() -> np.ndarray:
  """The paper's 100 frozen Qwen3 ids, int32 `[100]`, in rank order."""
  return load_id_list(PAPER_QWEN3_ROCKS_PATH, vocab_size=QWEN3_VOCAB_SIZE)
