"""The stages a config asks for, as a pure plan: teacher SFT -> stage-1 KD -> main.

`plan(config, workdir, data_paths)` says which stages run, each with the config it trains
with and where it exports; it runs nothing, so the pipeline and the rock analysis's entry
point read the same plan.
"""

import dataclasses

import ml_collections
from etils import epath

EXPORT_DIR = "export_hf"  # the main stage's HF export (ckpt.export_hf)
_PRE_STAGES = {"teacher": "teacher_sft", "model": "student_kd"}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of the pipeline."""

  name: str  # 'teacher_sft' | 'student_kd' | 'main'
  config: ml_collections.ConfigDict  # what rockjax.runner.loop.run trains with
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


def main_stage_config(
  config: ml_collections.ConfigDict, workdir: str, data_paths: dict[str, str]
) -> ml_collections.ConfigDict:
  """The config the main stage trains with (preliminary stages' exports as HF directories)."""
  return plan(config, workdir, data_paths)[-1].config
