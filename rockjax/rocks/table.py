"""The rock table: ids ranked by Rock Score with their token text, frequency and mean loss."""

import json
from typing import Any

import numpy as np
from etils import epath

from rockjax import losses, rocks
from rockjax.metrics import host_value

STAGE_NAMES = {"sft": "teacher SFT", "kd": "student stage-1 KD", "opd": "student OPD"}


def rock_table(
  stats: rocks.RockStats,
  tokenizer: Any,
  selection: rocks.RockSelection = rocks.RockSelection(),
  *,
  stage: str = "opd",
  quantity: str = "reverse_kl",
) -> dict[str, Any]:
  """The selection and every observed id, ranked by Rock Score (Freq x mean per-token loss).

  'rows' holds the selected ids (the rocks), 'ids' every id seen at least once (with a
  'selected' flag); 'kl_coverage' is the share of the total on the selection. `stage` and
  `quantity` (what the statistics hold: the stage's per-token loss) label the table.
  """
  window = selection.window
  mask_V = selection.select(stats)
  # Every process runs these (jitted, on global arrays); each reads its local replica.
  freq_V, mean_V, score_V, mask_V = (
    host_value(x)
    for x in (
      rocks.frequency(stats, window=window),
      rocks.mean_kl(stats, window=window),
      rocks.rock_score(stats, window=window),
      mask_V,
    )
  )
  total = float(np.sum(score_V))
  seen = freq_V > 0

  def row(rank: int, i: int) -> dict[str, Any]:
    return {
      "rank": rank,
      "id": i,
      "token": tokenizer.convert_ids_to_tokens(i),
      "freq": float(freq_V[i]),
      "mean_kl": float(mean_V[i]),
      "score": float(score_V[i]),
      "selected": bool(mask_V[i]),
    }

  by_score = lambda ids: ids[np.argsort(-score_V[ids], kind="stable")]
  chosen = by_score(np.nonzero(mask_V)[0])
  observed = by_score(np.nonzero(seen)[0])
  return {
    "stage": stage,
    "quantity": quantity,
    "selector": selection.selector,
    "window": window,
    "k": selection.k,
    "rows": [row(r + 1, int(i)) for r, i in enumerate(chosen)],
    "ids": [row(r + 1, int(i)) for r, i in enumerate(observed)],
    "kl_coverage": float(score_V[chosen].sum() / total) if total > 0 else float("nan"),
    "token_density": float(freq_V[chosen].sum() / freq_V.sum()) if seen.any() else 0.0,
    "observed_vocab": int(seen.sum()),
  }


def quantity_title(quantity: str) -> str:
  """A tracked per-token quantity's name in reports: a divergence's title, or cross-entropy."""
  return "cross-entropy" if quantity == "cross_entropy" else losses.title(quantity)


def format_table(table: dict[str, Any], limit: int = 15) -> str:
  """A fixed-width text rendering of the top selected rows, titled with stage and quantity."""
  quantity = quantity_title(table["quantity"])
  stage = STAGE_NAMES.get(table.get("stage"), table.get("stage", ""))
  lines = [
    f"[{stage}] rock tokens by {table['selector']} (freq x mean {quantity}): top "
    f"{len(table['rows'])} of {table['observed_vocab']} observed ids carry "
    f"{100 * table['kl_coverage']:.1f}% of the {quantity} on "
    f"{100 * table['token_density']:.1f}% of response tokens",
    f"{'rank':>4} {'id':>7} {'token':<14} {'freq':>8} {'mean':>9} {'score':>9}",
  ]
  for r in table["rows"][:limit]:
    lines.append(
      f"{r['rank']:>4} {r['id']:>7} {repr(r['token']):<14} {r['freq']:>8.0f} "
      f"{r['mean_kl']:>9.4f} {r['score']:>9.3f}"
    )
  return "\n".join(lines)


def write_table(workdir: str, table: dict[str, Any]) -> str:
  """Write workdir/rocks.json (local or a cloud URL); returns its path."""
  path = epath.Path(workdir) / "rocks.json"
  path.write_text(json.dumps(table, indent=1))
  return str(path)
