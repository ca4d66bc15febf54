"""The studies after rock selection, as report sections: controls, persistence, geometry, knockout.

Each study takes the `AnalysisContext` that rockjax.analysis.run built (models, prompts,
the corpus and the selected rocks) and returns its report sections; `SECTIONS` lists them in
report order and `run_analysis` calls them after the selection sections.

- controls: the frequency-matched Random control list (random_control_ids.txt beside
  rock_ids.txt; the Random-control config freezes it), matched to the list Rock-Freeze freezes
  (analysis.control_match_list, else the run's static rock.list_path, else this analysis's top
  K) and disjoint from that list and from this analysis's rocks.
- persistence: the same prompts decoded and scored at an early checkpoint (analysis.
  early_checkpoint; else WORKDIR/ckpt at analysis.early_step; else the checkpoint the main
  stage started from), per-id mean KL early vs late.
- geometry: per-id mean logit-space gradients of rocks / high-KL / random ids on the corpus.
- knockout: the census over analysis.knockout_pool's candidates (the paper's: the top
  analysis.knockout_candidates ids by Rock Score), decoded up to analysis.knockout_max_new_tokens
  and classified by analysis.knockout_test.
- training: the stages' metrics.jsonl as curves (loss, KL, pass@1, rock shares).

Studies name what they compare (the early checkpoint's path, stage and step) and pass on what
their warnings need (groups requested, ids eligible, whether the early checkpoint is the final
one: same path, equal parameters or identical per-id KL; rockjax.analysis.degenerate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from etils import epath

from rockjax import errors, evaluation
from rockjax.analysis import (
  controls,
  corpus,
  degenerate,
  geometry,
  knockout,
  knockout_report,
  persistence,
  report,
  selection,
  selection_report,
  training_curves,
)
from rockjax.analysis.context import (
  AnalysisContext,
  describe_checkpoint,
  load_checkpoint_step,
  load_student,
)
from rockjax.config import settings
from rockjax.data import records
from rockjax.rocks import lists as rock_lists

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


def _match_list(ctx: AnalysisContext) -> tuple[np.ndarray, str]:
  """The ids the Random control is matched to, and where they come from: analysis.
  control_match_list, else the static list this run freezes (rock.mode 'static'), else this
  analysis's own rock set (its top K)."""
  a, rock = ctx.config.analysis, ctx.config.rock
  path = a.control_match_list or (rock.list_path if rock.mode == "static" else "")
  if path:
    ids = rock_lists.load_id_list(path, vocab_size=ctx.student.cfg.vocab_size)
    return ids.astype(np.int64), path
  rock_ids = np.asarray(ctx.selection["rock_ids"], np.int64)
  return rock_ids, f"{ctx.rock_ids_path} (this analysis's top {len(rock_ids)})"


def _controls(ctx: AnalysisContext) -> list[report.Section]:
  """The Random control list: matched on log frequency to the list that is (or would be)
  frozen, disjoint from it and from this analysis's rock set."""
  a, sel = ctx.config.analysis, ctx.selection["selection"]
  freq_V, rock_ids = ctx.selection["freq_V"], ctx.selection["rock_ids"]
  try:  # a missing or out-of-vocabulary list, or too few candidates (tiny corpora)
    list_ids, source = _match_list(ctx)
    seen, unseen = controls.split_unseen(freq_V, list_ids)
    ids = controls.frequency_matched(
      freq_V,
      seen,
      seed=a.control_seed,
      exclude=np.union1d(np.asarray(rock_ids, np.int64), unseen),
      min_freq=sel.min_freq,
      exclude_top_freq=sel.exclude_top_freq,
    )
  except ValueError as e:
    return [_note("Frequency-matched random control", "controls", str(e))]
  ctx.extras["control_ids"], ctx.extras["control_list_ids"] = ids, seen
  header = (
    f"frequency-matched to {len(seen)} ids of {source} ({len(unseen)} never in the corpus: "
    f"unmatched); disjoint from that list and from the {len(rock_ids)} rocks of "
    f"{ctx.rock_ids_path}; seed {a.control_seed}"
  )
  path = controls.write_control_list(controls.control_list_path(ctx.rock_ids_path), ids, header)
  result = controls.control_result(freq_V, seen, ids, matched_to=source, unseen_ids=unseen)
  label = lambda i: selection_report.token_label(ctx.tokenizer, i)  # noqa: E731
  result["rock_tokens"] = [label(i) for i in seen]
  result["control_tokens"] = [label(i) for i in ids]
  section = controls.section(result, ctx.out_dir)
  return [report.Section(**{**section.__dict__, "numbers": {**section.numbers, "path": path}})]


def _early_point(ctx: AnalysisContext) -> tuple[str, int | None]:
  """(directory, step) of the early checkpoint: analysis.early_checkpoint (its newest step);
  else WORKDIR/ckpt at analysis.early_step; else the HF checkpoint the main stage started from
  (step None: the directory's own); ('', None) when there is none."""
  c = ctx.config
  if c.analysis.early_checkpoint:
    return c.analysis.early_checkpoint, None
  if c.analysis.early_step > 0:
    return str(epath.Path(ctx.workdir) / "ckpt"), int(c.analysis.early_step)
  return (c.model.path if c.model.source == "hf" else ""), None


def _is_final(ctx: AnalysisContext, path: str, step: int | None) -> bool:
  """Whether (path, step) names the final student's own checkpoint."""
  if not degenerate.same_path(path, ctx.student_path):
    return False
  return step is None or step == describe_checkpoint(ctx.student_path, ctx.student_source)["step"]


def _early_sums(
  ctx: AnalysisContext, path: str, step: int | None
) -> tuple[Any, str, np.ndarray, np.ndarray]:
  """(model, description, freq_V, kl_sum_V) at the early checkpoint; the final student's own
  corpus when it is the final student's checkpoint (nothing to decode again)."""
  if _is_final(ctx, path, step):
    return ctx.student, ctx.student_source, ctx.selection["freq_V"], ctx.selection["kl_sum_V"]
  if step is None:
    student, source = load_student(ctx.config, ctx.workdir, path, ctx.mesh)
  else:
    student, source = load_checkpoint_step(ctx.config, ctx.workdir, step, ctx.mesh)
  out = str(epath.Path(ctx.out_dir) / EARLY_CORPUS_FILE)
  corpus.build_corpus(
    student,
    ctx.teacher,
    ctx.prompt_ids_SxP,
    ctx.prompt_mask_SxP,
    out,
    metadata={"student": source},
    **ctx.corpus_kwargs,
  )
  return (student, source, *corpus.id_sums(out, ctx.student.cfg.vocab_size))


def _persistence(ctx: AnalysisContext) -> list[report.Section]:
  """Per-id mean KL at the early checkpoint (same prompts, same scoring) vs the final one."""
  path, step = _early_point(ctx)
  if not path:
    why = (
      "no early checkpoint: set analysis.early_step (a training step whose checkpoint is kept) "
      "or analysis.early_checkpoint (a HF export or checkpoint dir)"
    )
    return [_note("Persistence", "persistence", why)]
  try:
    student, source, early_freq, early_kl = _early_sums(ctx, path, step)
  except errors.WorkdirError as e:  # analysis.early_step's checkpoint was never saved
    return [_note("Persistence", "persistence", str(e))]
  late_freq, late_kl = ctx.selection["freq_V"], ctx.selection["kl_sum_V"]
  early_mean, late_mean = _mean(early_freq, early_kl), _mean(late_freq, late_kl)
  a, sel = ctx.config.analysis, ctx.selection["selection"]
  result = persistence.persistence(
    early_freq,
    early_mean,
    late_freq,
    late_mean,
    ctx.selection["rock_ids"],
    k=sel.k,
    min_freq=max(sel.min_freq, 2),
    num_random=a.num_random,
    seed=a.seed,
  )
  result["early"] = describe_checkpoint(path, source)
  result["late"] = describe_checkpoint(ctx.student_path, ctx.student_source)
  result["self_comparison"] = degenerate.self_comparison_reasons(
    paths=_is_final(ctx, path, step),
    parameters=degenerate.same_parameters(student, ctx.student),
    corpus=degenerate.same_corpus(early_freq, early_mean, late_freq, late_mean),
  )
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
  result = geometry.geometry(sums, groups)
  result["requested"] = {"rocks": sel.k, "high_kl": sel.k, "random": a.num_random}
  result["eligible"] = int(np.sum(freq_V > 0))
  return [geometry.section(result, ctx.out_dir)]


def _knockout_pool(ctx: AnalysisContext) -> tuple[list[int], int]:
  """(candidate ids, how many of the first ones are rocks) per analysis.knockout_pool:
  'rock_score' (the paper's): the top analysis.knockout_candidates ids by Rock Score under the
  selection's min_freq / exclude_top_freq; 'rocks_and_controls': the ids the control list was
  matched to and (as many) of their controls."""
  a, sel = ctx.config.analysis, ctx.selection["selection"]
  n, rock_ids = a.knockout_candidates, [int(i) for i in ctx.selection["rock_ids"]]
  if a.knockout_pool == "rock_score":
    by_score = dataclasses.replace(sel, k=n, selector="rock_score")
    pool = selection.ranked_ids(ctx.selection["freq_V"], ctx.selection["kl_sum_V"], by_score)
    # The rock set heads the pool when the selector is rock_score: count that common prefix.
    same = [int(p) == r for p, r in zip(pool, rock_ids)]
    num_rocks = same.index(False) if False in same else len(same)
    return [int(i) for i in pool], num_rocks
  listed = [int(i) for i in ctx.extras.get("control_list_ids", rock_ids)]
  control_ids = [int(i) for i in ctx.extras.get("control_ids", ())]
  chosen = listed[: n - min(n // 2, len(control_ids))]
  num_rocks = len(chosen)
  return chosen + control_ids[: n - num_rocks], num_rocks


def _knockout(ctx: AnalysisContext) -> list[report.Section]:
  """The census: each candidate id banned in turn (analysis.knockout_pool chooses them), the
  evaluation set decoded up to analysis.knockout_max_new_tokens and graded."""
  a = ctx.config.analysis
  chosen, num_rocks = _knockout_pool(ctx)
  if not chosen:
    return [_note("Knockout census", "knockout", "no candidate ids (no rocks selected)")]
  mesh = ctx.mesh  # the census's rows split over its data x fsdp shards
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  result = knockout.census(
    ctx.student,
    ctx.prompt_ids_SxP,
    ctx.prompt_mask_SxP,
    ctx.answers,
    chosen,
    grade=evaluation.verify,
    tokenizer=ctx.tokenizer,
    max_new_tokens=a.knockout_max_new_tokens or ctx.corpus_kwargs["max_new_tokens"],
    eos_ids=ctx.eos_ids,
    greedy=a.greedy,
    temperature=a.temperature,
    eps=a.knockout_eps,
    resamples=a.bootstrap_resamples,
    alpha=a.alpha,
    seed=a.seed,
    test=a.knockout_test,
    batch_rows=-(-a.knockout_batch_rows // shards) * shards,
  )
  result["pool"], result["num_rocks"] = a.knockout_pool, num_rocks
  return [knockout_report.section(result, ctx.out_dir)]


def _training(ctx: AnalysisContext) -> list[report.Section]:
  """The stages' training curves, read from the workdir's metrics.jsonl files."""
  return [training_curves.section(ctx.workdir, ctx.out_dir)]


# Report order after the selection sections. Controls come first: the census uses its list.
SECTIONS: list[tuple[str, Callable[[AnalysisContext], list[report.Section]]]] = [
  ("controls", _controls),
  ("persistence", _persistence),
  ("geometry", _geometry),
  ("knockout", _knockout),
  ("training", _training),
]
