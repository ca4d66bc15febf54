"""rockjax.evals.scores and the comparison of rockjax.evals.report against numpy and hand cases."""

import json

import numpy as np
import pytest

from rockjax.evals import report, scores

# Student t quantiles t(0.975, df) from printed tables, and the normal one.
T975 = {29: 2.0452, 4: 2.7764}
Z975 = 1.95996


def test_pass_at_1_is_the_mean_of_each_problems_accuracy_with_a_t_interval(rng):
  correct_PxN = rng.random((30, 5)) < np.linspace(0.05, 0.95, 30)[:, None]
  got = scores.benchmark_score(correct_PxN)
  acc_P = [np.mean(row) for row in correct_PxN.astype(np.float64)]
  mean = sum(acc_P) / 30
  sd = np.sqrt(sum((a - mean) ** 2 for a in acc_P) / 29)
  half = T975[29] * sd / np.sqrt(30)
  assert got["pass_at_1"] == pytest.approx(mean, abs=1e-12)
  assert got["ci_low"] == pytest.approx(max(0.0, mean - half), abs=1e-4)
  assert got["ci_high"] == pytest.approx(min(1.0, mean + half), abs=1e-4)
  assert (got["num_problems"], got["num_samples"]) == (30, 5)


def test_hand_case_five_problems():
  # Accuracies 1, 0.5, 0, 0.5, 1 (two samples each): mean 0.6; squared deviations
  # 0.16 + 0.01 + 0.36 + 0.01 + 0.16 = 0.7, so sd = sqrt(0.7 / 4).
  correct_PxN = [[1, 1], [1, 0], [0, 0], [0, 1], [1, 1]]
  got = scores.benchmark_score(correct_PxN)
  half = T975[4] * np.sqrt(0.7 / 4) / np.sqrt(5)
  assert got["pass_at_1"] == pytest.approx(0.6)
  assert got["ci_low"] == pytest.approx(0.6 - half, abs=1e-4)
  assert got["ci_high"] == pytest.approx(min(1.0, 0.6 + half), abs=1e-4)


def test_interval_is_clipped_to_accuracies_and_empty_input_is_refused():
  got = scores.benchmark_score(np.ones((4, 3), bool))
  assert (got["ci_low"], got["ci_high"]) == (1.0, 1.0)
  with pytest.raises(ValueError, match="non-empty"):
    scores.benchmark_score(np.zeros((0, 5)))


def test_macro_average_weighs_benchmarks_equally():
  a = dict(pass_at_1=0.5, stderr=0.09)
  b = dict(pass_at_1=0.4, stderr=0.08)
  c = dict(pass_at_1=0.3, stderr=0.06)
  got = scores.macro_score([a, b, c])
  se = np.sqrt(0.09**2 + 0.08**2 + 0.06**2) / 3
  assert got["pass_at_1"] == pytest.approx(0.4)
  assert got["ci_low"] == pytest.approx(0.4 - Z975 * se, abs=1e-5)
  assert got["ci_high"] == pytest.approx(0.4 + Z975 * se, abs=1e-5)


def test_paired_comparison_matches_problems_by_id():
  # b lists the problems in another order and has one a lacks; a has one b lacks.
  ids_a, acc_a = ["p1", "p2", "p3", "p4"], [1.0, 0.0, 0.6, 1.0]
  ids_b, acc_b = ["p3", "p9", "p1", "p2"], [0.2, 1.0, 1.0, 1.0]
  got = scores.paired_comparison(ids_a, acc_a, ids_b, acc_b, resamples=2000)
  # Shared: p1 (1 vs 1), p2 (0 vs 1), p3 (0.6 vs 0.2): delta = (0 - 1 + 0.4) / 3.
  assert got["delta"] == pytest.approx(-0.2)
  assert (got["num_problems"], got["better"], got["worse"]) == (3, 1, 1)
  with pytest.raises(ValueError, match="share no problem"):
    scores.paired_comparison(["x"], [1.0], ["y"], [1.0])


def _eval_dir(path, accuracies: dict[str, list[float]]):
  """A minimal eval.json as rockjax.evaluate writes it: per-problem accuracies by id."""
  benchmarks = {
    name: dict(
      pass_at_1=float(np.mean(acc)),
      problems=[dict(id=f"{name}-{i}", accuracy=a) for i, a in enumerate(acc)],
    )
    for name, acc in accuracies.items()
  }
  path.mkdir(parents=True)
  (path / "eval.json").write_text(json.dumps(dict(benchmarks=benchmarks, macro=None)))
  return str(path)


def test_compare_puts_runs_side_by_side_and_pairs_each_with_the_first(tmp_path):
  first = _eval_dir(tmp_path / "orig" / "eval", {"aime24": [1, 1, 0, 1], "math500": [1, 0]})
  second = _eval_dir(tmp_path / "freeze" / "eval", {"aime24": [0, 1, 0, 1]})
  got = report.compare([first, second], resamples=500)
  assert got["pass_at_1"] == {"aime24": [0.75, 0.5], "math500": [0.5, None]}
  paired = got["paired"][0]
  assert paired["aime24"]["delta"] == pytest.approx(-0.25)  # one problem lost of four
  assert paired["aime24"]["worse"] == 1 and paired["math500"] is None
  md = report.compare_markdown(got, ["orig", "freeze"])
  assert "| aime24 | 75.0 | 50.0 |" in md and "| freeze | aime24 | -25.0 |" in md


def test_compare_errors_name_the_directory(tmp_path):
  with pytest.raises(Exception, match="no such file"):
    report.compare([str(tmp_path / "a"), str(tmp_path / "b")])
  with pytest.raises(Exception, match="at least two"):
    report.compare([str(tmp_path / "a")])
