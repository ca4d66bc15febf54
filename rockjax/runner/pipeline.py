"""A run as stages: teacher SFT -> HF export -> stage-1 KD -> HF export -> main stage
(-> HF export with ckpt.export_hf) -> summary.

`teacher.source='sft'` and `model.source='kd'` ask for preliminary stages that train that model
first (in WORKDIR/teacher_sft and WORKDIR/student_kd) and export it as a Hugging Face checkpoint;
the next stage loads the export through the same path real checkpoints take. The main stage
(OPD, or KD/SFT in off-policy mode) trains in WORKDIR itself.

Each stage is marked complete (`stage.json`, after its export) only after its last step; a
stage without that mark resumes from its own checkpoints. SIGTERM or Ctrl-C stops the stage
after a checkpoint and raises errors.Interrupted: no later stage starts. The workdir records
the resolved config (`config.json`); a run whose config differs is refused unless allowed.
"""

import json
from typing import Any

import jax
import ml_collections
from etils import epath

from rockjax import errors
from rockjax.analysis import run as analysis_run
from rockjax.config import check as config_check
from rockjax.config import run_length, settings
from rockjax.data.paths import task_files
from rockjax.runner import export, loop, preflight
from rockjax.runner.stages import STAGE_FILE, Stage, plan, reused_main_record
from rockjax.runner.summary import (
  SUMMARY_FILE,
  final_table_text,
  format_summary,
  make_summary,
  rock_setting,
)
from rockjax.runner.workdir import prepare_workdir, undo_failed_start, write_json


def _export(stage: Stage, result: loop.RunResult) -> None:
  """Write the stage's trained model and tokenizer as its HF directory (rockjax.runner.export's
  writer: hf.tmp renamed to hf). The stage counts as complete only once stage.json is written,
  after this returns: a run stopped in between exports again from the stage's last checkpoint.
  """
  state = result.state
  export.write_export(
    stage.config, state.graphdef, state.params, result.experiment.tokenizer, stage.export
  )


def _export_if_missing(stage: Stage) -> bool:
  """Export a completed stage whose export is asked for but missing (ckpt.export_hf turned on
  after its run, or the directory deleted) from its last checkpoint, without training; whether
  it did. Its stage.json then names the export; until it does, the export is redone.
  """
  done = stage.workdir / STAGE_FILE
  if stage.export is None or stage.reused_from or not done.exists():
    return False
  record = json.loads(done.read_text())
  if record.get("export") and stage.export.exists():  # (a moved workdir records its old path)
    return False
  step = int(record["steps"])
  if step not in export.checkpoint_steps(stage):
    raise errors.WorkdirError(
      f"stage {stage.name} completed but its last checkpoint (step {step}) is gone from "
      f"{stage.workdir / 'ckpt'}: it cannot be exported to {stage.export}"
    )
  if jax.process_index() == 0:
    print(
      f"{stage.name}: exporting its last checkpoint (step {step}) to {stage.export}", flush=True
    )
  export.export_checkpoint(stage, step, stage.export)
  write_json(done, {**record, "export": str(stage.export)})
  return True


def _stage_record(stage: Stage, result: loop.RunResult) -> dict[str, Any]:
  """What a completed stage reports (written to its stage.json)."""
  loss = settings.loss_settings(stage.config)
  correct = result.eval_correct
  return {
    "stage": stage.name,
    "kind": loss.stage,
    "quantity": loss.tracked,
    "steps": int(result.step),
    "metrics": result.metrics,
    "eval_correct": None if correct is None else correct.astype(float).tolist(),
    "seconds": result.seconds,
    "resumed_from": int(result.experiment.start_step),
    "workdir": str(stage.workdir),
    "export": str(stage.export) if stage.export else None,
    "rock": rock_setting(stage.config),
  }


def _run_stage(stage: Stage, profile_steps: tuple[int, int] | None = None) -> dict[str, Any] | None:
  """Train one stage to its end; its record, or None when it stopped early (stop_after).

  profile_steps: loop.run's (a, b) trace of the stage's steps a..b (None: no trace)."""
  result = loop.run(stage.config, str(stage.workdir), profile_steps=profile_steps)
  if result.interrupted:
    raise errors.Interrupted(
      f"{result.interrupted}: stopped in stage {stage.name} at step {result.step}/"
      f"{stage.config.steps} with a checkpoint in {stage.workdir / 'ckpt'}; run the same "
      f"command to resume"
    )
  if not result.completed:
    return None
  if stage.export is not None:
    _export(stage, result)
  record = _stage_record(stage, result)
  write_json(stage.workdir / STAGE_FILE, record)  # the stage is complete from here on
  return record


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
  profile_steps: tuple[int, int] | None = None,
) -> dict[str, Any]:
  """_run, and a start that fails before any progress leaves `workdir` as it was
  (rockjax.runner.workdir.undo_failed_start: no config.json to refuse the fixed command)."""
  with undo_failed_start(workdir):
    return _run(
      config, workdir, allow_config_change=allow_config_change, profile_steps=profile_steps
    )


def _run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
  profile_steps: tuple[int, int] | None = None,
) -> dict[str, Any]:
  """Run every stage the config asks for in `workdir` (skipping completed ones); the summary.

  The whole config is validated first (rockjax.config.check), before anything touches disk;
  `steps` is resolved from data.epochs (rockjax.config.run_length) before the workdir records it.
  profile_steps=(a, b): a jax.profiler trace of the main stage's steps a..b (the first step is
  1) in WORKDIR/profile/ (main --profile_steps); the preliminary stages are not traced.
  """
  config_check.validate(config)
  preflight.check_files(config)  # model/tokenizer directories: no remote code, safetensors
  config, how = run_length.resolve(config)
  if config.data.epochs and jax.process_index() == 0:
    print(f"run length: {how}", flush=True)
  root = prepare_workdir(config, workdir, allow_config_change=allow_config_change)
  stages = plan(config, workdir, task_files(config, workdir))
  records, ran, exported = [], False, False
  for stage in stages:
    if stage.reuse_note and jax.process_index() == 0:
      print(f"{stage.name}: {stage.reuse_note}; training it here", flush=True)
    done = stage.workdir / STAGE_FILE
    exported |= _export_if_missing(stage)  # e.g. ckpt.export_hf turned on after the run
    if done.exists():
      record = json.loads(done.read_text())
      records.append({**record, "reused_from": stage.reused_from} if stage.reused_from else record)
      continue
    ran = True
    record = _run_stage(stage, profile_steps if stage.name == "main" else None)
    if record is None:  # stop_after: a deliberate partial run, no summary yet
      return {"stages": records, "complete": False}
    records.append(record)
  idle = not (ran or exported or _analysis_pending(config, workdir, stages[-1]))
  report = _analysis_stage(config, workdir, stages[-1], ran)
  reference = reused_main_record(config)
  summary = make_summary(records, root, analysis_report=report, reference=reference)
  if ran or exported or not (root / SUMMARY_FILE).exists():
    write_json(root / SUMMARY_FILE, summary)
  if jax.process_index() == 0:
    if idle:  # a re-run of a finished workdir: say so before its summary
      print(f"nothing to do: every stage in {workdir} is complete (summary below)", flush=True)
    print(
      format_summary(summary, rock_table_text=None if ran else final_table_text(root)), flush=True
    )
  return summary


def _analysis_pending(config: ml_collections.ConfigDict, workdir: str, main: Stage) -> bool:
  """Whether _analysis_stage would run the analysis even when no stage trained (no report)."""
  report = epath.Path(workdir) / analysis_run.ANALYSIS_DIR / "report.md"
  return bool(config.analysis.enabled and main.config.data.eval_path and not report.exists())


def _analysis_stage(
  config: ml_collections.ConfigDict, workdir: str, main: Stage, ran: bool
) -> str | None:
  """The last stage (analysis.enabled): the rock analysis report's path, or None.

  Runs after a stage trained, or when the report is missing; a run without an evaluation set
  skips it with a note (the analysis decodes that set).
  """
  if not config.analysis.enabled:
    return None
  report = epath.Path(workdir) / analysis_run.ANALYSIS_DIR / "report.md"
  if not ran and report.exists():
    return str(report)
  if not main.config.data.eval_path:
    if jax.process_index() == 0:
      print("rock analysis skipped: no evaluation set (data.eval_path)", flush=True)
    return None
  return analysis_run.run_analysis(main.config, workdir).get("markdown", str(report))
