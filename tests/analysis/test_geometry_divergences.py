"""The gradient-geometry study under the run's divergence, every setting of it, vs float64.

The study must differentiate the divergence the run trained with: under `jsd` and
`skew_reverse_kl` the mixture weight (opd.jsd_beta, opd.skew_alpha) changes every gradient,
so a geometry computed with the default weight is silently wrong. The reference is an
independent float64 numpy divergence differentiated by central finite differences.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from rockjax import losses
from rockjax.analysis import geometry, groups
from rockjax.config import settings
from tests import fixtures

V = 9
GROUP_IDS = {"rocks": np.array([1, 2]), "high_kl": np.array([4, 5]), "random": np.array([7])}


def np_divergence(zs, zt, kind, beta=0.5, alpha=0.9):
  """float64 per-position divergence from logits [..., V] (definitions in docs/method.md)."""
  ls, lt = fixtures.np_log_softmax(zs), fixtures.np_log_softmax(zt)
  ps, pt = np.exp(ls), np.exp(lt)
  kl = lambda p, lp, lq: np.sum(p * (lp - lq), axis=-1)  # noqa: E731
  if kind == "reverse_kl":
    return kl(ps, ls, lt)
  if kind == "jsd":  # beta = the teacher's weight in M
    lm = np.log(beta * pt + (1 - beta) * ps)
    return beta * kl(pt, lt, lm) + (1 - beta) * kl(ps, ls, lm)
  if kind == "skew_reverse_kl":  # KL(p_s || alpha p_t + (1 - alpha) p_s)
    return kl(ps, ls, np.log(alpha * pt + (1 - alpha) * ps))
  raise ValueError(kind)


def np_logit_grad(zs, zt, **kw):
  """d divergence / d student logits [..., V], float64 central differences."""
  zs = np.asarray(zs, np.float64)
  zt = np.asarray(zt, np.float64)
  g = np.zeros_like(zs)
  h = 1e-6
  for v in range(zs.shape[-1]):
    e = np.zeros(zs.shape[-1])
    e[v] = h
    g[..., v] = (np_divergence(zs + e, zt, **kw) - np_divergence(zs - e, zt, **kw)) / (2 * h)
  return g


def batches(seed=0, n=2, b=3, length=6):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    zs = rng.normal(0, 2, (b, length, V)).astype(np.float32)
    zt = rng.normal(0, 2, (b, length, V)).astype(np.float32)
    ids = rng.choice([0, 1, 2, 3, 4, 5, 7, 8], (b, length)).astype(np.int32)
    mask = (rng.random((b, length)) < 0.8).astype(np.int32)
    yield zs, zt, ids, mask


def reference_gbar(kw):
  """Per group id: float64 mean logit gradient [G, V] over the positions that emit it."""
  ids_G = np.concatenate([GROUP_IDS[n] for n in groups.GROUPS])
  g_sum, count = np.zeros((ids_G.size, V)), np.zeros(ids_G.size)
  for zs, zt, ids, mask in batches():
    g = np_logit_grad(zs, zt, **kw)
    for j, v in enumerate(ids_G):
      at = (ids == v) & (mask > 0)
      g_sum[j] += g[at].sum(0)
      count[j] += at.sum()
  return g_sum / np.maximum(count, 1)[:, None], count


CASES = [
  ("jsd", {"beta": 0.3}, {"jsd_beta": 0.3}),
  ("skew_reverse_kl", {"alpha": 0.2}, {"skew_alpha": 0.2}),
]


@pytest.mark.parametrize("kind,np_kw,opd", CASES, ids=[c[0] for c in CASES])
def test_geometry_differentiates_the_runs_divergence(kind, np_kw, opd):
  """The study's spec comes from the run's config (opd.divergence and its mixture weight);
  the per-id mean gradients equal the float64 reference of that divergence."""
  c = default.get_config()
  c.opd.divergence = kind
  for field, value in opd.items():
    c.opd[field] = value
  spec = settings.divergence_spec(c)
  ids_G, segment_V = geometry.segment_map(GROUP_IDS, V)
  sums = geometry.GradientSums.init(ids_G.size, V)
  for zs, zt, ids, mask in batches():
    sums = geometry.add_logits_jit(sums, zs, zt, ids, mask, jnp.asarray(segment_V), spec=spec)
  gbar_ref, count_ref = reference_gbar({"kind": kind, **np_kw})
  count = np.asarray(sums.count_S)[:-1]
  np.testing.assert_array_equal(count, count_ref)
  gbar = np.asarray(sums.g_sum_SxV)[:-1] / np.maximum(count, 1)[:, None]
  np.testing.assert_allclose(gbar, gbar_ref, rtol=2e-4, atol=2e-6)
  # The default mixture weight gives another geometry: the setting is not a no-op here.
  default_ref, _ = reference_gbar({"kind": kind})
  assert np.max(np.abs(default_ref - gbar_ref)) > 1e-3


def test_the_analysis_divergence_is_the_loss_divergence():
  """One spec end to end: the loss, the grad-norm metric and the analysis read the same one."""
  c = default.get_config()
  c.opd.divergence, c.opd.jsd_beta, c.opd.temperature = "jsd", 0.3, 1.5
  spec = settings.divergence_spec(c)
  assert settings.loss_settings(c).divergence_spec == spec
  assert (spec.kind, spec.beta, spec.temperature) == ("jsd", 0.3, 1.5)
  with pytest.raises(ValueError, match="not both"):
    losses.logit_gradient(jnp.zeros((1, V)), jnp.zeros((1, V)), kind="jsd", spec=spec)
