"""The rock table: selected ids with their token text, frequency, mean KL and Rock Score."""
import json
import os
from typing import Any

import numpy as np

from rockjax import rocks
from rockjax.metrics import host_value


def rock_table(stats: rocks.RockStats, tokenizer: Any, *, k: int, min_freq: int = 2,
               exclude_top_freq: int = 0, selector: str = "rock_score",
               window: str = "cumulative") -> dict[str, Any]:
  """{'rows': [...] ranked by Rock Score, 'kl_coverage': share of total KL on the selection}."""
  mask_V = rocks.select(stats, k=k, min_freq=min_freq, exclude_top_freq=exclude_top_freq,
                        selector=selector, window=window)
  # Every process runs these (jitted, on global arrays); each reads its local replica.
  freq_V, mean_V, score_V, mask_V = (host_value(x) for x in (
      rocks.frequency(stats, window=window), rocks.mean_kl(stats, window=window),
      rocks.rock_score(stats, window=window), mask_V))
  total = float(np.sum(score_V))
  ids = np.nonzero(mask_V)[0]
  ids = ids[np.argsort(-score_V[ids], kind="stable")]
  rows = [{"rank": r + 1, "id": int(i), "token": tokenizer.convert_ids_to_tokens(int(i)),
           "freq": float(freq_V[i]), "mean_kl": float(mean_V[i]), "score": float(score_V[i])}
          for r, i in enumerate(ids)]
  seen = freq_V > 0
  return {"selector": selector, "window": window, "k": k, "rows": rows,
          "kl_coverage": float(score_V[ids].sum() / total) if total > 0 else float("nan"),
          "token_density": float(freq_V[ids].sum() / freq_V.sum()) if seen.any() else 0.0,
          "observed_vocab": int(seen.sum())}


def format_table(table: dict[str, Any], limit: int = 15) -> str:
  """A fixed-width text rendering of the top rows for the console."""
  lines = [f"rock tokens ({table['selector']}, top {len(table['rows'])} of "
           f"{table['observed_vocab']} observed ids): {100 * table['kl_coverage']:.1f}% of KL, "
           f"{100 * table['token_density']:.1f}% of response tokens",
           f"{'rank':>4} {'id':>7} {'token':<14} {'freq':>8} {'mean_kl':>9} {'score':>9}"]
  for r in table["rows"][:limit]:
    lines.append(f"{r['rank']:>4} {r['id']:>7} {repr(r['token']):<14} {r['freq']:>8.0f} "
                 f"{r['mean_kl']:>9.4f} {r['score']:>9.3f}")
  return "\n".join(lines)


def write_table(workdir: str, table: dict[str, Any]) -> str:
  """Write workdir/rocks.json; returns its path."""
  path = os.path.join(workdir, "rocks.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(table, f, indent=1)
  return path
