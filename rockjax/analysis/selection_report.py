"""Report sections of the selection analysis: the rock table, coverage, stability, density.

`selection_sections(result, out_dir, tokenizer)` turns `selection.analyze_selection`'s result
into report Sections (rockjax.analysis.report) and saves their PNGs (rockjax.analysis.
selection_figures) into out_dir. Numbers are rounded to 4 decimals once, here, so the Markdown
shows the JSON's values; shares are fractions in the JSON and percentages in the Markdown.
K values beyond the eligible ids and rocks that are much of the vocabulary get warnings
(rockjax.analysis.degenerate).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rockjax.analysis import degenerate
from rockjax.analysis import selection_figures as figs
from rockjax.analysis.report import Section

TABLE_ROWS = 20  # rock table rows shown in the Markdown (the JSON keeps all K)


def _r(x: float) -> float:
  return round(float(x), 4)


def token_label(tokenizer: Any, i: int) -> str:
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
      "token": token_label(tokenizer, i),
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
  observed = int(np.sum(result["freq_V"] > 0))
  return {
    "k": sel.k,
    "min_freq": sel.min_freq,
    "exclude_top_freq": sel.exclude_top_freq,
    "selector": sel.selector,
    "num_sequences": result["num_sequences"],
    "num_tokens": result["num_tokens"],
    "observed_vocab": observed,
    "num_rocks": len(result["rock_ids"]),
    "rock_id_share": _r(len(result["rock_ids"]) / max(observed, 1)),
    "total_kl": _r(result["total_kl"]),
    "coverage_at_k": _r(result["coverage"][ki]),
    "token_share": _r(rocks_on / max(result["num_tokens"], 1)),
    "k_grid": list(k_grid),
    "coverage": [_r(c) for c in result["coverage"]],
    "selected": [int(n) for n in result["selected"]],
    **_beyond_numbers(k_grid, result["selected"]),
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


def _beyond_numbers(k_grid, selected) -> dict[str, Any]:
  """Per K whether it exceeds the eligible ids, and the marks the tables print for it."""
  beyond = degenerate.k_beyond(k_grid, selected)
  eligible = max((int(s) for s in selected), default=0)
  return {
    "k_beyond": beyond,
    "k_note": [f" (only {eligible} eligible)" if b else "" for b in beyond],
    "k_star": ["*" if b else "" for b in beyond],
    "beyond_note": (
      f"\n\n\\* K beyond the {eligible} eligible ids: the top K is every eligible id, "
      "Jaccard 1 by construction."
      if any(beyond)
      else ""
    ),
  }


def _present(*warnings: str | None) -> tuple[str, ...]:
  return tuple(w for w in warnings if w)


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _rocks_text(n: dict[str, Any]) -> str:
  """The rock section's Markdown: the corpus, the selection and the rock table."""
  shown = min(TABLE_ROWS, len(n["rocks"]))
  fields = ("rank", "id", "token", "freq", "mean_kl", "score", "kl_share")
  spec = {"kl_share": ":.1%"}
  table = _table(
    list(fields), [[f"{{rocks[{r}][{f}]{spec.get(f, '')}}}" for f in fields] for r in range(shown)]
  )
  return (
    "{num_sequences} sequences, {num_tokens} response tokens, {observed_vocab} distinct ids; "
    "total KL {total_kl} nats. Selection: top {k} by {selector}, min_freq {min_freq}, "
    "exclude_top_freq {exclude_top_freq} ({num_rocks} ids selected, {rock_id_share:.1%} of the "
    "observed ids). The rocks carry {coverage_at_k:.1%} of the corpus KL on {token_share:.1%} "
    "of the response tokens. Per-sequence rock density: mean {density_mean:.1%}, median "
    "{density_median:.1%}, 90th percentile "
    f"{{density_p90:.1%}}.\n\nTop {shown} of the selection (the list is rock_ids.txt; mean_kl "
    f"in nats per token, score = freq x mean_kl):\n\n{table}"
  )


def _stability_text(n: dict[str, Any]) -> str:
  """The stability section's Markdown: the coverage table and the Jaccard table."""
  cov_rows = [
    [f"{{k_grid[{j}]}}{{k_note[{j}]}}", f"{{selected[{j}]}}", f"{{coverage[{j}]:.1%}}"]
    for j in range(len(n["k_grid"]))
  ]
  jac_rows = [
    [f"{{sizes[{i}]}}"] + [f"{{jaccard_mean[{i}][{j}]}}" for j in range(len(n["k_grid"]))]
    for i in range(len(n["sizes"]))
  ]
  k_cols = [f"K={{k_grid[{j}]}}{{k_star[{j}]}}" for j in range(len(n["k_grid"]))]
  return (
    "KL coverage of the top K:\n\n"
    + _table(["K", "ids selected", "coverage"], cov_rows)
    + "\n\nJaccard of the top K on {repeats} random sub-corpora of n sequences vs the full "
    "corpus (mean; rows n, columns K):\n\n" + _table(["n"] + k_cols, jac_rows) + "{beyond_note}"
  )


def selection_sections(result: dict[str, Any], out_dir: str, tokenizer: Any) -> list[Section]:
  """The sections 'rocks' (table, funnel, density) and 'stability' (coverage, Jaccard)."""
  n = selection_numbers(result, tokenizer)
  rocks_sec = Section(
    title="Rock Tokens",
    key="rocks",
    numbers=n,
    figures=(figs.save_funnel(result, n, out_dir), figs.save_density(result, n, out_dir)),
    text=_rocks_text(n),
    warnings=_present(degenerate.rock_share_warning(n["num_rocks"], n["observed_vocab"])),
  )
  keys = ("k", "k_grid", "coverage", "selected", "sizes", "repeats", "k_beyond", "k_note")
  stab_numbers = {k: n[k] for k in keys + ("k_star", "beyond_note", "num_sequences")}
  stab_numbers |= {k: n[k] for k in ("jaccard_mean", "jaccard_min", "jaccard_at_k")}
  stab_sec = Section(
    title="Coverage and stability",
    key="stability",
    numbers=stab_numbers,
    figures=(
      figs.save_coverage_jaccard(stab_numbers, out_dir),
      figs.save_jaccard_size(stab_numbers, out_dir),
    ),
    text=_stability_text(n),
    warnings=_present(degenerate.k_beyond_warning(n["k_grid"], n["selected"])),
  )
  return [rocks_sec, stab_sec]
