"""losses.fused_divergence (gradient formed in the forward pass) vs float64 numpy and jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockjax import losses
from rockjax import sharding as shd
from rockjax.losses import fused_divergence
from tests.fixtures import KIND_BETAS, make_hidden, np_divergence, np_log_softmax

T = 1.3  # a non-unit temperature everywhere, so the 1/T chain rule is exercised


def _weights(rng, shape):
  w = rng.uniform(0.2, 2.0, size=shape).astype(np.float32)
  w[0, -2:] = 0.0  # masked positions
  return w


def _naive_sum(h, w, h_t, w_t, weights, kind, beta):
  """jax.grad-able full-logits form: sum(weights * divergence(h @ w, h_t @ w_t))."""
  div = losses.divergence(
    h @ w, jax.lax.stop_gradient(h_t @ w_t), kind=kind, beta=beta, temperature=T
  )
  return jnp.sum(weights * div)


@pytest.mark.parametrize("kind,beta", KIND_BETAS)
@pytest.mark.parametrize("block,chunk", [(3, 8), (4, 53), (9, 16), (64, 20)])
def test_fused_value_and_grad_match_numpy_and_autodiff(rng, kind, beta, block, chunk):
  # 10 tokens: blocks of 3 leave a padded last block; at most 9 per block, two equal blocks of
  # 8 rows (6 of them padding) hold them
  h_s, w_s, h_t, w_t = make_hidden(rng)
  weights = _weights(rng, h_s.shape[:2])
  fused = lambda h, w: fused_divergence(
    h, w, h_t, w_t, weights, kind=kind, beta=beta, temperature=T, block_size=block, chunk_size=chunk
  )
  out = jax.jit(fused)(h_s, w_s)
  want_BxL = np_divergence(h_s @ w_s, h_t @ w_t, kind, beta, temperature=T)
  np.testing.assert_allclose(out.per_token, want_BxL, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.weighted_sum, np.sum(weights * want_BxL), rtol=1e-5, atol=1e-6)

  v1, g1 = jax.value_and_grad(_naive_sum, (0, 1))(h_s, w_s, h_t, w_t, weights, kind, beta)
  v2, g2 = jax.jit(jax.value_and_grad(lambda h, w: fused(h, w).weighted_sum, (0, 1)))(h_s, w_s)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-6)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_reverse_kl_gradient_matches_float64_formula(rng):
  # docs/method.md, "Gradient geometry": d KL / d z = p_s * (A - E_ps[A]); through
  # z = h @ W / T this gives dh = (w g / T) @ W^T and dW = h^T @ (w g / T).
  h_s, w_s, h_t, w_t = make_hidden(rng, b=3, l=4)
  weights = _weights(rng, h_s.shape[:2])
  ls = np_log_softmax((h_s @ w_s).astype(np.float64) / T)
  lt = np_log_softmax((h_t @ w_t).astype(np.float64) / T)
  a = ls - lt
  g = np.exp(ls) * (a - np.sum(np.exp(ls) * a, -1, keepdims=True))
  gw = g * (weights[..., None] / T)
  want_dh = gw @ w_s.T.astype(np.float64)
  want_dw = np.einsum("bld,blv->dv", h_s.astype(np.float64), gw)
  dh, dw = jax.grad(
    lambda h, w: (
      fused_divergence(
        h, w, h_t, w_t, weights, temperature=T, block_size=5, chunk_size=16
      ).weighted_sum
    ),
    (0, 1),
  )(h_s, w_s)
  np.testing.assert_allclose(dh, want_dh, rtol=1e-4, atol=1e-6 * np.abs(want_dh).max())
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-6 * np.abs(want_dw).max())
  # The norm output is |g| per token, before the weights.
  out = fused_divergence(h_s, w_s, h_t, w_t, weights, temperature=T, block_size=5)
  np.testing.assert_allclose(out.grad_norm, np.linalg.norm(g, axis=-1), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind,beta", KIND_BETAS[:3])
def test_grad_norm_matches_chunked_diagnostic(rng, kind, beta):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  want = losses.chunked_logit_gradient_norm(h_s, w_s, h_t, w_t, kind=kind, beta=beta, chunk_size=16)
  got = fused_divergence(
    h_s, w_s, h_t, w_t, np.ones(h_s.shape[:2], np.float32), kind=kind, beta=beta, block_size=4
  ).grad_norm
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_teacher_and_per_token_outputs_get_no_gradient(rng):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  weights = _weights(rng, h_s.shape[:2])
  grads = jax.grad(lambda *a: fused_divergence(*a, weights).weighted_sum, (2, 3))(
    h_s, w_s, h_t, w_t
  )
  assert all(not np.any(np.asarray(g)) for g in grads)
  g = jax.grad(lambda h: jnp.sum(fused_divergence(h, w_s, h_t, w_t, weights).per_token))(h_s)
  assert not np.any(np.asarray(g))


def test_padding_invariance(rng):
  # Extra zero-weight positions holding arbitrary (finite) hidden states change nothing.
  h_s, w_s, h_t, w_t = make_hidden(rng, b=2, l=4)
  weights = np.ones((2, 4), np.float32)
  pad = lambda x: np.concatenate(
    [x, rng.normal(size=(2, 3) + x.shape[2:]).astype(np.float32) * 50], axis=1
  )
  padded_w = np.concatenate([weights, np.zeros((2, 3), np.float32)], axis=1)
  f = lambda h, w, ht, wts: fused_divergence(h, w, ht, w_t, wts, block_size=3).weighted_sum
  v1, (dh1, dw1) = jax.value_and_grad(f, (0, 1))(h_s, w_s, h_t, weights)
  v2, (dh2, dw2) = jax.value_and_grad(f, (0, 1))(pad(h_s), w_s, pad(h_t), padded_w)
  np.testing.assert_allclose(v2, v1, rtol=1e-6)
  np.testing.assert_allclose(dh2[:, :4], dh1, rtol=1e-5, atol=1e-7)
  assert not np.any(np.asarray(dh2[:, 4:]))
  np.testing.assert_allclose(dw2, dw1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [8, 6])  # 6 x 5 tokens: split over "data" only
def test_sharded_equals_unsharded(rng, devices8, batch):
  h_s, w_s, h_t, w_t = make_hidden(rng, b=batch, l=5)
  weights = _weights(rng, h_s.shape[:2])
  f = lambda h, w, ht, wt, wts: fused_divergence(
    h, w, ht, wt, wts, kind="jsd", beta=0.3, temperature=T, block_size=2, chunk_size=16
  )
  value_and_grad = jax.value_and_grad(lambda *a: f(*a).weighted_sum, (0, 1))
  v1, g1 = value_and_grad(h_s, w_s, h_t, w_t, weights)
  out1 = f(h_s, w_s, h_t, w_t, weights)
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with jax.set_mesh(mesh):
    put = lambda x, axes: jax.device_put(x, shd.logical_sharding(axes, x.shape, mesh))
    args = (
      put(h_s, ("batch", None, None)),
      put(w_s, ("embed", "vocab")),
      put(h_t, ("batch", None, None)),
      put(w_t, ("embed", "vocab")),
      put(weights, ("batch", None)),
    )
    v2, g2 = jax.jit(value_and_grad)(*args)
    out2 = jax.jit(f)(*args)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out2.per_token, out1.per_token, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out2.grad_norm, out1.grad_norm, rtol=1e-5, atol=1e-7)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_errors_name_the_bad_thing(rng):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  ones = np.ones(h_s.shape[:2], np.float32)
  with pytest.raises(ValueError, match="weights"):
    fused_divergence(h_s, w_s, h_t, w_t, ones[:, :3])
  with pytest.raises(ValueError, match="vocab"):
    fused_divergence(h_s, w_s, h_t, w_t[:, :7], ones)
  with pytest.raises(ValueError, match="unknown divergence kind"):
    fused_divergence(h_s, w_s, h_t, w_t, ones, kind="kl")
  with pytest.raises(ValueError, match="block_size"):
    fused_divergence(h_s, w_s, h_t, w_t, ones, block_size=0)
