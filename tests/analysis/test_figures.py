"""Every figure the report saves has a title, labelled axes, log scales where the data spans
orders of magnitude, labels that do not overprint, K beyond the eligible ids marked, and curves
or points that would hide each other kept apart.

save_figure is replaced by a recorder (no PNG is written), so each test inspects the matplotlib
Figure objects themselves; the inputs are planted by hand.
"""

import itertools

import numpy as np

from rockjax import rocks
from rockjax.analysis import (
  controls,
  geometry,
  knockout_report,
  persistence,
  plotting,
  selection_figures,
  selection_report,
)


def assert_titled_and_labelled(fig):
  sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
  for ax in fig.axes:
    assert sup.strip() or ax.get_title().strip(), "no title"
    assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), "unlabelled axis"


def assert_no_overlap(boxes):
  for a, b in itertools.combinations(boxes, 2):
    assert not a.overlaps(b), (a, b)


def _selection_result():
  """40 observed ids of 64; 8 rocks crowded at similar frequency and KL; 40 eligible ids."""
  rng = np.random.default_rng(0)
  freq = np.zeros(64)
  freq[:40] = rng.integers(2, 400, 40)
  mean = rng.uniform(1e-4, 1e-2, 64)
  rock_ids = np.arange(8)
  freq[rock_ids] = 100 + np.arange(8)  # within 7%: their labels compete for one spot
  mean[rock_ids] = 0.1 + 0.002 * np.arange(8)
  kl = freq * mean
  return {
    "selection": rocks.RockSelection(k=8, min_freq=2, exclude_top_freq=0),
    "rock_ids": rock_ids,
    "freq_V": freq,
    "kl_sum_V": kl,
    "k_grid": [4, 8, 16, 64],
    "coverage": [0.5, 0.8, 0.9, 1.0],
    "selected": [4, 8, 16, 40],
    "sizes": [10, 20],
    "jaccard_NxKxR": np.ones((2, 4, 3)),  # equal curves: they must stay distinguishable
    "density_S": rng.uniform(0.1, 0.3, 30),
    "num_sequences": 30,
    "num_tokens": int(freq.sum()),
    "total_kl": float(kl.sum()),
  }


def test_selection_figures(saved, tmp_path):
  result = _selection_result()
  selection_report.selection_sections(result, str(tmp_path), tokenizer=None)
  assert set(saved) == {
    "kl_vs_frequency.png",
    "rock_density.png",
    "coverage_jaccard_vs_k.png",
    "jaccard_vs_size.png",
  }
  for fig in saved.values():
    assert_titled_and_labelled(fig)
  funnel = saved["kl_vs_frequency.png"].axes[0]
  assert funnel.get_xscale() == "log" and funnel.get_yscale() == "log"
  assert 1 <= len(funnel.texts) <= selection_figures.LABELLED
  assert_no_overlap(plotting.text_boxes(funnel))
  cov, jac = saved["coverage_jaccard_vs_k.png"].axes
  for ax in (cov, jac):  # K = 64 > 40 eligible ids: shaded, and drawn hollow
    assert any(p.get_label() == "K > 40 eligible ids (trivial)" for p in ax.patches)
    hollow = [ln for ln in ax.lines if ln.get_markerfacecolor() == "white"]
    assert hollow and all(np.allclose(ln.get_xdata(), 64, rtol=0.2) for ln in hollow)
  curves = [ln for ln in jac.lines if ln.get_label().startswith("n = ")]
  assert len(curves) == 2
  assert len({(ln.get_marker(), ln.get_linestyle()) for ln in curves}) == 2
  assert not np.allclose(curves[0].get_xdata(), curves[1].get_xdata())  # offset in K


def test_place_labels_leaves_out_what_cannot_fit_without_overlap():
  fig, ax = plotting.new_figure("crowd", (4, 3))
  x, y = np.full(30, 1.0), np.full(30, 1.0)  # 30 labels on one point
  ax.set_xlim(0, 2)
  ax.set_ylim(0, 2)
  left_out = plotting.place_labels(ax, x, y, [f"label {i}" for i in range(30)])
  assert len(ax.texts) + left_out == 30 and left_out > 0
  assert_no_overlap(plotting.text_boxes(ax))


def test_control_figure_keeps_coinciding_pairs_apart(saved, tmp_path):
  freq = np.array([150.0, 151, 149, 480, 200, 200, 200, 400, 5, 3])
  result = controls.control_result(freq, [0, 1, 2, 3], [4, 5, 6, 7])
  controls.section(result, str(tmp_path))
  fig = saved[controls.FIGURE]
  assert_titled_and_labelled(fig)
  scatter, rows = fig.axes
  assert scatter.get_xscale() == "log" and scatter.get_yscale() == "log"
  assert_no_overlap(plotting.text_boxes(scatter))
  dots = next(ln for ln in rows.lines if ln.get_marker() == "o")
  assert len(set(dots.get_ydata())) == 4  # one row per pair, though three sit on one spot
  np.testing.assert_allclose(dots.get_xdata(), freq[4:8] / freq[:4])


def test_persistence_geometry_and_knockout_figures(saved, tmp_path):
  rng = np.random.default_rng(1)
  early = rng.uniform(0.01, 1.0, 60)
  freq = np.full(60, 5.0)
  res = persistence.persistence(freq, early, freq, early * 0.5, np.arange(10), k=10)
  res["early"] = {"text": "/w/student_kd/hf (stage student_kd, step 250)"}
  persistence.section(res, str(tmp_path))
  groups = {"rocks": np.arange(4), "high_kl": np.arange(4, 8), "random": np.arange(8, 12)}
  sums = geometry.GradientSums(
    g_sum_SxV=rng.normal(size=(13, 16)).astype(np.float32),
    count_S=np.arange(1, 14, dtype=np.int32),
    norm_sum_S=rng.uniform(1, 2, 13).astype(np.float32),
  )
  geometry.section(geometry.geometry(sums, groups), str(tmp_path))
  knockout_report.section(_knockout_result(), str(tmp_path))
  for name in (persistence.FIGURE, geometry.FIGURE, "knockout_delta.png"):
    assert_titled_and_labelled(saved[name])
  scatter = saved[persistence.FIGURE].axes[0]
  assert scatter.get_xscale() == "log" and "student_kd" in scatter.get_xlabel()
  assert saved[geometry.FIGURE].axes[0].get_yscale() == "log"


def _knockout_result():
  cands = [
    {"id": i, "token": f"t{i}", "baseline_emitted": 5, "delta": d, "ci_low": d - 0.05,
     "ci_high": d + 0.05, "p_value": p, "p_bonferroni": min(1, 3 * p), "p_bh": p, "class": c}
    for i, d, p, c in ((1, -0.3, 0.001, "strong_pillar"), (2, 0.0, 1.0, "neutral"),
                       (3, 0.2, 0.01, "strong_stumbling_block"))
  ]  # fmt: skip
  settings = {"eps": 0.01, "greedy": True, "temperature": 0.6, "max_new_tokens": 8, "seed": 0,
              "alpha": 0.05, "resamples": 100, "batch_rows": 4}  # fmt: skip
  return {
    "candidates": cands,
    "settings": settings,
    "baseline_accuracy": 0.5,
    "classes": {"strong_pillar": 1, "neutral": 1, "strong_stumbling_block": 1},
    "sign_test": {"negative": 1, "positive": 1, "zero": 1, "p_value": 1.0},
    "significant_bonferroni": 1,
    "significant_bh": 1,
    "num_problems": 10,
    "num_samples": 1,
    "num_batches": 1,
    "num_compilations": 1,
    "wall_seconds": 1.0,
    "num_rocks": 2,
  }
