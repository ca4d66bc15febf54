"""Persistence on a corpus with planted persistent rocks and decaying high-KL ids, vs scipy."""

import numpy as np
import pytest
import scipy.stats

from rockjax import rocks
from rockjax.analysis import groups, persistence

V = 1000


def planted(seed=0):
  """Rocks 0-99 keep their KL (+-5%, alternating), ids 100-199 (high KL) fall to 0.4x."""
  rng = np.random.default_rng(seed)
  early = rng.uniform(0.05, 0.5, V)
  early[:100] = np.sort(rng.uniform(0.1, 0.3, 100))
  early[100:200] = rng.uniform(5.0, 10.0, 100)
  late = early * (1 + 0.02 * rng.standard_normal(V))  # others: small noise
  late[:100] = early[:100] * (1 + 0.05 * np.tile([1.0, -1.0], 50))
  late[100:200] = early[100:200] * 0.4 * (1 + 0.02 * rng.standard_normal(100))
  freq_e = rng.integers(2, 50, V).astype(float)
  freq_l = rng.integers(2, 50, V).astype(float)
  freq_e[:100] = freq_l[:100] = 1000.0
  freq_e[950:] = 0.0  # never seen early: cannot be paired
  early[950:] = 0.0
  return freq_e, early, freq_l, late


def test_persistent_rocks_and_decaying_high_kl_ids_separate():
  freq_e, early, freq_l, late = planted()
  res = persistence.persistence(freq_e, early, freq_l, late, np.arange(100), seed=3)
  g = res["groups"]
  assert g["rocks"]["ids"].tolist() == list(range(100))
  assert sorted(g["high_kl"]["ids"].tolist()) == list(range(100, 200))
  rnd = g["random"]["ids"]
  assert rnd.size == 200 and np.all((rnd >= 200) & (rnd < 950))  # seen at both points only
  for name in groups.GROUPS:
    ids = g[name]["ids"]
    ref = scipy.stats.wilcoxon(early[ids], late[ids])
    assert g[name]["wilcoxon_stat"] == pytest.approx(ref.statistic)
    assert g[name]["wilcoxon_p"] == pytest.approx(ref.pvalue)
    assert g[name]["median_early"] == pytest.approx(np.median(early[ids]))
    assert g[name]["median_late"] == pytest.approx(np.median(late[ids]))
    drop = (early[ids] - late[ids]) / early[ids]
    assert g[name]["median_drop"] == pytest.approx(np.median(drop))
  assert g["high_kl"]["wilcoxon_p"] < 1e-10 and g["rocks"]["wilcoxon_p"] > 0.5
  assert g["high_kl"]["median_drop"] == pytest.approx(0.6, abs=0.02)
  assert abs(g["rocks"]["median_drop"]) <= 0.05
  d = lambda ids: (early[ids] - late[ids]) / early[ids]  # noqa: E731
  for other in ("high_kl", "random"):
    ref = scipy.stats.mannwhitneyu(d(np.arange(100)), d(g[other]["ids"]), alternative="two-sided")
    test = res["tests"][f"rocks_vs_{other}"]
    assert test["mannwhitney_u"] == pytest.approx(ref.statistic)
    assert test["mannwhitney_p"] == pytest.approx(ref.pvalue)
  assert res["tests"]["rocks_vs_high_kl"]["mannwhitney_p"] < 1e-10


def test_rocks_unseen_early_are_counted_not_paired():
  freq_e, early, freq_l, late = planted()
  rock_ids = np.r_[np.arange(98), 960, 961]  # the last two were never seen early
  res = persistence.persistence(freq_e, early, freq_l, late, rock_ids)
  assert res["groups"]["rocks"]["n"] == 98 and res["groups"]["rocks"]["dropped"] == 2


def test_from_rock_stats_reads_the_snapshot_and_the_updates_after_it():
  rng = np.random.default_rng(1)
  ids1, ids2 = rng.integers(0, 16, (2, 3, 8))
  kl1, kl2 = rng.random((2, 3, 8)).astype(np.float32)
  mask = np.ones((3, 8), np.int32)
  s = rocks.snapshot(rocks.update(rocks.RockStats.init(16), ids1, kl1, mask))
  s = rocks.update(s, ids2, kl2, mask)
  out = persistence.from_rock_stats(s)
  for ids, kl, key in ((ids1, kl1, "early"), (ids2, kl2, "late")):
    n = np.bincount(ids.reshape(-1), minlength=16).astype(float)
    tot = np.bincount(ids.reshape(-1), kl.reshape(-1).astype(np.float64), minlength=16)
    np.testing.assert_array_equal(out[f"{key}_freq_V"], n)
    mean = np.divide(tot, n, out=np.zeros(16), where=n > 0)
    np.testing.assert_allclose(out[f"{key}_mean_kl_V"], mean, rtol=1e-5)


def test_section_fills_every_placeholder_and_saves_the_scatter(tmp_path):
  res = persistence.persistence(*planted(), np.arange(100))
  sec = persistence.section(res, str(tmp_path))
  assert sec.key == "persistence"
  text = sec.text.format(**sec.numbers)
  assert f"| rocks | 100 | {sec.numbers['rocks_median_early']} |" in text
  assert sec.numbers["high_kl_median_drop"] == pytest.approx(0.6, abs=0.02)
  png = tmp_path / sec.figures[0].filename
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
