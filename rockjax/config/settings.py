"""The one translation from a config to the frozen settings the step, reports and dry run use.

Each concern gets a small frozen dataclass that validates itself when built: the loss
(objective.LossSettings), the rock selection and its schedule (rocks.RockSelection,
rocks.RockSchedule); StepSettings bundles them for the jitted step.
"""

from typing import Any, Callable

import jax
import ml_collections

from rockjax import batch as batch_lib
from rockjax import losses, objective, rocks
from rockjax import step as step_lib


def divergence_spec(c: ml_collections.ConfigDict) -> losses.DivergenceSpec:
  """The run's on-policy divergence and its settings (config group opd), used everywhere."""
  o = c.opd
  return losses.DivergenceSpec(
    kind=o.divergence,
    temperature=o.temperature,
    beta=o.jsd_beta,
    alpha=o.skew_alpha,
    chunk_size=o.chunk_size,
    block_size=o.block_size,
  )


def loss_settings(c: ml_collections.ConfigDict) -> objective.LossSettings:
  """The per-token loss from config groups opd and rock."""
  return objective.LossSettings(
    mode=c.opd.mode,
    spec=divergence_spec(c),
    chunked=c.opd.chunked,
    loss_sharding=c.opd.loss_sharding,
    kd_ratio=c.opd.kd_ratio,
    normalizer=c.opd.normalizer,
    rock_mode=c.rock.mode,
    lam=c.rock.lam,
    grad_norm_metric=c.opd.grad_norm_metric,
    kept_capacity=c.opd.kept_capacity,
    # On-policy rows hold at most max_new_tokens response positions (the rollout length).
    response_len=c.opd.max_new_tokens if c.opd.mode == "on_policy" else 0,
    frozen_kl=c.opd.frozen_kl,
  )


def rock_selection(c: ml_collections.ConfigDict) -> rocks.RockSelection:
  """How rocks are picked (config group rock): used by the step, the rock table and reports."""
  r = c.rock
  return rocks.RockSelection(
    k=r.k,
    min_freq=r.min_freq,
    exclude_top_freq=r.exclude_top_freq,
    selector=r.selector,
    window=r.window,
  )


def rock_schedule(c: ml_collections.ConfigDict) -> rocks.RockSchedule:
  """When rocks are reselected and snapshotted during training (config group rock)."""
  r = c.rock
  return rocks.RockSchedule(
    warmup_steps=r.warmup_steps,
    select_every=r.select_every,
    snapshot_step=r.snapshot_step,
    decay=r.decay,
  )


def step_settings(
  c: ml_collections.ConfigDict, teacher_graphdef: Any, schedule: Callable[[Any], jax.Array]
) -> step_lib.StepSettings:
  """Everything static the jitted train step needs."""
  loss = loss_settings(c)
  if loss.needs_teacher and c.teacher.source == "none":
    raise ValueError(
      "teacher.source='none' only works for plain SFT (opd.mode='off_policy' with opd.kd_ratio=0)"
    )
  return step_lib.StepSettings(
    loss=loss,
    teacher_graphdef=teacher_graphdef,
    schedule=schedule,
    selection=rock_selection(c),
    rock_schedule=rock_schedule(c),
    micro_batches=c.opt.micro_batches,
    updates_per_rollout=c.opd.updates_per_rollout,
  )


def total_updates(c: ml_collections.ConfigDict) -> int:
  """Optimiser updates of the run, the lr schedule's length: c.steps batches (train_step calls)
  x opd.updates_per_rollout updates each."""
  return c.steps * c.opd.updates_per_rollout


def batch_shape(c: ml_collections.ConfigDict) -> tuple[int, int]:
  """(rows, length) of a global train batch: rollouts on-policy, given completions off-policy;
  the length rounded up to a multiple of data.pad_to_multiple (rockjax.batch.TokenBatch.pad)."""
  if loss_settings(c).mode == "on_policy":
    rows = c.data.prompts_per_step * c.opd.samples_per_prompt
    length = c.data.max_prompt_len + c.opd.max_new_tokens
  else:
    rows, length = c.data.prompts_per_step, c.data.max_len
  return rows, batch_lib.padded_length(length, c.data.pad_to_multiple)
