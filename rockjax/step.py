"""The pure train step and the one place it is jitted.

Shape letters: B batch (sequences), L sequence length, T = L - 1 predicted positions, V vocab.
A batch is a dict of `tokens` [B, L] int32 (prompt + response), `attention_mask` [B, L] and
`response_mask` [B, L] (1 on tokens the loss covers: generated or given completions).
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rockjax import losses, objective, rocks
from rockjax.state import TrainState

Metrics = dict[str, tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static settings of the step (hashable: they are compile-time constants)."""

  loss: objective.LossSettings
  teacher_graphdef: nnx.GraphDef | None
  schedule: Callable[[Any], jax.Array]  # learning rate per optimiser step (for the metric)
  selection: rocks.RockSelection = rocks.RockSelection()  # modes 'off' and 'dynamic'
  rock_schedule: rocks.RockSchedule = rocks.RockSchedule()


def _next_rock_mask(
  rock: rocks.RockStats, old_mask_V: jax.Array, new_step: jax.Array, s: StepSettings
) -> jax.Array:
  """Reselect the rocks from the updated statistics when due (modes 'dynamic' and 'off').

  In mode 'off' the selection only feeds the rock/* metrics (online detection while
  training is unchanged); a 'static' list never moves.
  """
  if s.loss.rock_mode == "static":
    return old_mask_V
  return jnp.where(s.rock_schedule.due(new_step), s.selection.select(rock), old_mask_V)


def _grad_norm_share(
  aux, teacher_out, targets_BxT, loss_mask_BxT, rock_mask_V, s: StepSettings
) -> Metrics:
  """Share of the per-token logit-gradient norm on rock positions (docs/method.md, gradients)."""
  ls = s.loss
  if not ls.grad_norm_metric or teacher_out is None:
    return {}
  gnorm_BxT = aux["grad_norm_BxT"]  # free on the chunked (fused) path
  if gnorm_BxT is None:
    logits = jax.lax.stop_gradient(aux["student_out"][0])
    gnorm_BxT = losses.logit_gradient_norm(
      logits,
      teacher_out[0],
      kind=ls.divergence_kind,
      temperature=ls.temperature,
      beta=ls.jsd_beta,
      alpha=ls.skew_alpha,
    )
  on = loss_mask_BxT > 0
  gnorm_BxT = jnp.where(on, jax.lax.stop_gradient(gnorm_BxT), 0.0)
  is_rock = rocks.is_rock_BxL(rock_mask_V, targets_BxT) & on
  return {"rock/share_grad_norm": (jnp.sum(jnp.where(is_rock, gnorm_BxT, 0.0)), jnp.sum(gnorm_BxT))}


def train_step(
  state: TrainState,
  teacher_params: nnx.State | None,
  batch: dict[str, jax.Array],
  *,
  settings: StepSettings,
) -> tuple[TrainState, Metrics]:
  """One OPD/KD update: teacher forward (constant), student loss + grads, rock stats, optax."""
  s = settings
  shifted = objective.shift(batch)
  inputs, in_mask, targets, loss_mask = shifted
  teacher = None if teacher_params is None else nnx.merge(s.teacher_graphdef, teacher_params)
  teacher_out = objective.teacher_outputs(teacher, inputs, in_mask, s.loss)

  loss_fn = objective.make_loss_fn(state.graphdef, s.loss)
  (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, teacher_out, shifted, state.rock_mask
  )
  # The masking function was applied inside the loss (weights), i.e. before this update.
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  kl_BxT = jax.lax.stop_gradient(aux["kl_BxT"])
  new_step = state.step + 1
  rock = rocks.update(state.rock, targets, kl_BxT, loss_mask, decay=s.rock_schedule.decay)
  if s.rock_schedule.snapshot_step > 0:
    rock = jax.lax.cond(
      new_step == s.rock_schedule.snapshot_step, rocks.snapshot, lambda r: r, rock
    )
  rock_mask = _next_rock_mask(rock, state.rock_mask, new_step, s)

  metrics: Metrics = {
    "opd/loss": (aux["sum"], aux["count"]),
    "opd/kl": losses.reduce(kl_BxT, loss_mask),
    "opd/response_tokens": (jnp.sum(loss_mask, dtype=jnp.float32), jnp.float32(1)),
    "opt/grad_norm": (optax.global_norm(grads), jnp.float32(1)),
    "opt/lr": (jnp.asarray(s.schedule(state.step), jnp.float32), jnp.float32(1)),
    "rock/num_selected": (jnp.sum(state.rock_mask, dtype=jnp.float32), jnp.float32(1)),
    **rocks.rock_shares(state.rock_mask, targets, kl_BxT, loss_mask),
    **_grad_norm_share(aux, teacher_out, targets, loss_mask, state.rock_mask, s),
  }
  new_state = state.replace(
    step=new_step, params=params, opt_state=opt_state, rock=rock, rock_mask=rock_mask
  )
  return new_state, metrics


def jit_train_step(
  settings: StepSettings, state_shardings: Any, teacher_shardings: Any, batch_sharding: Any
):
  """The one jitted train step.

  Parameters and optimiser moments are sharded by their logical axes (sharding.tree_shardings), the
  teacher likewise, the batch on ('data', 'fsdp'); metrics come back replicated scalars.
  Donating `state` is safe: the host loop never reads a state after passing it to the step,
  and the teacher (read every step) is not donated.
  """
  step = functools.partial(train_step, settings=settings)
  return jax.jit(
    step,
    in_shardings=(state_shardings, teacher_shardings, batch_sharding),
    out_shardings=(state_shardings, None),
    donate_argnames="state",
  )
