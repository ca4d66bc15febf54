"""python -m rockjax.evaluate end to end: five benchmark files in their published formats, a tiny
HF student, eval.json / eval.md / responses.jsonl consistent with each other, --compare, errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rockjax import models
from rockjax.data import tasks
from tests.fixtures import assert_one_line_error, cli, random_model

EVALUATE = "import sys; from absl import app; from rockjax import evaluate, cli; " + (
  "sys.argv[0] = 'evaluate'; app.run(evaluate.main, flags_parser=cli.parse_flags)"
)
MATH = [("What is 2+3?", 5), ("What is 9-4?", 5), ("Compute 1+1.", 2)]


def _write(tmp_path):
  """The five files, written here in each dataset's published fields and types."""
  d = tmp_path / "bench"
  d.mkdir()
  pq.write_table(
    pa.Table.from_pylist(
      [dict(ID=f"2024-I-{i}", Problem=q, Solution="", Answer=a) for i, (q, a) in enumerate(MATH)]
    ),
    d / "aime24.parquet",
  )
  rows = {
    "aime25.jsonl": [dict(id=i, problem=q, answer=str(a)) for i, (q, a) in enumerate(MATH)],
    "math500.jsonl": [
      dict(
        problem=q,
        solution="",
        answer=str(a),
        subject="Prealgebra",
        level=1,
        unique_id=f"test/prealgebra/{i}.json",
      )
      for i, (q, a) in enumerate(MATH)
    ],  # fmt: skip
    "ifeval.jsonl": [
      dict(
        key=7,
        prompt="Say hi without commas.",
        instruction_id_list=["punctuation:no_comma"],
        kwargs=[{}],
      )
    ],  # fmt: skip
  }
  for name, records in rows.items():
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in records))
  pq.write_table(
    pa.Table.from_pylist(
      [dict(problem_idx=i + 1, problem=q, answer=str(a)) for i, (q, a) in enumerate(MATH)]
    ),
    d / "hmmt.parquet",
  )
  names = dict(aime24="aime24.parquet", aime25="aime25.jsonl", hmmt25_feb="hmmt.parquet")
  names.update(math500="math500.jsonl", ifeval="ifeval.jsonl")
  return ",".join(f"{n}={d / f}" for n, f in names.items())


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """A tiny random Qwen3 student with the synthetic task's tokenizer, as a HF directory."""
  root = tmp_path_factory.mktemp("student")
  tok = tasks.make_tokenizer(root / "tok")
  cfg = models.ModelConfig(
    family="qwen3", vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True,
  )  # fmt: skip
  models.save_pretrained(random_model(cfg), root / "hf", tokenizer=tok)
  return str(root / "hf")


def test_evaluate_writes_consistent_table_json_and_responses(tmp_path, student):
  spec, out = _write(tmp_path), tmp_path / "eval"
  args = [
    "--config=configs/tiny.py", f"--student={student}", f"--benchmarks={spec}", f"--out={out}",
    "--config.bench.num_samples=2", "--config.bench.max_new_tokens=6",
    "--config.bench.prompt_template=chat", "--config.bench.batch_size=8",
  ]  # fmt: skip
  proc = cli(*args, code=EVALUATE, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "eval.json").read_text())
  responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
  benchmarks = summary["benchmarks"]
  assert list(benchmarks) == ["aime24", "aime25", "hmmt25_feb", "math500", "ifeval"]
  assert benchmarks["aime24"]["problems"][0]["id"] == "2024-I-0"
  assert benchmarks["hmmt25_feb"]["problems"][2]["id"] == "3"
  for name, b in benchmarks.items():
    mine = [r for r in responses if r["benchmark"] == name]
    assert len(mine) == 2 * b["num_problems"] and b["num_samples"] == 2
    for p in b["problems"]:  # each problem's flags are its own two responses'
      flags = [r["correct"] for r in mine if r["id"] == p["id"]]
      assert flags == p["correct"]
    assert b["pass_at_1"] == pytest.approx(np.mean([np.mean(p["correct"]) for p in b["problems"]]))
  macro = np.mean([benchmarks[n]["pass_at_1"] for n in ("aime24", "aime25", "hmmt25_feb")])
  assert summary["macro"]["pass_at_1"] == pytest.approx(macro)
  assert set(benchmarks["ifeval"]["ifeval"]) >= {"prompt_level_strict", "inst_level_loose"}
  s = summary["settings"]
  assert (s["temperature"], s["seed"], s["max_new_tokens"], s["prompt_template"]) == (
    0.6, 0, 6, "chat"
  )  # fmt: skip
  md = (out / "eval.md").read_text()
  assert "| aime24 | 3 |" in md and "average of aime24, aime25, hmmt25_feb" in md

  # The same run twice side by side: every paired delta is 0.
  proc = cli(f"--compare={out},{out}", f"--out={tmp_path / 'cmp'}", code=EVALUATE)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
  assert all(t["delta"] == 0 for t in cmp["paired"][0].values() if t is not None)


def test_a_missing_benchmark_file_and_an_unknown_name_are_one_line(tmp_path, student):
  missing = tmp_path / "nope.jsonl"
  base = ["--config=configs/tiny.py", f"--student={student}", f"--out={tmp_path / 'o'}"]
  proc = cli(*base, f"--benchmarks=aime24={missing}", code=EVALUATE)
  assert_one_line_error(proc, str(missing))
  proc = cli(*base, f"--benchmarks=aime26={missing}", code=EVALUATE)
  assert_one_line_error(proc, "aime26")
