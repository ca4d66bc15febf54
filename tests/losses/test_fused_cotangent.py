"""fused_divergence's custom VJP scales its stored gradient by the incoming cotangent.

Every gradient test elsewhere differentiates `weighted_sum` itself (cotangent 1.0), which a
backward that drops its cotangent also passes. Here the differentiated function is a
non-linear function of `weighted_sum` (times a traced scalar), so the cotangent reaching the
VJP is neither 1 nor a constant. Reference: the divergence in float64 numpy from the full
logits (h @ W / T, log-softmax, each kind's textbook formula) and its gradient by central
finite differences in float64, then the chain rule through the outer function by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockjax import sharding as shd
from rockjax.losses import fused_divergence
from tests.fixtures import np_log_softmax

T = 1.3  # non-unit temperature: the 1/T of the tempered logits is in the chain
B, L, DS, DT, V = 2, 3, 4, 5, 8  # V = 8 splits over the mesh axes of the sharded cases
C = 0.9  # the traced scalar the outer function multiplies the weighted sum by
ZERO_W = ((0, 2), (1, 0))  # positions of zero weight (their hidden rows hold large values)


def np_divergence(h_s, w_s, h_t, w_t, kind, kw):
  """Per-token divergence [B, L] in float64 from the full tempered logits."""
  ls = np_log_softmax(np.asarray(h_s, np.float64) @ np.asarray(w_s, np.float64) / T)
  lt = np_log_softmax(np.asarray(h_t, np.float64) @ np.asarray(w_t, np.float64) / T)
  ps, pt = np.exp(ls), np.exp(lt)
  kl = lambda p, la, lb: np.sum(p * (la - lb), axis=-1)  # KL(a || b), p = exp(la)
  if kind == "reverse_kl":  # KL(p_s || p_t)
    return kl(ps, ls, lt)
  if kind == "forward_kl":  # KL(p_t || p_s)
    return kl(pt, lt, ls)
  if kind == "jsd":  # beta KL(p_t || M) + (1 - beta) KL(p_s || M), M = beta p_t + (1-beta) p_s
    b = kw["beta"]
    lm = np.log(b * pt + (1 - b) * ps)
    return b * kl(pt, lt, lm) + (1 - b) * kl(ps, ls, lm)
  if kind == "skew_reverse_kl":  # KL(p_s || M), M = alpha p_t + (1 - alpha) p_s
    a = kw["alpha"]
    return kl(ps, ls, np.log(a * pt + (1 - a) * ps))
  raise AssertionError(kind)


def np_weighted_sum_and_grads(h_s, w_s, h_t, w_t, weights, kind, kw, eps=1e-5):
  """(S, dS/dh_s, dS/dW_s) for S = sum(weights * divergence), by float64 central differences."""
  h_s, w_s = np.asarray(h_s, np.float64), np.asarray(w_s, np.float64)
  total = lambda h, w: np.sum(
    np.asarray(weights, np.float64) * np_divergence(h, w, h_t, w_t, kind, kw)
  )

  def fd(x, f):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
      up, down = x.copy(), x.copy()
      up[i] += eps
      down[i] -= eps
      grad[i] = (f(up) - f(down)) / (2 * eps)
    return grad

  return (
    total(h_s, w_s),
    fd(h_s, lambda h: total(h, w_s)),
    fd(w_s, lambda w: total(h_s, w)),
  )


# Outer functions f(S, c) of the weighted sum S and a traced scalar c, with df/dS and df/dc.
OUTER = {
  "sin": (
    lambda s, c: jnp.sin(3.0 * c * s),
    lambda s, c: 3.0 * c * np.cos(3.0 * c * s),
    lambda s, c: 3.0 * s * np.cos(3.0 * c * s),
  ),
  # (S + 1): S >= 0, so the cotangent 2 c (S + 1) is at least 1.8 whatever the data.
  "square": (
    lambda s, c: c * (s + 1.0) ** 2,
    lambda s, c: 2.0 * c * (s + 1.0),
    lambda s, c: (s + 1.0) ** 2,
  ),
}

KINDS = [
  ("reverse_kl", {}),
  ("forward_kl", {}),
  ("jsd", {"beta": 0.3}),
  ("skew_reverse_kl", {"alpha": 0.2}),
]
# (kind, kw, layout): every kind unsharded; the token- and vocabulary-sharded custom VJPs on a
# 2 x 2 mesh (6 tokens split over 'data', V = 8 over 'data' and 'tensor').
CASES = [(kind, kw, None) for kind, kw in KINDS]
CASES += [("reverse_kl", {}, "tokens"), ("jsd", {"beta": 0.3}, "vocab")]


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  h_s = rng.standard_normal((B, L, DS)).astype(np.float32)
  w_s = rng.standard_normal((DS, V)).astype(np.float32)
  h_t = rng.standard_normal((B, L, DT)).astype(np.float32)
  w_t = rng.standard_normal((DT, V)).astype(np.float32)
  weights = rng.uniform(0.5, 1.5, (B, L)).astype(np.float32)
  for b, t in ZERO_W:
    weights[b, t] = 0.0
    h_s[b, t] *= 30.0  # anything finite may sit under a zero weight
  return h_s, w_s, h_t, w_t, weights


@pytest.mark.parametrize("outer", sorted(OUTER))
@pytest.mark.parametrize("kind,kw,layout", CASES)
def test_gradient_of_a_nonlinear_function_of_the_weighted_sum(devices8, kind, kw, layout, outer):
  h_s, w_s, h_t, w_t, weights = _problem()
  f, df_ds, df_dc = OUTER[outer]

  def loss(h, w, c):
    out = fused_divergence(
      h,
      w,
      h_t,
      w_t,
      weights,
      kind=kind,
      temperature=T,
      block_size=4,  # 6 tokens (3 per device when sharded): padded blocks too
      chunk_size=3,  # ragged vocabulary chunks
      sharding=layout or "tokens",
      **kw,
    )
    return f(out.weighted_sum, c)

  grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  if layout is None:
    value, (dh, dw, dc) = grad_fn(h_s, w_s, jnp.float32(C))
  else:
    mesh = shd.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
      value, (dh, dw, dc) = grad_fn(h_s, w_s, jnp.float32(C))

  s, ds_dh, ds_dw = np_weighted_sum_and_grads(h_s, w_s, h_t, w_t, weights, kind, kw)
  ct = df_ds(s, C)
  # The case must tell a backward that drops its cotangent (uses 1) or zeroes it apart.
  assert abs(ct - 1.0) > 0.2 and abs(ct) > 0.2, ct
  np.testing.assert_allclose(value, float(f(s, C)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dc, df_dc(s, C), rtol=1e-4, atol=1e-6)
  want_dh, want_dw = ct * ds_dh, ct * ds_dw
  np.testing.assert_allclose(dh, want_dh, rtol=1e-4, atol=1e-5 * np.abs(want_dh).max())
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-5 * np.abs(want_dw).max())
  # Zero-weight positions get exactly no gradient (their large hidden rows would show in dW).
  for b, t in ZERO_W:
    assert not np.any(np.asarray(dh)[b, t]), (b, t, dh[b, t])
