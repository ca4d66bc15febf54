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

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from rockjax import (
  config_check,
  errors,
  preflight,
  run_length,
  settings,
  storage,
  train,
)
from rockjax.experiment import task_files
from rockjax.summary import (
  CONFIG_FILE,
  SUMMARY_FILE,
  final_table_text,
  format_summary,
  make_summary,
)

STAGE_FILE = "stage.json"  # written when a stage has completed (and been exported)
EXPORT_DIR = "export_hf"  # the main stage's HF export (ckpt.export_hf)
# Fields that may change between runs in one workdir: they do not change what is computed
# (the attention implementations agree to float rounding; prefixes cover attention_block;
# mlp_chunk only changes how the MLP is tiled; rollout_sharding and rollout_tensor only where
# the sampling copy lives, its tokens equal to float rounding).
RESUMABLE_FIELDS = (
  "stop_after",
  "log_every",
  "mesh.",
  "model.attention",
  "teacher.attention",
  "model.mlp_chunk",
  "teacher.mlp_chunk",
  "analysis.",  # the analysis reads the trained models; it changes nothing they compute
  "opd.rollout_sharding",
  "opd.rollout_tensor",
  "preflight.",  # checks before step 1; they change nothing the run computes
)
_PRE_STAGES = {"teacher": "teacher_sft", "model": "student_kd"}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of the pipeline."""

  name: str  # 'teacher_sft' | 'student_kd' | 'main'
  config: ml_collections.ConfigDict  # what rockjax.train.run trains with
  workdir: epath.Path
  export: epath.Path | None  # HF directory written after the last step (None: no export)


def _unlocked_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config.to_dict())


def _pre_stage(c: ml_collections.ConfigDict, workdir: epath.Path, role: str) -> Stage:
  """The preliminary off-policy stage that trains config group `role` ('teacher' | 'model')."""
  name = _PRE_STAGES[role]
  group = c[role]
  s = _unlocked_copy(c)
  s.model = _unlocked_copy(group)
  s.model.source, s.model.path = "random", ""
  if role == "teacher":  # SFT on the task's worked solutions: no teacher
    s.teacher.source, s.teacher.path, s.opd.kd_ratio = "none", "", 0.0
  else:  # the paper's stage 1: kd_ratio * forward KL + (1 - kd_ratio) * CE from the teacher
    s.opd.kd_ratio = group.stage_kd_ratio
  s.opd.mode, s.rock.mode = "off_policy", "off"
  s.opd.updates_per_rollout = 1  # an OPD choice: the stage's batches are one update each
  s.steps, s.opt.lr, s.stop_after = group.stage_steps, group.stage_lr, 0
  s.data.epochs, s.ckpt.export_hf = 0.0, False  # its length is stage_steps; it exports to hf/
  s.eval.every = group.stage_steps if c.eval.every else 0  # pass@1 once, at the stage's end
  s.ckpt.resume = ""
  stage_dir = workdir / name
  return Stage(name, s, stage_dir, stage_dir / "hf")


def plan(
  config: ml_collections.ConfigDict, workdir: str, data_paths: dict[str, str]
) -> list[Stage]:
  """The stages a config asks for, each with the config it trains with (nothing is run)."""
  root = epath.Path(workdir)
  c = _unlocked_copy(config)
  c.data.train_path, c.data.eval_path = data_paths["train"], data_paths["eval"] or ""
  c.data.tokenizer_path = data_paths["tokenizer"]
  stages = []
  for role in ("teacher", "model"):  # the teacher first: stage-1 KD learns from its export
    if c[role].source in ("sft", "kd"):
      stage = _pre_stage(c, root, role)
      stages.append(stage)
      c[role].source, c[role].path = "hf", str(stage.export)
  # ckpt.export_hf: the main stage's student, exported like a preliminary stage's model.
  stages.append(Stage("main", c, root, root / EXPORT_DIR if c.ckpt.export_hf else None))
  return stages


def _flat(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """{'group.field': value} with JSON-normalised values (tuples become lists)."""
  d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  out = {}
  for key, value in json.loads(json.dumps(d)).items():
    if isinstance(value, dict):
      out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
    else:
      out[key] = value
  return out


def config_changes(recorded: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'field: old -> new' for every field that differs (RESUMABLE_FIELDS aside)."""
  old, new = _flat(recorded), _flat(config)
  keys = sorted(k for k in set(old) | set(new) if not k.startswith(RESUMABLE_FIELDS))
  missing = "<absent>"
  return [
    f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
    for k in keys
    if old.get(k, missing) != new.get(k, missing)
  ]


def _write_json(path: epath.Path, obj: Any) -> None:
  """Write atomically (a temp file renamed into place); process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, default=float))
  tmp.replace(path)


def prepare_workdir(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> epath.Path:
  """Check the workdir against the config it records, then create it and record this one."""
  storage.check_checkpoint_dir(workdir)
  root = epath.Path(workdir)
  if root.exists() and not root.is_dir():
    raise errors.WorkdirError(f"--workdir={workdir} is a file; it must be a directory")
  record = root / CONFIG_FILE
  if record.exists():
    changes = config_changes(json.loads(record.read_text()), config)
    if changes and not allow_config_change:
      shown = "; ".join(changes[:6]) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")
      raise errors.WorkdirError(
        f"{workdir} was made with another config ({shown}); use a new --workdir, or pass "
        f"--allow_config_change to continue with this one"
      )
    if not changes:
      return root
  root.mkdir(parents=True, exist_ok=True)
  _write_json(record, config.to_dict())
  return root


def _export(stage: Stage, result: dict[str, Any]) -> None:
  """Write the stage's trained model and tokenizer as a HF directory (hf.tmp renamed to hf).

  The rename is atomic on a local disk only; on gs:// it is a copy then a delete. Either way
  the stage counts as complete only once stage.json is written, after this returns: a run
  stopped in between exports again from the stage's last checkpoint.
  """
  from rockjax import models  # pylint: disable=g-import-not-at-top

  # Gather the (possibly multi-host sharded) weights on every host; process 0 writes them.
  params = multihost_utils.process_allgather(result["state"].params, tiled=True)
  if jax.process_index() == 0:
    tmp = stage.export.parent / (stage.export.name + ".tmp")
    for d in (tmp, stage.export):
      if d.exists():
        d.rmtree()
    try:
      with storage.staged_dir(tmp) as local:  # a cloud workdir: written locally, then uploaded
        models.save_pretrained(nnx.merge(result["state"].graphdef, params), local)
        result["experiment"].tokenizer.save_pretrained(local)
    except Exception as err:  # pylint: disable=broad-except  (safetensors wraps its OS errors)
      if not storage.is_disk_full(err):
        raise
      # hf.tmp stays half written; it is never loaded and the next run deletes it.
      raise errors.DiskFull(
        f"HF export {stage.export}: no space left on device; free space and run the same "
        f"command: the stage exports again from its last checkpoint"
      ) from err
    tmp.rename(stage.export)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"rockjax:{stage.name}_exported")


def _stage_record(stage: Stage, result: dict[str, Any]) -> dict[str, Any]:
  """What a completed stage reports (written to its stage.json)."""
  loss = settings.loss_settings(stage.config)
  correct = result["eval_correct"]
  return {
    "stage": stage.name,
    "kind": loss.stage,
    "quantity": loss.tracked,
    "steps": int(result["step"]),
    "metrics": result["metrics"],
    "eval_correct": None if correct is None else correct.astype(float).tolist(),
    "seconds": result["seconds"],
    "resumed_from": int(result["experiment"].start_step),
    "workdir": str(stage.workdir),
    "export": str(stage.export) if stage.export else None,
  }


def _run_stage(stage: Stage, profile_steps: tuple[int, int] | None = None) -> dict[str, Any] | None:
  """Train one stage to its end; its record, or None when it stopped early (stop_after).

  profile_steps: train.run's (a, b) trace of the stage's steps a..b (None: no trace)."""
  result = train.run(stage.config, str(stage.workdir), profile_steps=profile_steps)
  if result["interrupted"]:
    raise errors.Interrupted(
      f"{result['interrupted']}: stopped in stage {stage.name} at step {result['step']}/"
      f"{stage.config.steps} with a checkpoint in {stage.workdir / 'ckpt'}; run the same "
      f"command to resume"
    )
  if not result["completed"]:
    return None
  if stage.export is not None:
    _export(stage, result)
  record = _stage_record(stage, result)
  _write_json(stage.workdir / STAGE_FILE, record)  # the stage is complete from here on
  return record


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
  profile_steps: tuple[int, int] | None = None,
) -> dict[str, Any]:
  """Run every stage the config asks for in `workdir` (skipping completed ones); the summary.

  The whole config is validated first (rockjax.config_check), before anything touches disk;
  `steps` is resolved from data.epochs (rockjax.run_length) before the workdir records it.
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
  records, ran = [], False
  for stage in stages:
    done = stage.workdir / STAGE_FILE
    if done.exists():
      records.append(json.loads(done.read_text()))
      continue
    ran = True
    record = _run_stage(stage, profile_steps if stage.name == "main" else None)
    if record is None:  # stop_after: a deliberate partial run, no summary yet
      return {"stages": records, "complete": False}
    records.append(record)
  report = _analysis_stage(config, workdir, stages[-1], ran)
  summary = make_summary(records, root, analysis_report=report)
  if ran or not (root / SUMMARY_FILE).exists():
    _write_json(root / SUMMARY_FILE, summary)
  if jax.process_index() == 0:
    print(
      format_summary(summary, rock_table_text=None if ran else final_table_text(root)), flush=True
    )
  return summary


def _analysis_stage(
  config: ml_collections.ConfigDict, workdir: str, main: Stage, ran: bool
) -> str | None:
  """The last stage (analysis.enabled): the rock analysis report's path, or None.

  Runs after a stage trained, or when the report is missing; a run without an evaluation set
  skips it with a note (the analysis decodes that set).
  """
  from rockjax.analysis import analyze  # pylint: disable=g-import-not-at-top

  if not config.analysis.enabled:
    return None
  report = epath.Path(workdir) / analyze.ANALYSIS_DIR / "report.md"
  if not ran and report.exists():
    return str(report)
  if not main.config.data.eval_path:
    if jax.process_index() == 0:
      print("rock analysis skipped: no evaluation set (data.eval_path)", flush=True)
    return None
  return analyze.run_analysis(config, workdir).get("markdown", str(report))
