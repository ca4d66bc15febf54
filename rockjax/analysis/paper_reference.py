"""The paper's numbers the report's Findings compare with, in one table, with their sources.

Each `Reference` is one published figure ("Cornerstones or Stumbling Blocks? Deciphering the
Rock Tokens in On-Policy Distillation", arXiv 2605.09253; docs/method.md summarises it section
by section), how it is printed, where it comes from, and the rule that says whether our figure
agrees with it:

- 'abs': |ours - paper| <= tolerance (fractions: 0.15 is 15 percentage points; the paper gives
  approximate figures, "about 60%", so a tolerance, not equality);
- 'range': paper = (low, high), agrees inside [low - tolerance, high + tolerance];
- 'factor': ours within a factor `tolerance` of paper (either side);
- 'at_least' / 'at_most': ours >= paper / ours <= paper;
- 'claim': a qualitative statement the paper makes (paper = True); ours is whether it holds.

`MIN_GROUP_IDS` is the smallest id group the report compares without a warning, and
`MAX_ROCK_ID_SHARE` the largest share of the observed ids the rocks may be for the selection's
shares (coverage, token density) to be compared with the paper's (2.5%).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Below 10 ids a group comparison has little power: with n = 6 paired ids the smallest
# two-sided Wilcoxon p is 2 / 2^6 = 0.031, with n = 5 it is 0.0625 (never < 0.05).
MIN_GROUP_IDS = 10
# The paper's K = 100 rocks are ~2.5% of the observed ids; above 4x that the top K is a large
# part of the vocabulary and its KL share and token share measure something else.
MAX_ROCK_ID_SHARE = 0.10


# The paper's group medians, which the figures mark and the references below derive from.
# Persistence: median mean KL (nats per token), early -> late checkpoint ("Rock Tokens").
PERSISTENCE_MEDIANS = {"rocks": (0.21, 0.19), "high_kl": (2.02, 0.85)}
# Gradient geometry: median |gbar_v| and median cosine with G_balanced ("Gradient geometry").
GEOMETRY_MEDIANS = {
  "norm": {"rocks": 0.016, "high_kl": 0.54},
  "cos": {"rocks": 0.040, "high_kl": 0.025, "random": 0.006},
}


def _drop(name: str) -> float:
  early, late = PERSISTENCE_MEDIANS[name]
  return (early - late) / early


@dataclasses.dataclass(frozen=True)
class Reference:
  what: str  # the quantity, as the Findings line names it
  rule: str  # 'abs' | 'range' | 'factor' | 'at_least' | 'at_most' | 'claim'
  paper: Any  # float, (low, high) for 'range', True for 'claim'
  paper_text: str  # the paper's figure as printed in the report
  source: str  # where in the paper (and docs/method.md) it comes from
  tolerance: float = 0.0


_ROCKS = "paper, 'Rock Tokens' (docs/method.md, Rock Tokens)"
_STABILITY = "paper, 'Rock Tokens': coverage and stability (docs/method.md, Rock Tokens)"
_DENSITY = "docs/method.md, Rock Tokens: density caveat (the paper's text: up to 18%, filtered)"
_PERSIST = "paper, 'Rock Tokens': persistence (docs/method.md, Rock Tokens)"
_GEOMETRY = "paper, 'Gradient geometry' table of medians (docs/method.md, Gradient geometry)"
_KNOCKOUT = "paper, 'Causal knockout', MATH-500 (docs/method.md, Causal knockout)"

PAPER: dict[str, Reference] = {
  "rock_id_share": Reference(
    "rocks as a share of the observed ids", "factor", 0.025, "~2.5% (K = 100)", _ROCKS, 2.0
  ),
  "coverage": Reference(
    "KL share carried by the top K", "abs", 0.60, "~60% (top 100)", _STABILITY, 0.15
  ),
  "token_share": Reference(
    "response tokens that are rocks", "range", (0.52, 0.67), "52-67%", _DENSITY, 0.10
  ),
  "jaccard": Reference(
    "smallest mean Jaccard of the top K (K <= 100) on sub-corpora",
    "at_least",
    0.70,
    ">= 0.70 (n = 50..400 of 500)",
    _STABILITY,
  ),
  "drop_rocks": Reference(
    "rocks' median KL drop, early -> late",
    "abs",
    _drop("rocks"),
    "~10% (0.21 -> 0.19)",
    _PERSIST,
    0.15,
  ),
  "drop_high_kl": Reference(
    "high-KL ids' median KL drop", "abs", _drop("high_kl"), "~58% (2.02 -> 0.85)", _PERSIST, 0.15
  ),
  "drop_contrast": Reference(
    "rocks' KL falls less than high-KL ids'", "claim", True, "yes (~10% vs ~58%)", _PERSIST
  ),
  "norm_contrast": Reference(
    "rocks' median |gbar_v| below high-KL ids'", "claim", True, "yes (0.016 vs 0.54)", _GEOMETRY
  ),
  "cos_rocks": Reference(
    "rocks' median cosine with G_balanced above high-KL ids'",
    "claim",
    True,
    "yes (0.040 vs 0.025)",
    _GEOMETRY,
  ),
  "cos_high_kl": Reference(
    "high-KL ids' median cosine above random ids'",
    "claim",
    True,
    "yes (0.025 vs 0.006)",
    _GEOMETRY,
  ),  # fmt: skip
  "grad_share": Reference(
    "rocks' share of the gradient norm above their token share",
    "claim",
    True,
    "yes ('disproportionate', no number)",
    "paper, 'Gradient geometry' (docs/method.md, Gradient geometry)",
  ),
  "pillars_sampled": Reference(
    "Strong Pillars among the candidates", "abs", 7 / 200, "3.5% (7 of 200)", _KNOCKOUT, 0.05
  ),
  "pillars_greedy": Reference(
    "Strong Pillars among the candidates",
    "abs",
    0.0,
    "0% (deterministic decoding: no Pillars)",
    _KNOCKOUT,
    0.05,
  ),
  "stumbling": Reference("Strong Stumbling Blocks", "at_most", 0, "0 of 200", _KNOCKOUT),
  "bonferroni": Reference("ids significant after Bonferroni", "at_most", 0, "0 of 200", _KNOCKOUT),
  "sign_test": Reference(
    "Deltas lean negative (sign test p < alpha)",
    "claim",
    True,
    "yes (10 negative, 0 positive, p ~ 0.002)",
    _KNOCKOUT,
  ),
  "pass_at_1": Reference(
    "final pass@1",
    "abs",
    0.481,
    "48.1% (AIME24/AIME25/HMMT25 mean, Original run)",
    "paper, Rock-Freeze results table (docs/method.md, Rock-Freeze)",
  ),
}


def verdict(ours: Any, ref: Reference, not_comparable: str = "") -> str:
  """'agrees', 'differs' or 'not comparable: <why>' for our figure against `ref`."""
  if not_comparable:
    return f"not comparable: {not_comparable}"
  if ours is None or (isinstance(ours, float) and ours != ours):
    return "not comparable: not measured"
  rule, paper, tol = ref.rule, ref.paper, ref.tolerance
  ok = {
    "abs": lambda: abs(ours - paper) <= tol + 1e-12,
    "range": lambda: paper[0] - tol <= ours <= paper[1] + tol,
    "factor": lambda: ours > 0 and paper / tol <= ours <= paper * tol,
    "at_least": lambda: ours >= paper,
    "at_most": lambda: ours <= paper,
    "claim": lambda: bool(ours) == bool(paper),
  }[rule]()
  return "agrees" if ok else "differs"
