"""The Random control against brute force, a greedy matching and numpy: optimal, seeded, loadable."""

import importlib
import itertools

import numpy as np
import pytest
import scipy.optimize

from rockjax.analysis import controls
from rockjax.dry_run import report as dry_run
from rockjax.rocks import lists as rock_lists


def log_cost(freq, rocks, ctrl):
  return float(np.abs(np.log(freq[rocks]) - np.log(freq[ctrl])).sum())


def brute_force(freq, rocks, cands):
  """Minimum total |log ratio| over every ordered choice of distinct candidates."""
  return min(log_cost(freq, rocks, list(p)) for p in itertools.permutations(cands, len(rocks)))


def test_planted_rocks_get_distinct_frequency_matched_non_rock_ids():
  rng = np.random.default_rng(0)
  V = 3000
  freq = np.floor(rng.lognormal(2.0, 1.5, V))  # many zeros and ones, a long tail
  by_freq = np.argsort(-freq, kind="stable")
  top5 = by_freq[:5]
  # Rocks spread over frequent ids (ranks 20-800), as Rock Score rankings are.
  rocks = rng.choice(by_freq[20:800], 100, replace=False)
  ctrl = controls.frequency_matched(freq, rocks, seed=1, exclude_top_freq=5, min_freq=2)
  assert ctrl.shape == (100,) and np.unique(ctrl).size == 100
  assert not set(ctrl) & set(rocks) and not set(ctrl) & set(top5)
  assert freq[ctrl].min() >= 2
  ratio = np.abs(np.log(freq[rocks]) - np.log(freq[ctrl]))
  q = controls.match_quality(freq, rocks, ctrl)
  assert q["max_abs_log_ratio"] == pytest.approx(ratio.max())
  assert q["median_abs_log_ratio"] == pytest.approx(np.median(ratio))
  assert q["total_abs_log_ratio"] == pytest.approx(ratio.sum())
  # The stated tolerance (a factor of 2) holds for every pair on this corpus.
  assert q["share_within_tolerance"] == 1.0 and ratio.max() <= np.log(2.0)


def test_assignment_is_the_brute_force_optimum_and_beats_greedy():
  # Log frequencies: rocks at ln 100 and ln 10; a candidate between them (nearer the first)
  # and one far above. Greedy in rank order gives the shared candidate to rock 0.
  freq = np.array([100.0, 10.0, 36.0, 2000.0, 0.0])
  rocks = np.array([0, 1])
  greedy, free = [], [2, 3]
  for r in rocks:
    best = min(free, key=lambda c: abs(np.log(freq[r]) - np.log(freq[c])))
    greedy.append(best)
    free.remove(best)
  ctrl = controls.frequency_matched(freq, rocks)
  optimum = brute_force(freq, rocks, [2, 3])
  assert log_cost(freq, rocks, ctrl) == pytest.approx(optimum)
  assert optimum < log_cost(freq, rocks, greedy) - 1.0
  assert ctrl.tolist() == [3, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_random_cases_equal_brute_force(seed):
  rng = np.random.default_rng(seed)
  freq = rng.integers(1, 60, 9).astype(float)
  rocks = rng.choice(9, 3, replace=False)
  cands = [i for i in range(9) if i not in rocks]
  ctrl = controls.frequency_matched(freq, rocks, seed=seed)
  assert log_cost(freq, rocks, ctrl) == pytest.approx(brute_force(freq, rocks, cands))


def test_window_pruning_keeps_the_optimum_when_candidates_crowd_one_side():
  # 4 rocks of equal frequency, candidates just below and many far above: the optimum must
  # reach past the first few candidates of each rock's neighbourhood.
  freq = np.array([50.0] * 4 + [49.0, 48.0] + [80.0 + i for i in range(30)] + [1.0] * 30)
  rocks = np.arange(4)
  ctrl = controls.frequency_matched(freq, rocks)
  ref = np.sort(np.abs(np.log(50.0) - np.log(freq[4:])))[:4].sum()  # equal rocks: 4 nearest
  assert log_cost(freq, rocks, ctrl) == pytest.approx(ref)


def test_equals_an_unpruned_assignment_on_every_candidate():
  rng = np.random.default_rng(3)
  freq = np.floor(rng.lognormal(2.0, 1.0, 400))
  rocks = rng.choice(np.nonzero(freq >= 5)[0], 30, replace=False)
  cands = np.array([i for i in np.nonzero(freq > 0)[0] if i not in set(rocks)])
  cost = np.abs(np.log(freq[rocks])[:, None] - np.log(freq[cands])[None, :])
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  ctrl = controls.frequency_matched(freq, rocks, seed=5)
  assert log_cost(freq, rocks, ctrl) == pytest.approx(cost[rows, cols].sum())


def test_ties_are_broken_by_the_seed_only():
  freq = np.array([20.0, 20.0] + [20.0] * 40 + [3.0] * 10)
  rocks = np.array([0, 1])
  a = controls.frequency_matched(freq, rocks, seed=0)
  assert np.array_equal(a, controls.frequency_matched(freq, rocks, seed=0))
  picks = {tuple(controls.frequency_matched(freq, rocks, seed=s)) for s in range(8)}
  assert len(picks) > 1  # different seeds draw different equal-frequency ids
  for p in picks:
    assert log_cost(freq, rocks, list(p)) == 0.0


def test_exclude_and_exclude_top_freq_remove_candidates():
  # Equal top frequencies: the lower id counts as more frequent (rocks.select's tie rule).
  freq = np.array([9.0, 50.0, 50.0, 40.0, 10.0, 8.0])
  rocks = np.array([0])
  assert controls.frequency_matched(freq, rocks).tolist() == [4]
  assert controls.frequency_matched(freq, rocks, exclude=[4]).tolist() == [5]
  assert controls.frequency_matched(freq, rocks, exclude=[4, 5]).tolist() == [3]
  # Top 2 by frequency are ids 1 and 2; with 4 and 5 excluded, 3 is the only one left.
  assert controls.frequency_matched(freq, rocks, exclude=[4, 5], exclude_top_freq=2).tolist() == [3]
  with pytest.raises(ValueError, match="exclude_top_freq=3"):
    controls.frequency_matched(freq, rocks, exclude=[4, 5], exclude_top_freq=3)


def test_too_few_candidates_is_one_line():
  with pytest.raises(ValueError, match="only 1 candidate ids"):
    controls.frequency_matched(np.array([5.0, 4.0, 3.0, 0.0]), [0, 1])  # id 3 unseen


def test_control_list_is_loaded_by_the_random_freeze_config(tmp_path):
  V = rock_lists.QWEN3_VOCAB_SIZE
  rng = np.random.default_rng(0)
  freq = np.floor(rng.lognormal(1.0, 2.0, V))
  rocks = np.argsort(-freq, kind="stable")[5:105]
  rock_path = tmp_path / "rock_ids.txt"
  rock_lists.save_id_list(rock_path, rocks)
  ctrl = controls.frequency_matched(freq, rocks, exclude_top_freq=5, min_freq=2)
  path = controls.write_control_list(
    controls.control_list_path(rock_path), ctrl, header="frequency-matched control\nseed 0"
  )
  assert path == str(tmp_path / controls.CONTROL_LIST_NAME)
  loaded = rock_lists.load_id_list(path, vocab_size=V)
  assert loaded.tolist() == ctrl.tolist()
  c = importlib.import_module("configs.qwen3_30b_a3b_to_4b_random_freeze").get_config()
  c.rock.list_path = path
  c.mesh.num_devices = 64  # sizes only, no compile
  report = dry_run.report(c)
  assert report["student_params_b"] > 4.0
  mask = rock_lists.ids_to_mask(loaded, c.model.arch.vocab_size)
  assert mask.sum() == 100 and not mask[rocks].any()


def test_section_numbers_and_figure(tmp_path):
  freq = np.array([100.0, 10.0, 36.0, 2000.0, 12.0, 90.0])
  rocks = np.array([0, 1])
  ctrl = controls.frequency_matched(freq, rocks)
  sec = controls.section(controls.control_result(freq, rocks, ctrl), str(tmp_path))
  assert sec.numbers["num_pairs"] == 2
  ratio = np.abs(np.log(freq[rocks] / freq[ctrl]))
  assert sec.numbers["max_abs_log_ratio"] == pytest.approx(ratio.max(), rel=1e-3)
  assert (tmp_path / sec.figures[0].filename).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  sec.text.format(**sec.numbers)  # every placeholder has a number


def test_listed_ids_the_corpus_never_emits_are_set_apart_and_reported(tmp_path):
  freq = np.array([0.0, 40.0, 0.0, 12.0, 35.0, 11.0, 0.0])
  seen, unseen = controls.split_unseen(freq, [6, 1, 2, 3])  # list order kept in both
  assert seen.tolist() == [1, 3] and unseen.tolist() == [6, 2]
  ctrl = controls.frequency_matched(freq, seen, exclude=unseen)
  assert ctrl.tolist() == [4, 5]  # 35 ~ 40 and 11 ~ 12, by hand
  result = controls.control_result(freq, seen, ctrl, matched_to="frozen.txt", unseen_ids=unseen)
  sec = controls.section(result, str(tmp_path))
  text = sec.text.format(**sec.numbers)
  assert "the ids of frozen.txt (2 of its ids never occur" in text
  assert any(w.startswith("2 id(s) of the matched list never occur") for w in sec.warnings)
  assert "the control list holds 2 ids, not 4" in " ".join(sec.warnings)
