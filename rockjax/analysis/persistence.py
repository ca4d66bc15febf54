"""Persistence: do the rocks' mean KLs move between an early and a late checkpoint?

The paper (docs/method.md, "Rock Tokens") chooses the groups at the late checkpoint and compares
each id's mean KL at both: rocks barely move (median 0.21 -> 0.19) while rare high-KL ids fall
~58%. Per group this gives medians, the median relative drop `(early - late) / early` (positive
= fell, as in rockjax.rocks.stagnation), a Wilcoxon signed-rank test of the paired early/late
values, and Mann-Whitney U tests of the drops between groups (scipy.stats). The section names
both checkpoints (path, pipeline stage, step) and warns when a group is too small or when the
early checkpoint is the final one (rockjax.analysis.degenerate).

Shape letters: V vocabulary size, N ids in a group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats

from rockjax import rocks
from rockjax.analysis import degenerate, plotting, report
from rockjax.analysis import groups as groups_lib
from rockjax.analysis.paper_reference import PERSISTENCE_MEDIANS
from rockjax.metrics import host_value

FIGURE = "persistence_scatter.png"


def from_rock_stats(stats: rocks.RockStats) -> dict[str, np.ndarray]:
  """Early/late per-id arrays from the trainer's statistics: snapshot vs updates since it."""
  get = lambda f, w: np.asarray(host_value(f(stats, window=w)), np.float64)  # noqa: E731
  return {
    "early_freq_V": get(rocks.frequency, "snapshot"),
    "early_mean_kl_V": get(rocks.mean_kl, "snapshot"),
    "late_freq_V": get(rocks.frequency, "since_snapshot"),
    "late_mean_kl_V": get(rocks.mean_kl, "since_snapshot"),
  }


def wilcoxon(early_N: np.ndarray, late_N: np.ndarray) -> tuple[float, float]:
  """(statistic, two-sided p) of scipy's signed-rank test; (0, 1) when nothing moved."""
  if early_N.size == 0:
    return float("nan"), float("nan")
  if np.all(early_N == late_N):
    return 0.0, 1.0  # scipy divides by zero here; no id changed, so no evidence of change
  res = scipy.stats.wilcoxon(early_N, late_N)
  return float(res.statistic), float(res.pvalue)


def persistence(
  early_freq_V: np.ndarray,
  early_mean_kl_V: np.ndarray,
  late_freq_V: np.ndarray,
  late_mean_kl_V: np.ndarray,
  rock_ids: Any,
  *,
  k: int = 100,
  min_freq: float = 2,
  num_random: int = 200,
  seed: int = 0,
) -> dict[str, Any]:
  """Per-group early/late medians, median drop, Wilcoxon; Mann-Whitney of drops across groups.

  Groups come from the late point (rockjax.analysis.groups.id_groups with k, min_freq,
  num_random, seed); only ids seen at both points with a positive early mean KL are paired
  (the rest are counted in `dropped`). Rocks are `rock_ids`, chosen on the late corpus.
  """
  early_V = np.asarray(early_mean_kl_V, np.float64)
  late_V = np.asarray(late_mean_kl_V, np.float64)
  paired_V = (np.asarray(early_freq_V) > 0) & (np.asarray(late_freq_V) > 0) & (early_V > 0)
  ids = groups_lib.id_groups(
    late_freq_V,
    late_V,
    rock_ids,
    k=k,
    min_freq=min_freq,
    num_random=num_random,
    seed=seed,
    eligible_V=paired_V,
  )
  requested = {"rocks": k, "high_kl": k, "random": num_random}
  result: dict[str, Any] = {"groups": {}, "tests": {}, "requested": requested}
  result["eligible"] = int(paired_V.sum())  # ids seen at both points: the groups' pool
  drops = {}
  for name in groups_lib.GROUPS:
    all_N = ids[name]
    ids_N = all_N[paired_V[all_N]]
    e_N, l_N = early_V[ids_N], late_V[ids_N]
    drops[name] = (e_N - l_N) / e_N
    stat, p = wilcoxon(e_N, l_N)
    nan_median = lambda x: float(np.median(x)) if x.size else float("nan")  # noqa: E731
    result["groups"][name] = {
      "ids": ids_N,
      "early": e_N,
      "late": l_N,
      "n": int(ids_N.size),
      "dropped": int(all_N.size - ids_N.size),
      "median_early": nan_median(e_N),
      "median_late": nan_median(l_N),
      "median_drop": nan_median(drops[name]),
      "wilcoxon_stat": stat,
      "wilcoxon_p": p,
    }
  for other in ("high_kl", "random"):
    u, p = groups_lib.mann_whitney(drops["rocks"], drops[other])
    result["tests"][f"rocks_vs_{other}"] = {"mannwhitney_u": u, "mannwhitney_p": p}
  return result


def scatter_figure(result: dict[str, Any]):
  """Early vs late mean KL per id on log axes, one colour per group, the y = x line and the
  paper's group medians (stars)."""
  early, late = result.get("early") or {}, result.get("late") or {}
  title = "Persistence: per-id mean KL, early vs late checkpoint"
  fig, ax = plotting.new_figure(title, (6.4, 6.0))
  lo, hi = np.inf, -np.inf
  for name in groups_lib.GROUPS:
    g = result["groups"][name]
    keep = (g["early"] > 0) & (g["late"] > 0)  # log axes: a zero late KL cannot be drawn
    if keep.any():
      lo = min(lo, g["early"][keep].min(), g["late"][keep].min())
      hi = max(hi, g["early"][keep].max(), g["late"][keep].max())
    colour = groups_lib.GROUP_COLORS[name]
    ax.scatter(g["early"][keep], g["late"][keep], s=14, alpha=0.7, color=colour,
               label=f"{groups_lib.GROUP_TITLES[name]} (n={int(keep.sum())})")  # fmt: skip
    if g["n"]:
      ax.plot(g["median_early"], g["median_late"], "D", ms=8, color=colour, markeredgecolor="k",
              label=f"this run's median, {groups_lib.GROUP_TITLES[name]}")  # fmt: skip
    if name in PERSISTENCE_MEDIANS:
      ax.plot(*PERSISTENCE_MEDIANS[name], "*", ms=13, color=colour, markeredgecolor="black",
              label=f"paper median, {groups_lib.GROUP_TITLES[name]}")  # fmt: skip
  paper = [v for pair in PERSISTENCE_MEDIANS.values() for v in pair]
  lo, hi = min(lo, *paper), max(hi, *paper)
  ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="y = x (no change)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(f"mean KL (nats/token), early: {early.get('text', 'early checkpoint')}", fontsize=8)
  ax.set_ylabel(f"mean KL (nats/token), late: {late.get('text', 'late checkpoint')}", fontsize=8)
  if result.get("self_comparison"):
    ax.set_title(
      "the early checkpoint is the final one: no comparison", color="tab:red", fontsize=9
    )
  ax.legend(fontsize=7, loc="upper left")
  return fig


def section_warnings(result: dict[str, Any]) -> tuple[str, ...]:
  """Small groups and a self-comparison, as the section (and the Findings) show them."""
  sizes = {name: result["groups"][name]["n"] for name in groups_lib.GROUPS}
  out = degenerate.group_warnings(sizes, result.get("requested", {}), result.get("eligible"))
  early = (result.get("early") or {}).get("text", "")
  self_warning = degenerate.self_comparison_warning(result.get("self_comparison", ()), early)
  return tuple(out + ([self_warning] if self_warning else []))


def section(result: dict[str, Any], out_dir: str) -> report.Section:
  """The report section; saves the scatter."""
  fields = ("median_early", "median_late", "median_drop", "wilcoxon_p")
  numbers, rows = groups_lib.group_table(result, fields, specs={"median_drop": ":.1%"})
  early, late = result.get("early") or {}, result.get("late") or {}
  numbers |= {f"early_{k}": early.get(k) for k in ("path", "stage", "step", "text")}
  numbers |= {f"late_{k}": late.get(k) for k in ("path", "stage", "step", "text")}
  numbers["self_comparison"] = list(result.get("self_comparison", ()))
  numbers |= {f"{n}_requested": v for n, v in result.get("requested", {}).items()}
  report.save_figure(scatter_figure(result), out_dir, FIGURE)
  text = (
    "Early checkpoint: {early_text}. Late checkpoint: {late_text}.\n\n"
    "Each id's mean KL (nats per token) at both, same prompts, same scoring; groups chosen at "
    "the late one. Drop = (early - late) / early (positive: the KL fell).\n\n"
    "| group | ids | median early | median late | median drop | Wilcoxon p |\n"
    "|---|---|---|---|---|---|\n"
    f"{rows}\n\n"
    "Mann-Whitney U on the drops: rocks vs high-KL ids p = {rocks_vs_high_kl_mannwhitney_p}, "
    "rocks vs random ids p = {rocks_vs_random_mannwhitney_p}."
  )
  caption = (
    "Per-id mean KL, early (x) vs late (y) checkpoint, log axes; points below the y = x line "
    "fell. Rocks in red, high-KL ids in blue, random ids in grey; diamonds: this run's group "
    "medians; stars: the paper's (rocks 0.21 -> 0.19, high-KL ids 2.02 -> 0.85)."
  )
  return report.Section(
    title="Persistence",
    key="persistence",
    numbers=numbers,
    figures=(report.Figure(FIGURE, caption),),
    text=text,
    warnings=section_warnings(result),
  )
