"""The studies after rock selection, as report sections: controls, persistence, geometry, knockout.

Each study takes the `AnalysisContext` that rockjax.analysis.run built (models, prompts,
the corpus and the selected rocks) and returns its report sections; `SECTIONS` lists them in
report order and `run_analysis` calls them after the selection sections.

- controls: the frequency-matched Random control list (random_control_ids.txt beside
  rock_ids.txt; the Random-control config freezes it).
- persistence: the same prompts decoded and scored at an early checkpoint (analysis.
  early_checkpoint, or the checkpoint the main stage started from), per-id mean KL early vs late.
- geometry: per-id mean logit-space gradients of rocks / high-KL / random ids on the corpus.
- knockout: the census, half rocks and half their frequency-matched controls as candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from etils import epath

from rockjax import evaluation
from rockjax.analysis import (
  controls,
  corpus,
  geometry,
  knockout,
  knockout_report,
  persistence,
  report,
)
from rockjax.analysis.context import AnalysisContext, load_student
from rockjax.config import settings
from rockjax.data import records

EARLY_CORPUS_FILE = "corpus_early.parquet"
# Geometry holds both models' [B, L, V] float32 logits of a batch: rows per batch are chosen
# so that one such array stays under this many elements (1 GiB).
GEOMETRY_LOGITS_ELEMENTS = 2**28


def _mean(freq_V: np.ndarray, kl_sum_V: np.ndarray) -> np.ndarray:
  return np.where(freq_V > 0, kl_sum_V / np.maximum(freq_V, 1), 0.0)


def _note(title: str, key: str, why: str) -> report.Section:
  """A section that says why a study did not run (no numbers, no figures)."""
  return report.Section(
    title=title, key=key, numbers={"skipped": why}, figures=(), text="{skipped}"
  )


def _controls(ctx: AnalysisContext) -> list[report.Section]:
  """The Random control list, matched to the rocks on log frequency."""
  a, sel = ctx.config.analysis, ctx.selection["selection"]
  freq_V, rock_ids = ctx.selection["freq_V"], ctx.selection["rock_ids"]
  try:
    ids = controls.frequency_matched(
      freq_V,
      rock_ids,
      seed=a.control_seed,
      min_freq=sel.min_freq,
      exclude_top_freq=sel.exclude_top_freq,
    )
  except ValueError as e:  # a corpus with fewer non-rock ids than rocks (tiny runs)
    return [_note("Frequency-matched random control", "controls", str(e))]
  ctx.extras["control_ids"] = ids
  header = (
    f"frequency-matched to {len(rock_ids)} rocks of {ctx.rock_ids_path}; seed {a.control_seed}"
  )
  path = controls.write_control_list(controls.control_list_path(ctx.rock_ids_path), ids, header)
  result = controls.control_result(freq_V, rock_ids[: len(ids)], ids)
  section = controls.section(result, ctx.out_dir)
  return [report.Section(**{**section.__dict__, "numbers": {**section.numbers, "path": path}})]


def _early_student(ctx: AnalysisContext) -> tuple[Any, str] | None:
  """The early checkpoint: analysis.early_checkpoint, else the HF checkpoint OPD started from."""
  c = ctx.config
  path = c.analysis.early_checkpoint or (c.model.path if c.model.source == "hf" else "")
  if not path:
    return None
  return load_student(c, ctx.workdir, path, ctx.mesh)


def _persistence(ctx: AnalysisContext) -> list[report.Section]:
  """Per-id mean KL at the early checkpoint (same prompts, same scoring) vs the final one."""
  early = _early_student(ctx)
  if early is None:
    why = "no early checkpoint: set analysis.early_checkpoint (a HF export or checkpoint dir)"
    return [_note("Persistence", "persistence", why)]
  student, source = early
  path = str(epath.Path(ctx.out_dir) / EARLY_CORPUS_FILE)
  corpus.build_corpus(
    student,
    ctx.teacher,
    ctx.prompt_ids_SxP,
    ctx.prompt_mask_SxP,
    path,
    metadata={"student": source},
    **ctx.corpus_kwargs,
  )
  vocab = ctx.student.cfg.vocab_size
  early_freq, early_kl = corpus.id_sums(path, vocab)
  late_freq, late_kl = ctx.selection["freq_V"], ctx.selection["kl_sum_V"]
  a, sel = ctx.config.analysis, ctx.selection["selection"]
  result = persistence.persistence(
    early_freq,
    _mean(early_freq, early_kl),
    late_freq,
    _mean(late_freq, late_kl),
    ctx.selection["rock_ids"],
    k=sel.k,
    min_freq=max(sel.min_freq, 2),
    num_random=a.num_random,
    seed=a.seed,
  )
  result["early"] = source
  return [persistence.section(result, ctx.out_dir)]


def _corpus_batches(ctx: AnalysisContext, rows: int) -> Iterator[dict[str, np.ndarray]]:
  """The corpus decodes as token batches (prompt + response), `rows` sequences each."""
  tokens_SxL, resp_SxL = corpus.decoded_tokens(
    ctx.corpus_path, ctx.prompt_ids_SxP, pad_id=records.pad_id(ctx.tokenizer)
  )
  attn_SxL = resp_SxL.copy()
  attn_SxL[:, : ctx.prompt_mask_SxP.shape[1]] = ctx.prompt_mask_SxP
  for start in range(0, len(tokens_SxL), rows):
    idx = np.arange(start, start + rows) % len(tokens_SxL)  # the last batch wraps: one shape
    keep = (np.arange(start, start + rows) < len(tokens_SxL))[:, None]
    yield {
      "tokens": tokens_SxL[idx],
      "attention_mask": attn_SxL[idx],
      "response_mask": resp_SxL[idx] * keep,  # wrapped rows count nothing
    }


def _geometry(ctx: AnalysisContext) -> list[report.Section]:
  """Mean logit gradients per id of the three groups, on the corpus decodes."""
  a, sel = ctx.config.analysis, ctx.selection["selection"]
  freq_V, kl_sum_V = ctx.selection["freq_V"], ctx.selection["kl_sum_V"]
  groups = geometry.groups_lib.id_groups(
    freq_V,
    _mean(freq_V, kl_sum_V),
    ctx.selection["rock_ids"],
    k=sel.k,
    min_freq=max(sel.min_freq, 2),
    num_random=a.num_random,
    seed=a.seed,
  )
  vocab = ctx.student.cfg.vocab_size
  length = ctx.prompt_ids_SxP.shape[1] + ctx.corpus_kwargs["max_new_tokens"]
  rows = int(max(1, min(a.batch_size, GEOMETRY_LOGITS_ELEMENTS // (length * vocab))))
  sums = geometry.gradient_sums(
    ctx.student,
    ctx.teacher,
    _corpus_batches(ctx, rows),
    groups,
    vocab_size=vocab,
    spec=settings.divergence_spec(ctx.config),  # the run's divergence, every setting of it
  )
  return [geometry.section(geometry.geometry(sums, groups), ctx.out_dir)]


def _knockout(ctx: AnalysisContext) -> list[report.Section]:
  """The census: the top rocks and (as many) of their frequency-matched controls, one by one."""
  a = ctx.config.analysis
  rock_ids = [int(i) for i in ctx.selection["rock_ids"]]
  control_ids = [int(i) for i in ctx.extras.get("control_ids", ())]
  half = a.knockout_candidates // 2
  chosen = rock_ids[: a.knockout_candidates - min(half, len(control_ids))]
  chosen += control_ids[: a.knockout_candidates - len(chosen)]
  if not chosen:
    return [_note("Knockout census", "knockout", "no candidate ids (no rocks selected)")]
  result = knockout.census(
    ctx.student,
    ctx.prompt_ids_SxP,
    ctx.prompt_mask_SxP,
    ctx.answers,
    chosen,
    grade=evaluation.verify,
    tokenizer=ctx.tokenizer,
    max_new_tokens=ctx.corpus_kwargs["max_new_tokens"],
    eos_ids=ctx.eos_ids,
    greedy=a.greedy,
    temperature=a.temperature,
    eps=a.knockout_eps,
    resamples=a.bootstrap_resamples,
    alpha=a.alpha,
    seed=a.seed,
  )
  return [knockout_report.section(result, ctx.out_dir)]


# Report order after the selection sections. Controls come first: the census uses its list.
SECTIONS: list[tuple[str, Callable[[AnalysisContext], list[report.Section]]]] = [
  ("controls", _controls),
  ("persistence", _persistence),
  ("geometry", _geometry),
  ("knockout", _knockout),
]
