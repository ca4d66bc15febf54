"""The three id groups the paper compares: rocks, high-KL non-rock ids and random other ids.

docs/method.md, "Gradient geometry": rocks (top K by Rock Score), high-KL ids (top K by mean KL
among ids seen >= min_freq times, rocks excluded) and `num_random` other ids drawn at random.
Persistence and gradient geometry both use these groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats

GROUPS = ("rocks", "high_kl", "random")  # report order
GROUP_TITLES = {"rocks": "rocks", "high_kl": "high-KL ids", "random": "random ids"}


def id_groups(
  freq_V: np.ndarray,
  mean_kl_V: np.ndarray,
  rock_ids: Any,
  *,
  k: int = 100,
  min_freq: float = 2,
  num_random: int = 200,
  seed: int = 0,
  eligible_V: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """{'rocks', 'high_kl', 'random'}: int64 id arrays (rocks as given, high_kl by mean KL).

  high_kl: the k non-rock ids of largest mean KL among ids seen >= min_freq (and >= 1) times,
  ties to the lower id. random: `num_random` (or fewer, if fewer exist) seen ids in neither
  group, drawn with `seed` and sorted. `eligible_V` (bool `[V]`) further restricts both, e.g.
  to ids seen at both checkpoints.
  """
  freq_V = np.asarray(freq_V, np.float64)
  mean_kl_V = np.asarray(mean_kl_V, np.float64)
  rock_K = np.asarray(rock_ids, np.int64).reshape(-1)
  free_V = freq_V > 0
  if eligible_V is not None:
    free_V &= np.asarray(eligible_V, bool)
  free_V[rock_K] = False
  high_V = free_V & (freq_V >= min_freq)
  cand = np.nonzero(high_V)[0]
  # lexsort: last key first; -mean_kl descending, then id ascending for ties.
  high_kl = cand[np.lexsort((cand, -mean_kl_V[cand]))][:k]
  free_V[high_kl] = False
  rest = np.nonzero(free_V)[0]
  rng = np.random.default_rng(seed)
  random = np.sort(rng.choice(rest, size=min(num_random, rest.size), replace=False))
  return {"rocks": rock_K, "high_kl": high_kl.astype(np.int64), "random": random.astype(np.int64)}


GROUP_COLORS = {"rocks": "tab:red", "high_kl": "tab:blue", "random": "tab:gray"}


def rounded(x: float) -> float:
  """4 significant digits: the report prints exactly the number its JSON holds."""
  return float(f"{float(x):.4g}")


def mann_whitney(a_N: np.ndarray, b_N: np.ndarray) -> tuple[float, float]:
  """(U, two-sided p) of scipy.stats.mannwhitneyu; NaN when a sample is empty."""
  if a_N.size == 0 or b_N.size == 0:
    return float("nan"), float("nan")
  res = scipy.stats.mannwhitneyu(a_N, b_N, alternative="two-sided")
  return float(res.statistic), float(res.pvalue)


def group_table(
  result: dict[str, Any], fields: Sequence[str], specs: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
  """Report numbers `{group}_{field}` (n as is, the rest rounded) and `{test}_mannwhitney_p`
  from a per-group result, and the Markdown table rows that print them, one row per group
  (`specs`: a field's format spec, e.g. ':.1%' for a share)."""
  specs = specs or {}
  numbers: dict[str, Any] = {}
  for name in GROUPS:
    g = result["groups"][name]
    numbers[f"{name}_n"] = g["n"]
    numbers.update({f"{name}_{field}": rounded(g[field]) for field in fields})
  for test, v in result["tests"].items():
    numbers[f"{test}_mannwhitney_p"] = rounded(v["mannwhitney_p"])
  rows = "\n".join(
    f"| {GROUP_TITLES[n]} | {{{n}_n}} | "
    + " | ".join(f"{{{n}_{f}{specs.get(f, '')}}}" for f in fields)
    + " |"
    for n in GROUPS
  )
  return numbers, rows
