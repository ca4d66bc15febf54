"""Verifiers, pass@k and paired statistics against hand-computed and brute-force references."""

import itertools
import math

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
  # a always right, b always wrong: every resample gives delta = 1. Randomised permutation test
  # (2**20 > 999 label swaps): scipy's p is (hits + 1) / (n + 1) per tail, doubled, and no
  # random swap pattern other than the identity (chance ~ 999 / 2**20) reaches |delta| = 1.
  out = evaluation.paired_bootstrap(np.ones(20), np.zeros(20), n_resamples=999, seed=1)
  assert (out["delta"], out["ci_low"], out["ci_high"]) == (1.0, 1.0, 1.0)
  assert out["p_value"] == pytest.approx(2 / 1000)


def _exact_sign_flip_p(diff_P):
  """Two-sided p of the paired permutation test by enumerating all 2**P label swaps (float64)."""
  signs_SxP = np.array(list(itertools.product([1.0, -1.0], repeat=len(diff_P))))
  null_S = (signs_SxP * diff_P).mean(axis=1)
  observed, tol = diff_P.mean(), 1e-12
  less, greater = np.mean(null_S <= observed + tol), np.mean(null_S >= observed - tol)
  return min(1.0, 2 * min(less, greater))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_p_value_is_the_exact_paired_permutation_test(seed):
  # 10 problems, per-problem accuracies (averaged runs): 1024 swap patterns <= n_resamples,
  # so the p-value must equal full enumeration exactly.
  rng = np.random.default_rng(seed)
  a_P, b_P = rng.integers(0, 5, 10) / 4, rng.integers(0, 5, 10) / 4
  a_P[:6] = np.maximum(a_P[:6], b_P[:6] + 0.25).clip(0, 1)  # a mostly ahead: a small p
  out = evaluation.paired_bootstrap(a_P, b_P, n_resamples=2000, seed=0)
  assert out["p_value"] == pytest.approx(_exact_sign_flip_p(a_P - b_P), rel=1e-12)
  assert out["delta"] == pytest.approx((a_P - b_P).mean())


def test_bootstrap_hand_computed_p_value():
  # 4 wins, 0 losses, 2 ties: of the 64 swap patterns, only the 4 that keep all wins (2**2
  # for the ties) give delta >= 4/6, and 4 give <= -4/6: p = 2 * 4/64 = 0.125.
  a_P, b_P = np.array([1, 1, 1, 1, 0, 1]), np.array([0, 0, 0, 0, 0, 1])
  assert evaluation.paired_bootstrap(a_P, b_P, n_resamples=100)["p_value"] == pytest.approx(0.125)


def test_bootstrap_interval_matches_a_numpy_percentile_bootstrap():
  # Independent resampling in numpy (other generator stream): percentiles agree to MC error.
  rng = np.random.default_rng(5)
  a_P, b_P = rng.random(150) < 0.7, rng.random(150) < 0.55
  diff_P = a_P.astype(float) - b_P
  idx_RxP = rng.integers(0, 150, size=(20_000, 150))
  ref = np.quantile(diff_P[idx_RxP].mean(axis=1), [0.05, 0.95])
  out = evaluation.paired_bootstrap(a_P, b_P, n_resamples=20_000, alpha=0.1, seed=3)
  np.testing.assert_allclose([out["ci_low"], out["ci_high"]], ref, atol=0.006)


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
  # The 160 discordant pairs under H0 are fair coins: two-sided binomial tail of 100 of 160.
  exact = 2 * sum(math.comb(160, k) for k in range(100, 161)) / 2.0**160
  assert out["p_value"] == pytest.approx(exact, rel=0.35, abs=3e-4)
  again = evaluation.paired_bootstrap(a_P[perm], b_P[perm], n_resamples=10_000, seed=0)
  assert again == out  # deterministic given the seed


def test_the_bootstrap_test_on_the_worked_knockout_case():
  """200 problems, b right on all, a wrong on 5 (Delta = -0.025). A resample gives delta* >= 0
  only if it draws none of the 5 discordant problems: (195/200)**200 ~ 0.0063, so the bootstrap
  p ~ 2 x 0.0063 ~ 0.0126 < 0.05 and the (1 - 0.05) interval lies below 0; the permutation
  test's exact p is 2 of the 2**5 swap patterns, 0.0625 > 0.05."""
  a_P, b_P = np.ones(200), np.ones(200)
  a_P[:5] = 0.0
  boot = evaluation.paired_bootstrap(a_P, b_P, n_resamples=10_000, seed=0, test="bootstrap")
  perm = evaluation.paired_bootstrap(a_P, b_P, n_resamples=10_000, seed=0, test="permutation")
  p_hand = 2 * (195 / 200) ** 200
  assert p_hand == pytest.approx(0.01265, abs=1e-5)
  assert boot["p_value"] == pytest.approx(p_hand, abs=0.004) and boot["ci_high"] < 0
  assert perm["p_value"] == pytest.approx(2 / 32, abs=0.008) and perm["p_value"] > 0.05
  # One set of resamples: the interval is the same whichever test gives the p-value.
  assert (boot["delta"], boot["ci_low"], boot["ci_high"]) == (
    perm["delta"],
    perm["ci_low"],
    perm["ci_high"],
  )


def test_the_bootstrap_p_value_by_hand():
  # 2 (1 + min(#{<= 0}, #{>= 0})) / (R + 1): zeros count on both sides.
  far = [-0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # one of 9 at or below 0
  assert evaluation.bootstrap_p_value(far) == pytest.approx(2 * (1 + 1) / 10)
  assert evaluation.bootstrap_p_value([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == 2 * 2 / 8
  assert evaluation.bootstrap_p_value([0.1, 0.2, 0.3]) == 2 * 1 / 4
  assert evaluation.bootstrap_p_value([0.0] * 9) == 1.0
  # Total domination: every resample gives delta = 1, none reaches 0: p = 2 / (R + 1).
  out = evaluation.paired_bootstrap(np.ones(20), np.zeros(20), n_resamples=999, test="bootstrap")
  assert out["p_value"] == pytest.approx(2 / 1000)
  same = evaluation.paired_bootstrap(np.ones(6), np.ones(6), n_resamples=99, test="bootstrap")
  assert same["p_value"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_the_bootstrap_p_value_matches_a_numpy_bootstrap(seed):
  # Independent resampling in numpy (its own generator stream): the share of resampled deltas
  # on the far side of 0 agrees to Monte Carlo error (sd ~ 2 sqrt(p (1 - p) / R)).
  rng = np.random.default_rng(10 + seed)
  a_P, b_P = rng.random(120) < 0.62, rng.random(120) < 0.5
  diff_P = a_P.astype(np.float64) - b_P
  idx_RxP = rng.integers(0, 120, size=(40_000, 120))
  deltas_R = diff_P[idx_RxP].mean(axis=1)
  ref = 2 * min(np.mean(deltas_R <= 0), np.mean(deltas_R >= 0))
  out = evaluation.paired_bootstrap(a_P, b_P, n_resamples=20_000, seed=seed, test="bootstrap")
  assert 0.001 < ref < 0.5  # a case away from both ends
  assert out["p_value"] == pytest.approx(ref, abs=4 * 2 * math.sqrt(ref / 2 / 20_000) + 1e-3)


def test_an_unknown_test_is_refused():
  with pytest.raises(ValueError, match="test='wilcoxon'"):
    evaluation.paired_bootstrap(np.ones(3), np.zeros(3), test="wilcoxon")


def test_bootstrap_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match="equal length"):
    evaluation.paired_bootstrap(np.ones(3), np.ones(4))


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
def test_sign_test(n_neg, n_pos, expected):
  assert evaluation.sign_test(n_neg, n_pos) == pytest.approx(expected, rel=1e-9)
  # And the doubled smaller binomial tail computed with integers.
  n, k = n_neg + n_pos, min(n_neg, n_pos)
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n if n else 0.5
  assert evaluation.sign_test(n_neg, n_pos) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)


def test_multiple_testing_matches_hand_computation():
  p_C = np.array([0.001, 0.04, 0.03, 0.2, 0.012])
  out = evaluation.multiple_testing(p_C)
  np.testing.assert_allclose(out["bonferroni"], [0.005, 0.2, 0.15, 1.0, 0.06])
  # BH: sorted p (0.001, 0.012, 0.03, 0.04, 0.2) times m / rank = (0.005, 0.03, 0.05, 0.05,
  # 0.2), then the running minimum from the largest rank down; back in input order.
  np.testing.assert_allclose(out["bh"], [0.005, 0.05, 0.05, 0.2, 0.03])
  assert evaluation.multiple_testing([])["bh"].size == 0
  with pytest.raises(ValueError, match="p-values in"):
    evaluation.multiple_testing([0.5, 1.5])
