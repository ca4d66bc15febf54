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


def _versus(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any] | None:
  """Pass@1 of two stage records on the same prompts, paired prompt by prompt (a bootstrap)."""
  if not (after and before and after["eval_correct"] and before["eval_correct"]):
    return None
  if len(after["eval_correct"]) != len(before["eval_correct"]):
    return None
  # Per-prompt accuracy (mean over samples), paired prompt by prompt across stages.
  a, b = (np.mean(r["eval_correct"], axis=1) for r in (after, before))
  return {
    "before": evaluation.mean_pass_at_1(before["eval_correct"]),
    "after": evaluation.mean_pass_at_1(after["eval_correct"]),
    "num_prompts": len(a),
    **evaluation.paired_bootstrap(a, b),
  }


def make_summary(
  records: list[dict[str, Any]],
  root: epath.Path,
  analysis_report: str | None = None,
  reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Per-stage results, the OPD effect with a paired bootstrap, and where the outputs are.

  reference: the main-stage record of the workdir this run reused stages from (pipeline.reuse):
  the summary also compares this run's main stage with it (e.g. Rock-Freeze vs Original OPD).
  """
  by_name = {r["stage"]: r for r in records}
  effect = None
  teacher, before, after = (by_name.get(n) for n in ("teacher_sft", "student_kd", "main"))
  effect = _versus(after, before)
  if effect:
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
  versus = _versus(after, reference) if reference else None
  if versus:
    versus |= {"workdir": str(epath.Path(reference["workdir"])), "rock": reference.get("rock")}
  return {
    "complete": True,
    "stages": records,
    "effect": effect,
    "versus_reused": versus,
    "outputs": outputs,
  }


# The main stage's frozen (weight < 1) rock positions carrying more than this share of its
# per-token loss at the end of training get a warning in the summary: the run trained on little.
FROZEN_SHARE_WARNING = 0.5


def rock_setting(config: Any) -> dict[str, Any]:
  """What a stage did with rocks: rock.mode, rock.lam and the list (a file, or top-k by what)."""
  r = config.rock
  ids = r.list_path if r.mode == "static" else f"top-{r.k} by {r.selector}, {r.window} window"
  return {"mode": r.mode, "lam": float(r.lam), "ids": ids}


def rock_lines(record: dict[str, Any]) -> list[str]:
  """The summary's line on the main stage's rock setting, and a warning when frozen rock ids
  carry most of its loss (rock/share_kl: the rock positions' share of the per-token loss)."""
  rock = record.get("rock")
  if not rock or rock["mode"] == "off":
    return ["rocks: tracked only (rock.mode='off'): every position trained at full weight"]
  action = "frozen (no gradient)" if rock["lam"] == 0 else f"weighted {rock['lam']:g}"
  lines = [
    f"rocks: rock.mode={rock['mode']!r}, rock.lam={rock['lam']:g} ({rock['ids']}): "
    f"rock positions {action}"
  ]
  share = record["metrics"].get("rock/share_kl")
  if rock["lam"] < 1 and share is not None and share > FROZEN_SHARE_WARNING:
    lost = "dropped" if rock["lam"] == 0 else "down-weighted"
    lines.append(
      f"WARNING: the rock ids carried {100 * share:.0f}% of the per-token loss in the last logged "
      f"steps and were {action}: most of the training signal was {lost}; compare pass@1 with "
      f"a rock.mode='off' run"
    )
  return lines


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
    resumed = f" (reused from {r['reused_from']})" if r.get("reused_from") else resumed
    lines.append(
      f"{title:<20} {r['steps']:>6}  {tracked:<24} {m.get('opd/loss', 0.0):>8.4f}  "
      f"{p1:>7} {n:>7}  {_minutes(r['seconds']):>9}{resumed}"
    )
  main = [r for r in summary["stages"] if r["stage"] == "main"]
  lines += rock_lines(main[0]) if main else []
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
  v = summary.get("versus_reused")
  if v:
    mode = (v.get("rock") or {}).get("mode", "?")
    lines.append(
      f"vs the main stage of {v['workdir']} (rock.mode={mode!r}), on the same prompts: "
      f"{v['before']:.3f} -> {v['after']:.3f} ({v['delta']:+.3f}, 95% CI [{v['ci_low']:+.3f}, "
      f"{v['ci_high']:+.3f}], p={v['p_value']:.4f})"
    )
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
