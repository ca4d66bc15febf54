"""opd.updates_per_rollout: U updates inside one train step equal U one-update steps by hand."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import tiny
from rockjax import errors
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax.config import check as config_check
from tests.fixtures import STUDENT, TEACHER, build, make_batch, one_device_mesh, random_model

U = 2


def rows_of_update(batch, u):
  """The rows update u trains on (the documented split: rows u, u + U, u + 2U, ...)."""
  return {k: v[u::U] for k, v in batch.items()}


def warmup_cosine(updates=4):
  """make_optimizer (AdamW + warm-up/cosine + clipping) over `updates` optimiser updates."""
  opt = ml_collections.ConfigDict(
    dict(lr=1e-2, end_lr=1e-3, warmup_frac=0.25, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0)
  )
  opt.clip = 1.0
  return state_lib.make_optimizer(opt, updates)


def run(updates_per_rollout, micro_batches, batches, **kw):
  """(final state, metrics of each call) of the step over `batches` from the same start."""
  mesh = one_device_mesh()
  tx, schedule = warmup_cosine()
  fn, state, t_params = build(
    mesh,
    tx=tx,
    schedule=schedule,
    updates_per_rollout=updates_per_rollout,
    micro_batches=micro_batches,
    **kw,
  )
  metrics = []
  with jax.set_mesh(mesh):
    for batch in batches:
      state, m = fn(state, t_params, batch)
      metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def assert_trees_close(a, b, name, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=atol, err_msg=name)


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize(
  "loss_kw",
  [dict(chunked=True, normalizer="tokens"), dict(chunked=False, normalizer="weights")],
  ids=["fused_tokens", "full_logits_weights"],
)
def test_two_updates_per_batch_equal_two_one_update_steps_by_hand(micro_batches, loss_kw):
  """U=2 on an 8-row batch == the U=1 step on rows 0,2,4,6 then on rows 1,3,5,7: params,
  AdamW state, rock statistics, the reselected mask (dynamic, reselected after every update,
  lam 0.3 so the mask changes the second update's loss) and every metric (the sum of the two
  steps' (sum, count) pairs)."""
  kw = dict(rock_mode="dynamic", lam=0.3, **loss_kw)
  batch = make_batch(seed=3)
  s2, (m2,) = run(U, micro_batches, [batch], **kw)
  s1, m1 = run(1, micro_batches, [rows_of_update(batch, u) for u in range(U)], **kw)
  assert int(s2.step) == int(s1.step) == U  # state.step counts optimiser updates
  assert m2.keys() == m1[0].keys() and "rock/share_kl" in m2
  for key in m2:
    want = [sum(float(m[key][i]) for m in m1) for i in (0, 1)]
    np.testing.assert_allclose(np.asarray(m2[key], np.float64), want, rtol=1e-5, err_msg=key)
  # The lr metric is the mean over the step's updates: updates 1 and 2 of the schedule.
  tx, schedule = warmup_cosine()
  assert m2["opt/lr"][1] == U
  np.testing.assert_allclose(m2["opt/lr"][0], float(schedule(0)) + float(schedule(1)), rtol=1e-6)
  # The mask used by the second update is the one reselected after the first (it changed).
  assert not np.array_equal(s2.rock_mask, np.zeros_like(s2.rock_mask))
  np.testing.assert_array_equal(s2.rock_mask, s1.rock_mask)
  for name in ("opt_state", "rock"):
    assert_trees_close(getattr(s2, name), getattr(s1, name), name)
  # AdamW divides by sqrt(v): summation-order round-off reaches ~1e-6 of a 1e-2 step.
  assert_trees_close(s2.params, s1.params, "params", atol=1e-5)


def test_two_updates_differ_from_one_update_on_the_whole_batch():
  """The test above can fail: one update on all 8 rows is a different state."""
  batch = make_batch(seed=3)
  s2, _ = run(U, 1, [batch], rock_mode="off")
  s_one, _ = run(1, 1, [batch], rock_mode="off")
  diff = max(
    float(np.abs(a - b).max())
    for a, b in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s_one.params))
  )
  assert diff > 1e-3


def test_second_update_uses_the_first_updates_params():
  """SGD(lr=1) by hand: p1 = p0 - grad L(p0; rows 0::2), p2 = p1 - grad L(p1; rows 1::2), with
  L a direct full-logit reverse-KL token mean (no chunks, no weights; teacher forward by hand)."""
  batch = make_batch(seed=5)
  mesh = one_device_mesh()
  fn, state, t_params = build(mesh, tx=optax.sgd(1.0), rock_mode="off", updates_per_rollout=U)
  with jax.set_mesh(mesh):
    got = jax.device_get(fn(state, t_params, batch)[0].params)

  graphdef, params = nnx.split(random_model(STUDENT, seed=0))
  teacher = random_model(TEACHER, seed=1)

  def direct_loss(p, rows):
    ids, mask = rows["tokens"][:, :-1], rows["attention_mask"][:, :-1]
    on = (rows["response_mask"][:, 1:] * rows["attention_mask"][:, 1:]) > 0
    logp_s = jax.nn.log_softmax(nnx.merge(graphdef, p)(ids, mask))
    logp_t = jax.nn.log_softmax(teacher(ids, mask))
    kl = jnp.sum(jnp.exp(logp_s) * (logp_s - logp_t), -1)
    return jnp.sum(jnp.where(on, kl, 0.0)) / on.sum()

  grad = jax.jit(jax.grad(direct_loss))
  for u in range(U):
    g = grad(params, rows_of_update(batch, u))
    params = jax.tree.map(lambda p, d: p - d, params, g)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(a, np.asarray(b), rtol=2e-3, atol=2e-6)


def test_sharded_two_updates_equal_unsharded(devices8):
  """8 devices (4 rows per update over data x fsdp = 4) == 1 device, with U=2. SGD keeps the
  comparison linear in the gradients (AdamW turns a near-zero entry's round-off into a step)."""
  mesh8 = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  out = []
  for mesh in (one_device_mesh(), mesh8):
    fn, state, t_params = build(
      mesh, tx=optax.sgd(0.5), rock_mode="dynamic", lam=0.0, updates_per_rollout=U
    )
    with jax.set_mesh(mesh):
      state, m = fn(state, t_params, make_batch(seed=0))
    out.append((jax.device_get(state), jax.device_get(m)))
  (s1, m1), (s8, m8) = out
  np.testing.assert_allclose(m8["opd/loss"], m1["opd/loss"], rtol=1e-5)
  np.testing.assert_array_equal(s8.rock.count_V, s1.rock.count_V)
  np.testing.assert_array_equal(s8.rock_mask, s1.rock_mask)
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_step_rejects_rows_not_divisible():
  fn, state, t_params = build(one_device_mesh(), updates_per_rollout=3)
  with jax.set_mesh(one_device_mesh()), pytest.raises(ValueError, match="updates_per_rollout=3"):
    fn(state, t_params, make_batch())
  fn, state, t_params = build(one_device_mesh(), updates_per_rollout=2, micro_batches=8)
  with jax.set_mesh(one_device_mesh()), pytest.raises(ValueError, match="opt.micro_batches=8"):
    fn(state, t_params, make_batch())


@pytest.mark.parametrize(
  "overrides,field,says",
  [
    # tiny: 8 prompts x 2 samples = 16 rollout rows
    ({"opd.updates_per_rollout": 3}, "opd.updates_per_rollout", "16"),
    ({"opd.updates_per_rollout": 4, "opt.micro_batches": 8}, "opt.micro_batches", "4 rows per"),
    ({"opd.updates_per_rollout": 0}, "opd.updates_per_rollout", ">= 1"),
    ({"opd.truncated_rollouts": "skip"}, "opd.truncated_rollouts", "'keep', 'drop'"),
  ],
)
def test_config_errors_name_the_field(overrides, field, says):
  c = tiny.get_config()
  c.update_from_flattened_dict(overrides)
  with pytest.raises(errors.ConfigError) as err:
    config_check.validate(c, device_count=1, process_count=1)
  message = str(err.value)
  assert message.startswith(f"{field}=") and "\n" not in message and says in message, message


def test_schedule_spans_steps_times_updates():
  """The lr schedule's length is config.steps x opd.updates_per_rollout optimiser updates."""
  from rockjax.config import settings as settings_lib  # pylint: disable=g-import-not-at-top

  c = tiny.get_config()
  c.steps, c.opd.updates_per_rollout = 6, U
  assert settings_lib.total_updates(c) == 12
  _, schedule = state_lib.make_optimizer(c.opt, settings_lib.total_updates(c))
  np.testing.assert_allclose(float(schedule(11)), c.opt.end_lr, rtol=1e-6)  # update 12 ends
  assert float(schedule(5)) > c.opt.end_lr * 1.5  # update 6 is mid-decay, not at the floor


@pytest.mark.slow
def test_resume_with_two_updates_per_batch_equals_uninterrupted(tmp_path):
  """Train 2 batches (4 updates) == train 1, stop, resume, train 1: a train_step call is the
  unit of checkpointing, so the state (update count and AdamW counts included) replays."""
  from rockjax.runner import loop as train  # pylint: disable=g-import-not-at-top

  def small(**overrides):
    c = tiny.get_config()
    c.steps, c.eval.every, c.ckpt.every, c.opd.updates_per_rollout = 2, 0, 1, U
    c.update_from_flattened_dict(overrides)
    return c

  whole = train.run(small(), str(tmp_path / "whole"))
  first = train.run(small(stop_after=1), str(tmp_path / "split"))
  assert int(first.state.step) == U  # one batch = U updates
  second = train.run(small(), str(tmp_path / "split"))
  assert int(second.state.step) == int(whole.state.step) == 2 * U
  for name in ("params", "opt_state", "rock", "rock_mask"):
    a, b = (
      jax.device_get(getattr(second.state, name)),
      jax.device_get(getattr(whole.state, name)),
    )
    assert_trees_close(a, b, name)
