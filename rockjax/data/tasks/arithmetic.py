"""Synthetic multi-step arithmetic: the embedded task that lets OPD run on a CPU in minutes.

Problems are short chains such as "Compute (37+48)*2." with a worked solution
"First, $37+48=85$.\\nThen, $85*2=170$.\\nSo the answer is **$170$**." The solutions are full of
frequent structure tokens (`$`, `=`, `**`, `.`, newlines, "So", "Then", "Now", digits), the
kind of ids that become Rock Tokens, next to rarer content tokens. The tokenizer is a tiny
character-level vocabulary with whole-word tokens for the task's words (< 128 ids), saved as a
`transformers` tokenizer directory with a chat template.
"""

from __future__ import annotations

import json
import os
import string
from typing import Any, Collection, Iterable

import numpy as np
from etils import epath

from rockjax import storage

# Per difficulty: operand count range (inclusive), operations, operand range, multiplier range.
# 'single_digit' (the CPU demo's) is 'easy' with operands 1-9: 6041 distinct prompts in all.
DIFFICULTIES: dict[str, dict[str, Any]] = {
  "single_digit": dict(operands=(2, 3), ops="+-", values=(1, 9), multipliers=(2, 5)),
  "easy": dict(operands=(2, 3), ops="+-", values=(1, 20), multipliers=(2, 5)),
  "medium": dict(operands=(2, 4), ops="+-*", values=(1, 50), multipliers=(2, 9)),
  "hard": dict(operands=(3, 4), ops="+-*", values=(1, 99), multipliers=(2, 12)),
}

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
# Whole-word tokens (with the leading space, as in byte-level BPE) for the task's own words, so
# "So"/"Then"/"Now" are single ids as in a real vocabulary; other words fall back to letters.
WORDS = (
  "So",
  "Then",
  "Now",
  "Next",
  "First",
  "Compute",
  "What",
  "Start",
  " the",
  " answer",
  " is",
  " with",
  " add",
  " subtract",
  " multiply",
  " by",
  " then",
  " result",
  " What",
)
MULTI_CHAR = ("**", "$$", "\n\n")
CHAT_TEMPLATE = (
  "{{ bos_token }}{% for message in messages %}"
  "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
# Pre-tokenisation: multi-char symbols, letter runs with an optional leading space (matched
# greedily against WORDS, then letters), single digits (as in Qwen), single other characters.
_SPLIT_PATTERN = r"\*\*|\$\$|\n\n| ?[A-Za-z]+|\d|\s|[^\sA-Za-z\d]"
_VERBS = {"+": "add {}", "-": "subtract {}", "*": "multiply by {}"}
_CONNECTIVES = ("Then,", "Now,", "Next,")


def _apply(acc: int, op: str, value: int) -> int:
  """acc <op> value for the three supported operations."""
  return acc + value if op == "+" else acc - value if op == "-" else acc * value


def _sample_chain(rng: np.random.Generator, spec: dict[str, Any]) -> tuple[list[int], list[str]]:
  """Operands and operations of one chain; subtraction never goes below zero."""
  lo, hi = spec["values"]
  count = int(rng.integers(spec["operands"][0], spec["operands"][1] + 1))
  values = [int(rng.integers(lo, hi + 1))]
  ops: list[str] = []
  acc = values[0]
  for _ in range(count - 1):
    op = str(rng.choice(list(spec["ops"])))
    if op == "*":
      value = int(rng.integers(spec["multipliers"][0], spec["multipliers"][1] + 1))
    elif op == "-" and acc >= 1:
      value = int(rng.integers(1, min(acc, hi) + 1))  # keeps every intermediate >= 0
    else:
      op, value = "+", int(rng.integers(lo, hi + 1))
    ops.append(op)
    values.append(value)
    acc = _apply(acc, op, value)
  return values, ops


def _expression(values: list[int], ops: list[str]) -> str:
  """Infix text whose standard precedence equals left-to-right evaluation (adds parentheses)."""
  expr, last_additive = str(values[0]), False
  for op, value in zip(ops, values[1:]):
    if op == "*" and last_additive:
      expr = f"({expr})"
    expr, last_additive = f"{expr}{op}{value}", op in "+-"
  return expr


def _solution(values: list[int], ops: list[str], rng: np.random.Generator) -> tuple[str, int]:
  """Step-by-step worked solution and the final value."""
  acc, lines = values[0], []
  for step, (op, value) in enumerate(zip(ops, values[1:])):
    new = _apply(acc, op, value)
    connective = "First," if step == 0 else _CONNECTIVES[int(rng.integers(len(_CONNECTIVES)))]
    lines.append(f"{connective} ${acc}{op}{value}={new}$.")
    acc = new
  lines.append(f"So the answer is **${acc}$**.")
  return "\n".join(lines), acc


def _prompt(values: list[int], ops: list[str], rng: np.random.Generator) -> str:
  """One of three phrasings of the same chain."""
  style = int(rng.integers(3))
  if style == 0:
    return f"Compute {_expression(values, ops)}."
  if style == 1:
    return f"What is {_expression(values, ops)}?"
  steps = ", then ".join(_VERBS[op].format(value) for op, value in zip(ops, values[1:]))
  return f"Start with {values[0]}, {steps}. What is the result?"


def make_problems(
  n: int, *, seed: int, difficulty: str = "medium", exclude: Collection[str] = ()
) -> list[dict[str, str]]:
  """n distinct problems {prompt, answer, solution}, deterministic given seed.

  `exclude` holds prompts to skip (e.g. the training prompts when making an eval split).
  """
  if difficulty not in DIFFICULTIES:
    raise ValueError(
      f"make_problems: difficulty={difficulty!r}; choose from {sorted(DIFFICULTIES)}"
    )
  if n < 0:
    raise ValueError(f"make_problems: n must be >= 0, got {n}")
  spec, rng = DIFFICULTIES[difficulty], np.random.default_rng(seed)
  seen, problems, misses = set(exclude), [], 0
  # An exhausted problem space shows as a long run of duplicates: fail then, never hang.
  while len(problems) < n and misses < 2000:
    values, ops = _sample_chain(rng, spec)
    prompt = _prompt(values, ops, rng)
    if prompt in seen:
      misses += 1
      continue
    seen.add(prompt)
    misses = 0
    solution, answer = _solution(values, ops, rng)
    problems.append(dict(prompt=prompt, answer=str(answer), solution=solution))
  if len(problems) < n:
    raise ValueError(
      f"make_problems: only {len(problems)} distinct {difficulty!r} problems found, asked for {n}"
    )
  return problems


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> epath.Path:
  """Writes one JSON object per line (parent directories created; a URL works); the path."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  return path


def vocabulary() -> list[str]:
  """The token strings in id order: specials, characters, multi-char symbols, words."""
  chars = list(string.digits) + [" ", "\n"] + list(string.punctuation) + list(string.ascii_letters)
  return list(SPECIAL_TOKENS) + chars + list(MULTI_CHAR) + list(WORDS)


def make_tokenizer(out_dir: str | os.PathLike) -> Any:
  """Builds the task tokenizer, saves it to out_dir (AutoTokenizer-loadable; a URL works)."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers

  vocab = {token: i for i, token in enumerate(vocabulary())}
  # WordPiece with an empty continuation prefix is greedy longest-match over plain strings:
  # whole (space-prefixed) words where listed, else a space and letters, <unk> only for
  # non-ASCII characters.
  backend = tokenizers.Tokenizer(
    models.WordPiece(
      vocab=vocab, unk_token="<unk>", continuing_subword_prefix="", max_input_chars_per_word=100
    )
  )
  backend.pre_tokenizer = pre_tokenizers.Split(
    tokenizers.Regex(_SPLIT_PATTERN), behavior="isolated"
  )
  backend.decoder = decoders.Fuse()  # spaces are tokens, so plain concatenation round-trips
  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend,
    bos_token="<bos>",
    eos_token="<eos>",
    pad_token="<pad>",
    unk_token="<unk>",
    additional_special_tokens=list(SPECIAL_TOKENS[4:]),
  )
  tokenizer.chat_template = CHAT_TEMPLATE
  with storage.staged_dir(out_dir) as local:
    tokenizer.save_pretrained(local)
  return tokenizer


def prepare_demo(
  out_dir: str | os.PathLike,
  *,
  n_train: int = 2000,
  n_eval: int = 200,
  seed: int = 0,
  difficulty: str = "medium",
) -> dict[str, epath.Path]:
  """Writes train.jsonl, eval.jsonl (disjoint prompts) and tokenizer/ under out_dir (or a URL)."""
  out_dir = epath.Path(out_dir)
  train = make_problems(n_train, seed=seed, difficulty=difficulty)
  evals = make_problems(
    n_eval, seed=seed + 1, difficulty=difficulty, exclude={r["prompt"] for r in train}
  )
  paths = dict(
    train=write_jsonl(out_dir / "train.jsonl", train),
    eval=write_jsonl(out_dir / "eval.jsonl", evals),
    tokenizer=out_dir / "tokenizer",
  )
  make_tokenizer(paths["tokenizer"])
  return paths
