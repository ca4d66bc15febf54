"""The fused divergence on the positions that need it (Rock-Freeze skipping, opd.kept_capacity).

A position of weight 0 (prompt, padding, a frozen rock) adds nothing to the loss or its
gradient, so the LM heads and the divergence need not run there. `divergence` gathers each
row group's kept positions (weight > 0) into a fixed number of slots (rockjax.losses.kept),
runs `losses.fused_divergence` on those only and scatters the per-token values back to [B, L].
Frozen response positions still feed the rock statistics: with opd.frozen_kl='forward' they
get further slots and a forward-only pass (both heads' logits, no head-gradient matmuls: XLA
drops the dead loop carries of a zero-weight, gradient-free fused call), with 'skip' none
(they are then untracked: `tracked_BxL` says which positions hold a divergence).

A batch with more kept (or tracked) positions than slots takes the full computation instead
(`lax.cond`: both branches are compiled, only the taken one runs), so the loss and gradients
are always those of the masked full computation.

Shape letters: B rows, L length, D hidden width, V vocabulary, G row groups, S slots.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rockjax.losses import fused, kept
from rockjax.losses.registry import DivergenceSpec


class Divergence(NamedTuple):
  """The divergence part of the loss terms."""

  total: jax.Array  # sum of weight * divergence (differentiable)
  kl_BxL: jax.Array  # per-token divergence (0 where untracked)
  grad_norm_BxL: jax.Array  # per-token |d divergence / d student logits|
  tracked_BxL: jax.Array | None  # 1 where kl_BxL holds the divergence; None: everywhere
  overflow: jax.Array | None  # float32 1 when the batch took the full fallback; None: off


class SlotCounts(NamedTuple):
  """Static slot counts of one group: fused slots and forward-only slots after them."""

  kept: int
  frozen: int


def slot_counts(
  shape_BxL: tuple[int, int],
  *,
  kept_capacity: float,
  block_size: int,
  response_len: int = 0,
  frozen_kl: str = "forward",
  rock_mode: str = "off",
) -> SlotCounts | None:
  """How many slots each group gets, or None when skipping is off or would save nothing.

  kept_capacity: slots for positions of weight > 0 as a fraction of the response positions
  (opd.kept_capacity, 0 = off); block_size: the fused divergence's token block (slots are
  counted in whole blocks); response_len: most response positions of a row (0 = L);
  frozen_kl / rock_mode: opd.frozen_kl and rock.mode (forward-only slots for frozen positions).
  """
  if kept_capacity <= 0:
    return None
  rows, length = shape_BxL
  _, groups = kept.group_axes(rows)
  mesh = jax.sharding.get_abstract_mesh()
  per_group = 1 if mesh.empty else math.prod(mesh.axis_sizes) // groups
  positions = rows // groups * length
  response = rows // groups * min(length, response_len or length)
  n_kept = kept.slot_count(math.ceil(kept_capacity * response), per_group, block_size, positions)
  if n_kept >= positions:
    return None
  n_frozen = 0  # rock.mode 'off' weighs every response position 1: none is ever frozen
  if frozen_kl == "forward" and rock_mode != "off" and response > n_kept:
    n_frozen = kept.slot_count(response - n_kept, per_group, block_size, positions - n_kept)
  return SlotCounts(n_kept, n_frozen)


def _on_slots(student_out, teacher_out, w_BxL, slots, counts: SlotCounts, axes, fused_fn):
  """(weighted sum, per-token divergence [B, L], gradient norm [B, L]) from the kept slots
  (fused: value and gradient) and the frozen ones after them (forward only)."""
  (h_s, w_s), (h_t, w_t) = student_out, teacher_out
  hs_GxSxD, ht_GxSxD = kept.gather(h_s, slots, axes), kept.gather(h_t, slots, axes)
  w_GxS = kept.gather(w_BxL, slots, axes)
  head = slice(0, counts.kept)
  out = fused_fn((hs_GxSxD[:, head], w_s), (ht_GxSxD[:, head], w_t), w_GxS[:, head])
  value_GxS, norm_GxS = out.per_token, out.grad_norm
  if counts.frozen:  # forward only: no gradient reaches the student from these slots
    rest = slice(counts.kept, None)
    student = jax.lax.stop_gradient((hs_GxSxD[:, rest], w_s))
    frozen = fused_fn(student, (ht_GxSxD[:, rest], w_t), jnp.zeros_like(w_GxS[:, rest]))
    value_GxS = jnp.concatenate([value_GxS, frozen.per_token], axis=1)
    norm_GxS = jnp.concatenate([norm_GxS, frozen.grad_norm], axis=1)
  back = lambda x_GxS: kept.scatter(x_GxS, slots, w_BxL.shape, axes)
  return out.weighted_sum, back(value_GxS), back(norm_GxS)


def divergence(
  student_out,
  teacher_out,
  w_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  *,
  spec: DivergenceSpec,
  sharding: str = "tokens",
  kept_capacity: float = 0.0,
  response_len: int = 0,
  frozen_kl: str = "forward",
  rock_mode: str = "off",
) -> Divergence:
  """The weighted divergence sum and per-token values, skipping weight-0 positions when on.

  `student_out` / `teacher_out` are (hidden [B, L, D], head [D, V]); `w_BxL` the divergence
  weights (0 off the loss); `loss_mask_BxL` the response positions; `spec` the divergence and
  `sharding` the heads' layout (losses.fused_divergence); the rest as in `slot_counts`.
  """
  counts = slot_counts(
    w_BxL.shape,
    kept_capacity=kept_capacity,
    block_size=spec.block_size,
    response_len=response_len,
    frozen_kl=frozen_kl,
    rock_mode=rock_mode,
  )

  def _fused(student, teacher, w) -> fused.FusedDivergence:
    return fused.fused_divergence(*student, *teacher, w, spec=spec, sharding=sharding)

  if counts is None:
    out = _fused(student_out, teacher_out, w_BxL)
    return Divergence(out.weighted_sum, out.per_token, out.grad_norm, None, None)
  axes, _ = kept.group_axes(w_BxL.shape[0])
  track_BxL = loss_mask_BxL if frozen_kl == "forward" else jnp.zeros_like(loss_mask_BxL)
  slots = kept.plan(w_BxL, track_BxL, counts.kept + counts.frozen, axes)
  overflow = jnp.any(slots.kept_G > counts.kept) | jnp.any(
    slots.tracked_G > counts.kept + counts.frozen
  )
  tracked_BxL = (track_BxL > 0) | (w_BxL > 0)

  def full(h_s, w_s, h_t, w_t):
    out = _fused((h_s, w_s), (h_t, w_t), w_BxL)
    return out.weighted_sum, out.per_token, out.grad_norm

  def skipped(h_s, w_s, h_t, w_t):
    return _on_slots((h_s, w_s), (h_t, w_t), w_BxL, slots, counts, axes, _fused)

  total, kl_BxL, gnorm_BxL = jax.lax.cond(overflow, full, skipped, *student_out, *teacher_out)
  kl_BxL, gnorm_BxL = (jnp.where(tracked_BxL, x, 0.0) for x in (kl_BxL, gnorm_BxL))
  tracked = None if frozen_kl == "forward" else tracked_BxL.astype(jnp.int32)
  return Divergence(total, kl_BxL, gnorm_BxL, tracked, overflow.astype(jnp.float32))
