"""The knockout census as a report: the delta figure and the Markdown section.

`section(result, out_dir)` renders what `rockjax.analysis.knockout.census` returned, with what
rockjax.analysis.studies adds: `pool` (how the candidates were chosen: 'rock_score', the top
ids by Rock Score, or 'rocks_and_controls'; absent: 'given') and `num_rocks` (the first candidates that are
rocks; the rest are the next ids by Rock Score, or the rocks' frequency-matched controls).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import figure, lines, patches, ticker  # no pyplot: Agg, no global state

from rockjax.analysis import report
from rockjax.analysis.knockout import CLASSES

COLOURS = {"strong_pillar": "#c0392b", "neutral": "#95a5a6", "strong_stumbling_block": "#27ae60"}
# How the p-value was computed, per analysis.knockout_test (rockjax.evaluation.paired_bootstrap).
P_TESTS = {
  "bootstrap": "two-sided paired bootstrap p-value from the same resamples, 2 (1 + resamples on"
  " the far side of 0) / (resamples + 1) (the paper's rule)",
  "permutation": "two-sided paired permutation test (the two conditions' results swapped per"
  " problem)",
}
# The candidate pool, per analysis.knockout_pool: the text before and after the divider.
# A result without a pool (knockout.census called directly) shows its ids as 'given'.
POOLS = {
  "rock_score": (
    "the top {num_candidates} ids by Rock Score (the first {num_rock_candidates}: the rock set)",
    "rocks | next by Rock Score ",
  ),
  "rocks_and_controls": (
    "{num_rock_candidates} rocks and their frequency-matched controls",
    "rocks | controls ",
  ),
  "given": ("the {num_candidates} ids given", "rocks | others "),
}


def _label(entry: dict[str, Any]) -> str:
  """'id (token)' with whitespace made visible."""
  return f"{entry['id']} ({entry['token']!r})"


def delta_figure(result: dict[str, Any]):
  """Bar chart of each candidate's Delta with its bootstrap interval, coloured by class.

  A bare `matplotlib.figure.Figure` (no pyplot): renders with Agg, leaves no global figure.
  """
  entries, eps = result["candidates"], result["settings"]["eps"]
  deltas_C = np.array([e["delta"] for e in entries])
  # Whisker lengths below and above each bar (an interval always contains its Delta).
  err_2xC = np.array([[e["delta"] - e["ci_low"], e["ci_high"] - e["delta"]] for e in entries]).T
  fig = figure.Figure(figsize=(max(6.0, 0.45 * len(entries) + 2), 4.5), layout="constrained")
  ax = fig.add_subplot()
  x_C = np.arange(len(entries))
  ax.bar(x_C, deltas_C, color=[COLOURS[e["class"]] for e in entries], yerr=err_2xC)
  ax.plot(x_C, deltas_C, "k.", markersize=4)  # so a Delta of exactly 0 still shows
  ax.axhline(0.0, color="black", linewidth=0.8)
  for y in (-eps, eps):
    ax.axhline(y, color="black", linewidth=0.6, linestyle="--")
  ax.set_xticks(x_C, [_label(e) for e in entries], rotation=60, ha="right", fontsize=8)
  rocks = result.get("num_rocks")
  if rocks and rocks < len(entries):  # the rocks first, then the rest of the pool
    label = POOLS[result.get("pool", "given")][1]
    ax.axvline(rocks - 0.5, color="tab:blue", linewidth=1, linestyle=":")
    ax.text(rocks - 0.6, ax.get_ylim()[0], label, ha="right", va="bottom",
            fontsize=8, color="tab:blue")  # fmt: skip
  ax.set_xlabel("candidate id (token)")
  ax.set_ylabel("accuracy change when banned (Delta, percentage points)")
  ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0, decimals=0))
  ax.set_title(
    f"Knockout census: {len(entries)} ids, baseline accuracy {result['baseline_accuracy']:.1%}"
  )
  # Every class in the legend, present or not, so figures of different runs read alike.
  ax.legend(
    handles=[patches.Patch(color=COLOURS[c], label=c.replace("_", " ")) for c in CLASSES]
    + [lines.Line2D([], [], color="black", linestyle="--", label=f"+/- eps {eps}")],
    fontsize=8,
    loc="upper left",
    bbox_to_anchor=(1.01, 1.0),
  )
  return fig


def _cell(text: str) -> str:
  """A token as a Markdown table cell: pipes escaped, whitespace visible."""
  return repr(text)[1:-1].replace("|", "\\|")


def _sig(p: float) -> float:
  """A p-value to 4 significant digits, the precision the Markdown prints."""
  return float(f"{p:.4g}")


def _summary_numbers(result: dict[str, Any]) -> dict[str, Any]:
  """The section's numbers about the census as a whole: settings, classes, tests, bookkeeping."""
  s, st = result["settings"], result["sign_test"]
  test = s.get("test", "permutation")  # results of before the bootstrap rule: permutation
  pool = result.get("pool", "given")
  n, rocks = len(result["candidates"]), result.get("num_rocks")
  return dict(
    num_candidates=n,
    num_rock_candidates=rocks,  # the first ones; then the next by Rock Score, or controls
    pool=pool,
    pool_text=POOLS[pool][0].format(num_candidates=n, num_rock_candidates=rocks),
    test=test,
    p_test=P_TESTS[test],
    num_problems=result["num_problems"],
    num_samples=result["num_samples"],
    decoding="greedy" if s["greedy"] else f"sampled at temperature {s['temperature']}",
    max_new_tokens=s["max_new_tokens"],
    seed=s["seed"],
    eps=s["eps"],
    alpha=s["alpha"],
    resamples=s["resamples"],
    batch_rows=s["batch_rows"],
    baseline_accuracy=round(result["baseline_accuracy"], 4),
    **{f"num_{c}": result["classes"][c] for c in CLASSES},
    sign_negative=st["negative"],
    sign_positive=st["positive"],
    sign_zero=st["zero"],
    sign_p=_sig(st["p_value"]),
    significant_bonferroni=result["significant_bonferroni"],
    significant_bh=result["significant_bh"],
    num_batches=result["num_batches"],
    num_compilations=result["num_compilations"],
    wall_seconds=round(result["wall_seconds"], 1),
  )


# The per-candidate numbers a table row shows, in column order (the class comes last).
_ROW_CELLS = ("id", "token", "emitted", "delta", "ci_low", "ci_high", "p", "p_bonferroni", "p_bh")


def _candidate_numbers(e: dict[str, Any]) -> dict[str, Any]:
  """One candidate's numbers, named `id<id>_<cell>`."""
  v = f"id{e['id']}"
  return {
    f"{v}_id": e["id"],
    f"{v}_token": _cell(e["token"]),
    f"{v}_emitted": e["baseline_emitted"],
    f"{v}_delta": round(e["delta"], 4),
    f"{v}_ci_low": round(e["ci_low"], 4),
    f"{v}_ci_high": round(e["ci_high"], 4),
    f"{v}_p": _sig(e["p_value"]),
    f"{v}_p_bonferroni": _sig(e["p_bonferroni"]),
    f"{v}_p_bh": _sig(e["p_bh"]),
    f"{v}_class": e["class"],
  }


def _candidate_row(e: dict[str, Any]) -> str:
  """One candidate's Markdown table row, all placeholders for its numbers."""
  v = f"id{e['id']}"
  spec = {"delta": ":+.1%", "ci_low": ":+.1%", "ci_high": ":+.1%"}
  cells = [f"{{{v}_{c}{spec.get(c, '')}}}" for c in _ROW_CELLS]
  return "| " + " | ".join(cells) + f" | {{{v}_class}} |"


def _section_text(rows: list[str]) -> str:
  """The section's Markdown: the method, the summary and the candidates' table `rows`."""
  return "\n".join(
    [
      "Each candidate id gets -inf at every decoding step ({decoding}, at most {max_new_tokens}"
      " new tokens, seed {seed}, {num_samples} sample(s) per problem) on {num_problems}"
      " problems; Delta = accuracy with the id banned - baseline accuracy"
      " ({baseline_accuracy:.1%}), in percentage points.",
      "Candidates: {pool_text}. Interval: paired percentile bootstrap over problems"
      " ({resamples} resamples, level 1 - {alpha}); p: {p_test}. Strong Pillar: Delta <="
      " -{eps:.1%} and p < {alpha}; Strong Stumbling Block: the mirror; Neutral otherwise."
      " Bonferroni and Benjamini-Hochberg adjust the same p.",
      "",
      "Of {num_candidates} candidates: {num_strong_pillar} Strong Pillar(s),"
      " {num_neutral} Neutral, {num_strong_stumbling_block} Strong Stumbling Block(s)."
      " Sign test over the Deltas: {sign_negative} negative, {sign_positive} positive"
      " ({sign_zero} zero), two-sided p = {sign_p}. Significant at {alpha} after Bonferroni:"
      " {significant_bonferroni}; after Benjamini-Hochberg: {significant_bh}.",
      "The census decoded in {num_batches} batches of {batch_rows} prompts with"
      " {num_compilations} sampler compilation(s) in {wall_seconds} s.",
      "",
      "| id | token | emitted (baseline) | Delta | low | high | p | p Bonferroni | p BH | class |",
      "|---|---|---|---|---|---|---|---|---|---|",
      *rows,
    ]
  )


def section(result: dict[str, Any], out_dir: str) -> report.Section:
  """The census as a report section: a `rockjax.analysis.report.Section`.

  Writes `knockout_delta.png` into out_dir (local or cloud). `text` refers to `numbers` by
  `{name}` placeholders only; numbers are rounded here so the Markdown and the JSON agree.
  """
  # Rounded once, here (_sig, round): the JSON then holds exactly what the Markdown prints.
  numbers: dict[str, Any] = _summary_numbers(result)
  for e in result["candidates"]:
    numbers.update(_candidate_numbers(e))
  rows = [_candidate_row(e) for e in result["candidates"]]
  report.save_figure(delta_figure(result), out_dir, "knockout_delta.png")
  caption = (
    "Knockout: accuracy change (Delta) when each candidate id is banned, with paired-bootstrap"
    " intervals; red Strong Pillar, green Strong Stumbling Block, grey Neutral; dashed: +/- eps."
  )
  return report.Section(
    title="Knockout census",
    key="knockout",
    numbers=numbers,
    figures=(report.Figure("knockout_delta.png", caption),),
    text=_section_text(rows),
  )
