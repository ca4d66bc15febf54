"""Corpus readers, rock selection statistics and the report, on a planted synthetic corpus.

The Parquet corpus is written directly (no models); every statistic is compared with an
independent float64 numpy computation over the raw rows.
"""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rockjax import rocks
from rockjax.analysis import corpus, report, selection, selection_report
from rockjax.rocks import lists as rock_lists

V = 64
PLANTED = np.array([7, 11, 23])  # frequent, constant high KL: the rocks
RARE_HIGH = 40  # high KL but seen twice: high mean, low score


def _planted_rows(num_seqs=40, seed=0):
  """Rows of a corpus where PLANTED ids are frequent with KL 2.0 and the rest have KL ~0.05."""
  rng = np.random.default_rng(seed)
  rows = []
  for s in range(num_seqs):
    n = int(rng.integers(20, 40))
    ids = rng.integers(0, V, size=n)
    plant = rng.random(n) < 0.3
    ids[plant] = rng.choice(PLANTED, size=int(plant.sum()))
    ids[ids == RARE_HIGH] = 0
    if s in (3, 9):
      ids[0] = RARE_HIGH
    kl = np.where(np.isin(ids, PLANTED), 2.0, rng.uniform(0.0, 0.1, size=n))
    kl[ids == RARE_HIGH] = 5.0
    for p, (i, k) in enumerate(zip(ids, kl)):
      rows.append((s, p, int(i), float(k), 1.0, 0.5))
  return rows


def _write(path, rows, row_group_seqs=8):
  """Parquet with one row group per `row_group_seqs` sequences, as build_corpus writes."""
  arr = np.array(rows, dtype=object)
  seq = arr[:, 0].astype(np.int64)
  with pq.ParquetWriter(str(path), corpus.SCHEMA) as w:
    for start in range(0, seq.max() + 1, row_group_seqs):
      sel = (seq >= start) & (seq < start + row_group_seqs)
      cols = {
        "seq_id": seq[sel],
        "position": arr[sel, 1].astype(np.int32),
        "token_id": arr[sel, 2].astype(np.int32),
        "kl": arr[sel, 3].astype(np.float32),
        "student_entropy": arr[sel, 4].astype(np.float32),
        "teacher_entropy": arr[sel, 5].astype(np.float32),
      }
      w.write_table(pa.table(cols, schema=corpus.SCHEMA))
  return arr


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
  arr = _write(path, _planted_rows())
  return str(path), arr


def _np_sums(arr, seqs=None):
  """float64 (freq_V, kl_sum_V) of the raw rows (optionally only sequences in `seqs`)."""
  keep = np.ones(len(arr), bool) if seqs is None else np.isin(arr[:, 0].astype(int), seqs)
  ids = arr[keep, 2].astype(int)
  kl = arr[keep, 3].astype(np.float32).astype(np.float64)
  freq, kl_sum = np.zeros(V, np.int64), np.zeros(V)
  np.add.at(freq, ids, 1)
  np.add.at(kl_sum, ids, kl)
  return freq, kl_sum


def _np_topk(freq, kl_sum, k, min_freq=2, exclude_top_freq=0):
  """Reference rule: top k by KL sum among ids seen >= min_freq, after excluding top-freq ids."""
  ids = [i for i in range(V) if freq[i] >= max(min_freq, 1)]
  excluded = set(sorted(range(V), key=lambda i: (-freq[i], i))[:exclude_top_freq])
  ids = [i for i in ids if i not in excluded]
  return sorted(ids, key=lambda i: (-kl_sum[i], i))[:k]


def test_id_and_sequence_sums_equal_numpy(planted):
  path, arr = planted
  freq, kl_sum = corpus.id_sums(path, V)
  ref_f, ref_k = _np_sums(arr)
  np.testing.assert_array_equal(freq, ref_f)
  np.testing.assert_allclose(kl_sum, ref_k, rtol=1e-12)
  seqs = corpus.sequence_sums(path, V)
  np.testing.assert_array_equal(seqs.seq_ids, np.arange(40))
  sub = np.array([1, 5, 17, 33])
  f, k = seqs.subset(sub)
  rf, rk = _np_sums(arr, sub)
  np.testing.assert_array_equal(f, rf)
  np.testing.assert_allclose(k, rk, rtol=1e-12)
  np.testing.assert_array_equal(seqs.lengths, np.bincount(arr[:, 0].astype(int)))


def test_planted_frequent_high_kl_ids_are_the_rocks_and_coverage_matches(planted):
  path, arr = planted
  freq, kl_sum = corpus.id_sums(path, V)
  sel = rocks.RockSelection(k=3, min_freq=2, exclude_top_freq=0)
  ids = selection.ranked_ids(freq, kl_sum, sel)
  assert sorted(ids.tolist()) == sorted(PLANTED.tolist())
  assert RARE_HIGH not in ids  # high mean KL, but rare
  assert ids.tolist() == _np_topk(freq, kl_sum, 3)  # rank order too
  k_grid = [1, 3, 10]
  cov = selection.coverage_vs_k(freq, kl_sum, sel, k_grid)
  for k, c in zip(k_grid, cov):
    ref = kl_sum[_np_topk(freq, kl_sum, k)].sum() / kl_sum.sum()
    assert c == pytest.approx(ref, rel=1e-5)


def test_exclude_top_freq_and_mean_kl_selector_follow_the_trainer_rule(planted):
  path, _ = planted
  freq, kl_sum = corpus.id_sums(path, V)
  sel = rocks.RockSelection(k=5, min_freq=2, exclude_top_freq=2)
  assert selection.ranked_ids(freq, kl_sum, sel).tolist() == _np_topk(freq, kl_sum, 5, 2, 2)
  by_mean = selection.ranked_ids(freq, kl_sum, rocks.RockSelection(k=1, selector="mean_kl"))
  assert by_mean.tolist() == [RARE_HIGH]  # seen twice: passes min_freq=2, KL 5.0


def test_jaccard_grid_and_density_equal_numpy(planted):
  path, arr = planted
  seqs = corpus.sequence_sums(path, V)
  sel = rocks.RockSelection(k=3, min_freq=2, exclude_top_freq=0)
  k_grid, sizes = [3, 8], [5, 20]
  jac = selection.jaccard_grid(seqs, sel, k_grid, sizes, repeats=3, seed=7)
  rng = np.random.default_rng(7)  # the same draws, in the same order
  freq, kl_sum = _np_sums(arr)
  for i, n in enumerate(sizes):
    for r in range(3):
      rows = np.sort(rng.choice(40, size=n, replace=False))
      sf, sk = _np_sums(arr, rows)
      for j, k in enumerate(k_grid):
        a, b = set(_np_topk(sf, sk, k)), set(_np_topk(freq, kl_sum, k))
        assert jac[i, j, r] == pytest.approx(len(a & b) / len(a | b))
  assert jac[:, 0].min() == 1.0  # planted rocks are found on any 5 sequences
  dens = selection.rock_density(seqs, PLANTED)
  s_ids = arr[:, 0].astype(int)
  on = np.isin(arr[:, 2].astype(int), PLANTED)
  ref = np.bincount(s_ids, weights=on) / np.bincount(s_ids)
  np.testing.assert_allclose(dens, ref)


def test_scaled_sizes_fit_the_corpus():
  assert selection.scaled_sizes([50, 100, 200, 300, 400], 500) == [50, 100, 200, 300, 400]
  assert selection.scaled_sizes([50, 100, 200, 300, 400], 200) == [20, 40, 80, 120, 160]


def test_rock_ids_round_trip_through_rock_lists(tmp_path):
  ids = np.array([23, 7, 11])
  path = selection.export_rock_ids(
    str(tmp_path / "rock_ids.txt"), ids, {"student": "ckpt 250", "settings": "k=3 #x"}
  )
  np.testing.assert_array_equal(rock_lists.load_id_list(path, vocab_size=V), ids)
  assert "# student: ckpt 250" in open(path).read()


def test_report_markdown_numbers_equal_the_json(planted, tmp_path):
  path, _ = planted
  freq, kl_sum = corpus.id_sums(path, V)
  result = selection.analyze_selection(
    freq,
    kl_sum,
    corpus.sequence_sums(path, V),
    rocks.RockSelection(k=3, min_freq=2, exclude_top_freq=0),
    k_grid=(1, 3, 10),
    subcorpus_sizes=(10, 20),
    subcorpus_repeats=2,
  )
  sections = selection_report.selection_sections(result, str(tmp_path), tokenizer=None)
  paths = report.write_report(str(tmp_path), sections, {"student": "test"})
  md = open(paths["markdown"]).read()
  data = json.load(open(paths["json"]))
  for f in paths["figures"]:
    assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert f.split("/")[-1] in md

  def flat(x):
    if isinstance(x, dict):
      return [v for y in x.values() for v in flat(y)]
    if isinstance(x, list):
      return [v for y in x for v in flat(y)]
    return [x] if isinstance(x, (int, float)) and not isinstance(x, bool) else []

  numbers = set(flat(data))
  body = re.sub(r"!\[.*?\]\(.*?\)|\*.*?\*|'.*?'", "", md)  # figures, captions, token labels
  for s, pct in re.findall(r"(?<![\w.])(-?\d+(?:\.\d+)?(?:e-?\d+)?)(?:(%)|(?![\w.%]))", body):
    if pct:  # a share printed as a percentage: some JSON fraction rounds to it
      assert any(round(100 * x, 1) == float(s) for x in numbers), s + pct
    else:
      assert float(s) in numbers, s
  assert data["rocks"]["coverage_at_k"] == pytest.approx(
    kl_sum[PLANTED].sum() / kl_sum.sum(), abs=1e-4
  )
  assert f"carry {100 * data['rocks']['coverage_at_k']:.1f}% of the corpus KL" in md
  assert data["stability"]["selected"] == [len(_np_topk(freq, kl_sum, k)) for k in (1, 3, 10)]
  edges = data["rocks"]["density_hist_edges"]
  assert sum(data["rocks"]["density_hist_counts"]) == 40 and edges[-1] <= 1.0
