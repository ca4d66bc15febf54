"""Benchmark files in their published formats -> Problems (AIME 2024/2025, HMMT Feb 2025,
MATH-500, IFEval).

Each benchmark is read from the JSONL or Parquet file its Hugging Face dataset ships, with the
field names spelled as published (Maxwell-Jia/AIME_2024 capitalises them, the others do not).
Nothing is downloaded: the user fetches the files once (docs/evaluation.md, "Benchmark files")
and passes them with --benchmarks=NAME=PATH,... . Every bad file, line or field is one
InputError naming it, in the style of rockjax.data.records.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

from etils import epath

from rockjax import errors
from rockjax.config.fields import BENCHMARK_NAMES
from rockjax.data import records

BENCHMARKS: tuple[str, ...] = BENCHMARK_NAMES  # bench.macro is checked against the same names
MATH_BENCHMARKS = ("aime24", "aime25", "hmmt25_feb", "math500")
EXTENSIONS = (".jsonl", ".parquet")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark item: a math problem with its reference answer, or an IFEval prompt."""

  id: str  # the published id (ID / id / problem_idx / unique_id / key) as str
  problem: str  # the problem text (math) or the instruction prompt (ifeval)
  answer: str = ""  # math: the reference answer as a string (int 33 -> "33"); ifeval: ""
  instruction_ids: tuple[str, ...] = ()  # ifeval's instruction_id_list
  instruction_kwargs: tuple[dict, ...] = ()  # ifeval's kwargs, None values dropped
  meta: tuple[tuple[str, str], ...] = ()  # e.g. (("subject", "Algebra"), ("level", "3"))


@dataclasses.dataclass(frozen=True)
class _Format:
  """Where a benchmark's published records keep each Problem field."""

  dataset: str  # the Hugging Face dataset the field names come from
  id: str
  problem: str
  answer: str | None  # None: no reference answer (IFEval)
  meta: tuple[str, ...] = ()  # optional published fields kept as Problem.meta


_FORMATS = {
  "aime24": _Format("Maxwell-Jia/AIME_2024", "ID", "Problem", "Answer"),
  "aime25": _Format("Maxwell-Jia/AIME_2025", "id", "problem", "answer"),
  "hmmt25_feb": _Format(
    "MathArena/hmmt_feb_2025", "problem_idx", "problem", "answer", ("problem_type",)
  ),
  "math500": _Format(
    "HuggingFaceH4/MATH-500", "unique_id", "problem", "answer", ("subject", "level")
  ),
  "ifeval": _Format("google/IFEval", "key", "prompt", None),
}
_IFEVAL_FIELDS = ("instruction_id_list", "kwargs")


def _check_name(name: str) -> _Format:
  """The format of a known benchmark; InputError listing the known ones otherwise."""
  if name not in _FORMATS:
    raise errors.InputError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
  return _FORMATS[name]


def _required(name: str) -> tuple[str, ...]:
  """The fields every record of `name` must have."""
  fmt = _FORMATS[name]
  fields = (fmt.id, fmt.problem) + ((fmt.answer,) if fmt.answer else ())
  return fields + (_IFEVAL_FIELDS if name == "ifeval" else ())


def _looks_like(row: dict[str, Any]) -> str:
  """'; its fields are those of NAME' when the row has another benchmark's fields, else ''."""
  for other in BENCHMARKS:
    if all(field in row for field in _required(other)):
      return f"; its fields are those of {other} ({_FORMATS[other].dataset})"
  return ""


def _text_or_int(value: Any, name: str, field: str, where: str) -> str:
  """An id or answer published as a string or an integer, as a string."""
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  if isinstance(value, str) and value.strip():
    return value
  got = "an empty string" if isinstance(value, str) else type(value).__name__
  raise errors.InputError(
    f"{where}: {name} field {field!r} must be a non-empty string or an integer, got {got}"
  )


def _meta_value(value: Any) -> str:
  """A meta field as text: lists (HMMT's problem_type) joined with ', '."""
  if isinstance(value, (list, tuple)):
    return ", ".join(str(v) for v in value)
  return str(value)


def _ifeval_fields(row: dict[str, Any], where: str) -> tuple[tuple[str, ...], tuple[dict, ...]]:
  """(instruction ids, kwargs with None values dropped) of an IFEval record."""
  ids, kwargs = row["instruction_id_list"], row["kwargs"]
  if not (isinstance(ids, list) and ids and all(isinstance(i, str) and i for i in ids)):
    raise errors.InputError(
      f"{where}: ifeval field 'instruction_id_list' must be a non-empty list of strings, "
      f"got {ids!r}"
    )
  if not (isinstance(kwargs, list) and all(isinstance(k, dict) for k in kwargs)):
    raise errors.InputError(f"{where}: ifeval field 'kwargs' must be a list of objects")
  if len(kwargs) != len(ids):
    raise errors.InputError(
      f"{where}: ifeval field 'kwargs' has {len(kwargs)} entries for "
      f"{len(ids)} instructions in 'instruction_id_list'"
    )
  # Parquet rows carry every kwarg name of every instruction, null where unused; lm-eval
  # drops those before building an instruction, and so do we.
  kept = tuple({k: v for k, v in entry.items() if v is not None} for entry in kwargs)
  return tuple(ids), kept


def _problem(name: str, row: Any, where: str) -> Problem:
  """One published record -> Problem; InputError names where, the benchmark and the field."""
  if not isinstance(row, dict):
    raise errors.InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
  for field in _required(name):
    if field not in row:
      raise errors.InputError(
        f"{where}: {name} record has no field {field!r} (fields: {sorted(row)}){_looks_like(row)}"
      )
  fmt = _FORMATS[name]
  problem = row[fmt.problem]
  if not (isinstance(problem, str) and problem.strip()):
    got = "an empty string" if isinstance(problem, str) else type(problem).__name__
    raise errors.InputError(f"{where}: {name} field {fmt.problem!r} must be text, got {got}")
  meta = tuple((field, _meta_value(row[field])) for field in fmt.meta if row.get(field) is not None)
  ids, kwargs = _ifeval_fields(row, where) if name == "ifeval" else ((), ())
  return Problem(
    id=_text_or_int(row[fmt.id], name, fmt.id, where),
    problem=problem,
    answer=_text_or_int(row[fmt.answer], name, fmt.answer, where) if fmt.answer else "",
    instruction_ids=ids,
    instruction_kwargs=kwargs,
    meta=meta,
  )


def _rows(path: epath.Path) -> Iterator[tuple[str, Any]]:
  """(file:line or file:row i, parsed row or the InputError of a bad JSONL line)."""
  if path.suffix == ".parquet":
    # Required fields are checked row by row, so a missing column names row 0.
    return records._parquet_rows(path, [])
  return records._json_rows(path)


def load_benchmark(name: str, path: str | os.PathLike) -> list[Problem]:
  """A benchmark's published JSONL/Parquet file -> its Problems, in file order.

  InputError (one line) for an unknown name, a missing or empty file, an extension other
  than .jsonl/.parquet, a bad line or record (file:line: what), and a duplicate id.
  """
  _check_name(name)
  path = epath.Path(path)  # local, or a URL (gs://...)
  if path.suffix not in EXTENSIONS:
    raise errors.InputError(
      f"{path}: unsupported extension {path.suffix or '(none)'!r} for {name} "
      f"(expected {' or '.join(EXTENSIONS)})"
    )
  if not path.exists():
    raise errors.InputError(f"{path}: no such file ({name} benchmark)")
  if path.is_dir():
    raise errors.InputError(f"{path}: is a directory, expected the {name} JSONL or Parquet file")
  problems, first_seen = [], {}
  try:
    for where, row in _rows(path):
      if isinstance(row, errors.InputError):
        raise row
      problem = _problem(name, row, where)
      if problem.id in first_seen:
        raise errors.InputError(
          f"{where}: duplicate {name} id {problem.id!r} (first at {first_seen[problem.id]})"
        )
      first_seen[problem.id] = where
      problems.append(problem)
  except OSError as e:
    raise errors.InputError(f"{path}: cannot read ({e.strerror or e})") from None
  if not problems:
    raise errors.InputError(f"{path}: no {name} records (the file is empty)")
  return problems


def parse_benchmarks(spec: str) -> dict[str, str]:
  """'aime24=/d/aime24.parquet,math500=/d/test.jsonl' -> {'aime24': '/d/aime24.parquet', ...}.

  Items keep their order. InputError for an item that is not NAME=PATH, an unknown name or a
  benchmark named twice. A path may hold '=' (only the first one splits) but not ','.
  """
  if not spec.strip():
    raise errors.InputError("--benchmarks is empty: expected NAME=PATH[,NAME=PATH...]")
  out: dict[str, str] = {}
  for item in spec.split(","):
    name, sep, path = item.strip().partition("=")
    name, path = name.strip(), path.strip()
    if not (sep and name and path):
      raise errors.InputError(f"--benchmarks item {item!r}: expected NAME=PATH")
    _check_name(name)
    if name in out:
      raise errors.InputError(
        f"--benchmarks names {name!r} twice ({out[name]!r} and {path!r}); give each once"
      )
    out[name] = path
  return out
