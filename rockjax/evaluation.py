"""Verifiers for math answers, pass@k estimators and paired statistics (scipy.stats).

The statistics serve the knockout study (docs/method.md, "Causal knockout";
rockjax.analysis.knockout runs the census).

Letters: P = problems, N = samples per problem.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np
from scipy import stats

# `\boxed{...}` with up to two levels of nested braces (enough for \frac{a}{b} inside).
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
# Display math `$$...$$` first, else inline `$...$`.
_DOLLARS = re.compile(r"\$\$(.+?)\$\$|\$([^$]+)\$", re.DOTALL)
# "The answer is X" up to the end of the sentence or line.
_ANSWER_IS = re.compile(r"answer\s+is\s*[:=]?\s*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)


def _clean(text: str) -> str:
  """Strips markdown/latex wrapping and trailing punctuation from a candidate answer."""
  text = text.strip()
  # Peel repeatedly: '**$66$**.' -> '$66$' -> '66'.
  while True:
    before = text
    text = text.strip().rstrip(".").strip()
    for open_, close in (("**", "**"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
      if len(text) >= len(open_) + len(close) and text.startswith(open_) and text.endswith(close):
        text = text[len(open_) : len(text) - len(close)]
    boxed = _BOXED.fullmatch(text)
    if boxed:
      text = boxed.group(1)
    if text == before:
      return text


def extract_answer(text: str) -> str | None:
  """The final answer in a completion: last \\boxed{}, else the later of `$...$` / "answer is X"."""
  boxed = list(_BOXED.finditer(text))
  if boxed:
    return _clean(boxed[-1].group(1))
  # Candidates as (end position, value); the one that ends last is the final answer.
  candidates = [(m.end(), m.group(1) or m.group(2)) for m in _DOLLARS.finditer(text)]
  candidates += [(m.end(), m.group(1)) for m in _ANSWER_IS.finditer(text)]
  if not candidates:
    return None
  value = _clean(max(candidates, key=lambda c: c[0])[1])
  return value or None


def _normalise(text: str) -> str:
  """Cheap canonical form for the exact-match fast path (whitespace, thousands commas)."""
  text = _clean(text)
  text = re.sub(r"\s+", "", text)
  if re.fullmatch(r"-?\d{1,3}(,\d{3})+", text):  # 1,234 -> 1234
    text = text.replace(",", "")
  return text


def _as_latex(text: str) -> str:
  """Wraps a bare answer in `$...$` so math_verify's LaTeX extractor sees it."""
  return text if ("$" in text or "\\boxed" in text) else f"${text}$"


def verify(
  completion_text: str, answer: str | int | float, *, timeout_seconds: int | None = 5
) -> bool:
  """True if the completion's final answer equals `answer` (exact match, else math_verify)."""
  answer = str(answer)
  predicted = extract_answer(completion_text)
  if predicted is not None and _normalise(predicted) == _normalise(answer):
    return True  # fast path: most correct answers of the arithmetic task end here
  import math_verify  # lazy: importing sympy costs ~1 s

  # math_verify times out with signal.alarm, which only works on the main thread.
  if threading.current_thread() is not threading.main_thread():
    timeout_seconds = None
  # Grade the same final answer the fast path saw, so both paths agree on what was answered.
  target = _as_latex(predicted) if predicted is not None else completion_text
  gold = math_verify.parse(_as_latex(answer), parsing_timeout=timeout_seconds)
  pred = math_verify.parse(target, parsing_timeout=timeout_seconds)
  if not gold or not pred:
    return False
  return bool(math_verify.verify(gold, pred, timeout_seconds=timeout_seconds))


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  # Product form avoids the huge binomials of the ratio for large n.
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(correct_PxN: Any, k: int) -> float:
  """Mean over problems of the unbiased pass@k; rows are problems, columns samples."""
  correct_PxN = np.asarray(correct_PxN, dtype=bool)
  if correct_PxN.ndim != 2 or correct_PxN.shape[0] == 0:
    raise ValueError(
      f"mean_pass_at_k: correct_PxN must be a non-empty 2-D array, got shape {correct_PxN.shape}"
    )
  n = correct_PxN.shape[1]
  return float(np.mean([pass_at_k(n, int(c), k) for c in correct_PxN.sum(axis=1)]))


def mean_pass_at_1(correct_PxN: Any) -> float:
  """pass@1 averaged over problems (the paper's metric: mean accuracy over N runs)."""
  return mean_pass_at_k(correct_PxN, 1)


def _mean_difference(a_P: np.ndarray, b_P: np.ndarray, axis: int = -1) -> np.ndarray:
  """mean(a - b) along `axis` (vectorised for scipy's resampling)."""
  return np.mean(a_P - b_P, axis=axis)


# The paired tests `paired_bootstrap` can give the p-value of (analysis.knockout_test).
TESTS = ("bootstrap", "permutation")


def paired_bootstrap(
  correct_a_P: Any,
  correct_b_P: Any,
  *,
  n_resamples: int = 10_000,
  alpha: float = 0.05,
  seed: int = 0,
  test: str = "permutation",
) -> dict[str, float]:
  """Paired comparison over problems of delta = mean(a) - mean(b), with scipy.stats.

  Returns dict(delta, ci_low, ci_high, p_value). The interval is the percentile (1 - alpha)
  interval of a paired bootstrap (`scipy.stats.bootstrap(paired=True)`: problems are resampled
  with both systems' results together); percentile rather than BCa because per-problem
  correctness is often constant (e.g. delta = 0 on every problem), where BCa is undefined.
  The two-sided p-value of H0: delta = 0 depends on `test`:

  - 'bootstrap' (the paper's knockout rule): from the same R resampled deltas d*_r,
    p = min(1, 2 (1 + min(#{d*_r <= 0}, #{d*_r >= 0})) / (R + 1)): twice the share of
    resamples on the far side of 0 (a resample at exactly 0 counts against rejecting), with the
    +1 of a Monte Carlo p-value so that p >= 2 / (R + 1). p < alpha says, up to that +1 and the
    interpolation between neighbouring resamples, that 0 lies outside the interval above.
  - 'permutation': a paired permutation test (`scipy.stats.permutation_test`,
    permutation_type='samples': under H0 the two results of a problem are exchangeable, so
    their labels are swapped independently per problem; exact when 2**P <= n_resamples,
    else >= 1 / (n_resamples + 1)).

  The bootstrap rejects more readily when few problems are discordant: 5 of 200 problems lost
  and none won gives p ~ 2 (195/200)**200 ~ 0.013 by bootstrap, but exactly 2 / 2**5 = 0.0625
  by permutation. For a knockout (docs/method.md, "Causal knockout") pass a = with the id
  banned, b = baseline. Entries may be booleans or per-problem accuracies in [0, 1] (e.g.
  averaged over runs).
  """
  a_P, b_P = _paired_inputs(correct_a_P, correct_b_P, n_resamples, alpha, test)
  delta = float(np.mean(a_P - b_P))
  if a_P.size == 1:  # nothing to resample: one problem carries no evidence either way
    return dict(delta=delta, ci_low=delta, ci_high=delta, p_value=1.0)
  low, high, deltas_R = _bootstrap(a_P, b_P, n_resamples, alpha, seed)
  if test == "bootstrap":
    p_value = bootstrap_p_value(deltas_R)
  else:
    p_value = _permutation_p_value(a_P, b_P, n_resamples, seed)
  return dict(delta=delta, ci_low=low, ci_high=high, p_value=p_value)


def bootstrap_p_value(deltas_R: Any) -> float:
  """Two-sided bootstrap p of delta = 0 from R resampled deltas (see `paired_bootstrap`)."""
  deltas_R = np.asarray(deltas_R, np.float64)
  far = min(int(np.sum(deltas_R <= 0)), int(np.sum(deltas_R >= 0)))
  return float(min(1.0, 2.0 * (1 + far) / (deltas_R.size + 1)))


def _paired_inputs(
  correct_a_P: Any, correct_b_P: Any, n_resamples: int, alpha: float, test: str
) -> tuple[np.ndarray, np.ndarray]:
  """Both systems' results as float64 [P] after checking the shapes and settings (ValueError)."""
  a_P = np.asarray(correct_a_P, dtype=np.float64)
  b_P = np.asarray(correct_b_P, dtype=np.float64)
  if a_P.ndim != 1 or a_P.shape != b_P.shape or a_P.size == 0:
    raise ValueError(
      f"paired_bootstrap: need two non-empty 1-D arrays of equal length, got "
      f"shapes {a_P.shape} and {b_P.shape}"
    )
  if not 0.0 < alpha < 1.0 or n_resamples < 1:
    raise ValueError(
      f"paired_bootstrap: need 0 < alpha < 1 and n_resamples >= 1, got "
      f"alpha={alpha}, n_resamples={n_resamples}"
    )
  if test not in TESTS:
    raise ValueError(f"paired_bootstrap: test={test!r}, expected one of {TESTS}")
  return a_P, b_P


def _bootstrap(
  a_P: np.ndarray, b_P: np.ndarray, n_resamples: int, alpha: float, seed: int
) -> tuple[float, float, np.ndarray]:
  """The percentile (1 - alpha) interval of mean(a - b) over problems resampled in pairs, and
  the resampled deltas [R] it was read from."""
  res = stats.bootstrap(
    (a_P, b_P),
    _mean_difference,
    paired=True,
    vectorized=True,
    n_resamples=n_resamples,
    confidence_level=1.0 - alpha,
    method="percentile",
    rng=np.random.default_rng(seed),
  )
  interval = res.confidence_interval
  return float(interval.low), float(interval.high), np.asarray(res.bootstrap_distribution)


def _permutation_p_value(a_P: np.ndarray, b_P: np.ndarray, n_resamples: int, seed: int) -> float:
  """Two-sided p-value of mean(a - b) = 0, the pair's labels swapped per problem."""
  test = stats.permutation_test(
    (a_P, b_P),
    _mean_difference,
    permutation_type="samples",
    vectorized=True,
    n_resamples=n_resamples,
    alternative="two-sided",
    rng=np.random.default_rng(seed),
  )
  return float(min(1.0, test.pvalue))


def sign_test(n_neg: int, n_pos: int) -> float:
  """Two-sided exact sign test p-value for n_neg negative vs n_pos positive outcomes."""
  if n_neg < 0 or n_pos < 0:
    raise ValueError(f"sign_test: counts must be >= 0, got n_neg={n_neg}, n_pos={n_pos}")
  n = n_neg + n_pos
  if n == 0:
    return 1.0
  return float(stats.binomtest(min(n_neg, n_pos), n, 0.5).pvalue)


def multiple_testing(p_values_C: Any) -> dict[str, np.ndarray]:
  """Adjusted p-values over C tests: Bonferroni (min(1, C p)) and Benjamini-Hochberg (FDR).

  A test is significant after correction at level alpha when its adjusted p-value <= alpha.
  BH comes from `scipy.stats.false_discovery_control(method='bh')`.
  """
  p_C = np.asarray(p_values_C, dtype=np.float64)
  if p_C.ndim != 1 or np.any((p_C < 0) | (p_C > 1)):
    raise ValueError(f"multiple_testing: need a 1-D array of p-values in [0, 1], got {p_C}")
  if p_C.size == 0:
    return dict(bonferroni=p_C.copy(), bh=p_C.copy())
  return dict(
    bonferroni=np.minimum(1.0, p_C * p_C.size),
    bh=np.asarray(stats.false_discovery_control(p_C, method="bh"), np.float64),
  )
