"""The rock table against counts done by hand in numpy: every observed id, ranked by score."""

import numpy as np

from rockjax import rocks
from rockjax.rocks import table as rock_table


class Tok:
  def convert_ids_to_tokens(self, i):
    return f"t{i}"


def test_table_ranks_every_observed_id_by_freq_times_mean_kl():
  rng = np.random.default_rng(0)
  V = 32
  ids_BxL = rng.integers(0, 20, (4, 12))  # ids 20..31 never occur
  kl_BxL = rng.random((4, 12)).astype(np.float32)
  mask_BxL = (rng.random((4, 12)) < 0.8).astype(np.int32)
  stats = rocks.update(rocks.RockStats.init(V), ids_BxL, kl_BxL, mask_BxL)
  selection = rocks.RockSelection(k=3, min_freq=1, exclude_top_freq=0)
  table = rock_table.rock_table(stats, Tok(), selection, stage="kd", quantity="forward_kl")

  freq, total = np.zeros(V), np.zeros(V)
  np.add.at(freq, ids_BxL[mask_BxL > 0], 1)
  np.add.at(total, ids_BxL[mask_BxL > 0], kl_BxL[mask_BxL > 0].astype(np.float64))
  seen = np.nonzero(freq)[0]
  order = seen[np.argsort(-total[seen], kind="stable")]
  assert [r["id"] for r in table["ids"]] == order.tolist()
  assert [r["id"] for r in table["rows"]] == order[:3].tolist()
  for r in table["ids"]:
    assert r["freq"] == freq[r["id"]]
    np.testing.assert_allclose(r["score"], total[r["id"]], rtol=1e-5)
    np.testing.assert_allclose(r["mean_kl"], total[r["id"]] / freq[r["id"]], rtol=1e-5)
  np.testing.assert_allclose(table["kl_coverage"], total[order[:3]].sum() / total.sum(), rtol=1e-5)
  assert table["observed_vocab"] == len(seen)
  text = rock_table.format_table(table)
  assert text.splitlines()[0].startswith(
    "[student stage-1 KD] rock tokens by rock_score (freq x mean forward KL)"
  )
