"""Every registered divergence kind through every loss path, against float64 numpy references.

The cases iterate over the registry (`losses.KINDS`), so a new kind is tested automatically and
fails until REFERENCES holds its value and logit gradient, written here from the math.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockjax import losses
from rockjax.losses import registry
from tests.fixtures import loss_settings, make_hidden, np_log_softmax

TEMPERATURES = [1.0, 1.7]


# ------------------------------------------------------ float64 references, from the math
def _where_p(p, x):
  """x where p > 0, else 0 (0 * log 0 = 0; no nan from -inf - -inf)."""
  with np.errstate(invalid="ignore"):
    return np.where(p > 0, x, 0.0)


def _kl(la, lb):
  """KL(a || b) per row from log-probs."""
  with np.errstate(invalid="ignore"):
    return np.sum(_where_p(np.exp(la), np.exp(la) * (la - lb)), axis=-1)


def _log_mix(ls, lt, w_t):
  """log(w_t p_t + (1 - w_t) p_s)."""
  with np.errstate(divide="ignore"):
    return np.log(w_t * np.exp(lt) + (1.0 - w_t) * np.exp(ls))


# Each reference maps student/teacher log-probs [..., V] to (value [...], d value / d tempered
# student logits [..., V]); through the softmax, dD/dz = p_s * (dD/dp_s - E_ps[dD/dp_s]).
def ref_reverse_kl(ls, lt):
  """KL(p_s || p_t): dD/dp_s = log(p_s/p_t) + 1."""
  value = _kl(ls, lt)
  with np.errstate(invalid="ignore"):
    return value, _where_p(np.exp(ls), np.exp(ls) * (ls - lt - value[..., None]))


def ref_forward_kl(ls, lt):
  """KL(p_t || p_s): dD/dp_s = -p_t/p_s, so dD/dz = p_s - p_t."""
  return _kl(lt, ls), np.exp(ls) - np.exp(lt)


def ref_jsd(ls, lt, beta):
  """beta KL(p_t || M) + (1-beta) KL(p_s || M), M = beta p_t + (1-beta) p_s."""
  lm = _log_mix(ls, lt, beta)
  value = (beta * _kl(lt, lm) if beta > 0 else 0.0) + (
    (1 - beta) * _kl(ls, lm) if beta < 1 else 0.0
  )
  # dD/dp_s = (1-beta) log(p_s/M) + const: the terms through M cancel.
  with np.errstate(invalid="ignore"):
    a = (1 - beta) * (ls - lm)
  return value, _ref_softmax_grad(ls, a)


def ref_skew_reverse_kl(ls, lt, alpha):
  """KL(p_s || M), M = alpha p_t + (1-alpha) p_s."""
  lm = _log_mix(ls, lt, alpha)
  # dD/dp_s = log(p_s/M) + 1 - (1-alpha) p_s/M (M moves with p_s).
  with np.errstate(invalid="ignore"):
    a = ls - lm - (1 - alpha) * np.exp(ls - lm)
  return _kl(ls, lm), _ref_softmax_grad(ls, a)


def _ref_softmax_grad(ls, a):
  p = np.exp(ls)
  mean = np.sum(_where_p(p, p * a), axis=-1, keepdims=True)
  with np.errstate(invalid="ignore"):
    return _where_p(p, p * (a - mean))


# kind -> (reference, parameter cases); the keys must be exactly the registered kinds.
REFERENCES = {
  "reverse_kl": (ref_reverse_kl, [{}]),
  "forward_kl": (ref_forward_kl, [{}]),
  "jsd": (ref_jsd, [{"beta": 0.5}, {"beta": 0.2}, {"beta": 1.0}]),
  "skew_reverse_kl": (ref_skew_reverse_kl, [{"alpha": 0.9}, {"alpha": 0.25}, {"alpha": 1.0}]),
}


def _cases(temperatures=(1.0,)):
  """(kind, params, temperature) for every registered kind; (kind, None, T) if unreferenced."""
  return [
    pytest.param(kind, params, t, id=f"{kind}-{params}-T{t}")
    for kind in losses.KINDS
    for params in REFERENCES.get(kind, (None, [None]))[1]
    for t in temperatures
  ]


def reference(kind, params, s, t, temperature):
  """(value, logit gradient) in float64 from raw logits at a temperature."""
  assert kind in REFERENCES, f"no float64 reference for registered kind {kind!r}"
  ls = np_log_softmax(np.asarray(s, np.float64) / temperature)
  lt = np_log_softmax(np.asarray(t, np.float64) / temperature)
  return REFERENCES[kind][0](ls, lt, **params)


def assert_grads_close(got, want):
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max() + 1e-7)


# ------------------------------------------------------------------- the table and itself
def test_reference_table_covers_the_registry():
  assert set(REFERENCES) == set(losses.KINDS)


@pytest.mark.parametrize("kind,params,temperature", _cases())
def test_reference_gradient_matches_finite_differences(rng, kind, params, temperature):
  """Each written-out gradient is checked against central differences of its own value."""
  s, t = rng.normal(size=(4, 9)) * 2.0, rng.normal(size=(4, 9)) * 2.0
  _, g = reference(kind, params, s, t, 1.0)
  eps, fd = 1e-6, np.zeros_like(s)
  for v in range(s.shape[-1]):
    step = np.zeros_like(s)
    step[:, v] = eps
    fd[:, v] = (
      reference(kind, params, s + step, t, 1.0)[0] - reference(kind, params, s - step, t, 1.0)[0]
    ) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind,params,temperature", _cases())
def test_closed_form_gradient_matches_float64_autodiff(rng, kind, params, temperature):
  """The registry's logit gradient against jax.grad of the registry's own value, in float64."""
  s, t = rng.normal(size=(4, 11)) * 3.0, rng.normal(size=(4, 11)) * 3.0
  spec = losses.DivergenceSpec(kind, **params)
  with jax.enable_x64(True):
    lt = jax.nn.log_softmax(jnp.asarray(t))
    value = lambda z: jnp.sum(registry.value_and_aux(jax.nn.log_softmax(z), lt, spec)[0])
    want = jax.grad(value)(jnp.asarray(s))
    ls = jax.nn.log_softmax(jnp.asarray(s))
    got = registry.logit_grad(ls, lt, registry.value_and_aux(ls, lt, spec)[1], spec)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("kind,params,temperature", _cases(TEMPERATURES))
def test_full_logits(rng, kind, params, temperature):
  s = (rng.normal(size=(3, 5, 37)) * 3.0).astype(np.float32)
  t = (rng.normal(size=(3, 5, 37)) * 3.0).astype(np.float32)
  s[..., :4] = t[..., :4] = -np.inf  # vocabulary masked in both models
  want_v, want_g = reference(kind, params, s, t, temperature)
  got = losses.divergence(s, t, kind=kind, temperature=temperature, **params)
  np.testing.assert_allclose(got, want_v, rtol=1e-5, atol=1e-6)
  ct = rng.normal(size=s.shape[:2]).astype(np.float32)
  g = jax.grad(
    lambda z: jnp.sum(ct * losses.divergence(z, t, kind=kind, temperature=temperature, **params))
  )(s)
  assert_grads_close([g], [ct[..., None] * want_g / temperature])
  g_closed = losses.logit_gradient(s, t, kind=kind, temperature=temperature, **params)
  assert_grads_close([g_closed], [want_g])
  np.testing.assert_allclose(
    losses.logit_gradient_norm(s, t, kind=kind, temperature=temperature, **params),
    np.linalg.norm(want_g, axis=-1),
    rtol=1e-4,
    atol=1e-7,
  )


def _head_grads(h_s, w_s, g_BxLxV):
  """(d/dh, d/dW) of sum(G * (h @ W)) in float64: the chain rule through the student head."""
  return g_BxLxV @ w_s.T.astype(np.float64), np.einsum(
    "bld,blv->dv", h_s.astype(np.float64), g_BxLxV
  )


@pytest.mark.parametrize("kind,params,temperature", _cases(TEMPERATURES))
def test_chunked(rng, kind, params, temperature):
  h_s, w_s, h_t, w_t = make_hidden(rng)  # V = 53 with chunks of 16: a shifted last chunk
  want_v, want_g = reference(kind, params, h_s @ w_s, h_t @ w_t, temperature)
  ct = rng.normal(size=h_s.shape[:2]).astype(np.float32)
  f = lambda h, w: losses.chunked_divergence(
    h, w, h_t, w_t, kind=kind, chunk_size=16, temperature=temperature, **params
  )
  np.testing.assert_allclose(f(h_s, w_s), want_v, rtol=1e-5, atol=1e-6)
  got = jax.jit(jax.grad(lambda h, w: jnp.sum(ct * f(h, w)), (0, 1)))(h_s, w_s)
  assert_grads_close(got, _head_grads(h_s, w_s, ct[..., None] * want_g / temperature))
  norm = losses.chunked_logit_gradient_norm(
    h_s, w_s, h_t, w_t, kind=kind, chunk_size=16, temperature=temperature, **params
  )
  np.testing.assert_allclose(norm, np.linalg.norm(want_g, axis=-1), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind,params,temperature", _cases(TEMPERATURES))
def test_fused(rng, kind, params, temperature):
  h_s, w_s, h_t, w_t = make_hidden(rng)  # 10 tokens in blocks of 3: a padded last block
  want_v, want_g = reference(kind, params, h_s @ w_s, h_t @ w_t, temperature)
  weights = rng.uniform(0.2, 2.0, size=h_s.shape[:2]).astype(np.float32)
  weights[0, -2:] = 0.0
  f = lambda h, w: losses.fused_divergence(
    h,
    w,
    h_t,
    w_t,
    weights,
    kind=kind,
    block_size=3,
    chunk_size=16,
    temperature=temperature,
    **params,
  )
  out = f(h_s, w_s)
  np.testing.assert_allclose(out.per_token, want_v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.weighted_sum, np.sum(weights * want_v), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.grad_norm, np.linalg.norm(want_g, axis=-1), rtol=1e-4, atol=1e-7)
  got = jax.jit(jax.grad(lambda h, w: f(h, w).weighted_sum, (0, 1)))(h_s, w_s)
  assert_grads_close(got, _head_grads(h_s, w_s, weights[..., None] * want_g / temperature))


# ---------------------------------------------------------------------- kind specifics
def test_skew_alpha_one_is_reverse_kl(rng):
  s, t = rng.normal(size=(2, 3, 20)).astype(np.float32), rng.normal(size=(2, 3, 20))
  np.testing.assert_allclose(
    losses.divergence(s, t, kind="skew_reverse_kl", alpha=1.0), losses.reverse_kl(s, t), rtol=1e-6
  )
  assert float(jnp.abs(losses.divergence(s, t, kind="skew_reverse_kl", alpha=0.0)).max()) == 0


def test_unknown_kind_raises_one_line_everywhere(rng):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  s = h_s @ w_s
  ones = np.ones(h_s.shape[:2], np.float32)
  calls = [
    lambda: losses.check_kind("nope"),
    lambda: losses.DivergenceSpec("nope"),
    lambda: losses.divergence(s, s, kind="nope"),
    lambda: losses.divergence_terms(s, s, "nope"),
    lambda: losses.logit_gradient(s, s, kind="nope"),
    lambda: losses.logit_gradient_norm(s, s, kind="nope"),
    lambda: losses.chunked_divergence(h_s, w_s, h_t, w_t, kind="nope"),
    lambda: losses.chunked_logit_gradient_norm(h_s, w_s, h_t, w_t, kind="nope"),
    lambda: losses.fused_divergence(h_s, w_s, h_t, w_t, ones, kind="nope"),
    lambda: loss_settings(divergence="nope"),
  ]
  want = f"unknown divergence kind 'nope'; registered kinds: {', '.join(losses.KINDS)}"
  for call in calls:
    with pytest.raises(ValueError) as err:
      call()
    assert str(err.value) == want


def test_spec_is_hashable_and_validates():
  spec = losses.DivergenceSpec("skew_reverse_kl", temperature=2, alpha=0.5)
  assert hash(spec) == hash(losses.DivergenceSpec("skew_reverse_kl", 2.0, alpha=0.5))
  with pytest.raises(ValueError, match="alpha must be in"):
    losses.DivergenceSpec("skew_reverse_kl", alpha=1.5)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.DivergenceSpec(temperature=0.0)
