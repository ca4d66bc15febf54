"""The synthetic task's held-out problems as files in the five published benchmark formats.

  python -m rockjax.evals.task_files --workdir=/tmp/rockjax_demo --out=/tmp/rockjax_demo/bench

lets `python -m rockjax.evaluate` run end to end on the CPU demo (no benchmark download): each
math format gets its own slice of WORKDIR/task/eval.jsonl (the demo's held-out arithmetic
problems, which its student can answer) with the published field names and types -- AIME 2024
as Parquet (ID, Problem, Solution, Answer as int), AIME 2025 as JSONL (id, problem, answer),
HMMT Feb 2025 as Parquet (problem_idx, problem, answer as str), MATH-500 as JSONL (problem,
solution, answer, subject, level, unique_id) -- and IFEval a few instruction prompts about the
same problems (key, prompt, instruction_id_list, kwargs). Prints the --benchmarks value.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from absl import app, flags
from etils import epath

from rockjax import cli, errors

_WORKDIR = flags.DEFINE_string("workdir", None, "the demo run's directory (its task/eval.jsonl)")
_OUT = flags.DEFINE_string("out", "", "where the files go ('' = WORKDIR/bench)")
_PER_SET = flags.DEFINE_integer("problems", 10, "problems per math benchmark")

# (instruction ids, kwargs, the sentence added to the problem) of the IFEval-format prompts.
_INSTRUCTIONS = (
  (["punctuation:no_comma"], [{}], "Do not use any commas in your answer."),
  (["change_case:english_lowercase"], [{}], "Answer in lowercase letters only."),
  (
    ["length_constraints:number_words"],
    [{"relation": "less than", "num_words": 40}],
    "Answer in less than 40 words.",
  ),
)


def _int(answer: str) -> int | str:
  """The task's answers are integers; AIME publishes them as ints."""
  try:
    return int(answer)
  except ValueError:
    return answer


def _rows(records: list[dict[str, Any]], n: int) -> dict[str, list[dict[str, Any]]]:
  """The benchmark rows, each math set its own slice of n records."""
  part = {k: records[i * n : (i + 1) * n] for i, k in enumerate(("a24", "a25", "hmmt", "m500"))}
  return {
    "aime24": [
      dict(
        ID=f"2024-I-{i + 1}", Problem=r["prompt"], Solution=r["solution"], Answer=_int(r["answer"])
      )
      for i, r in enumerate(part["a24"])
    ],
    "aime25": [
      dict(id=i, problem=r["prompt"], answer=str(r["answer"])) for i, r in enumerate(part["a25"])
    ],
    "hmmt25_feb": [
      dict(
        problem_idx=i + 1, problem=r["prompt"], answer=str(r["answer"]), problem_type=["Algebra"]
      )
      for i, r in enumerate(part["hmmt"])
    ],
    "math500": [
      dict(
        problem=r["prompt"],
        solution=r["solution"],
        answer=str(r["answer"]),
        subject="Prealgebra",
        level=1,
        unique_id=f"test/prealgebra/{i}.json",
      )
      for i, r in enumerate(part["m500"])
    ],
    "ifeval": [
      dict(key=1000 + i, prompt=f"{r['prompt']} {text}", instruction_id_list=ids, kwargs=kw)
      for i, (r, (ids, kw, text)) in enumerate(zip(part["m500"], _INSTRUCTIONS))
    ],
  }


_FILES = {
  "aime24": "aime_2024_problems.parquet",
  "aime25": "aime2025.jsonl",
  "hmmt25_feb": "hmmt_feb_2025.parquet",
  "math500": "test.jsonl",
  "ifeval": "ifeval_input_data.jsonl",
}


def write_task_benchmarks(task_eval_path: str, out_dir: str, per_set: int = 10) -> dict[str, str]:
  """Writes the five files into out_dir from the task's eval.jsonl; {benchmark: path}."""
  source = epath.Path(task_eval_path)
  if not source.exists():
    raise errors.WorkdirError(f"{source}: no such file (run the demo first: it writes the task)")
  records = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
  if len(records) < 4 * per_set:
    raise errors.InputError(f"{source}: {len(records)} problems, need {4 * per_set} (--problems)")
  root = epath.Path(out_dir)
  root.mkdir(parents=True, exist_ok=True)
  paths = {}
  for name, rows in _rows(records, per_set).items():
    path = root / _FILES[name]
    if path.suffix == ".parquet":
      pq.write_table(pa.Table.from_pylist(rows), str(path))
    else:
      path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths[name] = str(path)
  return paths


def _main() -> None:
  if not _WORKDIR.value:
    raise errors.WorkdirError("--workdir is required: the demo run's directory")
  out = _OUT.value or str(epath.Path(_WORKDIR.value) / "bench")
  eval_path = str(epath.Path(_WORKDIR.value) / "task" / "eval.jsonl")
  paths = write_task_benchmarks(eval_path, out, _PER_SET.value)
  print("--benchmarks=" + ",".join(f"{n}={p}" for n, p in paths.items()))


main = cli.entry_main(_main)

if __name__ == "__main__":
  app.run(main)
