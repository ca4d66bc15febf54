"""What the studies after rock selection get (`AnalysisContext`), and loading a student to study."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from rockjax import checkpoint as ckpt_lib
from rockjax import errors, models
from rockjax.models import loading
from rockjax import state as state_lib
from rockjax.analysis import degenerate


@dataclasses.dataclass
class AnalysisContext:
  """What the analyses after selection get: models, prompts, the corpus and the rocks."""

  config: ml_collections.ConfigDict  # the main stage's config (teacher/model paths resolved)
  workdir: str
  out_dir: str
  mesh: Any
  tokenizer: Any
  eos_ids: tuple[int, ...]
  student: nnx.Module
  teacher: nnx.Module
  student_source: str  # where the student came from (checkpoint step, HF directory)
  prompt_ids_SxP: np.ndarray  # left-padded evaluation prompts
  prompt_mask_SxP: np.ndarray
  answers: list[str]  # reference answers, row-aligned with the prompts
  corpus_path: str
  rock_ids_path: str
  selection: dict[str, Any]  # selection.analyze_selection's result (rock_ids, freq_V, ...)
  # build_corpus's decoding and scoring settings, for studies that decode again (persistence)
  corpus_kwargs: dict[str, Any]
  extras: dict[str, Any] = dataclasses.field(
    default_factory=dict
  )  # studies' results for later ones
  student_path: str = ""  # the directory the student was loaded from (HF export or ckpt dir)


def _restore_student(
  c: ml_collections.ConfigDict, ckpt_dir: str, mesh, step: int | None = None
) -> tuple[nnx.Module, str]:
  """The student of the newest checkpoint in `ckpt_dir` (a TrainState saved by training), or
  the params alone of checkpoint `step` (WorkdirError naming analysis.early_step when there is
  no such checkpoint)."""
  cfg = loading.model_config(c.model, field="model")
  graphdef, abstract = loading.abstract_params(cfg, c.seed)
  tx, _ = state_lib.make_optimizer(c.opt, c.steps)
  init = state_lib.initializer(graphdef, tx, vocab_size=cfg.vocab_size, seed=c.seed)
  like, _ = state_lib.abstract_state(init, abstract, mesh)
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=c.ckpt.keep)
  try:
    if step is not None:
      return _restore_step(checkpointer, graphdef, like.params, step)
    restored = checkpointer.restore(like)
  finally:
    checkpointer.close()
  if restored is None:
    raise errors.WorkdirError(
      f"no checkpoint in {ckpt_dir}: train first, or pass --student=HF_DIR_OR_CKPT"
    )
  state, _, step = restored
  return nnx.merge(state.graphdef, state.params), f"checkpoint {ckpt_dir} step {step}"


def _restore_step(checkpointer, graphdef, like_params, step: int) -> tuple[nnx.Module, str]:
  """The model of checkpoint `step` (its params only), described as `load_student` does."""
  saved = checkpointer.steps()
  if step not in saved:
    raise errors.WorkdirError(
      f"analysis.early_step={step}: no checkpoint of step {step} in {checkpointer.directory} "
      f"(saved: {saved}); on-policy runs save and keep it when the field is set before training"
    )
  params = checkpointer.restore_params(like_params, step)
  return nnx.merge(graphdef, params), f"checkpoint {checkpointer.directory} step {step}"


def load_checkpoint_step(
  c: ml_collections.ConfigDict, workdir: str, step: int, mesh
) -> tuple[nnx.Module, str]:
  """(student, its description) of WORKDIR/ckpt's checkpoint `step` (analysis.early_step)."""
  return _restore_student(c, str(epath.Path(workdir) / "ckpt"), mesh, step)


def load_student(
  c: ml_collections.ConfigDict, workdir: str, student: str, mesh
) -> tuple[nnx.Module, str]:
  """(student, its description): `student` (HF dir or checkpoint dir), else WORKDIR/ckpt."""
  if student and (epath.Path(student) / "config.json").exists():
    return models.from_pretrained(student, mesh=mesh, **loading.numerics(c.model)), student
  return _restore_student(c, student or str(epath.Path(workdir) / "ckpt"), mesh)


STAGE_FILE = "stage.json"  # a completed pipeline stage's record (rockjax.runner.pipeline)


def _stage_record(stage_dir: epath.Path) -> dict[str, Any]:
  """The stage.json in `stage_dir`, or {} when there is none (or it does not parse)."""
  try:
    return json.loads((stage_dir / STAGE_FILE).read_text())
  except (OSError, ValueError):
    return {}


def student_path(workdir: str, student: str) -> str:
  """The directory `load_student` reads: `student`, else WORKDIR/ckpt."""
  return student or str(epath.Path(workdir) / "ckpt")


def describe_checkpoint(path: str, source: str) -> dict[str, Any]:
  """{'path', 'stage', 'step', 'text'} of a student directory, `source` its load_student text.

  The stage is the pipeline stage whose workdir holds the directory (its stage.json: an HF
  export it wrote, or its ckpt/); the step comes from the restored checkpoint ('... step N'),
  else from the stage's record (its final step). Unknown parts are None.
  """
  root = epath.Path(path)
  record = _stage_record(root.parent)
  exported = record.get("export") or ""
  ours = degenerate.same_path(exported, str(root)) or root.name == "ckpt"
  stage = record.get("stage") if ours else None
  match = re.search(r"step (\d+)", source)
  step = int(match.group(1)) if match else (record.get("steps") if stage else None)
  where = ", ".join(
    part for part in (f"stage {stage}" if stage else "", f"step {step}" if step else "") if part
  )
  return {
    "path": str(path),
    "stage": stage,
    "step": step,
    "text": f"{path} ({where})" if where else f"{path} (stage and step unknown)",
  }
