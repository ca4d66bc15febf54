"""The end-of-run summary: per-stage results, the OPD effect with its paired statistics, where
every output is (make_summary), and its printed form (format_summary)."""

import json
from typing import Any

import numpy as np
from etils import epath

from rockjax import evaluation
from rockjax.rocks import table as rock_table
from rockjax.rocks.table import STAGE_NAMES, quantity_title

CONFIG_FILE = "config.json"  # a workdir's recorded config (rockjax.runner.pipeline writes it)
SUMMARY_FILE = "summary.json"


def make_summary(
  records: list[dict[str, Any]], root: epath.Path, analysis_report: str | None = None
) -> dict[str, Any]:
  """Per-stage results, the OPD effect with a paired bootstrap, and where the outputs are."""
  by_name = {r["stage"]: r for r in records}
  effect = None
  teacher, before, after = (by_name.get(n) for n in ("teacher_sft", "student_kd", "main"))
  if before and after and before["eval_correct"] and after["eval_correct"]:
    # Per-prompt accuracy (mean over samples), paired prompt by prompt across stages.
    a, b = (np.mean(r["eval_correct"], axis=1) for r in (after, before))
    effect = {
      "before": evaluation.mean_pass_at_1(before["eval_correct"]),
      "after": evaluation.mean_pass_at_1(after["eval_correct"]),
      "num_prompts": len(a),
      **evaluation.paired_bootstrap(a, b),
    }
    if teacher and teacher["eval_correct"]:
      effect["teacher"] = evaluation.mean_pass_at_1(teacher["eval_correct"])
      gap = effect["teacher"] - effect["before"]
      effect["gap_closed"] = (effect["after"] - effect["before"]) / gap if gap > 0 else None
  dirs = [r["workdir"] for r in records]
  outputs = {
    "workdir": str(root),
    "config": str(root / CONFIG_FILE),
    "summary": str(root / SUMMARY_FILE),
    "checkpoints": [f"{d}/ckpt" for d in dirs],
    "hf_exports": [r["export"] for r in records if r["export"]],
    "metrics": [f"{d}/metrics.jsonl" for d in dirs],
    "tensorboard": [f"{d}/tb" for d in dirs],
    "rock_tables": [f"{d}/rocks.json" for d in dirs],
    "analysis_report": analysis_report,  # rockjax.analysis report.md (None: not run)
  }
  return {"complete": True, "stages": records, "effect": effect, "outputs": outputs}


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def format_summary(summary: dict[str, Any], rock_table_text: str | None = None) -> str:
  """The end-of-run report a person reads: one line per stage, the effect, the outputs."""
  lines = [
    "",
    "=== rockjax run summary ===",
    f"{'stage':<20} {'steps':>6}  {'final per-token loss':<24} {'loss':>8}  "
    f"{'pass@1':>7} {'prompts':>7}  {'wall':>9}",
  ]
  for r in summary["stages"]:
    title = STAGE_NAMES[r["kind"]]
    m = r["metrics"]
    tracked = f"{quantity_title(r['quantity'])} {m.get('opd/kl', float('nan')):.4f}"
    n = len(r["eval_correct"]) if r["eval_correct"] else 0
    p1 = f"{m['eval/pass@1']:.3f}" if "eval/pass@1" in m else "-"
    resumed = " (resumed)" if r["resumed_from"] else ""
    lines.append(
      f"{title:<20} {r['steps']:>6}  {tracked:<24} {m.get('opd/loss', 0.0):>8.4f}  "
      f"{p1:>7} {n:>7}  {_minutes(r['seconds']):>9}{resumed}"
    )
  e = summary["effect"]
  if e:
    line = (
      f"OPD effect on greedy pass@1: {e['before']:.3f} -> {e['after']:.3f} "
      f"({e['delta']:+.3f}, 95% CI [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}] by paired "
      f"bootstrap, p={e['p_value']:.4f} by paired permutation test, over {e['num_prompts']} "
      f"held-out prompts)"
    )
    if e.get("gap_closed") is not None:
      line += (
        f"; teacher {e['teacher']:.3f}: OPD closed {100 * e['gap_closed']:.0f}% of the "
        f"teacher-student gap"
      )
    lines.append(line)
  o = summary["outputs"]
  lines += [
    "outputs:",
    f"  checkpoints   {', '.join(o['checkpoints'])}",
    *([f"  HF exports    {', '.join(o['hf_exports'])}"] if o["hf_exports"] else []),
    f"  metrics       {', '.join(o['metrics'])} (TensorBoard: the tb/ beside each)",
    f"  rock tables   {', '.join(o['rock_tables'])}",
    *([f"  rock analysis {o['analysis_report']}"] if o.get("analysis_report") else []),
    f"  config        {o['config']}",
    f"  summary       {o['summary']}",
  ]
  if rock_table_text:
    lines = [rock_table_text] + lines
  return "\n".join(lines)


def final_table_text(root: epath.Path) -> str | None:
  """The main stage's rock table, re-rendered from its rocks.json (for a re-run)."""
  path = root / "rocks.json"
  return rock_table.format_table(json.loads(path.read_text()), limit=10) if path.exists() else None
