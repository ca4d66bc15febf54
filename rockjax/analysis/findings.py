"""The report's Findings: one line per comparison with the paper, and every warning, on top.

`section(sections)` reads the numbers the other sections computed (the same rounded values
their Markdown prints) and sets each beside the paper's figure (rockjax.analysis.
paper_reference.PAPER) with a verdict: 'agrees', 'differs' or 'not comparable: <why>' (a
study that did not run, a group under MIN_GROUP_IDS ids, a checkpoint compared with itself,
rocks that are much of the vocabulary). Its numbers go to report.json under 'findings' (rows
with our raw value, its text, the paper's, the source and the verdict) and its Markdown is
filled from them, so both say the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rockjax.analysis.paper_reference import MAX_ROCK_ID_SHARE, MIN_GROUP_IDS, PAPER, verdict
from rockjax.analysis.report import Section


def pct(x: Any) -> str:
  """A fraction as a percentage with one decimal ('96.7%'); 'n/a' when missing."""
  return "n/a" if x is None or x != x else f"{float(x):.1%}"


def _num(x: Any) -> str:
  return "n/a" if x is None or x != x else f"{float(x):.3g}"


def row(key: str, ours: Any, ours_text: str, not_comparable: str = "") -> dict[str, Any]:
  """One Findings line: our value and text beside PAPER[key], and the verdict."""
  ref = PAPER[key]
  v = verdict(ours, ref, not_comparable)
  return {
    "key": key,
    "what": ref.what,
    "ours": ours,
    "ours_text": ours_text,
    "paper": ref.paper,
    "paper_text": ref.paper_text,
    "source": ref.source,
    "verdict": v,
    "status": v.split(":")[0],
  }


def _small(numbers: dict[str, Any], *names: str) -> str:
  """'not comparable' reason when a named group has fewer than MIN_GROUP_IDS ids, else ''."""
  titles = {"rocks": "rocks", "high_kl": "high-KL ids", "random": "random ids"}
  small = [f"{titles[n]} n = {numbers.get(f'{n}_n')}" for n in names
           if (numbers.get(f"{n}_n") or 0) < MIN_GROUP_IDS]  # fmt: skip
  return f"{', '.join(small)} (< {MIN_GROUP_IDS} ids)" if small else ""


def selection_rows(rocks: dict[str, Any], stab: dict[str, Any]) -> list[dict[str, Any]]:
  """Rock share of the observed ids, top-K coverage, token share and Jaccard stability."""
  share, n_rocks, seen = rocks["rock_id_share"], rocks["num_rocks"], rocks["observed_vocab"]
  big = (
    f"the {n_rocks} rocks are {pct(share)} of the {seen} observed ids (paper ~2.5%)"
    if share > MAX_ROCK_ID_SHARE
    else ""
  )
  cols = [j for j, k in enumerate(stab["k_grid"]) if k <= 100 and not stab["k_beyond"][j]]
  jac = [r[j] for r in stab["jaccard_mean"] for j in cols if r[j] is not None]
  sizes = stab["sizes"]
  jac_text = (
    f"{min(jac):.2f} (K <= {stab['k_grid'][cols[-1]]}, n = {sizes[0]}..{sizes[-1]} of "
    f"{stab['num_sequences']})"
    if jac
    else "n/a"
  )
  no_jac = "" if jac else "no K of the grid is <= 100 and within the eligible ids"
  return [
    row("rock_id_share", share, f"{pct(share)} ({n_rocks} of {seen} observed ids)"),
    row("coverage", rocks["coverage_at_k"], f"{pct(rocks['coverage_at_k'])} (top {n_rocks})", big),
    row("token_share", rocks["token_share"], pct(rocks["token_share"]), big),
    row("jaccard", min(jac) if jac else None, jac_text, no_jac),
  ]


def persistence_rows(p: dict[str, Any]) -> list[dict[str, Any]]:
  """The rocks' and high-KL ids' median drops and their contrast."""
  why = p.get("skipped") or ""
  if p.get("self_comparison"):
    why = f"the early checkpoint is the final one ({', '.join(p['self_comparison'])})"
  rd, hd = p.get("rocks_median_drop"), p.get("high_kl_median_drop")
  contrast = None if rd is None or hd is None else rd < hd
  stage, step = p.get("early_stage"), p.get("early_step")
  since = f"; early: {stage or 'checkpoint'} step {step}" if stage or step else ""
  moved = lambda g: f"{_num(p.get(f'{g}_median_early'))} -> {_num(p.get(f'{g}_median_late'))}"  # noqa: E731
  return [
    row("drop_rocks", rd, f"{pct(rd)} ({moved('rocks')}{since})", why or _small(p, "rocks")),
    row("drop_high_kl", hd, f"{pct(hd)} ({moved('high_kl')})", why or _small(p, "high_kl")),
    row(
      "drop_contrast",
      contrast,
      f"{_yes(contrast)} ({pct(rd)} vs {pct(hd)})",
      why or _small(p, "rocks", "high_kl"),
    ),
  ]


def _yes(flag: bool | None) -> str:
  return "n/a" if flag is None else ("yes" if flag else "no")


def _less(a: Any, b: Any) -> bool | None:
  return None if a is None or b is None else a < b


def geometry_rows(g: dict[str, Any]) -> list[dict[str, Any]]:
  """Norm and cosine contrasts between the groups, and the rocks' gradient-norm share."""
  why = g.get("skipped") or ""
  nr, nh = g.get("rocks_median_norm"), g.get("high_kl_median_norm")
  cr, ch, cx = (g.get(f"{n}_median_cos") for n in ("rocks", "high_kl", "random"))
  gs, ts = g.get("rock_grad_norm_share"), g.get("rock_token_share")
  rows = [
    ("norm_contrast", _less(nr, nh), f"({_num(nr)} vs {_num(nh)})", ("rocks", "high_kl")),
    ("cos_rocks", _less(ch, cr), f"({_num(cr)} vs {_num(ch)})", ("rocks", "high_kl")),
    ("cos_high_kl", _less(cx, ch), f"({_num(ch)} vs {_num(cx)})", ("high_kl", "random")),
    ("grad_share", _less(ts, gs), f"({pct(gs)} of the norm on {pct(ts)} of the tokens)", ()),
  ]
  return [
    row(key, ours, f"{_yes(ours)} {text}", why or _small(g, *names))
    for key, ours, text, names in rows
  ]


def knockout_rows(k: dict[str, Any]) -> list[dict[str, Any]]:
  """Pillar share (against the paper's figure for the same decoding), Stumbling Blocks,
  Bonferroni survivors and the sign test."""
  n = k.get("num_candidates") or 0
  why = k.get("skipped") or ("" if n else "no candidates")
  pillars, blocks = k.get("num_strong_pillar"), k.get("num_strong_stumbling_block")
  bonf = k.get("significant_bonferroni")
  ref = "pillars_greedy" if k.get("decoding") == "greedy" else "pillars_sampled"
  share = pillars / n if n and pillars is not None else None
  neg, pos, p = k.get("sign_negative"), k.get("sign_positive"), k.get("sign_p")
  lean = None if p is None else bool(p < k.get("alpha", 0.05) and neg > pos)
  return [
    row(ref, share, f"{pct(share)} ({pillars} of {n}, {k.get('decoding')})", why),
    row("stumbling", blocks, f"{blocks} of {n}", why),
    row("bonferroni", bonf, f"{bonf} of {n}", why),
    row("sign_test", lean, f"{_yes(lean)} ({neg} negative, {pos} positive, p = {_num(p)})", why),
  ]


def training_rows(t: dict[str, Any]) -> list[dict[str, Any]]:
  """The main stage's last pass@1: never comparable (another evaluation set and models)."""
  x = t.get("main_pass_at_1")
  text = f"{pct(x)} (step {t.get('main_last_step')})"
  why = "the run's own evaluation set and models, not AIME24/AIME25/HMMT25 with Qwen3"
  return [row("pass_at_1", x, text, why)]


# Section key -> the rows it gives (selection needs two sections, handled apart).
_ROWS = {
  "persistence": persistence_rows,
  "geometry": geometry_rows,
  "knockout": knockout_rows,
  "training": training_rows,
}


def collect_warnings(sections: Sequence[Section]) -> list[str]:
  """Every section's warnings, each once, prefixed with the titles of the sections that gave it."""
  by_text: dict[str, list[str]] = {}
  for s in sections:
    for w in s.warnings:
      by_text.setdefault(w, []).append(s.title)
  return [f"({', '.join(titles)}) {w}" for w, titles in by_text.items()]


def findings_numbers(sections: Sequence[Section]) -> dict[str, Any]:
  """The rows (report order) and warnings of the Findings, with counts per verdict."""
  by_key = {s.key: s.numbers for s in sections}
  rows = []
  if "rocks" in by_key and "stability" in by_key:
    rows += selection_rows(by_key["rocks"], by_key["stability"])
  for key, make in _ROWS.items():
    if key in by_key:
      rows += make(by_key[key])
  status = [r["status"] for r in rows]
  return {
    "rows": rows,
    "warnings": collect_warnings(sections),
    "num_agrees": status.count("agrees"),
    "num_differs": status.count("differs"),
    "num_not_comparable": status.count("not comparable"),
  }


def section(sections: Sequence[Section]) -> Section:
  """The Findings section, for the top of the report (no figures)."""
  numbers = findings_numbers(sections)
  lines = [
    "Each line: what we measured on this run, the paper's figure for it, and whether they "
    "agree (the paper's numbers, their sources and the rules: rockjax/analysis/"
    "paper_reference.py; each line's source is in report.json). {num_agrees} agree, "
    "{num_differs} differ, {num_not_comparable} not comparable.",
    "",
    *(
      f"- {{rows[{i}][what]}}: ours {{rows[{i}][ours_text]}}; paper {{rows[{i}][paper_text]}}"
      f" -> **{{rows[{i}][verdict]}}**"
      for i in range(len(numbers["rows"]))
    ),
  ]
  if numbers["warnings"]:
    lines += ["", "Warnings (also under the sections concerned):", ""]
    lines += [f"- {{warnings[{i}]}}" for i in range(len(numbers["warnings"]))]
  return Section(
    title="Findings", key="findings", numbers=numbers, figures=(), text="\n".join(lines)
  )
