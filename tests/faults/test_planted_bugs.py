"""Tests that catch three realistic one-line bugs the module tests once let through.

a. `fused_divergence`'s backward ignoring the incoming cotangent (every gradient test used
   d(sum)/d(...) with cotangent 1): here the sum enters a non-linear function.
b. The loss mask ignoring the attention mask (`objective.shift`): here the response mask runs
   into padded columns, and everything the step reports must equal the clean batch's.
c. `rock/share_*` computed with the post-step rock mask: here the selection changes at the
   step and the metrics are checked against the mask in force during it.
References: float64 numpy (a, c) and the same step on a clean batch (b).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rockjax import sharding as shd
from rockjax.losses import fused_divergence
from tests.fixtures import (
  TEACHER,
  assert_same_update,
  build,
  make_batch,
  np_log_softmax,
  one_device_mesh,
  random_model,
)


# ------------------------------------------------ a. the fused backward uses its cotangent
def _np_weighted_kl_grads(h_s, w_s, h_t, w_t, weights):
  """S = sum_t w_t KL(p_s || p_t) and dS/dh_s, dS/dW_s in float64 (logits = h @ W)."""
  h_s, w_s, h_t, w_t = (np.asarray(x, np.float64) for x in (h_s, w_s, h_t, w_t))
  ls, lt = np_log_softmax(h_s @ w_s), np_log_softmax(h_t @ w_t)
  kl = np.sum(np.exp(ls) * (ls - lt), -1)
  g = weights[..., None] * np.exp(ls) * (ls - lt - kl[..., None])  # dS / d student logits
  total = np.sum(weights * kl)
  d_h = g @ w_s.T
  d_w = h_s.reshape(-1, h_s.shape[-1]).T @ g.reshape(-1, g.shape[-1])
  return total, d_h, d_w


@pytest.mark.parametrize("sharding", ["tokens", "vocab"])
def test_fused_gradient_scales_with_the_incoming_cotangent(devices8, sharding):
  """f(S) = 3.7 S + S^2 of the fused weighted sum S: df = (3.7 + 2 S) dS, not dS."""
  rng = np.random.default_rng(0)
  b, l, v = 8, 5, 64
  h_s, h_t = rng.normal(size=(b, l, 16)), rng.normal(size=(b, l, 24))
  w_s, w_t = rng.normal(size=(16, v)) * 0.7, rng.normal(size=(24, v)) * 0.7
  weights = rng.uniform(0.2, 2.0, size=(b, l))
  weights[0, -2:] = 0.0
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731

  def objective(hs, ws, wt):
    s = fused_divergence(
      hs, ws, f32(h_t), wt, f32(weights), block_size=2, chunk_size=5, sharding=sharding
    ).weighted_sum
    return 3.7 * s + s**2

  grad = jax.jit(jax.grad(objective, (0, 1)))
  if sharding == "vocab":  # the heads as the model lays them out on a 2x2x2 mesh
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
      put = lambda x: jax.device_put(  # noqa: E731
        f32(x), shd.logical_sharding(("embed", "vocab"), x.shape, mesh)
      )
      d_h, d_w = grad(f32(h_s), put(w_s), put(w_t))
  else:
    d_h, d_w = grad(f32(h_s), f32(w_s), f32(w_t))
  total, want_h, want_w = _np_weighted_kl_grads(h_s, w_s, h_t, w_t, weights)
  scale = 3.7 + 2 * total
  assert abs(scale - 1.0) > 1.0  # a backward that drops the cotangent is visibly off
  np.testing.assert_allclose(np.asarray(d_h), scale * want_h, rtol=2e-4, atol=1e-5 * scale)
  np.testing.assert_allclose(np.asarray(d_w), scale * want_w, rtol=2e-4, atol=1e-5 * scale)


# ------------------------------------------- b. a response mask that covers padding
def _sloppy(batch):
  """The batch with its response mask set on every column after the prompt, padding too."""
  resp = np.zeros_like(batch["response_mask"])
  resp[:, 3:] = 1
  assert np.any((resp > 0) & (batch["attention_mask"] == 0))  # it does cover padding
  return dict(batch, response_mask=resp)


@pytest.mark.parametrize("chunked", [True, False])
def test_response_mask_over_padding_changes_nothing(chunked):
  """Loss, gradient (SGD, lr 1), every metric, rock statistics and selection equal those of
  the same batch with its response mask cut to the attention mask."""
  clean = make_batch(seed=3)
  results = []
  for batch in (clean, _sloppy(clean)):
    fn, state, t_params = build(
      one_device_mesh(), tx=optax.sgd(1.0), rock_mode="dynamic", lam=0.5, chunked=chunked
    )
    p0 = jax.device_get(state.params)  # the step donates `state`
    with jax.set_mesh(one_device_mesh()):
      new_state, metrics = fn(state, t_params, batch)
    results.append((p0, jax.device_get(new_state), jax.device_get(metrics)))
  (p0, s_clean, m_clean), (_, s_sloppy, m_sloppy) = results
  on = (clean["response_mask"][:, 1:] > 0) & (clean["attention_mask"][:, 1:] > 0)
  assert float(m_clean["opd/response_tokens"][0]) == on.sum()  # the clean count, by hand
  assert_same_update(
    p0, (s_clean, m_clean), (s_sloppy, m_sloppy), metric_rtol=1e-6, param_rtol=1e-5
  )


# ------------------------------------- c. rock/share_* use the mask in force during the step
def test_rock_shares_use_the_pre_step_selection():
  """Dynamic mode, reselecting after every update: at the second update the metrics must
  use the selection made after the first (in force during the step), not the new one."""
  fn, state, t_params = build(one_device_mesh(), rock_mode="dynamic", lam=0.0, dynamic_k=4)
  batch = make_batch(seed=5)
  # After the first batch the rocks are its planted ids; this one keeps one planted column
  # and fills the rest of the response with 4 other ids, which overtake them.
  batch["tokens"][:, 4:] = np.random.default_rng(5).choice([30, 31, 32, 33], (8, 6))
  with jax.set_mesh(one_device_mesh()):
    state, _ = fn(state, t_params, make_batch(seed=4))
    before = jax.device_get(state)  # the step donates `state`
    after, metrics = fn(state, t_params, batch)
  pre_V, post_V = np.asarray(before.rock_mask), np.asarray(jax.device_get(after.rock_mask))
  targets = batch["tokens"][:, 1:]
  on = (batch["response_mask"][:, 1:] > 0) & (batch["attention_mask"][:, 1:] > 0)
  assert pre_V.sum() == 4 and not np.array_equal(pre_V, post_V)  # the selection moved

  # float64 per-token reverse KL and |d KL / d student logits| with the pre-step parameters.
  student = nnx.merge(before.graphdef, before.params)
  teacher = random_model(TEACHER, seed=1)
  ids, mask = batch["tokens"][:, :-1], batch["attention_mask"][:, :-1]
  fwd = nnx.jit(lambda m, i, k: m(i, k))
  ls = np_log_softmax(np.asarray(fwd(student, ids, mask)))
  lt = np_log_softmax(np.asarray(fwd(teacher, ids, mask)))
  kl = np.sum(np.exp(ls) * (ls - lt), -1)
  gnorm = np.linalg.norm(np.exp(ls) * (ls - lt - kl[..., None]), axis=-1)

  def shares(mask_V):
    rock = on & mask_V[targets]
    return {
      "rock/share_tokens": rock.sum() / on.sum(),
      "rock/share_kl": kl[rock].sum() / kl[on].sum(),
      "rock/share_grad_norm": gnorm[rock].sum() / gnorm[on].sum(),
    }

  want, wrong = shares(pre_V), shares(post_V)
  assert float(metrics["rock/num_selected"][0]) == 4
  for key, value in want.items():
    s, c = (float(x) for x in metrics[key])
    np.testing.assert_allclose(s / c, value, rtol=1e-4, err_msg=key)
    assert abs(value - wrong[key]) > 1e-3, key  # the post-step mask would give another value
