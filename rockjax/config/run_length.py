"""How long a run is: `steps` from `data.epochs` passes over the train prompts, resolved once.

The pipeline resolves it before it records the workdir's config, so `config.json` shows the
steps used (and the prompts counted), and the lr schedule, the loop and the records agree. A
dry run reads no file: it uses the `data.num_train_prompts` hint, or keeps `steps` and says so.
"""

import fractions
import math

import ml_collections

from rockjax.data import packing, prompt_fit
from rockjax.data import records as records_lib
from rockjax.models import tokenizer as tokenizer_lib


def epoch_steps(num_prompts: int, epochs: float, prompts_per_step: int) -> int:
  """Steps for `epochs` passes over `num_prompts` prompts at `prompts_per_step` a step (>= 1)."""
  # Exact rational arithmetic: 0.1 epochs of 1000 prompts is 100 prompts, never 100.00000001.
  prompts = fractions.Fraction(num_prompts) * fractions.Fraction(str(epochs))
  return max(1, math.ceil(prompts / prompts_per_step))


def _tokenizer_path(c: ml_collections.ConfigDict) -> str:
  """The data tokenizer's directory as rockjax.runner.experiment.task_files picks it, '' if none yet."""
  if c.data.tokenizer_path:
    return c.data.tokenizer_path
  return next((m.path for m in (c.teacher, c.model) if m.source == "hf"), "")


def count_train_prompts(c: ml_collections.ConfigDict) -> tuple[int, str]:
  """(prompts the main stage trains on, where they come from), read as its pipeline reads them:
  bad records skipped (data.skip_bad_records) and over-long prompts dropped
  (data.prompt_overflow='drop') do not count."""
  if not c.data.train_path:  # the built-in task writes exactly data.task_size problems
    return c.data.task_size, f"data.task_size of the built-in {c.data.task!r} task"
  off_policy = c.opd.mode == "off_policy"
  loaded = records_lib.read_records(
    c.data.train_path,
    skip_bad=c.data.skip_bad_records,
    prompt_field=c.data.prompt_field,
    answer_field=c.data.answer_field,
    completion_field=c.data.completion_field if off_policy else None,
  )
  source = f"records in {c.data.train_path}"
  if loaded.skipped:
    source += f" ({len(loaded.skipped)} bad records skipped)"
  tokenizer_path = _tokenizer_path(c)
  if c.data.prompt_overflow != "drop" or not tokenizer_path:
    return len(loaded.records), source
  fitted = prompt_fit.fit_prompts(
    loaded.records,
    tokenizer_lib.load_tokenizer(tokenizer_path),
    max_prompt_len=c.data.max_prompt_len,
    overflow="drop",
    prompt_format=records_lib.PromptFormat.from_config(c.data),
  )
  if fitted.dropped:
    source += f" ({fitted.dropped} over data.max_prompt_len dropped)"
  return len(fitted.records), source


def count_packed_rows(c: ml_collections.ConfigDict) -> tuple[int, str] | None:
  """(packed rows of one epoch, where they come from) for data.pack, planned as the train
  pipeline plans them (rockjax.data.packing); None for the built-in task (no file yet)."""
  if not c.data.train_path or not _tokenizer_path(c):
    return None
  loaded = records_lib.read_records(
    c.data.train_path,
    skip_bad=c.data.skip_bad_records,
    prompt_field=c.data.prompt_field,
    answer_field=c.data.answer_field,
    completion_field=c.data.completion_field,
  )
  tokenizer = tokenizer_lib.load_tokenizer(_tokenizer_path(c))
  fitted = prompt_fit.fit_prompts(
    loaded.records,
    tokenizer,
    max_prompt_len=c.data.max_prompt_len,
    overflow=c.data.prompt_overflow,
    prompt_format=records_lib.PromptFormat.from_config(c.data),
  )
  lens = dict(max_prompt_len=c.data.max_prompt_len, max_len=c.data.max_len)
  rows = packing.plan_records(fitted.records, fitted.ids, tokenizer, seed=c.seed, **lens)
  return len(rows), f"{len(fitted.records)} records of {c.data.train_path} packed (data.pack)"


def resolve(
  c: ml_collections.ConfigDict, *, dry_run: bool = False
) -> tuple[ml_collections.ConfigDict, str]:
  """(the config with `steps` set from data.epochs, one line saying how); unchanged if epochs=0."""
  epochs, per_step = c.data.epochs, c.data.prompts_per_step
  if not epochs:
    return c, f"steps={c.steps} as given (data.epochs=0)"
  hint = c.data.num_train_prompts
  if dry_run:
    if not hint:
      return c, (
        f"steps={c.steps} as given: data.epochs={epochs} needs the train prompt count, which a "
        "dry run does not read; set data.num_train_prompts to size the schedule"
      )
    n, source = hint, "data.num_train_prompts (a real run counts data.train_path)"
  else:
    n, source = count_train_prompts(c)
    if hint and hint != n:
      source += f"; the data.num_train_prompts hint said {hint}"
  out = c.copy_and_resolve_references()
  out.data.num_train_prompts = n
  unit, rows = "prompts", n
  if c.data.pack and c.opd.mode == "off_policy":  # a step is prompts_per_step packed rows
    packed = None if dry_run else count_packed_rows(c)
    if packed is None:
      source += "; data.pack: counted as one row each, an upper bound (a run counts its rows)"
    else:
      (rows, source), unit = packed, "packed rows"
  out.steps = epoch_steps(rows, epochs, per_step)
  how = f"steps={out.steps} = ceil({rows} {unit} x {epochs} epochs / {per_step} per step), {source}"
  return out, how
