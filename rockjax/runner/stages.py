"""The stages a config asks for, as a pure plan: teacher SFT -> stage-1 KD -> main.

`plan(config, workdir, data_paths)` says which stages run, each with the config it trains
with and where it exports; it trains nothing, so the pipeline and the rock analysis's entry
point read the same plan. With `pipeline.reuse=W` a preliminary stage that W completed with
the same config is taken from W (its workdir and export are W's); the plan reads W's records.
"""

import dataclasses
import json
from typing import Any

import ml_collections
from etils import epath

from rockjax import errors
from rockjax.runner.summary import CONFIG_FILE, rock_setting
from rockjax.runner.workdir import RESUMABLE_FIELDS, config_changes, recorded_config

EXPORT_DIR = "export_hf"  # the main stage's HF export (ckpt.export_hf)
_PRE_STAGES = {"teacher": "teacher_sft", "model": "student_kd"}
STAGE_NAMES = (*_PRE_STAGES.values(), "main")  # every stage a plan may hold, in run order
STAGE_FILE = "stage.json"  # written in a stage's workdir when it has completed (and exported)
# Fields a preliminary (off-policy) stage never reads, or overrides: they may differ between a
# reused stage and this run's. The rock.* fields only shape its rock table (rock.mode is off).
MAIN_ONLY_FIELDS = RESUMABLE_FIELDS + (
  "rock.",
  "analysis.",
  "pipeline.",
  "eval.every",
  "ckpt.",
  "steps",
  "opt.lr",
  "opd.mode",
  "opd.kd_ratio",
  "opd.samples_per_prompt",
  "opd.max_new_tokens",
  "opd.sample_temperature",
  "opd.top_p",
  "opd.top_k",
  "opd.truncated_rollouts",
  "opd.rollout_dtype",
  "opd.updates_per_rollout",
  "opd.kept_capacity",
  "opd.frozen_kl",
)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of the pipeline."""

  name: str  # 'teacher_sft' | 'student_kd' | 'main'
  config: ml_collections.ConfigDict  # what rockjax.runner.loop.run trains with
  workdir: epath.Path
  export: epath.Path | None  # HF directory written after the last step (None: no export)
  reused_from: str = ""  # pipeline.reuse's workdir when the stage is W's (workdir, export)
  reuse_note: str = ""  # why pipeline.reuse's stage was not taken ('' when it was, or no reuse)


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
  stages, reused = [], _reuse_plan(c, data_paths)
  for role in ("teacher", "model"):  # the teacher first: stage-1 KD learns from its export
    if c[role].source in ("sft", "kd"):
      stage = _pre_stage(c, root, role)
      if reused is not None:
        stage = _reused(stage, reused, c.pipeline.reuse)
      stages.append(stage)
      c[role].source, c[role].path = "hf", str(stage.export)
  # ckpt.export_hf: the main stage's student, exported like a preliminary stage's model.
  stages.append(Stage("main", c, root, root / EXPORT_DIR if c.ckpt.export_hf else None))
  return stages


def _reuse_plan(
  c: ml_collections.ConfigDict, data_paths: dict[str, str]
) -> dict[str, Stage] | None:
  """{stage name: stage} of the pipeline.reuse workdir's own plan (None: no reuse).

  Planned with this run's data paths, so a synthetic task written into each workdir (the same
  task for the same data.* fields) compares equal."""
  reuse = c.get("pipeline", {}).get("reuse", "")
  if not reuse:
    return None
  theirs = recorded_config(reuse)
  if theirs is None:
    raise errors.ConfigError(
      f"pipeline.reuse={reuse!r}: no {CONFIG_FILE} there; name a rockjax workdir whose "
      f"preliminary stages have completed"
    )
  return {s.name: s for s in plan(theirs, reuse, data_paths)[:-1]}


def _reused(stage: Stage, theirs: dict[str, Stage], reuse: str) -> Stage:
  """`stage` as pipeline.reuse's workdir completed it, or `stage` with a note saying why not."""
  other = theirs.get(stage.name)
  if other is None or not (other.workdir / STAGE_FILE).exists():
    return dataclasses.replace(stage, reuse_note=f"{reuse} has no completed {stage.name} stage")
  diffs = config_changes(other.config.to_dict(), stage.config)
  changes = [d for d in diffs if not d.startswith(MAIN_ONLY_FIELDS)]
  if changes:
    shown = "; ".join(changes[:4]) + (f" (+{len(changes) - 4} more)" if len(changes) > 4 else "")
    return dataclasses.replace(stage, reuse_note=f"not reused from {reuse}: {shown}")
  return dataclasses.replace(other, reused_from=reuse)


def with_recorded_reuse(
  config: ml_collections.ConfigDict, workdir: str
) -> ml_collections.ConfigDict:
  """`config` with the pipeline.reuse its workdir recorded, when it names none itself.

  A workdir that reused another's stages finds their exports there; a later command on it
  with the plain config file (python -m rockjax.analyze, rockjax.export) plans the same way."""
  if config.get("pipeline", {}).get("reuse", ""):
    return config
  recorded = recorded_config(workdir)
  reuse = recorded.get("pipeline", {}).get("reuse", "") if recorded is not None else ""
  if not reuse:
    return config
  c = _unlocked_copy(config)
  c.pipeline.reuse = reuse
  return c


def reused_main_record(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The completed main stage's record (stage.json, with its rock setting) of pipeline.reuse's
  workdir, which the summary compares this run's main stage with; None without one."""
  reuse = config.get("pipeline", {}).get("reuse", "")
  done = epath.Path(reuse) / STAGE_FILE if reuse else None
  if done is None or not done.exists():
    return None
  return {**json.loads(done.read_text()), "rock": rock_setting(recorded_config(reuse))}


def main_stage_config(
  config: ml_collections.ConfigDict, workdir: str, data_paths: dict[str, str]
) -> ml_collections.ConfigDict:
  """The config the main stage trains with (preliminary stages' exports as HF directories)."""
  return plan(config, workdir, data_paths)[-1].config
