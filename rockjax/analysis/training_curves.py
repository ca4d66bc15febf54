"""Training curves from the run's metrics.jsonl files: loss, KL, pass@1 and rock shares.

The pipeline logs one metrics.jsonl per stage: WORKDIR/teacher_sft/ and WORKDIR/student_kd/
for the preliminary stages a config may have (rockjax.runner.stages), WORKDIR/ for the main
one. Each line is {"step": n, "<key>": value, ...}; training lines carry opd/loss, opd/kl
(the stage's divergence, named by its stage.json 'quantity') and the rock/share_* metrics,
evaluation lines eval/pass@1. `section(workdir, out_dir)` plots them (training_curves.png) and
tabulates each stage's first and last values; a missing file, a missing key or an unreadable
line is said in the section, never an error.

Shape letters: T logged steps.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from etils import epath

from rockjax.analysis import plotting, report

FIGURE = "training_curves.png"
METRICS_FILE = "metrics.jsonl"
STAGE_FILE = "stage.json"
# (stage name, subdirectory of WORKDIR): the preliminary stages first, as the pipeline runs them.
STAGES = (("teacher_sft", "teacher_sft"), ("student_kd", "student_kd"), ("main", ""))
# Report name -> metrics.jsonl key.
SERIES = {
  "loss": "opd/loss",
  "kl": "opd/kl",
  "pass_at_1": "eval/pass@1",
  "share_kl": "rock/share_kl",
  "share_tokens": "rock/share_tokens",
  "share_grad_norm": "rock/share_grad_norm",
}
SHARES = ("share_kl", "share_tokens", "share_grad_norm")
STAGE_COLOURS = {"teacher_sft": "tab:green", "student_kd": "tab:orange", "main": "tab:blue"}


def read_metrics(path: epath.Path) -> tuple[list[dict[str, Any]], int] | None:
  """(records, unreadable lines) of a metrics.jsonl; None when the file does not exist."""
  if not path.exists():
    return None
  records, bad = [], 0
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except ValueError:
      bad += 1
      continue
    if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
      records.append(rec)
    else:
      bad += 1
  return records, bad


def series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps `[T]`, values `[T]`) of one key: finite numbers only, in step order."""
  pairs = sorted(
    (float(r["step"]), float(r[key]))
    for r in records
    if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
  )
  return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _quantity(stage_dir: epath.Path) -> str | None:
  try:
    return json.loads((stage_dir / STAGE_FILE).read_text()).get("quantity")
  except (OSError, ValueError):
    return None


def load_stages(workdir: str) -> list[dict[str, Any]]:
  """Per stage of STAGES: name, path, found, quantity, unreadable lines and its SERIES."""
  out = []
  for name, sub in STAGES:
    stage_dir = epath.Path(workdir) / sub if sub else epath.Path(workdir)
    read = read_metrics(stage_dir / METRICS_FILE)
    records, bad = read if read is not None else ([], 0)
    out.append(
      {
        "name": name,
        "path": str(stage_dir / METRICS_FILE),
        "found": read is not None,
        "quantity": _quantity(stage_dir),
        "bad_lines": bad,
        "series": {k: series(records, key) for k, key in SERIES.items()},
      }
    )
  return out


def _r(x: float) -> float:
  return float(f"{float(x):.4g}")


def stage_numbers(stage: dict[str, Any]) -> dict[str, Any]:
  """A stage's row: steps logged, first/last loss and KL, last pass@1 and shares, missing keys."""
  s = stage["series"]
  first = lambda k: _r(s[k][1][0]) if s[k][1].size else None  # noqa: E731
  last = lambda k: _r(s[k][1][-1]) if s[k][1].size else None  # noqa: E731
  steps = sorted({float(t) for k in SERIES for t in s[k][0]})
  return {
    "name": stage["name"],
    "path": stage["path"],
    "found": stage["found"],
    "quantity": stage["quantity"] or "divergence",
    "bad_lines": stage["bad_lines"],
    "steps_logged": len(steps),
    "last_step": int(steps[-1]) if steps else None,
    "first_loss": first("loss"),
    "last_loss": last("loss"),
    "first_kl": first("kl"),
    "last_kl": last("kl"),
    **{f"last_{k}": last(k) for k in ("pass_at_1", *SHARES)},
    "missing_text": ", ".join(SERIES[k] for k in SERIES if not s[k][1].size),
    "curves": {k: {"step": s[k][0].tolist(), "value": s[k][1].tolist()} for k in SERIES},
  }


def _panel(ax, stages, key: str, title: str, ylabel: str, log: bool) -> None:
  """One metric, one line per stage that logged it."""
  for st in stages:
    steps, values = st["series"][key]
    keep = values > 0 if log else np.isfinite(values)
    if keep.any():
      label = st["name"] + (f" ({st['quantity']})" if key == "kl" and st["quantity"] else "")
      ax.plot(steps[keep], values[keep], "o-" if keep.sum() < 4 else "-", ms=4,
              color=STAGE_COLOURS[st["name"]], label=label)  # fmt: skip
  if log:
    ax.set_yscale("log")
  ax.set_title(title, fontsize=10)
  ax.set_xlabel("training step (within the stage)")
  ax.set_ylabel(ylabel)
  if ax.lines:
    ax.legend(fontsize=7)
  else:
    ax.text(0.5, 0.5, "not logged", ha="center", transform=ax.transAxes, color="0.4")


def curves_figure(stages: list[dict[str, Any]]):
  """2 x 2 panels: loss, KL (log scales), eval pass@1 and the rock shares (percent)."""
  found = [st for st in stages if st["found"]]
  title = "Training curves: " + ", ".join(st["name"] for st in found)
  fig, axes = plotting.new_figure(title, (12, 8.5), ncols=2, nrows=2)
  _panel(axes[0, 0], found, "loss", "Training loss", "loss (nats/token, log scale)", True)
  kl_title = "The stage's divergence, opd/kl (legend: its quantity)"
  _panel(axes[0, 1], found, "kl", kl_title, "opd/kl (nats/token, log scale)", True)
  _panel(axes[1, 0], found, "pass_at_1", "Evaluation pass@1", "pass@1 (%)", False)
  plotting.percent_axis(axes[1, 0])
  ax = axes[1, 1]
  styles = {"teacher_sft": ":", "student_kd": "--", "main": "-"}
  for st in found:
    for colour, k in zip(("tab:red", "tab:purple", "tab:brown"), SHARES):
      steps, values = st["series"][k]
      if values.size:
        ax.plot(steps, values, styles[st["name"]], color=colour, linewidth=1.2,
                label=f"{k.replace('share_', '')} ({st['name']})")  # fmt: skip
  ax.set_title("Rock shares (KL, tokens, gradient norm)", fontsize=10)
  ax.set_xlabel("training step (within the stage)")
  ax.set_ylabel("share on rock tokens (%)")
  ax.set_ylim(0, 1.02)
  plotting.percent_axis(ax)
  if ax.lines:
    ax.legend(fontsize=6, ncol=2)
  return fig


def _row(i: int) -> str:
  """A found stage's table row, placeholders into numbers['stages'][i]."""
  s = f"stages[{i}]"
  shares = " / ".join(f"{{{s}[last_{k}]:.1%}}" for k in SHARES)
  return (
    f"| {{{s}[name]}} | {{{s}[steps_logged]}} ({{{s}[last_step]}}) | {{{s}[first_loss]}} -> "
    f"{{{s}[last_loss]}} | {{{s}[quantity]}}: {{{s}[first_kl]}} -> {{{s}[last_kl]}} | "
    f"{{{s}[last_pass_at_1]:.1%}} | {shares} |"
  )


def _notes(rows: list[dict[str, Any]]) -> list[str]:
  """Lines for files not found, keys not logged and unreadable lines."""
  out = []
  for i, row in enumerate(rows):
    s = f"stages[{i}]"
    if not row["found"]:
      out.append(f"- {{{s}[name]}}: no {{{s}[path]}} (stage not run, or not logged).")
      continue
    if row["missing_text"]:
      out.append(f"- {{{s}[name]}}: not logged: {{{s}[missing_text]}}.")
    if row["bad_lines"]:
      out.append(f"- {{{s}[name]}}: {{{s}[bad_lines]}} unreadable line(s) skipped.")
  return out


def section(workdir: str, out_dir: str) -> report.Section:
  """The training-curves section; saves training_curves.png when any stage logged metrics."""
  stages = load_stages(workdir)
  rows = [stage_numbers(st) for st in stages]
  main = next(r for r in rows if r["name"] == "main")
  numbers = {"stages": rows, "main_pass_at_1": main["last_pass_at_1"]}
  numbers["main_last_step"] = main["last_step"]
  table = [_row(i) for i, r in enumerate(rows) if r["found"]]
  notes = _notes(rows)
  if not table:
    text = "No metrics.jsonl was found for any stage of {workdir}:\n\n" + "\n".join(notes)
    numbers["workdir"] = str(workdir)
    return report.Section("Training curves", "training", numbers, (), text)
  text = "\n".join(
    [
      "From each stage's metrics.jsonl (loss and KL in nats per token; pass@1 at the stage's "
      "evaluations; rock shares of the rocks tracked during training, rocks.json's selection).",
      "",
      "| stage | steps logged (last) | loss, first -> last | divergence, first -> last | "
      "last pass@1 | last rock share of KL / tokens / grad norm |",
      "|---|---|---|---|---|---|",
      *table,
      *([""] + notes if notes else []),
    ]
  )
  report.save_figure(curves_figure(stages), out_dir, FIGURE)
  caption = (
    "Training curves per stage (x: step within the stage): loss and the stage's divergence "
    "(opd/kl: cross-entropy for the teacher's SFT, the KL to the teacher for the students; log "
    "scales), evaluation pass@1, and the rock shares of KL, tokens and gradient norm "
    "(line style per stage)."
  )
  return report.Section(
    "Training curves", "training", numbers, (report.Figure(FIGURE, caption),), text
  )
