"""Warnings for degenerate comparisons fire on planted degenerate inputs and stay quiet on normal
ones: small or short-changed id groups, a checkpoint compared with itself (by path, by
parameters, by per-id KL), K beyond the eligible ids, rocks that are much of the vocabulary.
Checkpoints are named from a hand-written stage.json."""

import json
import os
import types

import numpy as np
import pytest
import scipy.stats
from flax import nnx

from rockjax.analysis import context, degenerate, persistence, report, studies


def test_the_wilcoxon_floor_is_scipys_smallest_exact_p():
  for n in (5, 6, 10):
    # All n differences positive and distinct: the most extreme outcome, the smallest p.
    p = scipy.stats.wilcoxon(np.arange(1.0, n + 1), np.zeros(n), method="exact").pvalue
    assert degenerate.wilcoxon_floor(n) == pytest.approx(p, rel=1e-12)


def test_group_warnings_fire_on_small_and_short_groups_only():
  requested = {"rocks": 10, "high_kl": 10, "random": 200}
  out = degenerate.group_warnings({"rocks": 10, "high_kl": 10, "random": 6}, requested, 26)
  assert len(out) == 1 and out[0].startswith("random ids: 6 ids, fewer than the 200 requested")
  assert "only 26 ids were eligible" in out[0] and "below 0.0312" in out[0]
  # Enough ids but fewer than asked: one warning, without the minimum clause.
  out = degenerate.group_warnings({"rocks": 100, "high_kl": 100, "random": 150}, {"random": 200})
  assert out == ["random ids: 150 ids, fewer than the 200 requested."]
  normal = {"rocks": 100, "high_kl": 100, "random": 200}
  assert degenerate.group_warnings(normal, {"rocks": 100, "high_kl": 100, "random": 200}) == []


def test_same_path_resolves_links_and_trailing_slashes(tmp_path):
  real = tmp_path / "hf"
  real.mkdir()
  os.symlink(real, tmp_path / "link")
  assert degenerate.same_path(str(real), str(tmp_path / "link") + "/")
  assert not degenerate.same_path(str(real), str(tmp_path / "ckpt"))
  assert not degenerate.same_path("", "")


def test_same_parameters_compares_values():
  a = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  b = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  c = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
  d = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
  assert degenerate.same_parameters(a, a) and degenerate.same_parameters(a, b)
  assert not degenerate.same_parameters(a, c) and not degenerate.same_parameters(a, d)


def test_same_corpus_and_the_self_comparison_warning():
  freq, mean = np.array([0, 3, 5.0]), np.array([0, 0.2, 0.1])
  assert degenerate.same_corpus(freq, mean, freq.copy(), mean * (1 + 1e-9))
  assert not degenerate.same_corpus(freq, mean, freq + [0, 1, 0], mean)
  assert not degenerate.same_corpus(freq, mean, freq, mean + [0, 0.01, 0])
  reasons = degenerate.self_comparison_reasons(paths=False, parameters=True, corpus=True)
  assert reasons == ["equal parameters", "identical per-id KL"]
  assert degenerate.self_comparison_reasons(paths=False, parameters=False, corpus=False) == []
  assert degenerate.self_comparison_warning([], "x") is None
  assert "(equal parameters)" in degenerate.self_comparison_warning(["equal parameters"], "x")


def test_k_beyond_and_rock_share_warnings():
  assert degenerate.k_beyond([10, 20, 50, 100], [10, 20, 26, 26]) == [False, False, True, True]
  w = degenerate.k_beyond_warning([10, 20, 50, 100], [10, 20, 26, 26])
  assert w.startswith("K = 50, 100 exceed the 26 eligible ids")
  assert degenerate.k_beyond_warning([10, 100], [10, 100]) is None
  assert "38.5% of the 26 observed ids" in degenerate.rock_share_warning(10, 26)
  assert degenerate.rock_share_warning(100, 4000) is None  # the paper's 2.5%
  assert degenerate.pairs_warning(6) and degenerate.pairs_warning(10) is None


def _groups_result(early_V, late_V, **extra):
  freq = np.full(early_V.shape, 5.0)
  res = persistence.persistence(freq, early_V, freq, late_V, np.arange(10), k=10, num_random=20)
  return {**res, **extra}


def test_the_persistence_section_warns_beside_itself_when_it_compares_a_checkpoint_with_itself(
  tmp_path,
):
  rng = np.random.default_rng(0)
  early = rng.uniform(0.1, 1.0, 60)
  same = _groups_result(early, early, self_comparison=["the same path", "identical per-id KL"])
  sec = persistence.section(same, str(tmp_path))
  assert any("compares a checkpoint with itself" in w for w in sec.warnings)
  md = report.render_section(sec)
  assert "> **Warning:** the early checkpoint" in md
  moved = _groups_result(early, early * 0.5, self_comparison=[])
  assert persistence.section(moved, str(tmp_path)).warnings == ()  # 10 / 10 / 20 ids, moved


def test_the_early_checkpoint_at_the_final_path_reuses_the_final_corpus():
  freq, kl = np.array([1.0, 2.0]), np.array([0.5, 0.1])
  ctx = types.SimpleNamespace(
    student="final model",
    student_source="checkpoint /w/ckpt step 250",
    student_path="/w/ckpt",
    selection={"freq_V": freq, "kl_sum_V": kl},
  )
  model, source, f, k = studies._early_sums(ctx, "/w/ckpt/", None)  # no load, no decode
  assert model == "final model" and f is freq and k is kl
  # analysis.early_step naming the final student's own step is the final checkpoint too.
  model, source, f, k = studies._early_sums(ctx, "/w/ckpt", 250)
  assert model == "final model" and f is freq and k is kl


def test_checkpoints_are_named_by_stage_and_step(tmp_path):
  (tmp_path / "student_kd" / "hf").mkdir(parents=True)
  record = {"stage": "student_kd", "steps": 250, "export": str(tmp_path / "student_kd" / "hf")}
  (tmp_path / "student_kd" / "stage.json").write_text(json.dumps(record))
  (tmp_path / "stage.json").write_text(json.dumps({"stage": "main", "steps": 300}))
  hf = context.describe_checkpoint(str(tmp_path / "student_kd" / "hf"), "x")
  assert (hf["stage"], hf["step"]) == ("student_kd", 250)
  assert hf["text"].endswith("(stage student_kd, step 250)")
  ck = context.describe_checkpoint(str(tmp_path / "ckpt"), f"checkpoint {tmp_path} step 125")
  assert (ck["stage"], ck["step"]) == ("main", 125)  # the restored step, not the stage's last
  other = context.describe_checkpoint(str(tmp_path / "elsewhere"), "elsewhere")
  assert other["stage"] is None and other["text"].endswith("(stage and step unknown)")
