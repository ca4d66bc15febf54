"""What the studies after rock selection get (`AnalysisContext`), and loading a student to study."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from rockjax import checkpoint as ckpt_lib
from rockjax import errors, loading, models
from rockjax import state as state_lib


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


def _restore_student(c: ml_collections.ConfigDict, ckpt_dir: str, mesh) -> tuple[nnx.Module, str]:
  """The student of the newest checkpoint in `ckpt_dir` (a TrainState saved by training)."""
  cfg = loading.model_config(c.model, field="model")
  graphdef, abstract = loading.abstract_params(cfg, c.seed)
  tx, _ = state_lib.make_optimizer(c.opt, c.steps)
  init = state_lib.initializer(graphdef, tx, vocab_size=cfg.vocab_size, seed=c.seed)
  like, _ = state_lib.abstract_state(init, abstract, mesh)
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=c.ckpt.keep)
  try:
    restored = checkpointer.restore(like)
  finally:
    checkpointer.close()
  if restored is None:
    raise errors.WorkdirError(
      f"no checkpoint in {ckpt_dir}: train first, or pass --student=HF_DIR_OR_CKPT"
    )
  state, _, step = restored
  return nnx.merge(state.graphdef, state.params), f"checkpoint {ckpt_dir} step {step}"


def load_student(
  c: ml_collections.ConfigDict, workdir: str, student: str, mesh
) -> tuple[nnx.Module, str]:
  """(student, its description): `student` (HF dir or checkpoint dir), else WORKDIR/ckpt."""
  if student and (epath.Path(student) / "config.json").exists():
    return models.from_pretrained(student, mesh=mesh, **loading.numerics(c.model)), student
  return _restore_student(c, student or str(epath.Path(workdir) / "ckpt"), mesh)
