"""pass@1 over problems with its interval, the paper's macro average, and paired comparisons.

    s = benchmark_score(correct_PxN)     # {'pass_at_1', 'ci_low', 'ci_high', 'stderr', ...}
    macro_score([s_aime24, s_aime25, s_hmmt])  # the paper's headline average
    paired_comparison(acc_a_P, acc_b_P, ...)   # delta a - b over the problems both ran

pass@1 is the mean over problems of each problem's accuracy over its N samples (the paper: 5
samples at temperature 0.6). Its interval is a Student-t interval over the P per-problem
accuracies: mean +- t(0.975, P - 1) x sd / sqrt(P) (sd with P - 1 degrees of freedom), clipped
to [0, 1]; it describes sampling of problems, the larger source of uncertainty on 30-problem
sets, and the samples' own noise is inside each problem's accuracy. The macro average is the
mean of the benchmarks' pass@1 (each benchmark weighted equally, as the paper averages AIME24,
AIME25 and HMMT25-Feb); its standard error combines theirs, sqrt(sum se_b^2) / k, with a normal
interval. Letters: P problems, N samples per problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from rockjax import evaluation

LEVEL = 0.95  # the reported intervals' confidence level


def _interval(mean: float, stderr: float, quantile: float) -> tuple[float, float]:
  """mean -+ quantile x stderr, clipped to [0, 1] (accuracies)."""
  return max(0.0, mean - quantile * stderr), min(1.0, mean + quantile * stderr)


def benchmark_score(correct_PxN: Any) -> dict[str, Any]:
  """pass@1 of one benchmark, its t interval over problems and the per-problem accuracies."""
  correct_PxN = np.asarray(correct_PxN, dtype=np.float64)
  if correct_PxN.ndim != 2 or correct_PxN.size == 0:
    raise ValueError(f"benchmark_score: need a non-empty [P, N] array, got {correct_PxN.shape}")
  acc_P = correct_PxN.mean(axis=1)
  P, mean = len(acc_P), float(acc_P.mean())
  stderr = float(acc_P.std(ddof=1) / np.sqrt(P)) if P > 1 else 0.0
  quantile = float(stats.t.ppf(0.5 + LEVEL / 2, P - 1)) if P > 1 else 0.0
  low, high = _interval(mean, stderr, quantile)
  return dict(
    pass_at_1=mean,
    ci_low=low,
    ci_high=high,
    stderr=stderr,
    num_problems=P,
    num_samples=int(correct_PxN.shape[1]),
  )


def macro_score(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The unweighted mean of the benchmarks' pass@1 and a normal interval from their stderrs."""
  if not scores:
    raise ValueError("macro_score: no benchmark scores to average")
  mean = float(np.mean([s["pass_at_1"] for s in scores]))
  stderr = float(np.sqrt(np.sum([s["stderr"] ** 2 for s in scores])) / len(scores))
  low, high = _interval(mean, stderr, float(stats.norm.ppf(0.5 + LEVEL / 2)))
  return dict(pass_at_1=mean, ci_low=low, ci_high=high, stderr=stderr)


def paired_comparison(
  ids_a: Sequence[str],
  acc_a_P: Any,
  ids_b: Sequence[str],
  acc_b_P: Any,
  *,
  resamples: int = 10_000,
  alpha: float = 0.05,
  seed: int = 0,
) -> dict[str, Any]:
  """delta = pass@1(a) - pass@1(b) over the problems both runs have (matched by id), with
  rockjax.evaluation.paired_bootstrap's interval and p-value; counts of problems either
  way. Raises ValueError when the runs share no problem."""
  where_b = {pid: i for i, pid in enumerate(ids_b)}
  common = [(i, where_b[pid]) for i, pid in enumerate(ids_a) if pid in where_b]
  if not common:
    raise ValueError("paired_comparison: the two runs share no problem id")
  ia, ib = (np.array(x, np.int64) for x in zip(*common))
  a_P = np.asarray(acc_a_P, np.float64)[ia]
  b_P = np.asarray(acc_b_P, np.float64)[ib]
  test = evaluation.paired_bootstrap(a_P, b_P, n_resamples=resamples, alpha=alpha, seed=seed)
  return dict(
    **test,
    num_problems=len(common),
    better=int(np.sum(a_P > b_P)),
    worse=int(np.sum(a_P < b_P)),
    alpha=alpha,
  )
