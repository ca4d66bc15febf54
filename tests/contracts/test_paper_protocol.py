"""docs/paper_protocol.md against the paper configs: every checked table cell equals the
config's value, every row names its source, the checker catches a drifted config, the three
OPD configs differ only in rock.* fields and all of them dry-run from the command line."""

import ast
import importlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

from configs import qwen3_30b_a3b_to_4b
from rockjax.config import check as config_check
from tests.fixtures import REPO

DOC = pathlib.Path(REPO) / "docs" / "paper_protocol.md"
# Table column -> config module.
COLUMNS = {
  "Original": "qwen3_30b_a3b_to_4b",
  "Rock-Freeze": "qwen3_30b_a3b_to_4b_rock_freeze",
  "Random": "qwen3_30b_a3b_to_4b_random_freeze",
  "Stage 1": "qwen3_4b_stage1_kd",
}
OPD_RUNS = ("Original", "Rock-Freeze", "Random")
_FIELD = re.compile(r"^`([a-z0-9_.]+)`$")
_LITERAL = re.compile(r"^`([^`]*)`$")
# Where a value may come from (the table's last column); "our choice" must say why after ':'.
SOURCES = ("paper text", "authors' appendix", "authors' scripts", "authors' code",
           "authors' freeze code", "published list", "config.json", "our choice")  # fmt: skip
_OUR_CHOICE = re.compile(r"our choice: \S")


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
  """(header cells, body rows) of the first markdown table under '## Hyperparameters'."""
  section = text.split("## Hyperparameters", 1)[1]
  lines = [ln.strip() for ln in section.splitlines()]
  start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
  block = []
  for ln in lines[start:]:
    if not ln.startswith("|"):
      break
    block.append([cell.strip() for cell in ln.strip("|").split("|")])
  return block[0], block[2:]  # block[1] is the |---| separator


def configs() -> dict[str, object]:
  """Column name -> the resolved config of its module."""
  return {col: importlib.import_module(f"configs.{m}").get_config() for col, m in COLUMNS.items()}


def check_table(text: str, by_column: dict[str, object]) -> tuple[list[str], int]:
  """(one line per mismatching cell, number of cells checked)."""
  header, rows = table_rows(text)
  field_col = header.index("field")
  problems, checked = [], 0
  for row in rows:
    name, cell = row[0], row[field_col]
    match = _FIELD.match(cell)
    if not match:  # a documentation row ("none: ...")
      continue
    field = match.group(1)
    for col, c in by_column.items():
      value_cell = row[header.index(col)]
      literal = _LITERAL.match(value_cell)
      if not literal:
        continue
      want = ast.literal_eval(literal.group(1))
      got = config_check.get(c, field)
      checked += 1
      if got != want or isinstance(got, bool) != isinstance(want, bool):
        problems.append(f"{name} ({field}) in {col}: config {got!r}, table {want!r}")
  return problems, checked


def test_the_table_matches_every_paper_config():
  problems, checked = check_table(DOC.read_text(), configs())
  assert problems == []
  assert checked >= 150  # ~50 checked rows x 4 configs less the dashes: the table was read


def test_a_drifted_config_is_reported(monkeypatch):
  """A config that drifts from the table (beta2 0.999 in the shared base) fails the check in
  every config built on it, naming the row."""
  base = qwen3_30b_a3b_to_4b.get_config

  def drifted():
    c = base()
    c.opt.b2 = 0.999
    return c

  monkeypatch.setattr(qwen3_30b_a3b_to_4b, "get_config", drifted)
  problems, _ = check_table(DOC.read_text(), configs())
  assert problems == [f"AdamW beta2 (opt.b2) in {col}: config 0.999, table 0.98" for col in COLUMNS]


def test_every_row_is_a_field_row_or_a_documentation_row():
  header, rows = table_rows(DOC.read_text())
  assert header[4:-1] == list(COLUMNS) and header[-1] == "source"
  for row in rows:
    assert len(row) == len(header), row[0]
    cell = row[header.index("field")]
    match = _FIELD.match(cell)
    assert match or cell.startswith("none"), f"row {row[0]!r}: field cell {cell!r}"
    if match:
      config_check.get(configs()["Original"], match.group(1))  # ConfigError if no such field
      values = [row[header.index(col)] for col in COLUMNS]
      for col, value in zip(COLUMNS, values):  # a value cell is a literal or a dash
        assert value == "-" or _LITERAL.match(value), f"{row[0]} / {col}: {value!r}"
      assert any(_LITERAL.match(v) for v in values), f"{row[0]}: no config value is checked"


def test_every_row_names_its_source():
  header, rows = table_rows(DOC.read_text())
  for row in rows:
    source = row[-1]
    assert any(kind in source for kind in SOURCES), f"row {row[0]!r}: source {source!r}"
    if "our choice" in source:
      assert _OUR_CHOICE.search(source), f"row {row[0]!r}: 'our choice' without why: {source!r}"


def flat(c) -> dict[str, object]:
  """{'group.field': value} over the config's leaves."""
  values = {f: config_check.get(c, f) for f in config_check.flat_fields(c)}
  return {f: v for f, v in values.items() if not isinstance(v, ml_collections.ConfigDict)}


def test_the_opd_configs_differ_only_in_rock_fields():
  by_column = {col: flat(c) for col, c in configs().items() if col in OPD_RUNS}
  original = by_column["Original"]
  for col in ("Rock-Freeze", "Random"):
    assert by_column[col].keys() == original.keys()
    differ = {f for f in original if by_column[col][f] != original[f]}
    assert differ and all(f.startswith("rock.") for f in differ), (col, differ)
  # One rollout length, one prompt length, one schedule for the three runs.
  assert {v["opd.max_new_tokens"] for v in by_column.values()} == {8000}


@pytest.mark.parametrize("col", list(COLUMNS))
def test_paper_configs_dry_run_from_the_command_line(col):
  """`--dry_run` on a machine with one CPU device (no compile: the 8-device mesh is sized
  abstractly); the schedule comes from the data.num_train_prompts hint."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [sys.executable, "-m", "rockjax.main", f"--config=configs/{COLUMNS[col]}.py", "--dry_run"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout)
  c = configs()[col]
  # ceil(prompts x 1 epoch / prompts per step), by hand: 10000 / 2 = 5000 for OPD; stage 1
  # ceil(20000 / 128) = 157 (each answer counted as one packed row: an upper bound).
  want = 5000 if col in OPD_RUNS else 157
  assert report["steps"]["steps"] == want
  assert c.data.epochs == 1.0
  assert math.ceil(c.data.num_train_prompts / c.data.prompts_per_step) == want
  assert report["mesh"] == {"data": 1, "fsdp": 4, "context": 2, "tensor": 1}
