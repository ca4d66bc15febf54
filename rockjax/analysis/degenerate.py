"""Warnings for comparisons that cannot say what they seem to: too few ids in a group, a
checkpoint compared with itself, K values beyond the ids there are, rocks that are most of the
vocabulary. Each check returns the warning text (or nothing); the sections show it under their
title and the Findings paragraph collects it (rockjax.analysis.findings).

The thresholds are rockjax.analysis.paper_reference's MIN_GROUP_IDS and MAX_ROCK_ID_SHARE.
Shape letters: V vocabulary size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rockjax.analysis import groups as groups_lib
from rockjax.analysis.paper_reference import MAX_ROCK_ID_SHARE, MIN_GROUP_IDS


def wilcoxon_floor(n: int) -> float:
  """The smallest two-sided p the exact Wilcoxon signed-rank test can give on n pairs."""
  return min(1.0, 2.0 ** (1 - n)) if n > 0 else 1.0


def group_warnings(
  sizes: dict[str, int], requested: dict[str, int], eligible: int | None = None
) -> list[str]:
  """One warning per group (rocks, high_kl, random) smaller than MIN_GROUP_IDS or than asked."""
  out = []
  for name in groups_lib.GROUPS:
    n, want = int(sizes.get(name, 0)), int(requested.get(name, 0))
    parts = []
    if n < want:
      pool = f" (only {eligible} ids were eligible for the three groups)" if eligible else ""
      parts.append(f"fewer than the {want} requested{pool}")
    if n < MIN_GROUP_IDS:
      parts.append(
        f"fewer than {MIN_GROUP_IDS}, the smallest group this report compares without a "
        f"warning: on {n} paired ids no two-sided Wilcoxon p can be below {wilcoxon_floor(n):.3g}"
      )
    if parts:
      out.append(f"{groups_lib.GROUP_TITLES[name]}: {n} ids, {' and '.join(parts)}.")
  return out


def pairs_warning(num_pairs: int) -> str | None:
  """The control warning when fewer than MIN_GROUP_IDS rock / control pairs were matched."""
  if num_pairs >= MIN_GROUP_IDS:
    return None
  return (
    f"only {num_pairs} rock / control pairs (fewer than {MIN_GROUP_IDS}, the smallest group "
    "this report compares without a warning)."
  )


def same_path(a: str, b: str) -> bool:
  """Whether two checkpoint paths name one directory (symlinks and trailing '/' resolved)."""
  if not a or not b:
    return False
  norm = lambda p: p.rstrip("/") if "://" in p else os.path.realpath(p)  # noqa: E731
  return norm(a) == norm(b)


def same_parameters(a: nnx.Module, b: nnx.Module) -> bool:
  """Whether two models hold the same parameters (same names, shapes and values)."""
  if a is b:
    return True
  flat = lambda m: jax.tree_util.tree_flatten_with_path(nnx.state(m, nnx.Param))[0]  # noqa: E731
  la, lb = flat(a), flat(b)
  if [jax.tree_util.keystr(p) for p, _ in la] != [jax.tree_util.keystr(p) for p, _ in lb]:
    return False
  return all(x.shape == y.shape and bool(jnp.array_equal(x, y)) for (_, x), (_, y) in zip(la, lb))


def same_corpus(
  early_freq_V: np.ndarray,
  early_mean_kl_V: np.ndarray,
  late_freq_V: np.ndarray,
  late_mean_kl_V: np.ndarray,
) -> bool:
  """Whether two corpora give every id the same frequency and (to float32 noise) mean KL."""
  return bool(
    np.array_equal(np.asarray(early_freq_V), np.asarray(late_freq_V))
    and np.allclose(early_mean_kl_V, late_mean_kl_V, rtol=1e-6, atol=1e-9)
  )


def self_comparison_reasons(*, paths: bool, parameters: bool, corpus: bool) -> list[str]:
  """Why the early checkpoint is the final one: each check that found them equal."""
  named = (
    ("the same path", paths),
    ("equal parameters", parameters),
    ("identical per-id KL", corpus),
  )
  return [why for why, hit in named if hit]


def self_comparison_warning(reasons: Sequence[str], early: str) -> str | None:
  """The persistence warning when the early checkpoint is the final one (None otherwise)."""
  if not reasons:
    return None
  return (
    f"the early checkpoint ({early}) is the final student ({', '.join(reasons)}): persistence "
    "compares a checkpoint with itself, every drop is 0 and says nothing about training. Set "
    "analysis.early_checkpoint to an earlier checkpoint, or analyse a later --student."
  )


def k_beyond(k_grid: Sequence[int], selected: Sequence[int]) -> list[bool]:
  """Per K: whether fewer than K ids were eligible (the top K is then every eligible id)."""
  return [int(s) < int(k) for k, s in zip(k_grid, selected)]


def k_beyond_warning(k_grid: Sequence[int], selected: Sequence[int]) -> str | None:
  """The coverage/stability warning naming the K values beyond the eligible ids."""
  over = [int(k) for k, b in zip(k_grid, k_beyond(k_grid, selected)) if b]
  if not over:
    return None
  eligible = max(int(s) for s in selected)
  return (
    f"K = {', '.join(map(str, over))} exceed the {eligible} eligible ids (observed, seen "
    "min_freq times, not excluded): the top K is then every eligible id, so its coverage is "
    "100% and its Jaccard 1 by construction (marked in the tables and shaded in the figure)."
  )


def rock_share_warning(num_rocks: int, observed: int) -> str | None:
  """The selection warning when the rocks are a large share of the observed ids."""
  share = num_rocks / observed if observed else 1.0
  if share <= MAX_ROCK_ID_SHARE:
    return None
  return (
    f"the {num_rocks} rocks are {share:.1%} of the {observed} observed ids (paper: 100 ids, "
    f"~2.5%; above {MAX_ROCK_ID_SHARE:.0%} the top K is much of the vocabulary): its KL "
    "coverage and token share are not comparable with the paper's."
  )
