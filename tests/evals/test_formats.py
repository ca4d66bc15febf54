"""rockjax.evals.formats: each benchmark read from a small file written in its published format.

The files are written here with json and pyarrow, field names and types as the Hugging Face
datasets publish them (ints where published as ints, extra columns, IFEval kwargs padded with
nulls in Parquet); the loaded Problems are compared field by field with what was written.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rockjax import errors
from rockjax.evals import formats
from rockjax.evals.formats import Problem


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return path


def write_parquet(path, rows, schema=None):
  pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path))
  return path


def write(tmp_path, stem, kind, rows, schema=None):
  if kind == "jsonl":
    return write_jsonl(tmp_path / f"{stem}.jsonl", rows)
  return write_parquet(tmp_path / f"{stem}.parquet", rows, schema)


KINDS = ["jsonl", "parquet"]

# --- aime24: Maxwell-Jia/AIME_2024 (ID, Problem, Solution, Answer: int64) -----------------

AIME24_ROWS = [
  {"ID": "2024-II-4", "Problem": "Let $x,y$ be reals ...", "Solution": "So ...", "Answer": 33},
  {"ID": "2024-I-1", "Problem": "Every morning Aya ...", "Solution": "We have ...", "Answer": 204},
]
AIME24_SCHEMA = pa.schema(
  [("ID", pa.string()), ("Problem", pa.string()), ("Solution", pa.string()), ("Answer", pa.int64())]
)


@pytest.mark.parametrize("kind", KINDS)
def test_aime24(tmp_path, kind):
  path = write(tmp_path, "aime_2024_problems", kind, AIME24_ROWS, AIME24_SCHEMA)
  got = formats.load_benchmark("aime24", str(path))
  assert got == [
    Problem(id="2024-II-4", problem="Let $x,y$ be reals ...", answer="33"),
    Problem(id="2024-I-1", problem="Every morning Aya ...", answer="204"),
  ]


# --- aime25: Maxwell-Jia/AIME_2025 (id, problem, answer: int or string) --------------------


def test_aime25_jsonl_int_and_string_answers(tmp_path):
  rows = [
    {"id": 1, "problem": "Find the sum of all integer bases $b>9$ ...", "answer": 70},
    {"id": "2", "problem": "On $\\triangle ABC$ points ...", "answer": "588"},
  ]
  got = formats.load_benchmark("aime25", write_jsonl(tmp_path / "aime25.jsonl", rows))
  assert [(p.id, p.problem, p.answer) for p in got] == [
    ("1", rows[0]["problem"], "70"),
    ("2", rows[1]["problem"], "588"),
  ]
  assert all(p.instruction_ids == () and p.meta == () for p in got)


def test_aime25_parquet(tmp_path):
  rows = [{"id": "0", "problem": "P0", "answer": 70}, {"id": "1", "problem": "P1", "answer": 16}]
  schema = pa.schema([("id", pa.string()), ("problem", pa.string()), ("answer", pa.int64())])
  got = formats.load_benchmark("aime25", write_parquet(tmp_path / "a.parquet", rows, schema))
  assert got == [Problem("0", "P0", "70"), Problem("1", "P1", "16")]


# --- hmmt25_feb: MathArena/hmmt_feb_2025 (problem_idx: int64, problem, answer: string) ------

HMMT_ROWS = [
  {
    "problem_idx": 1,
    "problem": "Compute the sum ...",
    "answer": "103",
    "problem_type": ["Number Theory"],
  },
  {
    "problem_idx": 2,
    "problem": "Compute the ratio ...",
    "answer": "\\frac{9 \\sqrt{23}}{23}",
    "problem_type": ["Geometry", "Algebra"],
  },
]
HMMT_SCHEMA = pa.schema(
  [
    ("problem_idx", pa.int64()),
    ("problem", pa.string()),
    ("answer", pa.string()),
    ("problem_type", pa.list_(pa.string())),
  ]
)


@pytest.mark.parametrize("kind", KINDS)
def test_hmmt25_feb(tmp_path, kind):
  path = write(tmp_path, "train-00000-of-00001", kind, HMMT_ROWS, HMMT_SCHEMA)
  got = formats.load_benchmark("hmmt25_feb", path)
  assert got == [
    Problem("1", "Compute the sum ...", "103", meta=(("problem_type", "Number Theory"),)),
    Problem(
      "2",
      "Compute the ratio ...",
      "\\frac{9 \\sqrt{23}}{23}",
      meta=(("problem_type", "Geometry, Algebra"),),
    ),
  ]


# --- math500: HuggingFaceH4/MATH-500 (problem, solution, answer, subject, level, unique_id) --

MATH500_ROWS = [
  {
    "problem": "Convert the point $(0,3)$ to polar coordinates.",
    "solution": "We have that ...",
    "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
    "subject": "Precalculus",
    "level": 2,
    "unique_id": "test/precalculus/807.json",
  },
  {
    "problem": "What is $1+1$?",
    "solution": "Two.",
    "answer": "2",
    "subject": "Algebra",
    "level": 1,
    "unique_id": "test/algebra/1.json",
  },
]


@pytest.mark.parametrize("kind", KINDS)
def test_math500(tmp_path, kind):
  got = formats.load_benchmark("math500", write(tmp_path, "test", kind, MATH500_ROWS))
  assert len(got) == 2
  for problem, row in zip(got, MATH500_ROWS):
    assert problem.id == row["unique_id"]
    assert problem.problem == row["problem"]
    assert problem.answer == row["answer"]
    assert problem.meta == (("subject", row["subject"]), ("level", str(row["level"])))
    assert problem.instruction_ids == () and problem.instruction_kwargs == ()


# --- ifeval: google/IFEval (key: int, prompt, instruction_id_list, kwargs) ----------------

IFEVAL_ROWS = [
  {
    "key": 1000,
    "prompt": "Write a 300+ word summary. Do not use any commas.",
    "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
    "kwargs": [{}, {"relation": "at least", "num_words": 300}],
  },
  {
    "key": 1001,
    "prompt": "End your reply with the exact phrase 'Any other questions?'.",
    "instruction_id_list": ["startend:end_checker"],
    "kwargs": [{"end_phrase": "Any other questions?"}],
  },
]
# The Parquet conversion stores kwargs as a list of structs that hold every kwarg name.
KWARG_TYPES = {
  "num_highlights": pa.int64(),
  "relation": pa.string(),
  "num_words": pa.int64(),
  "end_phrase": pa.string(),
  "num_bullets": pa.int64(),
}
IFEVAL_SCHEMA = pa.schema(
  [
    ("key", pa.int64()),
    ("prompt", pa.string()),
    ("instruction_id_list", pa.list_(pa.string())),
    ("kwargs", pa.list_(pa.struct(list(KWARG_TYPES.items())))),
  ]
)


def padded_with_nulls(row):
  kwargs = [{name: k.get(name) for name in KWARG_TYPES} for k in row["kwargs"]]
  return {**row, "kwargs": kwargs}


@pytest.mark.parametrize("kind", KINDS)
def test_ifeval(tmp_path, kind):
  rows = IFEVAL_ROWS if kind == "jsonl" else [padded_with_nulls(r) for r in IFEVAL_ROWS]
  if kind == "parquet":  # the file really holds the nulls that must be dropped
    assert rows[1]["kwargs"][0]["num_words"] is None
  path = write(tmp_path, "ifeval_input_data", kind, rows, IFEVAL_SCHEMA)
  got = formats.load_benchmark("ifeval", path)
  assert got == [
    Problem(
      id="1000",
      problem="Write a 300+ word summary. Do not use any commas.",
      instruction_ids=("punctuation:no_comma", "length_constraints:number_words"),
      instruction_kwargs=({}, {"relation": "at least", "num_words": 300}),
    ),
    Problem(
      id="1001",
      problem="End your reply with the exact phrase 'Any other questions?'.",
      instruction_ids=("startend:end_checker",),
      instruction_kwargs=({"end_phrase": "Any other questions?"},),
    ),
  ]
  assert got[0].answer == ""


# --- parse_benchmarks ---------------------------------------------------------------------


def test_parse_benchmarks_keeps_order_and_paths():
  spec = "math500=/d/test.jsonl, aime24=gs://b/aime=24.parquet,ifeval=/d/ifeval_input_data.jsonl"
  got = formats.parse_benchmarks(spec)
  assert list(got.items()) == [
    ("math500", "/d/test.jsonl"),
    ("aime24", "gs://b/aime=24.parquet"),
    ("ifeval", "/d/ifeval_input_data.jsonl"),
  ]


def test_benchmark_names():
  assert formats.BENCHMARKS == ("aime24", "aime25", "hmmt25_feb", "math500", "ifeval")
  assert formats.MATH_BENCHMARKS == ("aime24", "aime25", "hmmt25_feb", "math500")


# --- errors: one line naming the file, line or row, field, id -----------------------------


def one_line_error(fn, *args):
  with pytest.raises(errors.InputError) as info:
    fn(*args)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_unknown_benchmark(tmp_path):
  path = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "problem": "p", "answer": 1}])
  message = one_line_error(formats.load_benchmark, "aime26", path)
  assert "'aime26'" in message and "aime24, aime25, hmmt25_feb, math500, ifeval" in message
  message = one_line_error(formats.parse_benchmarks, "aime24=/a.jsonl,gsm8k=/b.jsonl")
  assert "'gsm8k'" in message and "hmmt25_feb" in message


def test_missing_file(tmp_path):
  path = tmp_path / "nope.jsonl"
  assert one_line_error(formats.load_benchmark, "aime24", path).startswith(f"{path}: no such file")


def test_unsupported_extension(tmp_path):
  path = tmp_path / "aime.csv"
  path.write_text("id,problem,answer\n1,p,2\n")
  message = one_line_error(formats.load_benchmark, "aime25", path)
  assert message.startswith(str(path)) and "'.csv'" in message and ".jsonl" in message


def test_invalid_json_names_the_line(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text('{"id": 1, "problem": "p", "answer": 1}\n{"id": 2, "problem": \n')
  message = one_line_error(formats.load_benchmark, "aime25", path)
  assert message.startswith(f"{path}:2: invalid JSON: ")


def test_missing_field_jsonl_names_line_and_field(tmp_path):
  rows = [{"id": 1, "problem": "p", "answer": 1}, {"id": 2, "problem": "q"}]
  path = write_jsonl(tmp_path / "a.jsonl", rows)
  message = one_line_error(formats.load_benchmark, "aime25", path)
  assert message.startswith(
    f"{path}:2: aime25 record has no field 'answer' (fields: ['id', 'problem'])"
  )


def test_missing_field_parquet_names_the_row(tmp_path):
  path = write_parquet(tmp_path / "a.parquet", [{"id": "1", "problem": "p"}])
  message = one_line_error(formats.load_benchmark, "aime25", path)
  assert message.startswith(f"{path}:row 0: aime25 record has no field 'answer'")


def test_field_case_matters_and_the_other_format_is_named(tmp_path):
  path = write_jsonl(tmp_path / "aime24.jsonl", AIME24_ROWS)
  message = one_line_error(formats.load_benchmark, "aime25", path)
  assert message.startswith(f"{path}:1: aime25 record has no field 'id'")
  assert "aime24" in message


def test_bad_value_in_parquet_names_the_row(tmp_path):
  rows = [dict(HMMT_ROWS[0]), dict(HMMT_ROWS[1], answer=None)]
  path = write_parquet(tmp_path / "h.parquet", rows, HMMT_SCHEMA)
  message = one_line_error(formats.load_benchmark, "hmmt25_feb", path)
  assert message.startswith(f"{path}:row 1: hmmt25_feb field 'answer' must be")


def test_float_answer_is_refused(tmp_path):
  path = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "problem": "p", "answer": 0.5}])
  message = one_line_error(formats.load_benchmark, "aime25", path)
  assert message.startswith(f"{path}:1: aime25 field 'answer' must be") and "float" in message


def test_ifeval_kwargs_must_match_the_instructions(tmp_path):
  row = dict(IFEVAL_ROWS[0], kwargs=[{}])
  path = write_jsonl(tmp_path / "i.jsonl", [row])
  message = one_line_error(formats.load_benchmark, "ifeval", path)
  assert message.startswith(f"{path}:1: ifeval field 'kwargs' has 1 entries for 2 instructions")


def test_duplicate_id(tmp_path):
  rows = [
    {"id": 7, "problem": "a", "answer": 1},
    {"id": 8, "problem": "b", "answer": 2},
    {"id": "7", "problem": "c", "answer": 3},
  ]
  path = write_jsonl(tmp_path / "a.jsonl", rows)
  message = one_line_error(formats.load_benchmark, "aime25", path)
  assert message == f"{path}:3: duplicate aime25 id '7' (first at {path}:1)"


def test_empty_files(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text("\n")
  assert one_line_error(formats.load_benchmark, "aime25", path).startswith(
    f"{path}: no aime25 records"
  )
  empty = write_parquet(tmp_path / "m.parquet", [], pa.schema([("problem", pa.string())]))
  assert one_line_error(formats.load_benchmark, "math500", empty).startswith(
    f"{empty}: no math500 records"
  )


@pytest.mark.parametrize("item", ["aime24", "=/d/a.jsonl", "aime24=", " "])
def test_malformed_spec_item(item):
  message = one_line_error(formats.parse_benchmarks, f"math500=/d/test.jsonl,{item}")
  assert message == f"--benchmarks item {item!r}: expected NAME=PATH"


def test_benchmark_named_twice():
  message = one_line_error(formats.parse_benchmarks, "aime24=/a.parquet,aime24=/b.parquet")
  assert "'aime24' twice" in message and "/a.parquet" in message and "/b.parquet" in message
