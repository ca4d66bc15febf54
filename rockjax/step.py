"""The pure train step and the one place it is jitted.

Shape letters: B batch (sequences), L sequence length (padded, TokenBatch.pad), V vocab,
U optimiser updates per batch (opd.updates_per_rollout), R = B / U rows per update,
K micro-batches per update (opt.micro_batches), M = R / K rows per micro-batch.
A batch is a dict of `tokens` [B, L] int32 (prompt + response), `attention_mask` [B, L] and
`response_mask` [B, L] (1 on tokens the loss covers: generated or given completions), or a
rockjax.batch.TokenBatch; packed rows (data.pack) add `segment_ids` and `positions` [B, L],
which split with the rows and reach both models' forwards.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rockjax import losses, objective, rocks
from rockjax.batch import TokenBatch
from rockjax.state import TrainState

Metrics = dict[str, tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static settings of the step (hashable: they are compile-time constants)."""

  loss: objective.LossSettings
  teacher_graphdef: nnx.GraphDef | None
  schedule: Callable[[Any], jax.Array]  # learning rate of the update at this step (the metric)
  selection: rocks.RockSelection = rocks.RockSelection()  # modes 'off' and 'dynamic'
  rock_schedule: rocks.RockSchedule = rocks.RockSchedule()
  micro_batches: int = 1  # K: each update's rows are scanned in K groups (activation memory / K)
  updates_per_rollout: int = 1  # U: sequential optimiser updates per batch, on R = B / U rows each

  def __post_init__(self):
    if self.micro_batches < 1:
      raise ValueError(f"opt.micro_batches must be >= 1, got {self.micro_batches}")
    if self.updates_per_rollout < 1:
      raise ValueError(f"opd.updates_per_rollout must be >= 1, got {self.updates_per_rollout}")


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


def _token_grad_norm(aux, teacher_out, s: StepSettings) -> jax.Array | None:
  """Per-token |d divergence / d student logits| [M, L] for the rock/share_grad_norm metric.

  Free on the chunked (fused) path; the full-logit path derives it from the logits here, per
  micro-batch, so [B, L, V] logits are never kept for the whole batch.
  """
  ls = s.loss
  if not ls.grad_norm_metric or teacher_out is None:
    return None
  gnorm_MxL = aux.grad_norm_BxL
  if gnorm_MxL is None:
    gnorm_MxL = losses.logit_gradient_norm(
      jax.lax.stop_gradient(aux.student_out.logits_BxLxV),
      teacher_out.logits_BxLxV,
      spec=ls.divergence_spec,
    )
  return jax.lax.stop_gradient(gnorm_MxL)


def _grad_norm_share(gnorm_BxL, targets_BxL, loss_mask_BxL, rock_mask_V) -> Metrics:
  """Share of the per-token logit-gradient norm on rock positions (docs/method.md, gradients)."""
  if gnorm_BxL is None:
    return {}
  on = loss_mask_BxL > 0
  gnorm_BxL = jnp.where(on, gnorm_BxL, 0.0)
  is_rock = rocks.is_rock_BxL(rock_mask_V, targets_BxL) & on
  return {"rock/share_grad_norm": (jnp.sum(jnp.where(is_rock, gnorm_BxL, 0.0)), jnp.sum(gnorm_BxL))}


def _split(x_BxL: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [K, M, ...], strided: micro-batch i holds rows i, i + K, i + 2K, ...

  Strided rather than contiguous so that every micro-batch keeps the batch's sharding: each
  device's contiguous block of rows contributes B / (K * devices) rows to every micro-batch.
  """
  return x_BxL.reshape(x_BxL.shape[0] // k, k, *x_BxL.shape[1:]).swapaxes(0, 1)


def _unsplit(x_KxMxL: jax.Array) -> jax.Array:
  """The inverse of `_split`: [K, M, ...] -> [B, ...] in the batch's row order."""
  return x_KxMxL.swapaxes(0, 1).reshape(-1, *x_KxMxL.shape[2:])


def _update(
  state: TrainState,
  teacher_params: nnx.State | None,
  shifted: objective.Shifted,
  s: StepSettings,
) -> tuple[TrainState, Metrics]:
  """One optimiser update on R rows: per micro-batch a teacher forward (constant) and the
  student's loss and gradients, accumulated in float32; then ONE optax update and the rock
  statistics of this update's forward (reselected when due at the new update count)."""
  k = s.micro_batches
  # The normaliser of this update's rows, once: the micro-batches' losses then add up to its
  # token mean (or weight mean), exactly as with one micro-batch.
  count = objective.batch_count(state.rock_mask, shifted, s.loss)
  loss_fn = objective.make_loss_fn(state.graphdef, s.loss)

  def micro_step(carry, mb: objective.Shifted):
    grads_acc, total = carry
    teacher = None if teacher_params is None else nnx.merge(s.teacher_graphdef, teacher_params)
    packed = dict(segment_ids_BxL=mb.segment_ids_BxL, positions_BxL=mb.positions_BxL)
    teacher_out = objective.teacher_outputs(
      teacher, mb.inputs_BxL, mb.input_mask_BxL, s.loss, **packed
    )
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, teacher_out, mb, state.rock_mask, count=count
    )
    grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
    per_token = {
      "kl": jax.lax.stop_gradient(aux.kl_BxL),
      "grad_norm": _token_grad_norm(aux, teacher_out, s),
      "tracked": aux.tracked_BxL,  # None unless frozen positions were skipped untracked
      "overflow": aux.skip_overflow,  # None unless Rock-Freeze skipping is on
    }
    return (grads_acc, total + aux.total), per_token

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  micro = jax.tree.map(lambda x: _split(x, k), shifted)  # packed rows' fields too, when set
  (grads_f32, total), per_token = jax.lax.scan(micro_step, (zeros, jnp.float32(0)), micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads_f32, state.params)
  kl_RxL = _unsplit(per_token["kl"])
  gnorm_RxL = None if per_token["grad_norm"] is None else _unsplit(per_token["grad_norm"])

  # The masking function was applied inside the loss (weights), i.e. before this update.
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  targets, loss_mask = shifted.targets_BxL, shifted.loss_mask_BxL
  # Positions whose divergence was computed: every response position unless skipping left
  # frozen ones out (opd.frozen_kl='skip'); the rock statistics and KL metrics read only these.
  tracked = loss_mask
  if per_token["tracked"] is not None:
    tracked = loss_mask * _unsplit(per_token["tracked"])
  new_step = state.step + 1
  rock, rock_mask = _rock_update(state, targets, kl_RxL, tracked, new_step, s)
  metrics = _metrics(state, shifted, s, total, count, grads, kl_RxL, gnorm_RxL, tracked)
  if per_token["overflow"] is not None:  # micro-batches that fell back to the full loss
    metrics["opd/skip_overflow"] = (jnp.sum(per_token["overflow"]), jnp.float32(k))
  new_state = state.replace(
    step=new_step, params=params, opt_state=opt_state, rock=rock, rock_mask=rock_mask
  )
  return new_state, metrics


def _rock_update(state: TrainState, targets_RxL, kl_RxL, tracked_RxL, new_step, s: StepSettings):
  """(rock statistics with this update's forward added, the rock mask for the next update)."""
  rock = rocks.update(state.rock, targets_RxL, kl_RxL, tracked_RxL, decay=s.rock_schedule.decay)
  if s.rock_schedule.snapshot_step > 0:
    rock = jax.lax.cond(
      new_step == s.rock_schedule.snapshot_step, rocks.snapshot, lambda r: r, rock
    )
  return rock, _next_rock_mask(rock, state.rock_mask, new_step, s)


def _metrics(state, shifted, s, total, count, grads, kl_RxL, gnorm_RxL, tracked_RxL) -> Metrics:
  """One update's (sum, count) metrics; rock shares use the mask its loss used (state's)."""
  targets, loss_mask = shifted.targets_BxL, shifted.loss_mask_BxL
  return {
    "opd/loss": (total, count),
    "opd/kl": losses.reduce(kl_RxL, tracked_RxL),
    "opd/response_tokens": (jnp.sum(loss_mask, dtype=jnp.float32), jnp.float32(1)),
    "opt/grad_norm": (optax.global_norm(grads), jnp.float32(1)),
    "opt/lr": (jnp.asarray(s.schedule(state.step), jnp.float32), jnp.float32(1)),
    "rock/num_selected": (jnp.sum(state.rock_mask, dtype=jnp.float32), jnp.float32(1)),
    # Untracked positions hold 0 KL and 0 gradient norm: their shares need no extra mask.
    **rocks.rock_shares(state.rock_mask, targets, kl_RxL, loss_mask),
    **_grad_norm_share(gnorm_RxL, targets, loss_mask, state.rock_mask),
  }


def train_step(
  state: TrainState,
  teacher_params: nnx.State | None,
  batch: TokenBatch | Mapping[str, jax.Array],
  *,
  settings: StepSettings,
) -> tuple[TrainState, Metrics]:
  """One batch (a rollout batch on-policy): U = opd.updates_per_rollout sequential optimiser
  updates, update u on rows u, u + U, u + 2U, ... (strided like the micro-batches, so every
  update keeps the batch's sharding; with prompt-major rollouts and U dividing
  opd.samples_per_prompt, each update holds samples_per_prompt / U samples of every prompt).

  Update u (from 0) runs its own forward/backward on the parameters update u - 1 left, so its
  rows (sampled before update 0) are u updates off-policy; each update is exactly a U = 1
  step on its rows (its own normaliser, rock statistics and reselection at its update count).
  `state.step` counts updates. Metrics are the updates' (sum, count) pairs added up:
  token-weighted quantities over the whole batch; the per-update scalars (opt/lr,
  opt/grad_norm, rock/num_selected, opd/response_tokens) become the mean over its updates.
  """
  s, u, k = settings, settings.updates_per_rollout, settings.micro_batches
  shifted = objective.shift(batch)
  rows = shifted.inputs_BxL.shape[0]
  if rows % u:
    raise ValueError(
      f"opd.updates_per_rollout={u}: the batch has {rows} rows, not a multiple of it"
    )
  if (rows // u) % k:
    raise ValueError(
      f"opt.micro_batches={k}: each update has {rows // u} rows "
      f"({rows} / opd.updates_per_rollout={u}), not a multiple of it"
    )
  if u == 1:  # no scan: the program of a plain one-update step
    return _update(state, teacher_params, shifted, s)
  groups = jax.tree.map(lambda x: _split(x, u), shifted)
  state, metrics_U = jax.lax.scan(lambda st, g: _update(st, teacher_params, g, s), state, groups)
  return state, jax.tree.map(lambda x_U: jnp.sum(x_U, axis=0), metrics_U)


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
