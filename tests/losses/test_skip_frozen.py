"""Rock-Freeze skipping (opd.kept_capacity) equals the masked full computation (skip off).

The reference is always the same loss or step with kept_capacity=0: every position runs the
heads and the divergence and frozen ones get weight 0. Skipping must give the same loss, every
parameter gradient, the per-token divergence where it is tracked, and the same RockStats, in
the skipping branch and in the overflow fallback, on one device and on the 8-device mesh.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rockjax import objective, rocks
from rockjax import sharding as shd
from rockjax.losses import kept, skip_frozen
from tests.fixtures import (
  ROCK_IDS,
  STUDENT,
  TEACHER,
  V,
  build,
  loss_settings,
  make_batch,
  one_device_mesh,
  random_model,
)

RESPONSE = 7  # make_batch: 10 columns, 3 of prompt


def settings(**kw) -> objective.LossSettings:
  """Static rock list, chunk of 16 columns, rows of at most RESPONSE response positions."""
  base = dict(rock_mode="static", lam=0.0, chunk_size=16, response_len=RESPONSE)
  return loss_settings(**{**base, **kw})


def slot_counts(shape_BxL, s: objective.LossSettings):
  """skip_frozen.slot_counts with the loss settings' values (as objective passes them)."""
  return skip_frozen.slot_counts(
    shape_BxL,
    kept_capacity=s.kept_capacity,
    block_size=s.spec.block_size,
    response_len=s.response_len,
    frozen_kl=s.frozen_kl,
    rock_mode=s.rock_mode,
  )


def loss_grads_aux(s: objective.LossSettings, batch):
  """(loss, grads, aux) of the tiny student and teacher on `batch` under `s`, jitted."""
  graphdef, params = nnx.split(random_model(STUDENT, seed=0))
  t_graphdef, t_params = nnx.split(random_model(TEACHER, seed=1))
  rock_mask_V = rocks.ids_to_mask(ROCK_IDS, V)

  @jax.jit
  def run(params, t_params, batch):
    shifted = objective.shift(batch)
    teacher = nnx.merge(t_graphdef, t_params)
    t_out = objective.teacher_outputs(teacher, shifted.inputs_BxL, shifted.input_mask_BxL, s)
    loss_fn = objective.make_loss_fn(graphdef, s)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, t_out, shifted, rock_mask_V
    )
    aux = {k: getattr(aux, k) for k in ("kl_BxL", "w_BxL", "grad_norm_BxL", "skip_overflow")}
    return loss, grads, aux, shifted.loss_mask_BxL

  return run(params, t_params, batch)


def assert_trees_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.mark.parametrize(
  "lam,capacity,overflow",
  [(0.0, 0.6, 0), (0.5, 1.0, 0), (0.0, 0.2, 1)],
  ids=["half_frozen", "lam_half_prompt_only", "overflow_fallback"],
)
def test_skipping_equals_masking(lam, capacity, overflow):
  """Loss, every gradient, per-token KL and |g| of tracked positions: skip on == skip off."""
  batch = make_batch(seed=3)
  ref_loss, ref_grads, ref_aux, loss_mask = loss_grads_aux(settings(lam=lam), batch)
  loss, grads, aux, _ = loss_grads_aux(settings(lam=lam, kept_capacity=capacity), batch)
  # The case really is what its name says: the skipping branch ran, or the fallback did.
  assert float(aux["skip_overflow"]) == overflow
  counts = slot_counts(batch["tokens"].shape, settings(kept_capacity=capacity))
  kept_positions = int(np.sum(np.asarray(ref_aux["w_BxL"]) * np.asarray(loss_mask) > 0))
  assert counts.kept < batch["tokens"].size
  assert (kept_positions > counts.kept) == bool(overflow)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert_trees_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
  on = np.asarray(loss_mask) > 0  # every response position (frozen ones via the forward pass)
  for key in ("kl_BxL", "grad_norm_BxL"):
    np.testing.assert_allclose(
      np.asarray(aux[key])[on], np.asarray(ref_aux[key])[on], rtol=1e-5, atol=1e-7
    )
  assert np.all(np.asarray(aux["kl_BxL"])[~on] == 0)  # nothing scattered off the response


def test_off_policy_kd_skips_the_divergence_only():
  """Off-policy KD (forward KL + CE, no response bound): loss and gradients as skip off."""
  batch = make_batch(seed=5)
  kd = dict(mode="off_policy", kd_ratio=0.5, response_len=0)
  ref_loss, ref_grads, _, _ = loss_grads_aux(settings(**kd), batch)
  loss, grads, aux, _ = loss_grads_aux(settings(kept_capacity=0.5, **kd), batch)
  assert float(aux["skip_overflow"]) == 0
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert_trees_close(grads, ref_grads, rtol=1e-5, atol=1e-7)


def test_skip_mode_leaves_frozen_positions_untracked():
  """frozen_kl='skip': same loss and gradients; frozen positions hold no KL."""
  batch = make_batch(seed=4)
  ref_loss, ref_grads, ref_aux, loss_mask = loss_grads_aux(settings(), batch)
  s = settings(kept_capacity=0.6, frozen_kl="skip")
  assert slot_counts(batch["tokens"].shape, s).frozen == 0
  loss, grads, aux, _ = loss_grads_aux(s, batch)
  assert float(aux["skip_overflow"]) == 0
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert_trees_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
  kept_BxL = (np.asarray(ref_aux["w_BxL"]) > 0) & (np.asarray(loss_mask) > 0)
  frozen_BxL = (np.asarray(loss_mask) > 0) & ~kept_BxL
  assert frozen_BxL.sum() > 0.3 * (np.asarray(loss_mask) > 0).sum()  # about half is frozen
  kl, ref_kl = np.asarray(aux["kl_BxL"]), np.asarray(ref_aux["kl_BxL"])
  np.testing.assert_allclose(kl[kept_BxL], ref_kl[kept_BxL], rtol=1e-5, atol=1e-7)
  assert np.all(kl[frozen_BxL] == 0)


def test_gather_and_scatter_against_numpy():
  """Slots hold kept positions first, then tracked, each group's own; scatter inverts gather."""
  rng = np.random.default_rng(0)
  w = (rng.random((4, 6)) < 0.4).astype(np.float32)
  track = ((rng.random((4, 6)) < 0.5) | (w > 0)).astype(np.int32)
  x = rng.normal(size=(4, 6, 3)).astype(np.float32)
  slots = kept.plan(jnp.asarray(w), jnp.asarray(track), 10, ())
  flat_w, flat_t = w.reshape(-1), track.reshape(-1)
  want = np.concatenate([np.flatnonzero(flat_w > 0), np.flatnonzero((flat_t > 0) & (flat_w == 0))])
  np.testing.assert_array_equal(np.asarray(slots.index_GxS)[0, : len(want)], want[:10])
  assert int(slots.kept_G[0]) == (flat_w > 0).sum() and int(slots.tracked_G[0]) == len(want)
  got = np.asarray(kept.gather(jnp.asarray(x), slots, ()))
  np.testing.assert_array_equal(got[0], x.reshape(-1, 3)[np.asarray(slots.index_GxS)[0]])
  back = np.asarray(kept.scatter(jnp.asarray(got[..., 0]), slots, (4, 6), ()))
  hit = np.zeros(24, bool)
  hit[np.asarray(slots.index_GxS)[0]] = True
  np.testing.assert_array_equal(back.reshape(-1), np.where(hit, x[..., 0].reshape(-1), 0))


def run_steps(mesh, k, steps=2, **loss_kw):
  """Final state and metrics after `steps` SGD steps (the update is minus the gradient)."""
  fn, state, t_params = build(
    mesh, tx=optax.sgd(1.0), micro_batches=k, response_len=RESPONSE, **loss_kw
  )
  with jax.set_mesh(mesh):
    for i in range(steps):
      state, metrics = fn(state, t_params, make_batch(seed=i))
  return jax.device_get(state), jax.device_get(metrics)


def assert_same_step(a, b):
  """Parameters, RockStats and the loss / KL metrics of two runs agree."""
  (s1, m1), (s2, m2) = a, b
  assert_trees_close(s1.params, s2.params, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(s1.rock.count_V, s2.rock.count_V)
  np.testing.assert_allclose(s1.rock.kl_sum_V, s2.rock.kl_sum_V, rtol=1e-5, atol=1e-6)
  for key in ("opd/loss", "opd/kl", "rock/share_kl", "rock/share_grad_norm"):
    np.testing.assert_allclose(np.asarray(m1[key]), np.asarray(m2[key]), rtol=1e-5, atol=1e-7)


def test_step_with_skipping_equals_masked_step():
  """Two train steps on one device: parameters, RockStats and metrics as with skip off."""
  ref = run_steps(one_device_mesh(), 1)
  got = run_steps(one_device_mesh(), 1, kept_capacity=0.6)
  assert float(got[1]["opd/skip_overflow"][0]) == 0
  assert_same_step(got, ref)


def test_step_on_8_devices_with_micro_batches_equals_masked_step(devices8):
  """fsdp mesh, 2 micro-batches (one row per group), skipping and one overflowing step."""
  mesh8 = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  ref = run_steps(one_device_mesh(), 1)
  got = run_steps(mesh8, 2, kept_capacity=0.6)
  assert float(got[1]["opd/skip_overflow"][0]) == 0
  assert_same_step(got, ref)
  tight = run_steps(mesh8, 2, kept_capacity=0.15)  # 2 kept slots per row: rows overflow
  assert float(tight[1]["opd/skip_overflow"][0]) > 0
  assert_same_step(tight, ref)


def test_skip_mode_rock_stats_of_kept_ids():
  """frozen_kl='skip': RockStats of never-frozen ids as with skip off, frozen ids unseen."""
  (s_ref, _), (s_got, _) = (
    run_steps(one_device_mesh(), 1),
    run_steps(one_device_mesh(), 1, kept_capacity=0.6, frozen_kl="skip"),
  )
  assert_trees_close(s_got.params, s_ref.params, rtol=1e-4, atol=1e-6)
  free = np.ones(V, bool)
  free[ROCK_IDS] = False
  np.testing.assert_array_equal(s_got.rock.count_V[free], s_ref.rock.count_V[free])
  np.testing.assert_allclose(s_got.rock.kl_sum_V[free], s_ref.rock.kl_sum_V[free], rtol=1e-5)
  assert np.all(s_got.rock.count_V[ROCK_IDS] == 0) and np.all(s_ref.rock.count_V[ROCK_IDS] > 0)


def test_rock_mode_off_gets_no_frozen_slots():
  """rock.mode 'off' weighs every response position 1: no forward-only slots, skipping only
  the prompt, with the loss, gradients and per-token KL of skip off."""
  batch = make_batch(seed=6)
  s = settings(rock_mode="off", kept_capacity=1.0)
  counts = slot_counts(batch["tokens"].shape, s)
  assert counts.frozen == 0 and counts.kept < batch["tokens"].size
  ref_loss, ref_grads, ref_aux, loss_mask = loss_grads_aux(settings(rock_mode="off"), batch)
  loss, grads, aux, _ = loss_grads_aux(s, batch)
  assert float(aux["skip_overflow"]) == 0
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert_trees_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
  on = np.asarray(loss_mask) > 0
  np.testing.assert_allclose(
    np.asarray(aux["kl_BxL"])[on], np.asarray(ref_aux["kl_BxL"])[on], rtol=1e-5, atol=1e-7
  )
