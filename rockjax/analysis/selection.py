"""Rock selection on a detection corpus: Rock Score table, KL coverage, Jaccard stability, density.

Selection is the trainer's rule, reused: the corpus sums become a `rocks.RockStats` (cumulative
window) and `rocks.select` picks the top K with rock.k / min_freq / exclude_top_freq / selector.
Coverage is `rocks.kl_coverage`, stability `rocks.jaccard`. Shape letters: V vocabulary, S
sequences, K selection sizes, N sub-corpus sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from rockjax import rocks
from rockjax.analysis.corpus import SequenceSums
from rockjax.rocks import lists as rock_lists

# The paper's detection corpus has 500 problems; its sub-corpus sizes are read against it.
PAPER_CORPUS_SIZE = 500


def stats_from_sums(freq_V: np.ndarray, kl_sum_V: np.ndarray) -> rocks.RockStats:
  """A RockStats whose cumulative window holds the corpus sums (the other windows are zero)."""
  stats = rocks.RockStats.init(len(freq_V))
  # int32 counts and float32 sums, as the trainer keeps them: selection ties break alike.
  return stats.replace(
    count_V=jnp.asarray(freq_V, jnp.int32), kl_sum_V=jnp.asarray(kl_sum_V, jnp.float32)
  )


def selector_key(freq_V: np.ndarray, kl_sum_V: np.ndarray, selector: str) -> np.ndarray:
  """float64 ranking key `[V]` of a selector (rocks.SELECTORS), computed on host."""
  freq = np.asarray(freq_V, np.float64)
  mean = np.divide(kl_sum_V, freq, out=np.zeros_like(freq), where=freq > 0)
  return {"rock_score": np.asarray(kl_sum_V, np.float64), "frequency": freq, "mean_kl": mean}[
    selector
  ]


def ranked_ids(
  freq_V: np.ndarray, kl_sum_V: np.ndarray, selection: rocks.RockSelection
) -> np.ndarray:
  """The ids `rocks.select` picks, int64, in rank order (key descending, then lower id)."""
  mask_V = np.asarray(selection.select(stats_from_sums(freq_V, kl_sum_V)))
  ids = np.nonzero(mask_V)[0]
  # The mask is unordered; rank on host in float64 with the trainer's tie rule (lower id).
  key = selector_key(freq_V, kl_sum_V, selection.selector)[ids]
  return ids[np.lexsort((ids, -key))].astype(np.int64)


def coverage_vs_k(
  freq_V: np.ndarray, kl_sum_V: np.ndarray, selection: rocks.RockSelection, k_grid: Sequence[int]
) -> list[float]:
  """Share of corpus KL on the top-K selection, for each K in k_grid."""
  stats = stats_from_sums(freq_V, kl_sum_V)
  out = []
  for k in k_grid:
    on, total = rocks.kl_coverage(stats, dataclasses.replace(selection, k=k).select(stats))
    out.append(float(on / total) if float(total) > 0 else float("nan"))
  return out


def scaled_sizes(sizes: Sequence[int], num_seqs: int) -> list[int]:
  """Sub-corpus sizes usable on `num_seqs` sequences (each < num_seqs, sorted, distinct).

  Sizes are used as given when they all fit; otherwise they are read as shares of the paper's
  500-problem corpus and scaled to this one (demo, 200 prompts: 50..400 -> 20..160).
  """
  # A sub-corpus as large as the corpus is the corpus itself (Jaccard 1 by construction).
  if max(sizes, default=0) >= num_seqs:
    sizes = [round(n * num_seqs / PAPER_CORPUS_SIZE) for n in sizes]
  return sorted({int(n) for n in sizes if 1 <= n < num_seqs})


def jaccard_grid(
  seqs: SequenceSums,
  selection: rocks.RockSelection,
  k_grid: Sequence[int],
  sizes: Sequence[int],
  *,
  repeats: int,
  seed: int,
) -> np.ndarray:
  """Jaccard `[N, K, repeats]` of the top-K on random sub-corpora of n sequences vs the full one.

  Sub-corpora are drawn without replacement from a numpy Generator seeded with `seed`, one
  draw per (size, repeat), shared by every K.
  """
  num_seqs = len(seqs.seq_ids)
  full_V = seqs.subset(np.arange(num_seqs))
  full_stats = stats_from_sums(*full_V)
  full_masks = [dataclasses.replace(selection, k=k).select(full_stats) for k in k_grid]
  # One Generator for the whole grid: the draws depend only on the seed, sizes and repeats.
  rng = np.random.default_rng(seed)
  out_NxKxR = np.zeros((len(sizes), len(k_grid), repeats))
  for i, n in enumerate(sizes):
    for r in range(repeats):
      rows = np.sort(rng.choice(num_seqs, size=n, replace=False))
      # Sub-corpus sums are row sums of the sparse per-sequence matrices: no re-read.
      stats = stats_from_sums(*seqs.subset(rows))
      for j, k in enumerate(k_grid):
        mask_V = dataclasses.replace(selection, k=k).select(stats)
        out_NxKxR[i, j, r] = float(rocks.jaccard(mask_V, full_masks[j]))
  return out_NxKxR


def rock_density(seqs: SequenceSums, rock_ids: np.ndarray) -> np.ndarray:
  """Share of each sequence's response tokens that are rock ids, float64 `[S]`."""
  on_rocks = np.asarray(seqs.count_SxV[:, np.asarray(rock_ids, np.int64)].sum(axis=1)).reshape(-1)
  lengths = seqs.lengths
  return np.divide(on_rocks, lengths, out=np.zeros(len(lengths)), where=lengths > 0)


def export_rock_ids(path: str, ids: np.ndarray, provenance: dict[str, Any]) -> str:
  """Write the rock list in rockjax.rocks.lists format (rock.mode='static' reads it); its path."""
  header = "Rock Tokens selected by python -m rockjax.analyze (rank order)\n" + "\n".join(
    f"{k}: {v}" for k, v in provenance.items()
  )
  rock_lists.save_id_list(path, ids, header=header)
  return str(path)


def analyze_selection(
  freq_V: np.ndarray,
  kl_sum_V: np.ndarray,
  seqs: SequenceSums,
  selection: rocks.RockSelection,
  *,
  k_grid: Sequence[int] = (10, 20, 50, 100, 200),
  subcorpus_sizes: Sequence[int] = (50, 100, 200, 300, 400),
  subcorpus_repeats: int = 5,
  seed: int = 0,
) -> dict[str, Any]:
  """Everything the selection sections report, as numpy/python values (see `selection_numbers`)."""
  rock_ids = ranked_ids(freq_V, kl_sum_V, selection)
  # rock.k joins the grid so that the headline coverage and Jaccard are on the curves.
  sizes = scaled_sizes(subcorpus_sizes, len(seqs.seq_ids))
  k_grid = sorted(set(int(k) for k in k_grid) | {selection.k})
  jac = jaccard_grid(seqs, selection, k_grid, sizes, repeats=subcorpus_repeats, seed=seed)
  total = float(np.sum(kl_sum_V))
  return {
    "selection": selection,
    "rock_ids": rock_ids,
    "freq_V": np.asarray(freq_V),
    "kl_sum_V": np.asarray(kl_sum_V),
    "k_grid": k_grid,
    "coverage": coverage_vs_k(freq_V, kl_sum_V, selection, k_grid),
    # Fewer than K ids are eligible on small vocabularies or corpora (then coverage is 1).
    "selected": [
      len(ranked_ids(freq_V, kl_sum_V, dataclasses.replace(selection, k=k))) for k in k_grid
    ],
    "sizes": sizes,
    "jaccard_NxKxR": jac,
    "density_S": rock_density(seqs, rock_ids),
    "num_sequences": int(len(seqs.seq_ids)),
    "num_tokens": int(np.sum(freq_V)),
    "total_kl": total,
  }
