"""The selection sections' figures: the KL/frequency funnel, rock density, coverage and Jaccard.

Each `*_figure` function builds a titled matplotlib Figure from the selection result and the
section's numbers (rockjax.analysis.selection_report); `save_*` writes it and returns its
report `Figure` (file name and caption). K values beyond the eligible ids (the top K is then
every eligible id) are shaded and drawn with hollow markers; the paper's figures are drawn as
reference marks (rockjax.analysis.paper_reference).

Shape letters: V vocabulary size, N observed ids, K grid values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rockjax.analysis import plotting
from rockjax.analysis.paper_reference import PAPER
from rockjax.analysis.report import Figure, save_figure

LABELLED = 8  # rocks labelled in the funnel plot (the top by Rock Score)


def funnel_figure(result: dict[str, Any], numbers: dict[str, Any]):
  """Mean KL vs frequency per observed id, log-log, rocks in red, the K-th Rock Score line."""
  freq_V, kl_V = np.asarray(result["freq_V"], float), np.asarray(result["kl_sum_V"], float)
  seen_N = np.nonzero(freq_V > 0)[0]
  rock = np.asarray(result["rock_ids"], np.int64)
  mean_V = np.divide(kl_V, freq_V, out=np.zeros_like(freq_V), where=freq_V > 0)
  drawable = seen_N[mean_V[seen_N] > 0]  # a zero mean KL has no place on a log axis
  others = np.setdiff1d(drawable, rock)
  title = f"Mean KL vs frequency: {len(rock)} rocks among {len(seen_N)} observed ids"
  fig, ax = plotting.new_figure(title, (7.5, 5.5))
  ax.scatter(freq_V[others], mean_V[others], s=10, c="0.55", label=f"other ids ({len(others)})")
  ax.scatter(freq_V[rock], mean_V[rock], s=26, c="tab:red", label=f"rocks ({len(rock)})")
  _score_line(ax, freq_V, mean_V, drawable, kl_V[rock].min() if rock.size else None)
  ax.set_xscale("log")
  ax.set_yscale("log")
  _pad_log_limits(ax, freq_V[drawable], mean_V[drawable])
  ax.set_xlabel("frequency in the corpus (emitted tokens, log scale)")
  ax.set_ylabel("mean per-token KL (nats, log scale)")
  hidden = len(seen_N) - len(drawable)
  ax.set_title(f"{hidden} ids with mean KL 0 not drawn" if hidden else "", fontsize=8)
  ax.legend(fontsize=8, loc="lower left")
  rows = numbers["rocks"][:LABELLED]
  ids = [r["id"] for r in rows if mean_V[r["id"]] > 0]
  plotting.place_labels(ax, freq_V[ids], mean_V[ids], [r["token"] for r in rows if r["id"] in ids])
  return fig


def _score_line(ax, freq_V, mean_V, drawable, score) -> None:
  """The iso-Rock-Score line freq x mean KL = the K-th rock's score (the selection boundary)."""
  if score is None or score <= 0 or not drawable.size:
    return
  x = np.geomspace(freq_V[drawable].min() / 1.5, freq_V[drawable].max() * 1.5, 50)
  ax.plot(x, score / x, "--", color="tab:red", linewidth=0.8, alpha=0.6,
          label=f"Rock Score = {score:.3g} (the K-th rock)")  # fmt: skip


def _pad_log_limits(ax, x_N, y_N) -> None:
  """Limits a factor 1.6 (x) and 3 (y) beyond the data: room for labels on log axes."""
  if x_N.size:
    ax.set_xlim(x_N.min() / 1.6, x_N.max() * 1.6)
    ax.set_ylim(y_N.min() / 3, y_N.max() * 3)


def save_funnel(result, numbers, out_dir) -> Figure:
  name = save_figure(funnel_figure(result, numbers), out_dir, "kl_vs_frequency.png")
  return Figure(
    name,
    f"Mean KL vs frequency per observed id, log-log; the {numbers['num_rocks']} rocks (top-"
    f"{numbers['k']} by {numbers['selector']}) in red, the top {LABELLED} labelled; dashed: "
    "the K-th rock's Rock Score (freq x mean KL), the selection boundary.",
  )


def density_figure(result: dict[str, Any], numbers: dict[str, Any]):
  """Histogram over sequences of the rock share of their response tokens."""
  title = f"Rock density per sequence ({numbers['num_sequences']} sequences)"
  fig, ax = plotting.new_figure(title, (6.5, 4.2))
  ax.hist(result["density_S"], bins=numbers["density_hist_edges"], color="tab:blue")
  ax.axvline(numbers["density_mean"] or 0.0, color="black", linewidth=0.8, label="mean")
  lo, hi = PAPER["token_share"].paper
  ax.axvspan(lo, hi, color="tab:orange", alpha=0.15, label="paper: 52-67% (K = 100)")
  plotting.percent_axis(ax, "x")
  ax.set_xlabel("share of the sequence's response tokens that are rocks (%)")
  ax.set_ylabel("sequences (count)")
  ax.legend(fontsize=8)
  return fig


def save_density(result, numbers, out_dir) -> Figure:
  name = save_figure(density_figure(result, numbers), out_dir, "rock_density.png")
  return Figure(
    name,
    "Histogram over sequences of the share of response tokens that are rocks; black: the "
    "mean; orange band: the id-membership share of the paper's 100 rocks.",
  )


def _shade_beyond(ax, numbers: dict[str, Any]) -> None:
  """Shade the K range beyond the eligible ids (where the top K is every eligible id)."""
  if any(numbers["k_beyond"]):
    eligible = max(numbers["selected"])
    ax.axvspan(eligible, max(numbers["k_grid"]) * 2, color="0.85", alpha=0.6,
               label=f"K > {eligible} eligible ids (trivial)")  # fmt: skip


def _curve(ax, k_K, y_K, beyond_K, style, colour, label) -> None:
  """One curve over K: filled markers where K fits the eligible ids, hollow beyond."""
  marker, line = style
  fits = [i for i, b in enumerate(beyond_K) if not b]
  ax.plot(k_K, y_K, linestyle=line, marker=marker, markevery=fits, color=colour, ms=6,
          linewidth=1.2, label=label)  # fmt: skip
  over = np.asarray(beyond_K, bool)
  ax.plot(np.asarray(k_K)[over], np.asarray(y_K, float)[over], marker, color=colour, ms=6,
          linestyle="none", markerfacecolor="white")  # fmt: skip


def coverage_jaccard_figure(numbers: dict[str, Any]):
  """Left: KL coverage vs K; right: mean Jaccard vs K, one curve per sub-corpus size."""
  k_K, beyond_K = np.asarray(numbers["k_grid"], float), numbers["k_beyond"]
  fig, (ax1, ax2) = plotting.new_figure(
    f"Top-K coverage and stability ({numbers['num_sequences']} sequences)", (12, 4.6), ncols=2
  )
  _shade_beyond(ax1, numbers)
  _curve(ax1, k_K, numbers["coverage"], beyond_K, plotting.STYLES[0], "tab:blue", "this run")
  ax1.plot([100], [PAPER["coverage"].paper], "*", color="tab:orange", ms=12,
           label="paper: top 100 carry ~60%")  # fmt: skip
  ax1.set_ylim(0, 1.02)
  plotting.percent_axis(ax1)
  ax1.set_ylabel("share of the corpus KL on the top K (%)")
  ax1.set_title("KL coverage of the top K", fontsize=10)
  _shade_beyond(ax2, numbers)
  offsets = plotting.x_offsets(len(numbers["sizes"]), spread=0.2)
  colours = [f"C{i}" for i in range(len(numbers["sizes"]))]
  for i, (n, row) in enumerate(zip(numbers["sizes"], numbers["jaccard_mean"])):
    style = plotting.STYLES[i % len(plotting.STYLES)]
    _curve(ax2, k_K * offsets[i], row, beyond_K, style, colours[i], f"n = {n}")
  ax2.axhline(PAPER["jaccard"].paper, color="black", linestyle=":", linewidth=1.2,
              label="paper: >= 0.70 for K <= 100")  # fmt: skip
  low = np.nanmin(np.asarray([PAPER["jaccard"].paper, *np.ravel(numbers["jaccard_mean"])], float))
  ax2.set_ylim(max(0.0, low - 0.1), 1.03)
  ax2.set_ylabel("mean Jaccard, sub-corpus vs full corpus")
  ax2.set_title("Stability: top K on n-sequence sub-corpora (markers offset)", fontsize=10)
  for ax in (ax1, ax2):
    ax.set_xscale("log")
    ax.set_xlim(k_K.min() / 1.4, k_K.max() * 1.4)
    ax.set_xlabel("K (ids selected, log scale)")
    ax.legend(fontsize=7, loc="lower right")
  return fig


def save_coverage_jaccard(numbers, out_dir) -> Figure:
  fig = coverage_jaccard_figure(numbers)
  name = save_figure(fig, out_dir, "coverage_jaccard_vs_k.png")
  return Figure(
    name,
    "Left: KL coverage of the top-K ids vs K, with the paper's top-100 figure (star). Right: "
    "mean Jaccard of the top K on random sub-corpora of n sequences vs the full corpus, one "
    "marker and line style per n, markers slightly offset in K so that equal values stay "
    "visible; dotted: the paper's 0.70. Grey band and hollow markers: K beyond the eligible "
    "ids, where both are 1 by construction.",
  )


def jaccard_size_figure(numbers: dict[str, Any]):
  """Mean and minimum Jaccard of the top-k set vs the sub-corpus size."""
  k = numbers["k"]
  fig, ax = plotting.new_figure(f"Stability of the top-{k} set vs sub-corpus size", (6.5, 4.4))
  ki = numbers["k_grid"].index(k)
  lo = [row[ki] for row in numbers["jaccard_min"]]
  sizes = np.asarray(numbers["sizes"], float)
  shift = 0.01 * (sizes.max() - sizes.min()) if sizes.size > 1 else 0.0  # equal values: both seen
  ax.plot(sizes, numbers["jaccard_at_k"], "o-", ms=8, markerfacecolor="white", zorder=3,
          label="mean over draws")  # fmt: skip
  ax.plot(sizes + shift, lo, "v--", ms=5, label="minimum over draws (shifted right)")
  ax.axhline(PAPER["jaccard"].paper, color="black", linestyle=":", label="paper: >= 0.70")
  ax.set_xlabel("sub-corpus size n (sequences)")
  ax.set_ylabel(f"Jaccard of the top-{k} vs the full corpus")
  ax.set_ylim(max(0.0, np.nanmin(np.asarray([PAPER["jaccard"].paper, *lo], float)) - 0.1), 1.03)
  ax.legend(fontsize=8, loc="lower right")
  return fig


def save_jaccard_size(numbers, out_dir) -> Figure:
  name = save_figure(jaccard_size_figure(numbers), out_dir, "jaccard_vs_size.png")
  return Figure(
    name,
    f"Jaccard of the top-{numbers['k']} set on sub-corpora of n sequences vs the full corpus "
    f"of {numbers['num_sequences']}, mean and minimum over {numbers['repeats']} draws; dotted: "
    "the paper's 0.70.",
  )
