"""The synthetic arithmetic task: correct answers, determinism, and an offline tokenizer."""

import json
import operator
import re

import pytest

from rockjax.data.tasks import arithmetic

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_VERB_OPS = {"add": "+", "subtract": "-", "multiply by": "*"}


def _reference_answer(prompt: str) -> int:
  """Independent evaluation of a prompt: Python precedence for formulas, left to right in words."""
  m = re.fullmatch(r"(?:Compute (.+)\.|What is (.+)\?)", prompt)
  if m:
    expr = m.group(1) or m.group(2)
    assert re.fullmatch(r"[\d+\-*()]+", expr), expr
    return eval(expr)  # pylint: disable=eval-used  (digits and + - * ( ) only, checked above)
  m = re.fullmatch(r"Start with (\d+), (.+)\. What is the result\?", prompt)
  assert m, prompt
  acc = int(m.group(1))
  for step in m.group(2).split(", then "):
    verb, value = step.rsplit(" ", 1)
    acc = _OPS[_VERB_OPS[verb]](acc, int(value))
  return acc


@pytest.mark.parametrize(
  "difficulty, operands",
  [("single_digit", (2, 3)), ("easy", (2, 3)), ("medium", (2, 4)), ("hard", (3, 4))],
)
def test_problems_are_correct(difficulty, operands):
  problems = arithmetic.make_problems(300, seed=7, difficulty=difficulty)
  assert len({p["prompt"] for p in problems}) == 300
  for p in problems:
    assert int(p["answer"]) == _reference_answer(p["prompt"])
    lines = p["solution"].split("\n")
    assert operands[0] - 1 <= len(lines) - 1 <= operands[1] - 1
    assert lines[0].startswith("First, ")
    assert lines[-1] == f"So the answer is **${p['answer']}$**."
    for line in lines[:-1]:  # every worked step is itself correct and never negative
      a, op, b, result = re.fullmatch(r"\w+, \$(\d+)([+\-*])(\d+)=(\d+)\$\.", line).groups()
      assert _OPS[op](int(a), int(b)) == int(result) >= 0
    if difficulty in ("single_digit", "easy"):
      assert "*" not in p["prompt"] and "multiply" not in p["prompt"]
    if difficulty == "single_digit":  # every operand is one digit, 1-9
      assert all(1 <= int(n) <= 9 for n in re.findall(r"\d+", p["prompt"]))


def test_problems_are_deterministic_and_exclusion_works():
  first = arithmetic.make_problems(50, seed=3)
  assert first == arithmetic.make_problems(50, seed=3)
  assert first != arithmetic.make_problems(50, seed=4)
  held_out = arithmetic.make_problems(50, seed=3, exclude={p["prompt"] for p in first})
  assert not {p["prompt"] for p in held_out} & {p["prompt"] for p in first}


def test_make_problems_rejects_bad_arguments(monkeypatch):
  with pytest.raises(ValueError, match="difficulty"):
    arithmetic.make_problems(1, seed=0, difficulty="impossible")
  # 3 phrasings x {1,2}+{1,2} = 12 distinct prompts: asking for 13 must fail, not hang.
  monkeypatch.setitem(
    arithmetic.DIFFICULTIES,
    "tiny",
    dict(operands=(2, 2), ops="+", values=(1, 2), multipliers=(2, 2)),
  )
  assert len(arithmetic.make_problems(12, seed=0, difficulty="tiny")) == 12
  with pytest.raises(ValueError, match="only 12 distinct"):
    arithmetic.make_problems(13, seed=0, difficulty="tiny")


def test_write_jsonl(tmp_path):
  records = [dict(prompt="Compute 1+2.", answer="3"), dict(prompt="x", answer="é")]
  path = arithmetic.write_jsonl(tmp_path / "sub" / "a.jsonl", records)
  assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == records


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok")
  arithmetic.make_tokenizer(path)
  return path


def test_tokenizer_loads_offline_with_specials(tokenizer_dir):
  import transformers

  tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
  assert len(tok) < 128
  ids = (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
  assert ids == (0, 1, 2)  # SPECIAL_TOKENS order: <pad>, <bos>, <eos>
  rendered = tok.apply_chat_template(
    [dict(role="user", content="Compute 1+2.")], tokenize=False, add_generation_prompt=True
  )
  assert rendered == "<bos><|user|>Compute 1+2.<eos><|assistant|>"


def test_tokenizer_round_trips_and_keeps_structure_tokens(tokenizer_dir):
  import transformers

  tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
  text = "First, $37+48=85$.\nThen, $85-19=66$.\nSo the answer is **$66$**."
  pieces = tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))
  assert pieces == [
    "First",
    ",",
    " ",
    "$",
    "3",
    "7",
    "+",
    "4",
    "8",
    "=",
    "8",
    "5",
    "$",
    ".",
    "\n",
    "Then",
    ",",
    " ",
    "$",
    "8",
    "5",
    "-",
    "1",
    "9",
    "=",
    "6",
    "6",
    "$",
    ".",
    "\n",
    "So",
    " the",
    " answer",
    " is",
    " ",
    "**",
    "$",
    "6",
    "6",
    "$",
    "**",
    ".",
  ]
  for p in arithmetic.make_problems(100, seed=0, difficulty="hard"):
    for s in (p["prompt"], p["solution"]):
      ids = tok.encode(s, add_special_tokens=False)
      assert tok.unk_token_id not in ids
      assert tok.decode(ids) == s
  # Words outside the task vocabulary fall back to letters, never to <unk>.
  assert tok.decode(tok.encode("Hence x", add_special_tokens=False)) == "Hence x"


def test_prepare_demo_writes_disjoint_splits(tmp_path):
  paths = arithmetic.prepare_demo(tmp_path, n_train=40, n_eval=10, seed=0)
  train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
  evals = [json.loads(line) for line in paths["eval"].read_text().splitlines()]
  assert (len(train), len(evals)) == (40, 10)
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
  assert (paths["tokenizer"] / "tokenizer.json").is_file()


def test_single_digit_space_fits_the_demo(tokenizer_dir):
  """configs/demo.py: 4000 train + 200 eval prompts of the 6041 there are, and every problem
  fits data.max_prompt_len=24 and max_len=64 (completion + eos <= 40 ids): nothing is cut."""
  import transformers

  from rockjax.data import records as records_lib

  train = arithmetic.make_problems(4000, seed=0, difficulty="single_digit")
  evals = arithmetic.make_problems(
    200, seed=1, difficulty="single_digit", exclude={p["prompt"] for p in train}
  )
  assert len(evals) == 200
  everything = arithmetic.make_problems(6041, seed=0, difficulty="single_digit")
  with pytest.raises(ValueError, match="only 6041 distinct"):
    arithmetic.make_problems(6042, seed=0, difficulty="single_digit")
  tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
  assert (
    max(
      len(records_lib.format_prompt(tok, p["prompt"], use_chat_template=True)) for p in everything
    )
    <= 24
  )
  assert max(len(records_lib.encode_completion(tok, p["solution"])) for p in everything) <= 64 - 24
