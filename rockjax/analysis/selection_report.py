"""Report sections of the selection analysis: the rock table, coverage, stability, density.

`selection_sections(result, out_dir, tokenizer)` turns `selection.analyze_selection`'s result
into report Sections (rockjax.analysis.report) and saves their PNGs (matplotlib, Agg) into
out_dir. Numbers are rounded to 4 decimals once, here, so the Markdown shows the JSON's values.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window (headless machines)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402

from rockjax.analysis.report import Figure, Section, save_figure  # noqa: E402

TABLE_ROWS = 20  # rock table rows shown in the Markdown (the JSON keeps all K)
LABELLED = 12  # rocks labelled in the funnel plot


def _r(x: float) -> float:
  return round(float(x), 4)


def _token_label(tokenizer: Any, i: int) -> str:
  """A short printable label for an id (repr of its token text; '|' escaped for tables)."""
  tok = tokenizer.convert_ids_to_tokens(int(i)) if tokenizer is not None else str(i)
  return repr(tok).replace("|", "\\|")


def rock_rows(result: dict[str, Any], tokenizer: Any) -> list[dict[str, Any]]:
  """One row per selected id, in rank order: rank, id, token, freq, mean KL, score, share."""
  freq_V, kl_V = result["freq_V"], result["kl_sum_V"]
  total = result["total_kl"]
  return [
    {
      "rank": r + 1,
      "id": int(i),
      "token": _token_label(tokenizer, i),
      "freq": int(freq_V[i]),
      "mean_kl": _r(kl_V[i] / freq_V[i]),
      "score": _r(kl_V[i]),
      "kl_share": _r(kl_V[i] / total) if total > 0 else None,
    }
    for r, i in enumerate(result["rock_ids"])
  ]


def selection_numbers(result: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
  """Every number of the selection sections (JSON-able, rounded)."""
  sel = result["selection"]
  jac = result["jaccard_NxKxR"]
  k_grid, sizes = result["k_grid"], result["sizes"]
  density = result["density_S"]
  # Bins over [0, the largest density]: densities cluster well below 1.
  top = float(density.max()) if density.size and density.max() > 0 else 1.0
  counts, edges = np.histogram(density, bins=20, range=(0.0, top))
  rocks_on = float(result["freq_V"][result["rock_ids"]].sum())
  ki = k_grid.index(sel.k)
  return {
    "k": sel.k,
    "min_freq": sel.min_freq,
    "exclude_top_freq": sel.exclude_top_freq,
    "selector": sel.selector,
    "num_sequences": result["num_sequences"],
    "num_tokens": result["num_tokens"],
    "observed_vocab": int(np.sum(result["freq_V"] > 0)),
    "num_rocks": len(result["rock_ids"]),
    "total_kl": _r(result["total_kl"]),
    "coverage_at_k": _r(result["coverage"][ki]),
    "token_share": _r(rocks_on / max(result["num_tokens"], 1)),
    "k_grid": list(k_grid),
    "coverage": [_r(c) for c in result["coverage"]],
    "selected": [int(n) for n in result["selected"]],
    "sizes": list(sizes),
    "repeats": int(jac.shape[2]),
    "jaccard_mean": [[_r(v) for v in row] for row in jac.mean(axis=2)],
    "jaccard_min": [[_r(v) for v in row] for row in jac.min(axis=2)],
    "jaccard_at_k": [_r(v) for v in jac[:, ki].mean(axis=1)],
    "density_mean": _r(density.mean()) if density.size else None,
    "density_median": _r(np.median(density)) if density.size else None,
    "density_p90": _r(np.quantile(density, 0.9)) if density.size else None,
    "density_hist_counts": counts.tolist(),
    "density_hist_edges": [_r(e) for e in edges],
    "rocks": rock_rows(result, tokenizer),
    "rock_ids": [int(i) for i in result["rock_ids"]],
  }


def _funnel(result, numbers, out_dir) -> Figure:
  freq_V, kl_V = result["freq_V"], result["kl_sum_V"]
  seen = np.nonzero(freq_V > 0)[0]
  rock = np.asarray(result["rock_ids"], np.int64)
  mean = lambda ids: kl_V[ids] / freq_V[ids]
  fig = MplFigure(figsize=(7, 5))
  ax = fig.subplots()
  ax.scatter(np.log10(freq_V[seen]), mean(seen), s=8, c="0.6", label="other ids")
  ax.scatter(np.log10(freq_V[rock]), mean(rock), s=22, c="tab:red", label="rocks")
  for row in numbers["rocks"][:LABELLED]:
    i = row["id"]
    ax.annotate(row["token"], (np.log10(freq_V[i]), mean(i)), fontsize=7, xytext=(3, 3),
                textcoords="offset points")  # fmt: skip
  ax.set_xlabel("log10 frequency in the corpus")
  ax.set_ylabel("mean per-token KL")
  ax.legend()
  name = save_figure(fig, out_dir, "kl_vs_frequency.png")
  return Figure(
    name,
    f"Mean KL vs log10 frequency per observed id; the {len(rock)} rocks (top-{numbers['k']} "
    f"by {numbers['selector']}) in red, the top {min(LABELLED, len(rock))} labelled.",
  )


def _density(result, numbers, out_dir) -> Figure:
  fig = MplFigure(figsize=(6, 4))
  ax = fig.subplots()
  ax.hist(result["density_S"], bins=numbers["density_hist_edges"], color="tab:blue")
  ax.set_xlabel("share of the sequence's response tokens that are rocks")
  ax.set_ylabel("sequences")
  name = save_figure(fig, out_dir, "rock_density.png")
  return Figure(name, "Histogram over sequences of the share of response tokens that are rocks.")


def _coverage_jaccard(numbers, out_dir) -> Figure:
  fig = MplFigure(figsize=(11, 4))
  ax1, ax2 = fig.subplots(1, 2)
  ax1.plot(numbers["k_grid"], numbers["coverage"], "o-")
  ax1.set_xscale("log")
  ax1.set_xlabel("K (selected ids)")
  ax1.set_ylabel("share of corpus KL on the top K")
  ax1.set_ylim(0, 1)
  for n, row in zip(numbers["sizes"], numbers["jaccard_mean"]):
    ax2.plot(numbers["k_grid"], row, "o-", label=f"n={n}")
  ax2.set_xscale("log")
  ax2.set_xlabel("K (selected ids)")
  ax2.set_ylabel("Jaccard vs the full corpus")
  ax2.set_ylim(0, 1.02)
  ax2.legend(fontsize=8)
  name = save_figure(fig, out_dir, "coverage_jaccard_vs_k.png")
  return Figure(
    name,
    "Left: KL coverage of the top-K ids vs K (fewer ids when fewer are eligible). Right: Jaccard of the top K on random "
    "sub-corpora of n sequences vs the full corpus (mean over repeats), vs K.",
  )


def _jaccard_size(numbers, out_dir) -> Figure:
  fig = MplFigure(figsize=(6, 4))
  ax = fig.subplots()
  ki = numbers["k_grid"].index(numbers["k"])
  lo = [row[ki] for row in numbers["jaccard_min"]]
  ax.plot(numbers["sizes"], numbers["jaccard_at_k"], "o-", label="mean")
  ax.plot(numbers["sizes"], lo, "v--", label="min over repeats")
  ax.set_xlabel("sub-corpus size n (sequences)")
  ax.set_ylabel(f"Jaccard of top-{numbers['k']} vs the full corpus")
  ax.set_ylim(0, 1.02)
  ax.legend()
  name = save_figure(fig, out_dir, "jaccard_vs_size.png")
  return Figure(
    name,
    f"Jaccard of the top-{numbers['k']} set on sub-corpora of n sequences vs the full corpus "
    f"of {numbers['num_sequences']}, mean and minimum over {numbers['repeats']} draws.",
  )


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def selection_sections(result: dict[str, Any], out_dir: str, tokenizer: Any) -> list[Section]:
  """The sections 'rocks' (table, funnel, density) and 'stability' (coverage, Jaccard)."""
  n = selection_numbers(result, tokenizer)
  shown = min(TABLE_ROWS, len(n["rocks"]))
  fields = ("rank", "id", "token", "freq", "mean_kl", "score", "kl_share")
  table = _table(list(fields), [[f"{{rocks[{r}][{f}]}}" for f in fields] for r in range(shown)])
  rocks_text = (
    "{num_sequences} sequences, {num_tokens} response tokens, {observed_vocab} distinct ids; "
    "total KL {total_kl}. Selection: top {k} by {selector}, min_freq {min_freq}, "
    "exclude_top_freq {exclude_top_freq} ({num_rocks} ids selected). The rocks carry "
    "{coverage_at_k} of the corpus KL on {token_share} of the response tokens. Per-sequence "
    "rock density: mean {density_mean}, median {density_median}, 90th percentile "
    f"{{density_p90}}.\n\nTop {shown} of the selection (the list is rock_ids.txt):\n\n{table}"
  )
  cov_rows = [
    [f"{{k_grid[{j}]}}", f"{{selected[{j}]}}", f"{{coverage[{j}]}}"]
    for j in range(len(n["k_grid"]))
  ]
  jac_rows = [
    [f"{{sizes[{i}]}}"] + [f"{{jaccard_mean[{i}][{j}]}}" for j in range(len(n["k_grid"]))]
    for i in range(len(n["sizes"]))
  ]
  stab_text = (
    "KL coverage of the top K:\n\n"
    + _table(["K", "ids selected", "coverage"], cov_rows)
    + "\n\nJaccard of the top K on {repeats} random sub-corpora of n sequences vs the full "
    "corpus (mean; rows n, columns K):\n\n"
    + _table(["n"] + [f"K={{k_grid[{j}]}}" for j in range(len(n["k_grid"]))], jac_rows)
  )
  rocks_sec = Section(
    title="Rock Tokens",
    key="rocks",
    numbers=n,
    figures=(_funnel(result, n, out_dir), _density(result, n, out_dir)),
    text=rocks_text,
  )
  stab_numbers = {k: n[k] for k in ("k", "k_grid", "coverage", "selected", "sizes", "repeats")}
  stab_numbers["num_sequences"] = n["num_sequences"]
  stab_numbers |= {k: n[k] for k in ("jaccard_mean", "jaccard_min", "jaccard_at_k")}
  stab_sec = Section(
    title="Coverage and stability",
    key="stability",
    numbers=stab_numbers,
    figures=(_coverage_jaccard(stab_numbers, out_dir), _jaccard_size(stab_numbers, out_dir)),
    text=stab_text,
  )
  return [rocks_sec, stab_sec]
