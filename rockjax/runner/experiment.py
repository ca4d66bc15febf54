"""Everything one training run needs, built from a config: mesh, tokenizer, models, data, state,
step. Building trains nothing; multi-stage runs (teacher SFT, stage-1 KD) are rockjax.runner.pipeline.

Resume order: the run's own workdir checkpoint, then `ckpt.resume`, then init.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rockjax import checkpoint as ckpt_lib
from rockjax import data as data_lib
from rockjax import errors, evaluation, models, sampling
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax import step as step_lib
from rockjax.config import settings as settings_lib
from rockjax.data import prompt_fit
from rockjax.data import records as records_lib
from rockjax.data.paths import task_files
from rockjax.rocks import lists as rock_lists
from rockjax.runner import preflight, stopping
from rockjax.sampling import rollout_copy as rollout_params

if TYPE_CHECKING:
  # Annotations only: rockjax.models.load_tokenizer imports transformers (seconds) when called.
  from transformers import PreTrainedTokenizerBase

_log = logging.getLogger(__name__)

# rockjax.step.jit_train_step's program: (state, teacher params or None, batch) -> (state, metrics).
_TrainStep = Callable[
  [state_lib.TrainState, nnx.State | None, dict[str, jax.Array]],
  tuple[state_lib.TrainState, step_lib.Metrics],
]


@dataclasses.dataclass
class Experiment:
  """The built pieces of one run (see build_experiment)."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  tokenizer: PreTrainedTokenizerBase
  eos_ids: tuple[int, ...]
  student_cfg: models.ModelConfig
  teacher_params: nnx.State | None  # None without a teacher (teacher.source "none")
  state: state_lib.TrainState
  start_step: int
  train_step: _TrainStep
  train_data: data_lib.PromptPipeline | data_lib.CompletionPipeline
  checkpointer: ckpt_lib.Checkpointer
  eval_prompts: dict[str, np.ndarray] | None
  eval_answers: list[str]
  # params -> the student's sampling copy (opd.rollout_dtype / rollout_sharding; rollout_params)
  sampling_copy: Callable[[nnx.State], nnx.State] = lambda params: params

  def evaluate(
    self, state: state_lib.TrainState, step: int
  ) -> tuple[dict[str, float], np.ndarray | None]:
    """(pass@1 metrics, per-prompt correctness [P, N]) of the student on the held-out prompts.

    Rows come in a fixed order (record shard-major), so two evaluations pair up prompt by prompt.
    """
    if self.eval_prompts is None:
      return {}, None
    e = self.config.eval
    prompts = shd.host_to_global(self.eval_prompts, self.mesh, global_rows=len(self.eval_answers))
    # The same sampling copy as the rollouts, of the current params (freed on leaving).
    with rollout_params.sampling_model(self.sampling_copy, state.graphdef, state.params) as student:
      out = sampling.generate(
        student,
        prompts["ids"],
        prompts["mask"],
        key=jax.random.PRNGKey(step),
        max_new_tokens=e.max_new_tokens,
        temperature=max(e.temperature, 1e-6),
        greedy=e.temperature == 0,
        eos_ids=self.eos_ids,
        num_samples=e.num_samples,
      )
    tokens = np.asarray(multihost_utils.process_allgather(out.tokens, tiled=True))
    resp = np.asarray(multihost_utils.process_allgather(out.response_mask, tiled=True))
    correct = []
    for row in range(tokens.shape[0]):
      text = self.tokenizer.decode(tokens[row][resp[row] > 0], skip_special_tokens=True)
      correct.append(evaluation.verify(text, self.eval_answers[row // e.num_samples]))
    correct_PxN = np.asarray(correct).reshape(-1, e.num_samples)
    return (
      {
        "eval/pass@1": evaluation.mean_pass_at_1(correct_PxN),
        "eval/mean_response_len": float(resp.sum(1).mean()),
      },
      correct_PxN,
    )


def _rock_mask(c: ml_collections.ConfigDict, vocab: int) -> np.ndarray | None:
  if c.rock.mode != "static":
    return None  # rockjax.config.check makes sure a static mode has a list_path
  return rock_lists.ids_to_mask(rock_lists.load_id_list(c.rock.list_path, vocab_size=vocab), vocab)


def _host_share(rows: int, mesh) -> data_lib.HostShare:
  """Which of a global batch's `rows` rows this host reads (rockjax.data.host_share)."""
  return data_lib.host_share(rows, batch_shards=shd.batch_shards(rows, mesh))


def _pipelines(c, paths, tokenizer, mesh):
  """(train pipeline, eval prompt batch, eval answers), host-local (see rockjax.data.host_share).

  The train pipeline's `counts` (prompts truncated / dropped, bad records skipped) are what the
  run writes once to its metrics.
  """
  share = _host_share(c.data.prompts_per_step, mesh)
  prompt_format = records_lib.PromptFormat.from_config(c.data)
  common = dict(
    batch_size=share.rows,
    process_index=share.shard,
    process_count=share.shards,
    max_prompt_len=c.data.max_prompt_len,
    seed=c.seed,
    prompt_format=prompt_format,
    prompt_overflow=c.data.prompt_overflow,
  )
  fields = dict(prompt_field=c.data.prompt_field, answer_field=c.data.answer_field)
  if c.opd.mode == "off_policy":
    fields["completion_field"] = c.data.completion_field
  loaded = records_lib.read_records(paths["train"], skip_bad=c.data.skip_bad_records, **fields)
  if c.opd.mode == "off_policy":
    train = data_lib.CompletionPipeline(
      loaded.records, tokenizer, max_len=c.data.max_len, pack=c.data.pack, **common
    )
  else:
    train = data_lib.PromptPipeline(loaded.records, tokenizer, **common)
  train.counts["data/records_skipped"] = len(loaded.skipped)
  _log.info("training data %s: %s", paths["train"], train.counts)
  if not c.eval.every or not paths["eval"]:
    return train, None, []
  evals = prompt_fit.eval_prompts(c, tokenizer, paths["eval"], c.eval.num_prompts)
  eval_share = _host_share(len(evals.records), mesh)
  ids, mask = prompt_fit.padded_prompts(evals, c.data.max_prompt_len, records_lib.pad_id(tokenizer))
  mine = slice(eval_share.shard, None, eval_share.shards)
  prompts = {"ids": ids[mine], "mask": mask[mine]}
  # Rows come back from process_allgather shard-major: order the answers the same way.
  answers = [
    r["answer"] for s in range(eval_share.shards) for r in evals.records[s :: eval_share.shards]
  ]
  return train, prompts, answers


def _refuse_pipeline_stages(c: ml_collections.ConfigDict) -> None:
  """A model that an earlier stage trains (sft, kd) is built by the pipeline, not here."""
  for group in ("model", "teacher"):
    if c[group].source in ("sft", "kd"):
      raise errors.ConfigError(
        f"{group}.source={c[group].source!r} is a pipeline stage (train that model first, "
        f"then load its export): run it with rockjax.runner.pipeline.run, not build_experiment"
      )


@dataclasses.dataclass
class _Models:
  """The run's tokenizer and student config, and the teacher's weights (None without one)."""

  tokenizer: PreTrainedTokenizerBase
  student_cfg: models.ModelConfig
  teacher_graphdef: nnx.GraphDef | None
  teacher_params: nnx.State | None


def _load_models(c: ml_collections.ConfigDict, paths: dict[str, str], mesh: Mesh) -> _Models:
  """Tokenizer, model configs and the teacher, each checked before the next is read."""
  # The field an error about the data tokenizer names: where its path came from.
  tok_field = next(
    (f"{g}.path" for g in ("teacher", "model") if c[g].path == paths["tokenizer"]),
    "data.tokenizer_path",
  )
  tokenizer = models.load_tokenizer(paths["tokenizer"], field=tok_field)
  student_cfg = loading.model_config(c.model, field="model")
  rows = {"model": student_cfg.vocab_size}  # embedding rows the tokenizer's ids must index
  teacher_cfg = None
  if c.teacher.source != "none":
    teacher_cfg = loading.model_config(c.teacher, field="teacher")
    models.check_vocab_compatible(teacher_cfg, student_cfg)
    rows["teacher"] = teacher_cfg.vocab_size
  # Pre-flight (rockjax.runner.preflight), before any weights are read, then the teacher probe.
  preflight.check_tokenizers(c, tokenizer, paths["tokenizer"], rows)
  teacher_graphdef = teacher_params = None
  if teacher_cfg is not None:
    teacher_graphdef, teacher_params = loading.load_params(
      c.teacher, teacher_cfg, mesh, c.seed + 1, cache_dir=c.cache.weights
    )
    preflight.check_teacher(c, (teacher_graphdef, teacher_params), tokenizer, mesh)
  return _Models(tokenizer, student_cfg, teacher_graphdef, teacher_params)


def _restore(
  c: ml_collections.ConfigDict,
  checkpointer: ckpt_lib.Checkpointer,
  like: state_lib.TrainState,
  data_iterator: data_lib.BatchIterator,
) -> tuple[state_lib.TrainState, int] | None:
  """(state, step) from the run's own checkpoint, else from `ckpt.resume`; None if neither."""
  # Each host restores its own data position into data_iterator.
  restored = checkpointer.restore(like, data_iterator=data_iterator)
  if restored is None and c.ckpt.resume:
    restored = ckpt_lib.Checkpointer(c.ckpt.resume, keep=c.ckpt.keep).restore(
      like, data_iterator=data_iterator
    )
  if restored is None:
    return None
  state, _, start = restored
  _log.info("resumed from step %d", start)
  return state, start


def _jit_step(
  c: ml_collections.ConfigDict,
  m: _Models,
  schedule: Callable[[Any], jax.Array],
  shardings: Any,
  mesh: Mesh,
) -> _TrainStep:
  """The jitted train step, its inputs sharded as the state, the teacher and a batch are."""
  step_settings = settings_lib.step_settings(c, m.teacher_graphdef, schedule)
  teacher_shardings = (
    None if m.teacher_params is None else jax.tree.map(lambda x: x.sharding, m.teacher_params)
  )
  batch_sharding = shd.batch_sharding(settings_lib.batch_shape(c), mesh)
  return step_lib.jit_train_step(step_settings, shardings, teacher_shardings, batch_sharding)


def build_experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """Build (or restore) everything for a run in `workdir`."""
  c = config
  _refuse_pipeline_stages(c)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  ici, dcn = shd.config_mesh_shapes(c.mesh)
  mesh = shd.make_mesh(ici, dcn=dcn)
  paths = task_files(c, workdir)
  m = _load_models(c, paths, mesh)
  student_cfg = m.student_cfg

  tx, schedule = state_lib.make_optimizer(c.opt, settings_lib.total_updates(c))
  rock_mask = _rock_mask(c, student_cfg.vocab_size)
  graphdef, abstract_params = loading.abstract_params(student_cfg, c.seed)
  init = state_lib.initializer(
    graphdef, tx, vocab_size=student_cfg.vocab_size, seed=c.seed, rock_mask_V=rock_mask
  )
  like, shardings = state_lib.abstract_state(init, abstract_params, mesh)

  train_data, eval_prompts, eval_answers = _pipelines(c, paths, m.tokenizer, mesh)
  checkpointer = ckpt_lib.Checkpointer(
    str(epath.Path(workdir) / "ckpt"),
    keep=c.ckpt.keep,
    keep_steps=stopping.kept_steps(c),  # ckpt.keep_steps and analysis.early_step
    async_save=c.ckpt.async_save,
  )
  restored = _restore(c, checkpointer, like, train_data.iterator)
  if restored is None:
    _, params = loading.load_params(c.model, student_cfg, mesh, c.seed, cache_dir=c.cache.weights)
    restored = state_lib.init_state(init, params, shardings, mesh), 0
  state, start = restored

  train_step = _jit_step(c, m, schedule, shardings, mesh)
  sampling_copy = rollout_params.make_copier(
    abstract_params,
    mesh,
    dtype=c.opd.rollout_dtype,
    layout=c.opd.rollout_sharding,
    tensor=c.opd.rollout_tensor,
  )
  return Experiment(
    config=c,
    workdir=workdir,
    mesh=mesh,
    tokenizer=m.tokenizer,
    eos_ids=models.eos_ids(m.tokenizer),
    student_cfg=student_cfg,
    teacher_params=m.teacher_params,
    state=state,
    start_step=int(start),
    train_step=train_step,
    train_data=train_data,
    checkpointer=checkpointer,
    eval_prompts=eval_prompts,
    eval_answers=eval_answers,
    sampling_copy=sampling_copy,
  )
