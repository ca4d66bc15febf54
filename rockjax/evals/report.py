"""The evaluation's files: eval.json, eval.md and responses.jsonl; the side-by-side comparison.

    summary = summarise(results, settings=..., macro=('aime24', 'aime25', 'hmmt25_feb'))
    write(out_dir, summary, responses)        # eval.json, eval.md, responses.jsonl
    compare(['runs/original/eval', 'runs/rock_freeze/eval'], out_dir)  # compare.json / .md

eval.json holds every figure of eval.md plus each problem's per-sample correctness, so a
comparison pairs runs problem by problem (by id) without decoding again. Percentages are for
the Markdown; the JSON keeps fractions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from rockjax import errors
from rockjax.evals import scores

EVAL_JSON, EVAL_MD, RESPONSES = "eval.json", "eval.md", "responses.jsonl"
COMPARE_JSON, COMPARE_MD = "compare.json", "compare.md"
PAPER_MACRO = ("aime24", "aime25", "hmmt25_feb")  # the paper's headline average


def _benchmark_entry(name: str, result: dict[str, Any], ids: Sequence[str], path: str):
  """One benchmark's JSON entry: its score, counts and per-problem correctness."""
  correct_PxN = result["correct_PxN"]
  return dict(
    file=path,
    **scores.benchmark_score(correct_PxN),
    num_truncated=result["num_truncated"],
    mean_response_tokens=result["mean_response_tokens"],
    ifeval=result["ifeval"],
    problems=[
      dict(id=pid, correct=[bool(x) for x in row], accuracy=float(np.mean(row)))
      for pid, row in zip(ids, correct_PxN)
    ],
  )


def summarise(
  results: dict[str, dict[str, Any]],
  *,
  ids: dict[str, Sequence[str]],
  paths: dict[str, str],
  settings: dict[str, Any],
  macro: Sequence[str],
) -> dict[str, Any]:
  """The eval.json content: settings, each benchmark's entry and the macro average over the
  `macro` benchmarks that ran (None when none of them did)."""
  benchmarks = {n: _benchmark_entry(n, r, ids[n], paths[n]) for n, r in results.items()}
  present = [n for n in macro if n in benchmarks]
  average = scores.macro_score([benchmarks[n] for n in present]) if present else None
  if average is not None:
    average["benchmarks"] = present
    average["complete"] = len(present) == len(macro)
  return dict(settings=settings, benchmarks=benchmarks, macro=average)


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def markdown(summary: dict[str, Any]) -> str:
  """eval.md: one row per benchmark (pass@1 %, 95% interval), the macro average, IFEval's four."""
  s = summary["settings"]
  lines = [
    "# Evaluation",
    "",
    f"Student: {s['student']}. {s['num_samples']} samples per problem at temperature "
    f"{s['temperature']} (top_p {s['top_p']}), up to {s['max_new_tokens']} new tokens, "
    f"prompt template {s['prompt_template']!r}, seed {s['seed']}, batch {s['batch_size']}.",
    "",
    "| benchmark | problems | pass@1 (%) | 95% interval | truncated responses |",
    "|---|---|---|---|---|",
  ]
  for name, b in summary["benchmarks"].items():
    lines.append(
      f"| {name} | {b['num_problems']} | {_pct(b['pass_at_1'])} | "
      f"[{_pct(b['ci_low'])}, {_pct(b['ci_high'])}] | {b['num_truncated']} |"
    )
  m = summary["macro"]
  if m is not None:
    note = "" if m["complete"] else " (incomplete: not every benchmark of the average ran)"
    lines.append(
      f"| **average of {', '.join(m['benchmarks'])}**{note} | | **{_pct(m['pass_at_1'])}** | "
      f"[{_pct(m['ci_low'])}, {_pct(m['ci_high'])}] | |"
    )
  ife = summary["benchmarks"].get("ifeval", {}).get("ifeval")
  if ife:
    lines += ["", "IFEval (%): " + ", ".join(f"{k} {_pct(v)}" for k, v in ife.items())]
  lines += [
    "",
    "pass@1: each problem's accuracy over its samples, averaged over problems; the interval is "
    "a t interval over problems. The average weighs each benchmark equally (normal interval).",
  ]
  return "\n".join(lines) + "\n"


def write(out_dir: str, summary: dict[str, Any], responses: Sequence[dict[str, Any]]) -> dict:
  """Writes eval.json, eval.md and responses.jsonl into out_dir; {name: path}."""
  root = epath.Path(out_dir)
  root.mkdir(parents=True, exist_ok=True)
  paths = {n: root / n for n in (EVAL_JSON, EVAL_MD, RESPONSES)}
  paths[EVAL_JSON].write_text(json.dumps(summary, indent=1) + "\n")
  paths[EVAL_MD].write_text(markdown(summary))
  paths[RESPONSES].write_text("".join(json.dumps(r) + "\n" for r in responses))
  return {n: str(p) for n, p in paths.items()}


def read_summary(run_dir: str) -> dict[str, Any]:
  """A run's eval.json (the directory or the file itself); one-line InputError otherwise."""
  path = epath.Path(run_dir)
  path = path if path.name == EVAL_JSON else path / EVAL_JSON
  try:
    return json.loads(path.read_text())
  except FileNotFoundError as e:
    raise errors.InputError(f"--compare: {path}: no such file (run rockjax.evaluate first)") from e
  except ValueError as e:
    raise errors.InputError(f"--compare: {path}: invalid JSON ({e})") from e


def _paired(ref: dict, other: dict, name: str, alpha: float, resamples: int) -> dict | None:
  """other - ref on benchmark `name` over the problems both ran, or None if not both ran it."""
  if name not in ref["benchmarks"] or name not in other["benchmarks"]:
    return None
  a, b = other["benchmarks"][name]["problems"], ref["benchmarks"][name]["problems"]
  try:
    return scores.paired_comparison(
      [p["id"] for p in a],
      [p["accuracy"] for p in a],
      [p["id"] for p in b],
      [p["accuracy"] for p in b],
      alpha=alpha,
      resamples=resamples,
    )
  except ValueError:
    return None


def compare(
  run_dirs: Sequence[str], *, alpha: float = 0.05, resamples: int = 10_000
) -> dict[str, Any]:
  """Runs side by side; each run after the first is paired with the first on every benchmark
  both ran (delta = run - first, paired bootstrap over the shared problems)."""
  if len(run_dirs) < 2:
    raise errors.InputError(f"--compare needs at least two eval directories, got {len(run_dirs)}")
  runs = [read_summary(d) for d in run_dirs]
  names = list(dict.fromkeys(n for r in runs for n in r["benchmarks"]))
  table = {
    n: [None if n not in r["benchmarks"] else r["benchmarks"][n]["pass_at_1"] for r in runs]
    for n in names
  }
  paired = [{n: _paired(runs[0], r, n, alpha, resamples) for n in names} for r in runs[1:]]
  macro = [None if r.get("macro") is None else r["macro"]["pass_at_1"] for r in runs]
  return dict(runs=list(run_dirs), pass_at_1=table, macro=macro, paired=paired, alpha=alpha)


def compare_markdown(result: dict[str, Any], labels: Sequence[str]) -> str:
  """compare.md: pass@1 (%) per benchmark and run, then each run's paired delta vs the first."""
  head = "| benchmark | " + " | ".join(labels) + " |"
  lines = ["# Comparison", "", head, "|---" * (len(labels) + 1) + "|"]
  for name, row in result["pass_at_1"].items():
    lines.append(f"| {name} | " + " | ".join(_pct(x) for x in row) + " |")
  lines.append("| **macro average** | " + " | ".join(_pct(x) for x in result["macro"]) + " |")
  lines += ["", f"Paired over problems, each run minus {labels[0]} (percentage points):", ""]
  lines += [
    "| run | benchmark | delta | interval | p | better / worse |",
    "|---|---|---|---|---|---|",
  ]
  for label, per in zip(labels[1:], result["paired"]):
    for name, t in per.items():
      if t is not None:
        lines.append(
          f"| {label} | {name} | {100 * t['delta']:+.1f} | "
          f"[{100 * t['ci_low']:+.1f}, {100 * t['ci_high']:+.1f}] | {t['p_value']:.3g} | "
          f"{t['better']} / {t['worse']} |"
        )
  return "\n".join(lines) + "\n"


def write_compare(out_dir: str, result: dict[str, Any], labels: Sequence[str]) -> dict:
  """Writes compare.json and compare.md into out_dir; {name: path}."""
  root = epath.Path(out_dir)
  root.mkdir(parents=True, exist_ok=True)
  (root / COMPARE_JSON).write_text(json.dumps(dict(result, labels=list(labels)), indent=1) + "\n")
  (root / COMPARE_MD).write_text(compare_markdown(result, labels))
  return {n: str(root / n) for n in (COMPARE_JSON, COMPARE_MD)}
