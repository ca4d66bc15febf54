"""The Findings paragraph: verdicts on planted numbers that agree with the paper or differ from
it, 'not comparable' when a comparison is degenerate, and Markdown that says what the JSON holds.

The expected verdicts are worked out by hand from the paper's figures (docs/method.md): rocks'
median drop (0.21 - 0.19) / 0.21 = 9.5%, high-KL ids' (2.02 - 0.85) / 2.02 = 57.9%, top-100
coverage ~60%, Jaccard >= 0.70, 0 Pillars under deterministic decoding, 7 of 200 sampled.
"""

import json

import pytest

from rockjax.analysis import findings, report
from rockjax.analysis.paper_reference import PAPER, Reference, verdict


@pytest.mark.parametrize(
  "rule, paper, tol, ours, expected",
  [
    ("abs", 0.60, 0.15, 0.70, "agrees"),  # 10 points away, tolerance 15
    ("abs", 0.60, 0.15, 0.96, "differs"),
    ("abs", 0.60, 0.15, 0.45, "agrees"),  # exactly at the tolerance
    ("range", (0.52, 0.67), 0.10, 0.45, "agrees"),
    ("range", (0.52, 0.67), 0.10, 0.235, "differs"),
    ("factor", 0.025, 2.0, 0.04, "agrees"),
    ("factor", 0.025, 2.0, 0.385, "differs"),
    ("at_least", 0.70, 0, 0.93, "agrees"),
    ("at_least", 0.70, 0, 0.69, "differs"),
    ("at_most", 0, 0, 0, "agrees"),
    ("at_most", 0, 0, 17, "differs"),
    ("claim", True, 0, True, "agrees"),
    ("claim", True, 0, False, "differs"),
    ("abs", 0.5, 0.1, None, "not comparable: not measured"),
    ("abs", 0.5, 0.1, float("nan"), "not comparable: not measured"),
  ],
)
def test_verdict_rules(rule, paper, tol, ours, expected):
  ref = Reference("x", rule, paper, "p", "src", tol)
  assert verdict(ours, ref) == expected


def test_a_reason_makes_any_figure_not_comparable():
  assert verdict(0.6, PAPER["coverage"], "tiny vocabulary") == "not comparable: tiny vocabulary"


def test_the_paper_drops_are_the_papers_medians():
  assert PAPER["drop_rocks"].paper == pytest.approx(0.02 / 0.21)
  assert PAPER["drop_high_kl"].paper == pytest.approx(1.17 / 2.02)


def _persistence(rd, hd, n=(10, 10, 10), self_comparison=()):
  return {
    "rocks_median_drop": rd,
    "high_kl_median_drop": hd,
    "rocks_median_early": 0.2,
    "rocks_median_late": 0.2 * (1 - rd),
    "high_kl_median_early": 2.0,
    "high_kl_median_late": 2.0 * (1 - hd),
    **{f"{g}_n": k for g, k in zip(("rocks", "high_kl", "random"), n)},
    "self_comparison": list(self_comparison),
  }


def _status(rows):
  return {r["key"]: r["verdict"] for r in rows}


def test_persistence_like_the_paper_agrees_and_the_demo_pattern_differs():
  assert set(_status(findings.persistence_rows(_persistence(0.05, 0.60))).values()) == {"agrees"}
  got = _status(findings.persistence_rows(_persistence(0.935, 0.738)))
  # 93.5% vs ~9.5% and 73.8% vs ~57.9% (15.9 points > 15): all three differ.
  assert got == {"drop_rocks": "differs", "drop_high_kl": "differs", "drop_contrast": "differs"}


def test_self_comparison_and_small_groups_are_not_comparable():
  rows = findings.persistence_rows(_persistence(0.0, 0.0, self_comparison=["the same path"]))
  for r in rows:
    assert r["verdict"].startswith("not comparable: the early checkpoint is the final one")
  rows = findings.persistence_rows(_persistence(0.05, 0.6, n=(10, 4, 6)))
  got = _status(rows)
  assert got["drop_rocks"] == "agrees"
  assert got["drop_high_kl"] == "not comparable: high-KL ids n = 4 (< 10 ids)"


def test_geometry_claims_and_the_random_group_minimum():
  g = {
    "rocks_median_norm": 0.0895,
    "high_kl_median_norm": 0.00166,
    "rocks_median_cos": 0.0262,
    "high_kl_median_cos": 0.00516,
    "random_median_cos": 0.0123,
    "rock_grad_norm_share": 0.944,
    "rock_token_share": 0.235,
    "rocks_n": 10,
    "high_kl_n": 10,
    "random_n": 6,
  }
  got = _status(findings.geometry_rows(g))
  assert got["norm_contrast"] == "differs"  # 0.0895 is not below 0.00166
  assert got["cos_rocks"] == "agrees"  # 0.0262 > 0.00516
  assert got["cos_high_kl"] == "not comparable: random ids n = 6 (< 10 ids)"
  assert got["grad_share"] == "agrees"
  g["random_n"] = 200
  assert _status(findings.geometry_rows(g))["cos_high_kl"] == "differs"  # 0.00516 < 0.0123


def _selection(num_rocks, observed, coverage, token_share, jaccard, k_grid, selected):
  rocks = {
    "rock_id_share": round(num_rocks / observed, 4),
    "num_rocks": num_rocks,
    "observed_vocab": observed,
    "coverage_at_k": coverage,
    "token_share": token_share,
  }
  stab = {
    "k_grid": k_grid,
    "selected": selected,
    "k_beyond": [s < k for k, s in zip(k_grid, selected)],
    "jaccard_mean": jaccard,
    "sizes": [50, 100],
    "num_sequences": 500,
  }
  return rocks, stab


def test_selection_rows_on_a_paper_sized_and_a_tiny_vocabulary():
  # 100 rocks of 4000 ids (2.5%): coverage 62% agrees with ~60%; 55% token share in 52-67%.
  rocks, stab = _selection(
    100, 4000, 0.62, 0.55, [[0.9, 0.8, 0.3], [0.95, 0.85, 0.4]], [10, 100, 200], [10, 100, 200]
  )
  got = _status(findings.selection_rows(rocks, stab))
  assert got == dict.fromkeys(("rock_id_share", "coverage", "token_share", "jaccard"), "agrees")
  jac = next(r for r in findings.selection_rows(rocks, stab) if r["key"] == "jaccard")
  assert jac["ours"] == 0.8  # K = 200 > 100 is left out, so 0.3 is not the minimum
  # 10 rocks of 26 ids: rock share differs, coverage and token share are not comparable, and
  # the K beyond the 26 eligible ids (Jaccard 1.0 by construction) are left out.
  rocks, stab = _selection(
    10, 26, 0.962, 0.235, [[0.93, 1.0, 1.0], [0.96, 1.0, 1.0]], [10, 50, 100], [10, 26, 26]
  )
  rows = findings.selection_rows(rocks, stab)
  got = _status(rows)
  assert got["rock_id_share"] == "differs"
  assert got["coverage"].startswith("not comparable: the 10 rocks are 38.5% of the 26")
  assert got["token_share"].startswith("not comparable")
  assert next(r for r in rows if r["key"] == "jaccard")["ours"] == 0.93


def _knockout(decoding, pillars, n=20, bonferroni=0, neg=10, pos=0, p=0.002):
  return {
    "num_candidates": n,
    "num_strong_pillar": pillars,
    "num_strong_stumbling_block": 0,
    "significant_bonferroni": bonferroni,
    "sign_negative": neg,
    "sign_positive": pos,
    "sign_p": p,
    "alpha": 0.05,
    "decoding": decoding,
  }


def test_knockout_compares_with_the_paper_figure_for_the_same_decoding():
  greedy = _status(findings.knockout_rows(_knockout("greedy", 17, bonferroni=17)))
  assert greedy["pillars_greedy"] == "differs"  # 85% vs 0%
  assert greedy["bonferroni"] == "differs" and greedy["stumbling"] == "agrees"
  sampled = _status(findings.knockout_rows(_knockout("sampled at temperature 0.6", 1)))
  assert sampled == {
    "pillars_sampled": "agrees",  # 1/20 = 5% vs 3.5%
    "stumbling": "agrees",
    "bonferroni": "agrees",
    "sign_test": "agrees",
  }
  skipped = findings.knockout_rows({"skipped": "no candidate ids"})
  assert {r["verdict"] for r in skipped} == {"not comparable: no candidate ids"}


def _sections():
  rocks, stab = _selection(10, 26, 0.9622, 0.2354, [[0.9273, 1.0], [1.0, 1.0]], [10, 100], [10, 26])
  mk = lambda key, numbers, warnings=(): report.Section(key, key, numbers, (), "", warnings)  # noqa: E731
  return [
    mk("rocks", rocks, ("planted rock warning",)),
    mk("stability", stab),
    mk("persistence", _persistence(0.935, 0.738, n=(10, 10, 6)), ("random ids: 6 ids",)),
    mk("geometry", {"rocks_n": 10, "high_kl_n": 10, "random_n": 6}, ("random ids: 6 ids",)),
    mk("training", {"main_pass_at_1": 0.825, "main_last_step": 250}),
  ]


def test_the_findings_markdown_says_what_the_json_holds(tmp_path):
  sections = _sections()
  top = findings.section(sections)
  paths = report.write_report(str(tmp_path), [top, *sections], {"student": "test"})
  md = open(paths["markdown"]).read()
  data = json.load(open(paths["json"]))["findings"]
  assert md.index("## Findings") < md.index("## rocks")
  for r in data["rows"]:
    assert (
      f"{r['what']}: ours {r['ours_text']}; paper {r['paper_text']} -> **{r['verdict']}**" in md
    )
  cov = next(r for r in data["rows"] if r["key"] == "coverage")
  assert cov["ours"] == 0.9622 and cov["ours_text"] == "96.2% (top 10)"  # raw in the JSON
  # Each warning once, with the sections that raised it.
  assert data["warnings"] == [
    "(rocks) planted rock warning",
    "(persistence, geometry) random ids: 6 ids",
  ]
  assert "- (persistence, geometry) random ids: 6 ids" in md
  counts = (data["num_agrees"], data["num_differs"], data["num_not_comparable"])
  assert sum(counts) == len(data["rows"])
  assert f"{counts[0]} agree, {counts[1]} differ, {counts[2]} not comparable" in md


def test_percentages():
  assert findings.pct(0.96666) == "96.7%"
  assert findings.pct(0.0) == "0.0%"
  assert findings.pct(None) == "n/a" and findings.pct(float("nan")) == "n/a"
