"""rockjax.losses against float64 numpy references, autodiff and hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rockjax import losses
from tests.fixtures import KIND_BETAS, make_hidden, np_divergence, np_kl, np_log_softmax


# ----------------------------------------------------------------------------------- helpers
def jax_divergence(s, t, kind, beta, temperature=1.0):
  return losses.divergence(s, t, kind=kind, beta=beta, temperature=temperature)


def random_logits(rng, shape, scale=3.0):
  return (rng.normal(size=shape) * scale).astype(np.float32)


# ------------------------------------------------------------------------ value accuracy
@pytest.mark.parametrize("kind,beta", KIND_BETAS)
@pytest.mark.parametrize("scale", [1.0, 30.0, 3000.0])
def test_divergence_matches_float64_numpy(rng, kind, beta, scale):
  s, t = random_logits(rng, (3, 7, 50), scale), random_logits(rng, (3, 7, 50), scale)
  got = np.asarray(jax_divergence(s, t, kind, beta))
  want = np_divergence(s, t, kind, beta)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,beta", KIND_BETAS)
def test_divergence_with_masked_vocab_entries(rng, kind, beta):
  """-inf logits (vocab masked in both models, or in the model that is not sampled from)."""
  s, t = random_logits(rng, (2, 5, 40)), random_logits(rng, (2, 5, 40))
  s[..., :6] = -np.inf  # padded vocabulary rows: masked in both models
  t[..., :6] = -np.inf
  if kind == "reverse_kl":
    s[..., 6:9] = -np.inf  # student assigns zero mass: fine for KL(s||t)
  elif kind == "forward_kl":
    t[..., 6:9] = -np.inf  # teacher assigns zero mass: fine for KL(t||s)
  got = np.asarray(jax_divergence(s, t, kind, beta))
  want = np_divergence(s, t, kind, beta)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_reverse_kl_infinite_where_teacher_excludes_student_mass(rng):
  s, t = random_logits(rng, (1, 2, 10)), random_logits(rng, (1, 2, 10))
  t[0, 0, 3] = -np.inf
  got = np.asarray(losses.reverse_kl(s, t))
  assert np.isinf(got[0, 0]) and np.isfinite(got[0, 1])


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature(rng, temperature):
  s, t = random_logits(rng, (2, 3, 30)), random_logits(rng, (2, 3, 30))
  np.testing.assert_allclose(
    losses.reverse_kl(s, t, temperature=temperature),
    np_divergence(s, t, "reverse_kl", temperature=temperature),
    rtol=1e-5,
    atol=1e-6,
  )


def test_hand_computed_two_token_case():
  """Two ids: p_s = (1/2, 1/2), p_t = (1/4, 3/4) -> closed forms."""
  s = np.log(np.array([[[0.5, 0.5]]], np.float32))
  t = np.log(np.array([[[0.25, 0.75]]], np.float32))
  rkl = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
  fkl = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
  m = np.array([0.375, 0.625])
  js = 0.5 * (0.25 * np.log(0.25 / m[0]) + 0.75 * np.log(0.75 / m[1])) + 0.5 * (
    0.5 * np.log(0.5 / m[0]) + 0.5 * np.log(0.5 / m[1])
  )
  np.testing.assert_allclose(losses.reverse_kl(s, t)[0, 0], rkl, rtol=1e-6)
  np.testing.assert_allclose(losses.forward_kl(s, t)[0, 0], fkl, rtol=1e-6)
  np.testing.assert_allclose(losses.jsd(s, t, beta=0.5)[0, 0], js, rtol=1e-6)


def test_bfloat16_inputs_compute_in_float32(rng):
  s, t = random_logits(rng, (2, 4, 64)), random_logits(rng, (2, 4, 64))
  s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  got = losses.reverse_kl(s16, t16)
  assert got.dtype == jnp.float32
  want = np_divergence(
    np.asarray(s16.astype(jnp.float32)), np.asarray(t16.astype(jnp.float32)), "reverse_kl"
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- chunked
@pytest.mark.parametrize("kind,beta", KIND_BETAS)
@pytest.mark.parametrize("chunk", [8, 53, 100])
def test_chunked_equals_unchunked_value_and_grad(rng, kind, beta, chunk):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  ct = rng.normal(size=h_s.shape[:2]).astype(np.float32)  # arbitrary per-token cotangent

  def naive(h, w):
    return jnp.sum(
      ct * jax_divergence(h @ w, jax.lax.stop_gradient(h_t @ w_t), kind, beta, temperature=1.3)
    )

  def chunked(h, w):
    return jnp.sum(
      ct
      * losses.chunked_divergence(
        h, w, h_t, w_t, kind=kind, beta=beta, chunk_size=chunk, temperature=1.3
      )
    )

  np.testing.assert_allclose(
    losses.chunked_divergence(
      h_s, w_s, h_t, w_t, kind=kind, beta=beta, chunk_size=chunk, temperature=1.3
    ),
    np_divergence(h_s @ w_s, h_t @ w_t, kind, beta, temperature=1.3),
    rtol=1e-5,
    atol=1e-6,
  )
  v1, g1 = jax.value_and_grad(naive, (0, 1))(h_s, w_s)
  v2, g2 = jax.jit(jax.value_and_grad(chunked, (0, 1)))(h_s, w_s)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-6)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_chunked_teacher_gets_no_gradient_and_masked_vocab(rng):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  w_t[:, :4] = -1e30  # ~ -inf logits for 4 ids in the teacher... and the student:
  w_s[:, :4] = 0.0
  got = losses.chunked_divergence(h_s, w_s, h_t, w_t, chunk_size=16)
  assert np.all(np.isfinite(got))
  g_t = jax.grad(lambda h, w: jnp.sum(losses.chunked_divergence(h_s, w_s, h, w)), (0, 1))(h_t, w_t)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in g_t)


def test_chunked_bfloat16_inputs(rng):
  h_s, w_s, h_t, w_t = (jnp.asarray(x, jnp.bfloat16) for x in make_hidden(rng))
  got = losses.chunked_divergence(h_s, w_s, h_t, w_t, chunk_size=16)
  f32 = lambda x: np.asarray(x.astype(jnp.float32))
  want = np_divergence(f32(h_s) @ f32(w_s), f32(h_t) @ f32(w_t), "reverse_kl")
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  dh, dw = jax.grad(lambda h, w: jnp.sum(losses.chunked_divergence(h, w, h_t, w_t)), (0, 1))(
    h_s, w_s
  )
  assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16


def test_chunked_rejects_vocab_mismatch(rng):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  with pytest.raises(ValueError, match="student vocab 53 != teacher vocab 52"):
    losses.chunked_divergence(h_s, w_s, h_t, w_t[:, :52])


# ------------------------------------------------------------- reductions and padding
def test_reduce_hand_computed():
  x = np.array([[1.0, 2.0, np.nan], [4.0, np.inf, 6.0]], np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 1]])
  w = np.array([[0.0, 1.0, 5.0], [0.5, 1.0, 1.0]], np.float32)
  s, c = losses.reduce(x, mask)
  assert (float(s), float(c)) == (13.0, 4.0)
  s, c = losses.reduce(x, mask, w, normalizer="tokens")
  assert (float(s), float(c)) == (0 * 1 + 1 * 2 + 0.5 * 4 + 6.0, 4.0)
  s, c = losses.reduce(x, mask, w, normalizer="weights")
  assert (float(s), float(c)) == (10.0, 2.5)
  with pytest.raises(ValueError, match="normalizer 'mean'"):
    losses.reduce(x, mask, normalizer="mean")


@pytest.mark.parametrize("chunked", [False, True])
def test_padding_invariance_of_loss_and_grad(rng, chunked):
  """Appending masked positions (with arbitrary logits) changes neither loss nor gradient."""
  h_s, w_s, h_t, w_t = make_hidden(rng, b=2, l=4)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  pad = lambda x: np.concatenate([x, 50 * rng.normal(size=(2, 3) + x.shape[2:])], 1).astype(
    np.float32
  )
  h_s_pad, h_t_pad = pad(h_s), pad(h_t)
  mask_pad = np.concatenate([mask, np.zeros((2, 3), np.float32)], 1)

  def loss(h, w, ht, m):
    per_tok = (
      losses.chunked_divergence(h, w, ht, w_t, chunk_size=10)
      if chunked
      else losses.reverse_kl(h @ w, ht @ w_t)
    )
    s, c = losses.reduce(per_tok, m)
    return s / c

  (l1, (gh1, gw1)) = jax.value_and_grad(loss, (0, 1))(h_s, w_s, h_t, mask)
  (l2, (gh2, gw2)) = jax.value_and_grad(loss, (0, 1))(h_s_pad, w_s, h_t_pad, mask_pad)
  np.testing.assert_allclose(l2, l1, rtol=1e-6)
  np.testing.assert_allclose(gw2, gw1, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gh2[:, :4], gh1, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(gh2[:, 4:]).max()) == 0.0


# ------------------------------------------------------------------------------ sharding
def test_sharded_batch_and_vocab_equals_unsharded(rng, devices8):
  mesh = Mesh(np.array(devices8).reshape(2, 4), ("data", "tensor"))
  s, t = random_logits(rng, (4, 6, 64)), random_logits(rng, (4, 6, 64))
  logits_sharding = NamedSharding(mesh, P("data", None, "tensor"))
  s_sh, t_sh = jax.device_put(s, logits_sharding), jax.device_put(t, logits_sharding)
  for kind, beta in KIND_BETAS[:3]:
    fn = jax.jit(lambda a, b: jax_divergence(a, b, kind, beta))
    np.testing.assert_allclose(
      fn(s_sh, t_sh), jax_divergence(s, t, kind, beta), rtol=1e-6, atol=1e-7
    )

  h_s, w_s, h_t, w_t = make_hidden(rng, b=4, l=6, v=64)
  batch = NamedSharding(mesh, P("data", None, None))
  vocab = NamedSharding(mesh, P(None, "tensor"))
  args_sh = (
    jax.device_put(h_s, batch),
    jax.device_put(w_s, vocab),
    jax.device_put(h_t, batch),
    jax.device_put(w_t, vocab),
  )

  def loss(h, w, ht, wt):
    return jnp.sum(losses.chunked_divergence(h, w, ht, wt, chunk_size=16) ** 2)

  v1, g1 = jax.jit(jax.value_and_grad(loss, (0, 1)))(*args_sh)
  v2, g2 = jax.value_and_grad(loss, (0, 1))(h_s, w_s, h_t, w_t)
  np.testing.assert_allclose(v1, v2, rtol=1e-6)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- sampled estimators
def test_sampled_kl_hand_values():
  lp_s = np.array([[-1.0, -2.0]], np.float32)
  lp_t = np.array([[-1.5, -1.0]], np.float32)
  r = lp_t - lp_s
  np.testing.assert_allclose(losses.sampled_kl(lp_s, lp_t, estimator="k1"), -r)
  np.testing.assert_allclose(losses.sampled_kl(lp_s, lp_t, estimator="k2"), r**2 / 2)
  np.testing.assert_allclose(
    losses.sampled_kl(lp_s, lp_t, estimator="k3"), np.exp(r) - 1 - r, rtol=1e-6
  )
  with pytest.raises(ValueError, match="'k4'"):
    losses.sampled_kl(lp_s, lp_t, estimator="k4")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_average_to_exact_kl(rng, estimator):
  """Monte Carlo over student samples: the unbiased estimators converge to KL(s || t)."""
  s, t = random_logits(rng, (1, 1, 12), 1.0), random_logits(rng, (1, 1, 12), 1.0)
  ls, lt = np_log_softmax(s)[0, 0], np_log_softmax(t)[0, 0]
  draws = rng.choice(12, size=200_000, p=np.exp(ls))
  est = losses.sampled_kl(
    ls[draws][None].astype(np.float32), lt[draws][None].astype(np.float32), estimator=estimator
  )
  exact = np_kl(ls, lt)
  np.testing.assert_allclose(float(jnp.mean(est)), exact, rtol=0.03)


# --------------------------------------------------------------------- logit gradients
def test_logit_gradient_matches_numpy_and_autodiff(rng):
  s, t = random_logits(rng, (2, 3, 40)), random_logits(rng, (2, 3, 40))
  ls, lt = np_log_softmax(s), np_log_softmax(t)
  a = ls - lt + 1.0
  p = np.exp(ls)
  want = p * (a - np.sum(p * a, -1, keepdims=True))
  got = losses.logit_gradient(s, t)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  autodiff = jax.grad(lambda x: jnp.sum(losses.reverse_kl(x, t)))(s)
  np.testing.assert_allclose(got, autodiff, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
    losses.logit_gradient_norm(s, t), np.linalg.norm(want, axis=-1), rtol=1e-5
  )


def test_errors_name_the_bad_thing(rng):
  s = random_logits(rng, (1, 2, 8))
  with pytest.raises(ValueError, match="unknown divergence kind 'kl'"):
    losses.divergence(s, s, kind="kl")
  with pytest.raises(ValueError, match=r"\(1, 2, 8\).*\(1, 2, 7\)"):
    losses.reverse_kl(s, s[..., :7])
  with pytest.raises(ValueError, match="beta must be in"):
    losses.jsd(s, s, beta=1.5)


# ------------------------------------------------- chunked cross-entropy and gradient norms
@pytest.mark.parametrize("chunk", [8, 64])
def test_chunked_cross_entropy_matches_numpy_and_autodiff(rng, chunk):
  h, w, _, _ = make_hidden(rng)
  targets = rng.integers(0, w.shape[1], size=h.shape[:2])
  logp = np_log_softmax((h.astype(np.float64) @ w) / 0.7)
  want = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  got = losses.chunked_cross_entropy(h, w, targets, chunk_size=chunk, temperature=0.7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  ct = rng.normal(size=targets.shape).astype(np.float32)

  def naive(h, w):
    lp = jax.nn.log_softmax(h @ w / 0.7)
    return jnp.sum(ct * -jnp.take_along_axis(lp, targets[..., None], -1)[..., 0])

  g1 = jax.grad(naive, (0, 1))(h, w)
  g2 = jax.grad(
    lambda h, w: jnp.sum(
      ct * losses.chunked_cross_entropy(h, w, targets, chunk_size=chunk, temperature=0.7)
    ),
    (0, 1),
  )(h, w)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("kind,beta", KIND_BETAS[:3])
def test_chunked_logit_gradient_norm_matches_autodiff(rng, kind, beta):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  logits_t = h_t @ w_t
  g = jax.vmap(jax.vmap(jax.grad(lambda z, zt: losses.divergence(z, zt, kind=kind, beta=beta))))(
    jnp.asarray(h_s @ w_s), jnp.asarray(logits_t)
  )
  want = np.linalg.norm(np.asarray(g, np.float64), axis=-1)
  got = losses.chunked_logit_gradient_norm(h_s, w_s, h_t, w_t, kind=kind, beta=beta, chunk_size=16)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
