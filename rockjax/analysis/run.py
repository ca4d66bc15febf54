"""The rock analysis of a trained run: corpus -> selection -> other analyses -> report.

`run_analysis(main_config, workdir)` is what `python -m rockjax.analyze` and the pipeline's last
stage (analysis.enabled) run. Models: the student is the workdir's main-stage final checkpoint
(or `student`: a Hugging Face directory, or an orbax checkpoint directory); the teacher is the
main stage's (the config's HF directory, or the pipeline's exported teacher). Prompts: the
evaluation set (data.eval_path, or the synthetic task's held-out split). Everything goes into
WORKDIR/analysis/ (or `out`): corpus.parquet, rock_ids.txt, report.md, report.json, *.png.
The report opens with its Findings (rockjax.analysis.findings): each comparison with the paper
and every warning the sections raised.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
from etils import epath
from flax import nnx

from rockjax import errors, models, storage
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax.analysis import corpus, findings, selection, selection_report, studies
from rockjax.analysis.context import AnalysisContext, load_student, student_path
from rockjax.analysis.report import write_report
from rockjax.config import settings
from rockjax.config.fields import int_list
from rockjax.data import prompt_fit, records

ANALYSIS_DIR = "analysis"
CORPUS_FILE = "corpus.parquet"
ROCK_IDS_FILE = "rock_ids.txt"


def eval_prompts(c: ml_collections.ConfigDict, tokenizer, num_prompts: int):
  """(ids_SxP, mask_SxP, answers) of the first num_prompts evaluation prompts, left-padded."""
  if not c.data.eval_path:
    raise errors.ConfigError(
      "data.eval_path='': the rock analysis needs an evaluation set (or the built-in task)"
    )
  fitted = prompt_fit.eval_prompts(c, tokenizer, c.data.eval_path, num_prompts)
  ids, mask = prompt_fit.padded_prompts(fitted, c.data.max_prompt_len, records.pad_id(tokenizer))
  return ids, mask, [r.get("answer", "") for r in fitted.records]


def _select(c: ml_collections.ConfigDict, corpus_path: str, vocab: int) -> dict[str, Any]:
  """The rock selection (and its k / sub-corpus sweeps) from the corpus's per-id sums."""
  a = c.analysis
  freq_V, kl_sum_V = corpus.id_sums(corpus_path, vocab)
  return selection.analyze_selection(
    freq_V,
    kl_sum_V,
    corpus.sequence_sums(corpus_path, vocab),
    settings.rock_selection(c),
    k_grid=int_list(a.k_grid),
    subcorpus_sizes=int_list(a.subcorpus_sizes),
    subcorpus_repeats=a.subcorpus_repeats,
    seed=a.seed,
  )


def _provenance(a, source: str, built: dict[str, Any], chosen, spec) -> dict[str, str]:
  """How the report's rocks were found, as its header and the rock list's comments say."""
  sel = chosen["selection"]
  return {
    "student": source,
    "corpus": f"{built['num_sequences']} sequences, {built['num_tokens']} response tokens",
    "decoding": "greedy" if a.greedy else f"temperature {a.temperature}, seed {a.seed}",
    "settings": f"k={sel.k} min_freq={sel.min_freq} exclude_top_freq={sel.exclude_top_freq} "
    f"selector={sel.selector} divergence={spec.kind}",
  }


def _corpus_kwargs(c, num_prompts: int, eos_ids, spec, mesh) -> dict[str, Any]:
  """build_corpus's settings (the studies decode again with the same ones); the batch is
  rounded up to the mesh's row shards."""
  a, row_shards = c.analysis, mesh.shape["data"] * mesh.shape["fsdp"]
  return dict(
    batch_size=-(-min(a.batch_size, num_prompts) // row_shards) * row_shards,
    max_new_tokens=a.max_new_tokens or c.eval.max_new_tokens,
    eos_ids=eos_ids,
    greedy=a.greedy,
    temperature=a.temperature,
    seed=a.seed,
    spec=spec,
    mesh=mesh,
  )


def run_analysis(
  config: ml_collections.ConfigDict, workdir: str, *, student: str = "", out: str = ""
) -> dict[str, Any]:
  """Corpus, selection, the registered analyses and the report; {paths..., seconds}.

  `config` is the main stage's (rockjax.runner.stages.main_stage_config): its teacher is the
  one the student was distilled from, preliminary stages' exports included."""
  t0, c = time.perf_counter(), config
  a = c.analysis
  out_dir = out or str(epath.Path(workdir) / ANALYSIS_DIR)
  storage.check_checkpoint_dir(out_dir, field="--out")
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  mesh = shd.decode_mesh(c.mesh)
  tokenizer = models.load_tokenizer(c.data.tokenizer_path)
  teacher_cfg = loading.model_config(c.teacher, field="teacher")
  teacher_weights = loading.load_params(
    c.teacher, teacher_cfg, mesh, c.seed + 1, cache_dir=c.cache.weights
  )
  teacher = nnx.merge(*teacher_weights)
  student_model, source = load_student(c, workdir, student, mesh)
  ids, mask, answers = eval_prompts(c, tokenizer, a.num_prompts)
  spec = settings.divergence_spec(c)  # the run's divergence scores the corpus
  corpus_path = str(epath.Path(out_dir) / CORPUS_FILE)
  corpus_kwargs = _corpus_kwargs(c, len(ids), models.eos_ids(tokenizer), spec, mesh)
  metadata = {"student": source, "teacher": c.teacher.path or c.teacher.source}
  built = corpus.build_corpus(
    student_model, teacher, ids, mask, corpus_path, metadata=metadata, **corpus_kwargs
  )
  chosen = _select(c, corpus_path, student_model.cfg.vocab_size)
  provenance = _provenance(a, source, built, chosen, spec)
  rock_ids_path = str(epath.Path(out_dir) / ROCK_IDS_FILE)
  if jax.process_index() == 0:
    selection.export_rock_ids(rock_ids_path, chosen["rock_ids"], provenance)
  ctx = AnalysisContext(
    config=c,
    workdir=workdir,
    out_dir=out_dir,
    mesh=mesh,
    tokenizer=tokenizer,
    eos_ids=corpus_kwargs["eos_ids"],
    student=student_model,
    teacher=teacher,
    student_source=source,
    prompt_ids_SxP=ids,
    prompt_mask_SxP=mask,
    answers=answers,
    corpus_path=corpus_path,
    rock_ids_path=rock_ids_path,
    selection=chosen,
    corpus_kwargs=corpus_kwargs,
    student_path=student_path(workdir, student),
  )
  sections = selection_report.selection_sections(chosen, out_dir, tokenizer)
  for _, study in studies.SECTIONS:
    sections += study(ctx)
  sections = [findings.section(sections), *sections]  # the Findings head the report
  meta = {**provenance, "corpus_seconds": round(built["seconds"], 1)}
  paths = write_report(out_dir, sections, meta) if jax.process_index() == 0 else {}
  out = {"corpus": corpus_path, "rock_ids": rock_ids_path, "out_dir": out_dir}
  return {**paths, **out, "seconds": time.perf_counter() - t0}
