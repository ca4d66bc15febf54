"""The frequency-matched Random control: non-rock ids paired one-to-one with a rock list.

The paper's Random regime freezes 100 ids that are not rocks but occur about as often as the
ids Rock-Freeze freezes (docs/method.md, "Rock-Freeze"). Each id of that list is paired with a
distinct candidate by a minimum-cost assignment (scipy.optimize.linear_sum_assignment) on
`|log freq(listed id) - log freq(candidate)|`, so the control carries the list's token mass but
none of its KL structure. Which list (rockjax.analysis.studies): analysis.control_match_list,
else the static list the run freezes, else the analysis's own top K; candidates exclude that
list and the analysis's rock set (`exclude`). Listed ids the corpus never emits have no log
frequency: `split_unseen` sets them apart, unmatched, and the section warns about them.

Shape letters: V vocabulary size, K rocks, C candidate ids.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import scipy.optimize
from etils import epath

from rockjax.analysis import degenerate, plotting, report
from rockjax.analysis.groups import rounded
from rockjax.rocks import lists as rock_lists

CONTROL_LIST_NAME = "random_control_ids.txt"  # written beside the rock list
# The stated match tolerance: a control id within a factor of 2 of its rock's frequency.
DEFAULT_TOLERANCE = math.log(2.0)
FIGURE = "control_frequencies.png"


def _candidates(
  freq_V: np.ndarray, rock_ids: np.ndarray, exclude: Any, min_freq: float, exclude_top_freq: int
) -> np.ndarray:
  """Ids seen >= min_freq times (and at least once) that are neither rocks nor excluded."""
  ok_V = (freq_V > 0) & (freq_V >= min_freq)
  ok_V[rock_ids] = False
  ok_V[np.asarray(list(exclude), np.int64)] = False
  # The most frequent ids, ties to the lower id: the rule of rockjax.rocks.select.
  ok_V[np.argsort(-freq_V, kind="stable")[:exclude_top_freq]] = False
  return np.nonzero(ok_V)[0]


def frequency_matched(
  freq_V: np.ndarray,
  rock_ids: Any,
  *,
  seed: int = 0,
  exclude: Any = (),
  min_freq: float = 1,
  exclude_top_freq: int = 0,
) -> np.ndarray:
  """Control ids int64 `[K]`, `out[i]` matched to `rock_ids[i]` at minimum total |log ratio|.

  Candidates are ids seen >= min_freq times that are not rocks, not in `exclude` and not
  among the `exclude_top_freq` most frequent ids (the selection removed those before ranking). Among candidates of equal
  frequency the choice is a seeded draw: the candidates are permuted with `seed` before the
  assignment, which breaks ties in order and leaves the optimal cost unchanged.
  """
  freq_V = np.asarray(freq_V, np.float64)
  rock_K = np.asarray(rock_ids, np.int64).reshape(-1)
  if np.unique(rock_K).size != rock_K.size:
    raise ValueError(f"rock_ids holds duplicates: {rock_K.tolist()[:10]}")
  if rock_K.size and freq_V[rock_K].min() <= 0:
    raise ValueError("rock_ids holds an id with frequency 0 (no log frequency to match)")
  cand_C = _candidates(freq_V, rock_K, exclude, min_freq, exclude_top_freq)
  if cand_C.size < rock_K.size:
    raise ValueError(
      f"only {cand_C.size} candidate ids (seen >= min_freq={min_freq}, not rocks, not excluded, "
      f"not in the exclude_top_freq={exclude_top_freq} most frequent) for {rock_K.size} rocks"
    )
  rng = np.random.default_rng(seed)
  cand_C = cand_C[rng.permutation(cand_C.size)]
  # A stable sort keeps the seeded order inside each run of equal frequencies.
  cand_C = cand_C[np.argsort(np.log(freq_V[cand_C]), kind="stable")]
  log_c_C = np.log(freq_V[cand_C])
  log_r_K = np.log(freq_V[rock_K])
  # Each rock's optimal partner is among its K nearest candidates (otherwise one of those is
  # free and no worse), and in sorted order these lie within K places of its insertion point:
  # the union of those windows (<= 2K^2 columns) keeps the cost matrix small for big V.
  k = rock_K.size
  pos_K = np.searchsorted(log_c_C, log_r_K)
  window = np.unique(
    np.clip(pos_K[:, None] + np.arange(-k, k)[None, :], 0, cand_C.size - 1).reshape(-1)
  )
  cost_KxC = np.abs(log_r_K[:, None] - log_c_C[window][None, :])
  rows_K, cols_K = scipy.optimize.linear_sum_assignment(cost_KxC)
  out_K = np.empty(k, np.int64)
  out_K[rows_K] = cand_C[window][cols_K]
  return out_K


def match_quality(
  freq_V: np.ndarray,
  rock_ids: Any,
  control_ids: Any,
  *,
  tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, float]:
  """How close the pairs are: max / median / total |log freq ratio| and the share within tolerance."""
  freq_V = np.asarray(freq_V, np.float64)
  rock_K = np.asarray(rock_ids, np.int64).reshape(-1)
  ratio_K = np.abs(np.log(freq_V[rock_K]) - np.log(freq_V[np.asarray(control_ids, np.int64)]))
  return {
    "num_pairs": int(rock_K.size),
    "max_abs_log_ratio": float(ratio_K.max()) if rock_K.size else 0.0,
    "median_abs_log_ratio": float(np.median(ratio_K)) if rock_K.size else 0.0,
    "total_abs_log_ratio": float(ratio_K.sum()),
    "tolerance": float(tolerance),
    "share_within_tolerance": float(np.mean(ratio_K <= tolerance)) if rock_K.size else 1.0,
  }


def split_unseen(freq_V: np.ndarray, list_ids: Any) -> tuple[np.ndarray, np.ndarray]:
  """(the listed ids the corpus emits, those it never emits), int64, each in list order."""
  ids_K = np.asarray(list_ids, np.int64).reshape(-1)
  seen_K = np.asarray(freq_V)[ids_K] > 0
  return ids_K[seen_K], ids_K[~seen_K]


def control_list_path(rock_list_path: str | os.PathLike) -> str:
  """Where the control list goes: random_control_ids.txt in the rock list's folder."""
  return os.fspath(epath.Path(rock_list_path).parent / CONTROL_LIST_NAME)


def write_control_list(path: str | os.PathLike, ids: Any, header: str = "") -> str:
  """Writes `ids` in the rock_lists format (rock.mode='static' loads it); returns the path."""
  rock_lists.save_id_list(path, ids, header=header)
  return os.fspath(path)


def control_result(
  freq_V: np.ndarray,
  rock_ids: Any,
  control_ids: Any,
  *,
  tolerance: float = DEFAULT_TOLERANCE,
  matched_to: str = "",
  unseen_ids: Any = (),
) -> dict[str, Any]:
  """The pairs with their frequencies and `match_quality`, for the report section.

  matched_to: the list the control was matched to (its path, said in the section); unseen_ids:
  that list's ids the corpus never emits (left without a control)."""
  freq_V = np.asarray(freq_V, np.float64)
  rock_K = np.asarray(rock_ids, np.int64).reshape(-1)
  control_K = np.asarray(control_ids, np.int64).reshape(-1)
  return {
    "rock_ids": rock_K,
    "control_ids": control_K,
    "rock_freq": freq_V[rock_K],
    "control_freq": freq_V[control_K],
    "quality": match_quality(freq_V, rock_K, control_K, tolerance=tolerance),
    "matched_to": matched_to,
    "unseen_ids": np.asarray(unseen_ids, np.int64).reshape(-1),
  }


def _unseen_warning(result: dict[str, Any]) -> str | None:
  """The warning when listed ids had no frequency to match (the control list is shorter)."""
  unseen = result.get("unseen_ids", ())
  if not len(unseen):
    return None
  shown = ", ".join(str(int(i)) for i in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
  return (
    f"{len(unseen)} id(s) of the matched list never occur in the analysis corpus ({shown}): "
    f"no frequency to match, so the control list holds {len(result['control_ids'])} ids, "
    f"not {len(result['control_ids']) + len(unseen)}."
  )


def _pair_labels(result: dict[str, Any]) -> list[str]:
  """'i: rock -> control' per pair, tokens where the result has them (else ids)."""
  rocks = result.get("rock_tokens") or [str(i) for i in result["rock_ids"]]
  ctrls = result.get("control_tokens") or [str(i) for i in result["control_ids"]]
  return [f"{i + 1}: {r} -> {c}" for i, (r, c) in enumerate(zip(rocks, ctrls))]


def pairs_figure(result: dict[str, Any]):
  """Left: each rock's frequency against its control's, log axes, pairs numbered. Right: one
  row per pair, the control/rock frequency ratio, so that pairs on one spot stay apart."""
  rock_K, ctrl_K = result["rock_freq"], result["control_freq"]
  k = len(rock_K)
  title = f"Frequency-matched random control: {k} rock / control pairs"
  fig, (ax1, ax2) = plotting.new_figure(title, (12, max(5.0, min(14.0, 0.25 * k))), ncols=2)
  band = math.exp(result["quality"]["tolerance"])
  lo, hi = min(rock_K.min(), ctrl_K.min()) / 1.5, max(rock_K.max(), ctrl_K.max()) * 1.5
  ax1.fill_between([lo, hi], [lo / band, hi / band], [lo * band, hi * band], alpha=0.15,
                   color="gray", label=f"within a factor {band:.3g}")  # fmt: skip
  ax1.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="equal frequency")
  ax1.scatter(rock_K, ctrl_K, s=22, facecolors="none", edgecolors="tab:red", label="pair")
  ax1.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
  ax1.set_xlabel("rock frequency (emitted tokens, log scale)")
  ax1.set_ylabel("matched control frequency (emitted tokens, log scale)")
  ax1.set_title("pairs numbered as in the right panel", fontsize=9)
  plotting.plain_log_ticks(ax1)
  ax1.legend(fontsize=8, loc="upper left")
  plotting.place_labels(ax1, rock_K, ctrl_K, [str(i + 1) for i in range(k)])
  ratio_K = ctrl_K / rock_K
  y_K = np.arange(k)[::-1]
  ax2.axvspan(1 / band, band, color="gray", alpha=0.15, label=f"within a factor {band:.3g}")
  ax2.axvline(1.0, color="black", linewidth=0.8)
  ax2.hlines(y_K, 1.0, ratio_K, color="tab:red", linewidth=1)
  ax2.plot(ratio_K, y_K, "o", color="tab:red", ms=5)
  ax2.set_xscale("log")
  ax2.set_yticks(y_K, _pair_labels(result) if k <= 40 else [""] * k, fontsize=7)
  ax2.set_xlabel("control frequency / rock frequency (log scale)")
  ax2.set_ylabel("pair (rock -> control)")
  ax2.set_title("each pair on its own row", fontsize=9)
  ax2.legend(fontsize=8, loc="lower left")
  plotting.plain_log_ticks(ax2, "x")
  return fig


def section(result: dict[str, Any], out_dir: str) -> report.Section:
  """The report section; saves the pair plot."""
  q = result["quality"]
  numbers = {k: (v if k == "num_pairs" else rounded(v)) for k, v in q.items()}
  numbers["tolerance_factor"] = rounded(math.exp(q["tolerance"]))
  numbers["matched_to"] = result.get("matched_to") or "the rocks"
  numbers["num_unseen"] = int(len(result.get("unseen_ids", ())))
  if q["num_pairs"]:
    report.save_figure(pairs_figure(result), out_dir, FIGURE)
  text = (
    "{num_pairs} ids, none of them in the matched list or the rock set, matched one-to-one to "
    "the ids of {matched_to} ({num_unseen} of its ids never occur in the corpus and have no "
    "match) by a minimum-cost assignment on "
    "|log frequency| differences (written as " + CONTROL_LIST_NAME + "). |log frequency "
    "ratio|: median {median_abs_log_ratio}, max {max_abs_log_ratio}; "
    "{share_within_tolerance:.1%} of the pairs are within the stated tolerance {tolerance} (a "
    "factor {tolerance_factor})."
  )
  caption = (
    "Left: frequency of each id of the matched list (x) and of its control id (y), log axes, "
    "pairs "
    "numbered; the grey band is the stated tolerance around equal frequency. Right: each "
    "pair's control/rock frequency ratio on its own row (rock token -> control token)."
  )
  return report.Section(
    title="Frequency-matched random control",
    key="controls",
    numbers=numbers,
    figures=(report.Figure(FIGURE, caption),) if q["num_pairs"] else (),
    warnings=tuple(
      w for w in (degenerate.pairs_warning(q["num_pairs"]), _unseen_warning(result)) if w
    ),
    text=text,
  )
