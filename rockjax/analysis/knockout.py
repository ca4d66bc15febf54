"""Knockout census: decode the evaluation set with each candidate id banned and classify the ids.

    result = census(student, prompt_ids_BxP, prompt_mask_BxP, answers, candidate_ids,
                    grade=evaluation.verify, tokenizer=tok, max_new_tokens=512, eos_ids=(eos,))
    result["candidates"][0]["class"]   # 'strong_pillar' | 'neutral' | 'strong_stumbling_block'

The paper's rule (docs/method.md, "Causal knockout"): Delta(v) = acc(v banned) - acc(baseline);
Strong Pillar when Delta <= -eps and the paired test over problems rejects Delta = 0 (p < alpha),
Strong Stumbling Block in mirror, Neutral otherwise; then a sign test over the candidates'
signs and Bonferroni / Benjamini-Hochberg over the same p-values (rockjax.evaluation). The test
is `test`: 'bootstrap' (the paper's: the two-sided paired bootstrap p-value, 10,000 resamples)
or 'permutation' (a paired permutation test); `evaluation.paired_bootstrap` defines both.

Batched across candidates: the baseline and every candidate are "conditions"; the rows
(condition x problem, condition-major) are cut into batches of `batch_rows` prompts, the last one
padded, and each row carries its condition's banned id as data (`generate(banned_ids_BxK=...)`),
so the whole census runs one compiled sampler program whatever the candidates.

Shape letters: B problems, C candidates, X = C + 1 conditions (0: the baseline), n samples per
problem, R rows (prompts) per batch, P prompt length.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from rockjax import evaluation, sampling

CLASSES = ("strong_pillar", "neutral", "strong_stumbling_block")


def knockout_class(delta: float, p_value: float, *, eps: float = 0.01, alpha: float = 0.05) -> str:
  """The paper's epsilon rule: |Delta| >= eps in a direction and p < alpha, else 'neutral'.

  `p_value` is the census's paired test's (analysis.knockout_test): the class, the corrected
  p-values and the report all read that one p."""
  if p_value < alpha and delta <= -eps:
    return "strong_pillar"
  if p_value < alpha and delta >= eps:
    return "strong_stumbling_block"
  return "neutral"


def _condition_rows(num_problems: int, candidate_ids: Sequence[int], batch_rows: int):
  """Problem index and banned id (-1: baseline or padding) per row, padded to whole batches."""
  bans_X = np.array([-1, *candidate_ids], np.int32)
  # Condition-major (the baseline's B rows, then each candidate's): batches may mix conditions;
  # all of them have one shape, which is what keeps the census at one compiled program.
  rows = len(bans_X) * num_problems
  padded = math.ceil(rows / batch_rows) * batch_rows
  problem_R = np.zeros(padded, np.int64)  # padding rows decode problem 0 unbanned; dropped
  ban_R = np.full(padded, -1, np.int32)
  problem_R[:rows] = np.tile(np.arange(num_problems), len(bans_X))
  ban_R[:rows] = np.repeat(bans_X, num_problems)
  return problem_R, ban_R, rows


def _decode_and_grade(
  model: nnx.Module,
  prompt_ids_BxP: np.ndarray,
  prompt_mask_BxP: np.ndarray,
  problem_R: np.ndarray,
  ban_R: np.ndarray,
  *,
  answers: Sequence[Any],
  grade: Callable[[str, Any], bool],
  tokenizer: Any,
  batch_rows: int,
  key: jax.Array,
  progress: bool,
  baseline_rows: int,
  num_rows: int,
  **generate_kw: Any,
) -> tuple[np.ndarray, np.ndarray, float]:
  """Correctness per response [num_rows * n] (row-major: row r's samples, each graded against
  row r's own problem's answer), each id's count in the baseline's, seconds spent decoding.
  Responses are graded batch by batch, so no text outlives its batch; padding rows (from
  num_rows on) are not graded."""
  n = generate_kw.get("num_samples", 1)
  correct: list[bool] = []
  emitted_V = np.zeros(model.cfg.vocab_size, np.int64)
  decode_seconds = 0.0
  starts = range(0, len(problem_R), batch_rows)
  for b, start in enumerate(tqdm(starts, desc="knockout", unit="batch", disable=not progress)):
    rows = slice(start, start + batch_rows)
    tick = time.perf_counter()
    out = sampling.generate(
      model,
      prompt_ids_BxP[problem_R[rows]],
      prompt_mask_BxP[problem_R[rows]],
      banned_ids_BxK=ban_R[rows, None],
      key=jax.random.fold_in(key, b),
      **generate_kw,
    )
    tokens_NxL, resp_NxL = np.asarray(out.tokens), np.asarray(out.response_mask) > 0
    decode_seconds += time.perf_counter() - tick
    # Generated row j of this batch is sample j % n of prompt row start + j // n.
    row_N = start + np.arange(len(tokens_NxL)) // n
    for tokens_L, resp_L, r in zip(tokens_NxL, resp_NxL, row_N):
      if r >= num_rows:
        break  # the last batch's padding rows, at its end
      text = tokenizer.decode(tokens_L[resp_L], skip_special_tokens=True)
      correct.append(bool(grade(text, answers[problem_R[r]])))
    # How often each id is emitted unbanned: a candidate the baseline never emits cannot
    # change a greedy decode, so this tells "neutral" from "never tested".
    base_N = row_N < baseline_rows
    emitted_V += np.bincount(tokens_NxL[base_N][resp_NxL[base_N]], minlength=len(emitted_V))
  return np.array(correct), emitted_V, decode_seconds


def _classify(
  acc_XxB: np.ndarray,
  candidates: list[int],
  *,
  eps: float,
  alpha: float,
  resamples: int,
  seed: int,
  test: str,
) -> dict[str, Any]:
  """Per-candidate Delta, interval, p-value (of `test`) and class; the sign test and corrected
  p-values."""
  baseline_B = acc_XxB[0]  # one baseline run, paired with every candidate problem by problem
  entries = []
  for x, v in enumerate(candidates, start=1):
    paired = evaluation.paired_bootstrap(
      acc_XxB[x], baseline_B, n_resamples=resamples, alpha=alpha, seed=seed, test=test
    )
    entries.append(dict(id=v, accuracy=float(acc_XxB[x].mean()), **paired))
  # The corrections adjust the very p-values the classes use: both answer the same test.
  adjusted = evaluation.multiple_testing([e["p_value"] for e in entries])
  for e, p_bonf, p_bh in zip(entries, adjusted["bonferroni"], adjusted["bh"]):
    e.update(p_bonferroni=float(p_bonf), p_bh=float(p_bh))
    e["class"] = knockout_class(e["delta"], e["p_value"], eps=eps, alpha=alpha)
  deltas_C = np.array([e["delta"] for e in entries])
  # Ties (Delta exactly 0) carry no sign; the test counts the others.
  n_neg, n_pos = int(np.sum(deltas_C < 0)), int(np.sum(deltas_C > 0))
  return dict(
    candidates=entries,
    baseline_accuracy=float(baseline_B.mean()),
    classes={c: sum(e["class"] == c for e in entries) for c in CLASSES},
    significant_bonferroni=int(np.sum(adjusted["bonferroni"] <= alpha)),
    significant_bh=int(np.sum(adjusted["bh"] <= alpha)),
    sign_test=dict(
      negative=n_neg,
      positive=n_pos,
      zero=len(entries) - n_neg - n_pos,
      p_value=evaluation.sign_test(n_neg, n_pos),
    ),
  )


@dataclasses.dataclass(frozen=True)
class _Settings:
  """How the census decodes, batches and tests (census's keywords; see census)."""

  max_new_tokens: int
  eos_ids: tuple[int, ...]
  greedy: bool
  temperature: float
  num_samples: int
  batch_rows: int
  eps: float
  resamples: int
  alpha: float
  seed: int
  test: str
  progress: bool
  generate_kw: dict[str, Any]  # census's extra keywords, for sampling.generate

  def decode_kw(self) -> dict[str, Any]:
    """sampling.generate's keywords besides each batch's prompts, bans and key."""
    return dict(
      max_new_tokens=self.max_new_tokens,
      eos_ids=self.eos_ids,
      greedy=self.greedy,
      temperature=self.temperature,
      num_samples=self.num_samples,
      **self.generate_kw,
    )

  def recorded(self) -> dict[str, Any]:
    """The settings the result records (a greedy decode has no temperature)."""
    return dict(
      greedy=self.greedy,
      temperature=None if self.greedy else self.temperature,
      seed=self.seed,
      max_new_tokens=self.max_new_tokens,
      eps=self.eps,
      alpha=self.alpha,
      resamples=self.resamples,
      test=self.test,
      batch_rows=self.batch_rows,
    )


@dataclasses.dataclass(frozen=True)
class _Decoded:
  """What the census's decodes gave: accuracy per condition and problem, and bookkeeping."""

  acc_XxB: np.ndarray  # mean correctness over each problem's samples
  emitted_V: np.ndarray  # each id's count in the baseline's responses
  started: float  # time.perf_counter() when decoding began: wall_seconds counts from here
  decode_seconds: float
  num_compilations: int
  num_batches: int
  num_rows: int
  num_padding_rows: int


def _checked_candidates(
  model: nnx.Module,
  ids_BxP: np.ndarray,
  answers: Sequence[Any],
  candidate_ids: Sequence[int],
  batch_rows: int,
  test: str,
) -> list[int]:
  """The candidate ids as ints, after checking the census's inputs fit together."""
  B, C = ids_BxP.shape[0], len(candidate_ids)
  vocab = model.cfg.vocab_size
  candidates = [int(v) for v in candidate_ids]
  if len(answers) != B or B == 0:
    raise ValueError(f"census: {len(answers)} answers for {B} prompts; need one per prompt")
  # A duplicate id would be tested twice and inflate the number of tests the corrections use.
  if C == 0 or len(set(candidates)) != C or any(not 0 <= v < vocab for v in candidates):
    raise ValueError(f"census: candidate ids must be distinct and in [0, {vocab}): {candidates}")
  if batch_rows < 1:
    raise ValueError(f"census: batch_rows={batch_rows} must be >= 1")
  if test not in evaluation.TESTS:  # before the decodes, not after them
    raise ValueError(f"census: test={test!r}, expected one of {evaluation.TESTS}")
  return candidates


def _decode_conditions(
  model: nnx.Module,
  ids_BxP: np.ndarray,
  mask_BxP: np.ndarray,
  answers: Sequence[Any],
  candidates: list[int],
  grade: Callable[[str, Any], bool],
  tokenizer: Any,
  s: _Settings,
) -> _Decoded:
  """Decodes and grades the baseline and each candidate's condition on every problem."""
  started = time.perf_counter()
  B = ids_BxP.shape[0]
  problem_R, ban_R, rows = _condition_rows(B, candidates, s.batch_rows)
  compiled_before = sampling.decode_jit._cache_size()
  correct_Rn, emitted_V, decode_seconds = _decode_and_grade(
    model,
    ids_BxP,
    mask_BxP,
    problem_R,
    ban_R,
    answers=answers,
    grade=grade,
    tokenizer=tokenizer,
    batch_rows=s.batch_rows,
    key=jax.random.key(s.seed),
    progress=s.progress,
    baseline_rows=B,
    num_rows=rows,
    **s.decode_kw(),
  )
  num_compilations = sampling.decode_jit._cache_size() - compiled_before
  # Rows were condition-major with n samples each: [X, B, n] once the padding is dropped.
  n = s.num_samples
  acc_XxB = correct_Rn.reshape(len(candidates) + 1, B, n).mean(axis=2)
  return _Decoded(
    acc_XxB=acc_XxB,
    emitted_V=emitted_V,
    started=started,
    decode_seconds=decode_seconds,
    num_compilations=num_compilations,
    num_batches=len(problem_R) // s.batch_rows,
    num_rows=rows,
    num_padding_rows=len(problem_R) - rows,
  )


def _result(
  decoded: _Decoded, candidates: list[int], tokenizer: Any, s: _Settings
) -> dict[str, Any]:
  """The census's JSON-ready result: classes and tests, each id's token, settings, bookkeeping."""
  result = _classify(
    decoded.acc_XxB,
    candidates,
    eps=s.eps,
    alpha=s.alpha,
    resamples=s.resamples,
    seed=s.seed,
    test=s.test,
  )
  for entry in result["candidates"]:
    token = tokenizer.convert_ids_to_tokens(entry["id"])  # None past the tokenizer's ids
    entry["token"] = "" if token is None else str(token)
    entry["baseline_emitted"] = int(decoded.emitted_V[entry["id"]])  # over all baseline samples
  result.update(
    num_problems=decoded.acc_XxB.shape[1],
    num_samples=s.num_samples,
    settings=s.recorded(),
    num_batches=decoded.num_batches,
    num_rows=decoded.num_rows,
    num_padding_rows=decoded.num_padding_rows,
    num_compilations=decoded.num_compilations,
    decode_seconds=decoded.decode_seconds,
    wall_seconds=time.perf_counter() - decoded.started,
    correct_XxB=decoded.acc_XxB.tolist(),
  )
  return result


def census(
  model: nnx.Module,
  prompt_ids_BxP: Any,
  prompt_mask_BxP: Any,
  answers: Sequence[Any],
  candidate_ids: Sequence[int],
  *,
  grade: Callable[[str, Any], bool],
  tokenizer: Any,
  max_new_tokens: int,
  eos_ids: Sequence[int],
  greedy: bool = True,
  temperature: float = 1.0,
  num_samples: int = 1,
  batch_rows: int = 256,
  eps: float = 0.01,
  resamples: int = 10_000,
  alpha: float = 0.05,
  seed: int = 0,
  test: str = "bootstrap",
  progress: bool = True,
  **generate_kw: Any,
) -> dict[str, Any]:
  """Baseline + one decode per candidate id banned at every step, graded and classified.

  grade(text, answer) -> bool grades one response (rockjax.evaluation.verify for math
  answers; the synthetic task's answers are integers it matches exactly). tokenizer: has
  `decode(ids, skip_special_tokens=True)` and `convert_ids_to_tokens(id)`. Decoding is
  greedy by default (the paper: sampled decoding found Pillars that deterministic decoding did
  not, so the settings are recorded in the result); when sampling, batch b draws with
  fold_in(key(seed), b). Per-problem correctness is the mean over that problem's own
  `num_samples` responses, each graded against that problem's answer; the paired test is
  `evaluation.paired_bootstrap` with `resamples`, `alpha`, `seed` and `test` ('bootstrap', the
  paper's, or 'permutation'). `batch_rows`: prompts per decode call (x num_samples rows; with
  `mesh`, a multiple of its batch shards). Extra keywords go to `sampling.generate`. Returns a
  JSON-ready dict (see `section` for what it shows), including `num_compilations`: new programs
  the census compiled (1 when none was cached; counted as the growth of `sampling.decode_jit`'s
  cache), `decode_seconds` (sampler time) and `wall_seconds` (decoding, grading and statistics).
  """
  ids_BxP, mask_BxP = np.asarray(prompt_ids_BxP), np.asarray(prompt_mask_BxP)
  candidates = _checked_candidates(model, ids_BxP, answers, candidate_ids, batch_rows, test)
  settings = _Settings(
    max_new_tokens=max_new_tokens,
    eos_ids=tuple(eos_ids),
    greedy=greedy,
    temperature=temperature,
    num_samples=num_samples,
    batch_rows=batch_rows,
    eps=eps,
    resamples=resamples,
    alpha=alpha,
    seed=seed,
    test=test,
    progress=progress,
    generate_kw=generate_kw,
  )
  decoded = _decode_conditions(
    model, ids_BxP, mask_BxP, answers, candidates, grade, tokenizer, settings
  )
  return _result(decoded, candidates, tokenizer, settings)
