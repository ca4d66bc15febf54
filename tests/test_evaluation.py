"""Verifiers, pass@k and paired statistics against hand-computed and brute-force references."""

import itertools
import math
import sys

import numpy as np
import pytest

from rockjax import evaluation


@pytest.mark.parametrize(
  "text, expected",
  [
    ("First, $37+48=85$.\nSo the answer is **$85$**.", "85"),
    ("37+48=85. 85-19=66. The answer is $66$.", "66"),
    ("so the answer is 12.", "12"),
    ("We get $x=3$ and then \\boxed{\\frac{1}{2}}. Later $7$.", "\\frac{1}{2}"),
    ("display $$\\sqrt{2}$$", "\\sqrt{2}"),
    ("$1$ first, The answer is 4", "4"),  # the later candidate wins
    ("The answer is 4. Check: $2+2=4$", "2+2=4"),
    ("no final answer here", None),
  ],
)
def test_extract_answer(text, expected):
  assert evaluation.extract_answer(text) == expected


@pytest.mark.parametrize(
  "completion, answer, expected",
  [
    ("First, $37+48=85$.\nSo the answer is **$85$**.", "85", True),
    ("So the answer is **$85$**.", 85, True),  # numeric gold
    ("So the answer is **$86$**.", "85", False),
    ("The answer is $1,234$.", "1234", True),
    ("The answer is $\\frac{1}{2}$.", "0.5", True),  # needs math_verify, not string match
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("I am not sure.", "3", False),
  ],
)
def test_verify(completion, answer, expected):
  assert evaluation.verify(completion, answer) is expected


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
  """Share of k-subsets of n samples (the first c correct) that contain a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_pass_at_k_matches_enumeration(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      assert evaluation.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_rejects_bad_counts():
  with pytest.raises(ValueError, match="pass_at_k"):
    evaluation.pass_at_k(4, 5, 1)
  with pytest.raises(ValueError, match="pass_at_k"):
    evaluation.pass_at_k(4, 1, 5)


def test_mean_pass_at_1_and_k():
  correct_PxN = [[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
  assert evaluation.mean_pass_at_1(correct_PxN) == pytest.approx((0.75 + 0 + 1) / 3)
  # pass@2 row 0: 1 - C(1,2)/C(4,2) = 1; row 1: 0; row 2: 1.
  assert evaluation.mean_pass_at_k(correct_PxN, 2) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="2-D"):
    evaluation.mean_pass_at_1([1, 0])


def test_bootstrap_identical_systems_have_no_effect():
  a_P = np.array([1, 0, 1, 1, 0, 1], bool)
  out = evaluation.paired_bootstrap(a_P, a_P, n_resamples=500, seed=0)
  assert out == dict(delta=0.0, ci_low=0.0, ci_high=0.0, p_value=1.0)


def test_bootstrap_total_domination():
  # a always right, b always wrong: every resample gives delta = 1, none reaches the null.
  out = evaluation.paired_bootstrap(np.ones(20), np.zeros(20), n_resamples=999, seed=1)
  assert (out["delta"], out["ci_low"], out["ci_high"]) == (1.0, 1.0, 1.0)
  assert out["p_value"] == pytest.approx(1 / 1000)


def test_bootstrap_matches_normal_approximation():
  # Per-problem differences: 100 x (+1), 60 x (-1), 240 x 0 -> delta 0.1, plug-in sd
  # sqrt(160/400 - 0.01), standard error sd/20; CI ~ delta -/+ 1.96 se, z ~ 3.2 (p ~ 0.0014).
  a_P = np.r_[np.ones(100), np.zeros(60), np.ones(120), np.zeros(120)]
  b_P = np.r_[np.zeros(100), np.ones(60), np.ones(120), np.zeros(120)]
  perm = np.random.default_rng(3).permutation(400)  # order must not matter
  out = evaluation.paired_bootstrap(a_P[perm], b_P[perm], n_resamples=10_000, seed=0)
  se = math.sqrt(160 / 400 - 0.01) / 20
  assert out["delta"] == pytest.approx(0.1)
  assert out["ci_low"] == pytest.approx(0.1 - 1.96 * se, abs=0.006)
  assert out["ci_high"] == pytest.approx(0.1 + 1.96 * se, abs=0.006)
  assert out["p_value"] < 0.01
  again = evaluation.paired_bootstrap(a_P[perm], b_P[perm], n_resamples=10_000, seed=0)
  assert again == out  # deterministic given the seed


def test_bootstrap_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match="equal length"):
    evaluation.paired_bootstrap(np.ones(3), np.ones(4))


@pytest.mark.parametrize("use_scipy", [True, False])
@pytest.mark.parametrize(
  "n_neg, n_pos, expected",
  [
    (10, 0, 2 / 1024),  # the paper's census: p ~ 0.002
    (0, 10, 2 / 1024),
    (1, 4, 2 * (1 + 5) / 32),  # 2 * P(X <= 1), X ~ Bin(5, 1/2)
    (3, 3, 1.0),
    (0, 0, 1.0),
  ],
)
def test_sign_test(monkeypatch, use_scipy, n_neg, n_pos, expected):
  if not use_scipy:
    monkeypatch.setitem(sys.modules, "scipy", None)  # forces the math.comb fallback
  else:
    pytest.importorskip("scipy")
  assert evaluation.sign_test(n_neg, n_pos) == pytest.approx(expected, rel=1e-9)
