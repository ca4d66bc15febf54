"""Rock Tokens: per-id loss statistics, selection, the masking function and static id lists.

`stats.py` holds `RockStats` (carried in the train state) and everything computed from it,
`lists.py` the static id lists (the paper's list ships in rockjax/resources/), `table.py` the
per-id table a run writes for the analysis.
"""

from rockjax.rocks.lists import ids_to_mask, load_id_list, paper_rock_ids, save_id_list
from rockjax.rocks.stats import (
  DEFAULT_DECAY,
  SELECTORS,
  WINDOWS,
  RockSchedule,
  RockSelection,
  RockStats,
  frequency,
  is_rock_BxL,
  jaccard,
  kl_coverage,
  mean_kl,
  rock_score,
  rock_shares,
  select,
  snapshot,
  stagnation,
  step_sums,
  token_weights,
  update,
  window_sums,
)

__all__ = [
  "ids_to_mask",
  "load_id_list",
  "paper_rock_ids",
  "save_id_list",
  "DEFAULT_DECAY",
  "SELECTORS",
  "WINDOWS",
  "RockSchedule",
  "RockSelection",
  "RockStats",
  "frequency",
  "is_rock_BxL",
  "jaccard",
  "kl_coverage",
  "mean_kl",
  "rock_score",
  "rock_shares",
  "select",
  "snapshot",
  "stagnation",
  "step_sums",
  "token_weights",
  "update",
  "window_sums",
]
