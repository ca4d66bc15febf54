"""Gradient geometry against a float64 numpy computation of g per position, averaged per id."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rockjax import objective
from rockjax import sharding as shd
from rockjax.analysis import geometry, groups
from tests import fixtures

V = 24
GROUP_IDS = {
  "rocks": np.array([1, 2, 3]),
  "high_kl": np.array([5, 6, 20]),  # 20 is never emitted
  "random": np.array([10, 11, 12, 13]),
}


def np_grad(s, t):
  """float64 g = p_s (A - E_ps[A]), A = log p_s - log p_t + 1, per position."""
  ls, lt = fixtures.np_log_softmax(s), fixtures.np_log_softmax(t)
  p = np.exp(ls)
  a = ls - lt + 1.0
  return p * (a - np.sum(p * a, axis=-1, keepdims=True))


def random_batches(n=2, b=3, length=7, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    s = rng.normal(0, 2, (b, length, V)).astype(np.float32)
    t = rng.normal(0, 2, (b, length, V)).astype(np.float32)
    ids = rng.choice([1, 2, 3, 5, 6, 10, 11, 12, 13, 0, 7], (b, length)).astype(np.int32)
    mask = (rng.random((b, length)) < 0.8).astype(np.int32)
    out.append((s, t, ids, mask))
  return out


def reference(batches):
  """Per group id: (count, gbar float64 [V]); and per-position norms split rock / all."""
  ids_G = np.concatenate([GROUP_IDS[n] for n in groups.GROUPS])
  g_sum = np.zeros((ids_G.size, V))
  count = np.zeros(ids_G.size)
  rock_norm = all_norm = 0.0
  for s, t, ids, mask in batches:
    g = np_grad(s, t)
    norm = np.linalg.norm(g, axis=-1)
    for j, v in enumerate(ids_G):
      at = (ids == v) & (mask > 0)
      g_sum[j] += g[at].sum(0)
      count[j] += at.sum()
    all_norm += norm[mask > 0].sum()
    rock_norm += norm[(mask > 0) & np.isin(ids, GROUP_IDS["rocks"])].sum()
  gbar = g_sum / np.maximum(count, 1)[:, None]
  return ids_G, count, gbar, rock_norm / all_norm


def accumulate(batches):
  ids_G, segment_V = geometry.segment_map(GROUP_IDS, V)
  sums = geometry.GradientSums.init(ids_G.size, V)
  for s, t, ids, mask in batches:
    sums = geometry.add_logits_jit(sums, s, t, ids, mask, jnp.asarray(segment_V))
  return sums


def test_segment_sums_equal_numpy_per_id_means():
  batches = random_batches()
  ids_G, count, gbar, _ = reference(batches)
  sums = accumulate(batches)
  np.testing.assert_array_equal(np.asarray(sums.count_S[:-1]), count)
  got = np.asarray(sums.g_sum_SxV[:-1]) / np.maximum(count, 1)[:, None]
  np.testing.assert_allclose(got, gbar, rtol=1e-4, atol=1e-6)
  # Every masked position lands in some segment (group ids or the dump).
  assert int(sums.count_S.sum()) == sum(int(m.sum()) for *_, m in batches)


def test_norm_cosine_contribution_and_tests_equal_numpy():
  batches = random_batches(seed=1)
  ids_G, count, gbar, rock_share = reference(batches)
  res = geometry.geometry(accumulate(batches), GROUP_IDS)
  seen = count > 0
  balanced = gbar[seen].sum(0)  # each emitted group id once
  norm = np.linalg.norm(gbar, axis=-1)
  with np.errstate(invalid="ignore"):  # the unseen id has norm 0 (dropped below)
    cos = gbar @ balanced / (norm * np.linalg.norm(balanced))
  contrib = count * norm * cos
  start = 0
  for name in groups.GROUPS:
    sl = slice(start, start + len(GROUP_IDS[name]))
    start = sl.stop
    keep = seen[sl]
    g = res["groups"][name]
    assert g["ids"].tolist() == GROUP_IDS[name][keep].tolist()
    np.testing.assert_allclose(g["norm"], norm[sl][keep], rtol=1e-4)
    np.testing.assert_allclose(g["cos"], cos[sl][keep], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["contribution"], contrib[sl][keep], rtol=1e-4, atol=1e-6)
    assert g["median_norm"] == pytest.approx(np.median(norm[sl][keep]), rel=1e-4)
    assert g["median_cos"] == pytest.approx(np.median(cos[sl][keep]), rel=1e-4, abs=1e-6)
  assert res["groups"]["high_kl"]["unseen"] == 1  # id 20 never emitted
  assert res["rock_grad_norm_share"] == pytest.approx(rock_share, rel=1e-5)
  ref = scipy.stats.mannwhitneyu(
    res["groups"]["rocks"]["norm"], res["groups"]["random"]["norm"], alternative="two-sided"
  )
  assert res["tests"]["norm_rocks_vs_random"]["mannwhitney_p"] == pytest.approx(ref.pvalue)


def test_models_wrapper_compiles_once_and_matches_the_logit_path(tmp_path):
  student = fixtures.random_model(fixtures.STUDENT, seed=0)
  teacher = fixtures.random_model(fixtures.TEACHER, seed=1)
  batches = [fixtures.make_batch(seed=s, b=4, l=11) for s in (0, 1, 2)]
  ids = {"rocks": fixtures.ROCK_IDS, "high_kl": np.array([0, 5, 9]), "random": np.array([30])}
  before = geometry._add_batch._cache_size()
  sums = geometry.gradient_sums(student, teacher, batches, ids, vocab_size=fixtures.V)
  assert geometry._add_batch._cache_size() == before + 1  # 3 batches of one shape: 1 compile
  _, segment_V = geometry.segment_map(ids, fixtures.V)
  ref = geometry.GradientSums.init(8, fixtures.V)  # 4 + 3 + 1 group ids
  for batch in batches:
    sh = objective.shift({k: jnp.asarray(v) for k, v in batch.items()})
    s = fixtures.forward(student, sh.inputs_BxL, sh.input_mask_BxL)
    t = fixtures.forward(teacher, sh.inputs_BxL, sh.input_mask_BxL)
    ref = geometry.add_logits_jit(ref, s, t, sh.targets_BxL, sh.loss_mask_BxL, segment_V)
  np.testing.assert_allclose(sums.g_sum_SxV, ref.g_sum_SxV, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(sums.count_S, ref.count_S)
  res = geometry.geometry(sums, ids)
  sec = geometry.section(res, str(tmp_path))
  sec.text.format(**sec.numbers)  # every placeholder has a number
  assert sec.numbers["rocks_n"] == res["groups"]["rocks"]["n"] == 4
  assert (tmp_path / sec.figures[0].filename).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlapping_groups_are_refused():
  with pytest.raises(ValueError, match="overlap"):
    geometry.segment_map({"rocks": [1, 2], "high_kl": [2], "random": [3]}, V)


@pytest.mark.slow  # ~25 s on 2 busy CPU cores: two model pairs compiled
def test_sharded_models_give_the_unsharded_sums():
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  student = fixtures.random_model(fixtures.STUDENT, seed=0)
  teacher = fixtures.random_model(fixtures.TEACHER, seed=1)
  batches = [fixtures.make_batch(seed=s, b=4, l=11) for s in (0, 1)]
  ids = {"rocks": fixtures.ROCK_IDS, "high_kl": np.array([0, 5]), "random": np.array([30])}
  ref = geometry.gradient_sums(student, teacher, batches, ids, vocab_size=fixtures.V)
  got = geometry.gradient_sums(
    shd.shard_model(student, mesh),
    shd.shard_model(teacher, mesh),
    batches,
    ids,
    vocab_size=fixtures.V,
    mesh=mesh,
  )
  np.testing.assert_allclose(got.g_sum_SxV, ref.g_sum_SxV, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(got.count_S, ref.count_S)
  np.testing.assert_allclose(got.norm_sum_S, ref.norm_sum_S, rtol=1e-5)
