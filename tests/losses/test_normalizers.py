"""opd.normalizer ('tokens', 'weights', 'sequence') against hand-computed per-token weights.

Every case is a small token batch with frozen positions (rock id 3), padding and (in one row) a
response mask that runs into the padding; the expected coefficient of every per-token loss is
written out by hand as a fraction, then checked on losses.reduce, objective.batch_count and
objective.loss_terms (fused and full-logit paths) in float64 numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rockjax import losses, objective
from tests.fixtures import ROCK_IDS, build, make_batch, np_log_softmax, one_device_mesh

V, ROCK = 8, 3
ROCK_MASK_V = np.arange(V) == ROCK


def issue_batch():
  """Two sequences: 5 response tokens (1 rock) and 11 (1 rock), kept 4 and 10 (lambda 0).

  Row 0 ends early; its response mask also covers its 6 padded columns (attention 0), which
  must count nothing.
  """
  tokens = np.array(
    [
      [1, 5, 3, 6, 7, 2, 0, 0, 0, 0, 0, 0],
      [1, 4, 5, 6, 3, 7, 2, 4, 5, 6, 7, 1],
    ],
    np.int32,
  )
  attn = np.array([[1] * 6 + [0] * 6, [1] * 12], np.int32)
  resp = np.array([[0] + [1] * 11, [0] + [1] * 11], np.int32)  # row 0: over the padding
  return {"tokens": tokens, "attention_mask": attn, "response_mask": resp}


# Coefficient of each target column's loss in the issue's example (lambda 0), and the count.
# Targets are tokens[:, 1:], loss mask on target columns 0-4 (row 0) and 0-10 (row 1); the
# rocks sit at column 1 (row 0) and column 3 (row 1).
_ROW0_KEPT = [0, 2, 3, 4]
_ROW1_KEPT = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]


def _issue_coefficients(normalizer):
  c = np.zeros((2, 12))
  if normalizer == "tokens":  # 16 response tokens: rocks weigh 0, nothing renormalises
    c[0, _ROW0_KEPT], c[1, _ROW1_KEPT] = 1 / 16, 1 / 16
  elif normalizer == "weights":  # 14 kept tokens in the batch: every kept token 1/14
    c[0, _ROW0_KEPT], c[1, _ROW1_KEPT] = 1 / 14, 1 / 14
  else:  # per-sequence mean over kept tokens, then the mean of the 2 sequences
    c[0, _ROW0_KEPT], c[1, _ROW1_KEPT] = 1 / (2 * 4), 1 / (2 * 10)
  return c


def rich_batch():
  """Four rows: 3 response tokens (1 rock); 1 token, a rock; 6 tokens (2 rocks) whose response
  mask covers 2 padded columns; and a row with no response at all (prompt only)."""
  tokens = np.array(
    [
      [0, 1, 2, 5, 3, 6, 0, 0, 0],
      [1, 2, 3, 0, 0, 0, 0, 0, 0],
      [1, 3, 5, 3, 6, 7, 4, 0, 0],
      [1, 2, 4, 0, 0, 0, 0, 0, 0],
    ],
    np.int32,
  )
  attn = np.array(
    [
      [0, 1, 1, 1, 1, 1, 0, 0, 0],  # left padding, then right padding
      [1, 1, 1, 0, 0, 0, 0, 0, 0],
      [1, 1, 1, 1, 1, 1, 1, 0, 0],
      [1, 1, 1, 0, 0, 0, 0, 0, 0],
    ],
    np.int32,
  )
  resp = np.array(
    [
      [0, 0, 0, 1, 1, 1, 0, 0, 0],
      [0, 0, 1, 0, 0, 0, 0, 0, 0],
      [0, 1, 1, 1, 1, 1, 1, 1, 1],  # covers the 2 padded columns
      [0, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.int32,
  )
  return {"tokens": tokens, "attention_mask": attn, "response_mask": resp}


def _rich_coefficients(normalizer, lam):
  """Target columns (tokens[:, 1:]): row 0 cols 2-4 = ids 5, 3, 6; row 1 col 1 = id 3; row 2
  cols 0-5 = ids 3, 5, 3, 6, 7, 4. Kept weights W: row 0 2 + lam, row 1 lam, row 2 4 + 2 lam."""
  c = np.zeros((4, 9))
  rocks = [(0, 3), (1, 1), (2, 0), (2, 2)]
  kept = [(0, 2), (0, 4), (2, 1), (2, 3), (2, 4), (2, 5)]
  if normalizer == "tokens":  # 10 response tokens
    row_div = {0: 10, 1: 10, 2: 10}
  elif normalizer == "weights":  # the batch's sum of weights, 6 + 4 lam
    row_div = {0: 6 + 4 * lam, 1: 6 + 4 * lam, 2: 6 + 4 * lam}
  else:  # 3 sequences count (row 3 has no response); each row / max(W, 1)
    row_div = {0: 3 * max(2 + lam, 1), 1: 3 * max(lam, 1), 2: 3 * max(4 + 2 * lam, 1)}
  for b, t in kept:
    c[b, t] = 1 / row_div[b]
  for b, t in rocks:
    c[b, t] = lam / row_div[b]
  return c


# Spelled out for lambda 0.5, as a check on the formula above: under 'sequence' row 0 (W 2.5)
# keeps 1/7.5 and 0.5/7.5; row 1 (W 0.5 -> max 1) keeps 0.5/3, not 1/3; row 2 (W 5) 1/15, 0.5/15.
_RICH_SEQUENCE_HALF = {
  (0, 2): 2 / 15,
  (0, 3): 1 / 15,
  (1, 1): 1 / 6,
  (2, 0): 1 / 30,
  (2, 1): 1 / 15,
}

CASES = [
  ("issue", issue_batch, 0.0, lambda n, lam: _issue_coefficients(n)),
  ("rich_lam0", rich_batch, 0.0, _rich_coefficients),
  ("rich_lam0.5", rich_batch, 0.5, _rich_coefficients),
]


def _settings(normalizer, lam, chunked=True):
  return objective.LossSettings(
    rock_mode="static", lam=lam, normalizer=normalizer, chunked=chunked, grad_norm_metric=False
  )


def test_rich_sequence_coefficients_spelled_out():
  c = _rich_coefficients("sequence", 0.5)
  for (b, t), want in _RICH_SEQUENCE_HALF.items():
    assert c[b, t] == pytest.approx(want)
  # Rows 0 and 2 sum to 1/3 each; row 1 (W 0.5 < 1) only to 0.5/3: max(W, 1) does not rescale.
  assert c[3].sum() == 0 and c.sum() == pytest.approx(1 / 3 + 1 / 6 + 1 / 3)


def test_issue_example_kept_token_weights():
  """The issue's numbers: a kept token weighs 2/14 = 0.143 (x 2 sequences) under 'weights',
  0.25 and 0.10 under the authors' per-sequence mean."""
  np.testing.assert_allclose(2 * _issue_coefficients("weights")[:, 0], [1 / 7, 1 / 7])
  np.testing.assert_allclose(2 * _issue_coefficients("sequence")[:, 0], [0.25, 0.10])


@pytest.mark.parametrize("normalizer", losses.NORMALIZERS)
@pytest.mark.parametrize("name,make,lam,coefficients", CASES, ids=[c[0] for c in CASES])
def test_reduce_and_batch_count_equal_hand_coefficients(name, make, lam, coefficients, normalizer):
  """loss = reduce's sum / batch_count; d loss / d per-token loss = the hand coefficient."""
  del name
  shifted = objective.shift(make())
  want_C = coefficients(normalizer, lam)
  settings = _settings(normalizer, lam)
  count = objective.batch_count(ROCK_MASK_V, shifted, settings)
  w_BxL = objective.loss_weights(ROCK_MASK_V, shifted.targets_BxL, shifted.loss_mask_BxL, settings)
  # Garbage at positions off the loss mask must not leak (nan, inf, huge).
  l_BxL = np.random.default_rng(0).uniform(0.1, 2.0, want_C.shape)
  l_BxL[np.asarray(shifted.loss_mask_BxL) == 0] = np.nan

  def loss(l):
    total, c = losses.reduce(l, shifted.loss_mask_BxL, w_BxL, normalizer=normalizer)
    np.testing.assert_allclose(c, count)  # reduce's own count is the batch's
    return total / count

  value, grad = jax.value_and_grad(loss)(jnp.asarray(l_BxL, jnp.float32))
  np.testing.assert_allclose(float(value), np.nansum(want_C * l_BxL), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_C, rtol=1e-6, atol=1e-8)


class _Logits:
  """A stand-in model whose logits (= hidden states, under an identity head) are given."""

  def __init__(self, z_BxLxV):
    self.z = z_BxLxV

  def __call__(self, inputs_BxL, mask_BxL):
    return self.z

  def hidden_states(self, inputs_BxL, mask_BxL):
    return self.z

  def lm_head_weight(self):
    return jnp.eye(self.z.shape[-1], dtype=self.z.dtype)


def _np_reverse_kl_and_grad(zs, zt):
  """Per-token KL(p_s || p_t) and its gradient w.r.t. the student logits, float64."""
  ls, lt = np_log_softmax(zs), np_log_softmax(zt)
  kl = np.sum(np.exp(ls) * (ls - lt), -1)
  return kl, np.exp(ls) * (ls - lt - kl[..., None])


@pytest.mark.parametrize("chunked", [True, False], ids=["fused", "full_logits"])
@pytest.mark.parametrize("normalizer", losses.NORMALIZERS)
@pytest.mark.parametrize("name,make,lam,coefficients", CASES, ids=[c[0] for c in CASES])
def test_objective_loss_and_logit_gradient_equal_hand_coefficients(
  name, make, lam, coefficients, normalizer, chunked
):
  """objective.loss_terms / batch_count on both loss paths: loss = sum_t c_t KL_t and
  d loss / d student logits = c_t * dKL_t/dz, with c the hand coefficients."""
  del name
  shifted = objective.shift(make())
  want_C = coefficients(normalizer, lam)
  rng = np.random.default_rng(1)
  zs, zt = (rng.normal(size=want_C.shape + (V,)) * 2 for _ in range(2))
  settings = _settings(normalizer, lam, chunked)
  count = objective.batch_count(ROCK_MASK_V, shifted, settings)
  w_BxL = objective.loss_weights(ROCK_MASK_V, shifted.targets_BxL, shifted.loss_mask_BxL, settings)
  teacher = _Logits(jnp.asarray(zt, jnp.float32))
  t_out = objective.model_outputs(teacher, None, None, chunked)

  def loss(z):
    inputs, in_mask, targets, loss_mask = shifted
    terms = objective.loss_terms(
      _Logits(z), inputs, in_mask, targets, loss_mask, w_BxL, t_out, settings
    )
    np.testing.assert_allclose(terms.count, count)
    return terms.total / count

  value, grad = jax.value_and_grad(loss)(jnp.asarray(zs, jnp.float32))
  kl, dkl = _np_reverse_kl_and_grad(zs, zt)
  np.testing.assert_allclose(float(value), np.sum(want_C * kl), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_C[..., None] * dkl, rtol=1e-4, atol=1e-7)


def test_sequence_normalizer_hand_case_on_reduce():
  """losses.reduce alone, 'sequence': rows (1, 2 | 3) with weights (1, 1 | 0.5), a padded
  row, and garbage off the mask -> mean over 2 rows of (1 + 2) / 2 and 0.5 * 3 / max(0.5, 1)."""
  x = np.array([[1.0, 2.0, np.inf], [3.0, np.nan, 5.0], [7.0, 7.0, 7.0]], np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
  w = np.array([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
  total, count = losses.reduce(x, mask, w, normalizer="sequence")
  assert float(count) == 2.0
  assert float(total) == pytest.approx((1 + 2) / 2 + 0.5 * 3 / 1)
  total, count = losses.reduce(x, mask, normalizer="sequence")  # no weights: per-row means
  assert (float(total), float(count)) == (pytest.approx(1.5 + 3.0), 2.0)


def _sequence_batch():
  """fixtures.make_batch with a row without response (5) and a row of rocks only (6)."""
  batch = {k: v.copy() for k, v in make_batch(seed=2).items()}
  batch["response_mask"][5] = 0
  batch["tokens"][6, 3:] = ROCK_IDS[0]
  return batch


@pytest.mark.parametrize("chunked", [True, False], ids=["fused", "full_logits"])
def test_sequence_normalizer_two_micro_batches_equal_one(chunked):
  """The whole train step under 'sequence' (lambda 0): 2 micro-batches == 1 in gradient
  (SGD, lr 1), loss, metrics and rock statistics; the loss count is the 7 rows with a
  response (the rocks-only row counts, the empty row does not)."""
  batch, results = _sequence_batch(), []
  for k in (1, 2):
    fn, state, t_params = build(
      one_device_mesh(),
      tx=optax.sgd(1.0),
      normalizer="sequence",
      lam=0.0,
      chunked=chunked,
      micro_batches=k,
    )
    p0 = jax.device_get(state.params)  # the step donates `state`
    with jax.set_mesh(one_device_mesh()):
      new_state, m = fn(state, t_params, batch)
    results.append((p0, jax.device_get(new_state), jax.device_get(m)))
  (p0, s1, m1), (_, s2, m2) = results
  assert float(m1["opd/loss"][1]) == 7.0
  for key in m1:
    np.testing.assert_allclose(m2[key], m1[key], rtol=1e-6, atol=1e-7, err_msg=key)
  for a, b, c in zip(*(jax.tree.leaves(x) for x in (p0, s1.params, s2.params))):
    # float32 gradient sums in another order: tolerance relative to each array's scale.
    np.testing.assert_allclose(a - c, a - b, rtol=1e-5, atol=1e-5 * np.abs(a - b).max())
  np.testing.assert_array_equal(s2.rock.count_V, s1.rock.count_V)
  np.testing.assert_allclose(s2.rock.kl_sum_V, s1.rock.kl_sum_V, rtol=1e-6)
