"""rockjax.sampling against independent references: no-cache forwards, numpy distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockjax import sampling
from rockjax import sharding as shd
from rockjax.sampling import processors as lp
from tests.fixtures import (
  SAMPLER_CFG,
  forward,
  greedy_continuation,
  left_padded_batch,
  random_model,
  stacked_copy,
)

CFG = SAMPLER_CFG
B, P, T = 4, 7, 8  # rows left-padded by 0, 2, 4, 6 tokens: four prompt lengths in one batch
KEY = jax.random.key(0)
SAMPLED = dict(temperature=0.8, top_p=0.95, top_k=40, eos_ids=(5, 11, 17), num_samples=3)


@pytest.fixture(scope="module")
def setup():
  """The model, a left-padded prompt batch and its greedy continuation by full forwards."""
  model = random_model(CFG)
  ids, mask = left_padded_batch(CFG.vocab_size, batch=B, length=P)
  seq = greedy_continuation(model, ids, mask, T)
  return model, ids, mask, seq


def _gen(model, ids, mask, **kw):
  kw = {"key": KEY, "max_new_tokens": T, **kw}
  return jax.tree.map(np.asarray, sampling.generate(model, ids, mask, **kw))


def _teacher_forced_logprobs(model, rollout):
  """log_softmax (float64) of a full forward of the rollout's tokens, at each next token."""
  logits = np.asarray(forward(model, rollout.tokens, rollout.attention_mask), np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nxt = np.take_along_axis(logp[:, :-1], rollout.tokens[:, 1:, None], -1)[..., 0]
  return np.concatenate([np.zeros((len(nxt), 1)), nxt], 1) * rollout.response_mask


def test_greedy_equals_full_forward_argmax(setup):
  model, ids, mask, ref = setup
  out = _gen(model, ids, mask, greedy=True)
  np.testing.assert_array_equal(out.tokens, ref)
  np.testing.assert_array_equal(out.response_mask, np.repeat([[0] * P + [1] * T], B, 0))
  np.testing.assert_array_equal(out.attention_mask, np.concatenate([mask, np.ones((B, T))], 1))
  np.testing.assert_array_equal(out.lengths, [T] * B)
  assert out.prompt_len == P
  np.testing.assert_allclose(out.logprobs, _teacher_forced_logprobs(model, out), atol=1e-5)
  assert not out.sample_logprobs.any()
  # top-k = 1 and a tiny nucleus leave only the argmax: sampling becomes greedy.
  for kw in (dict(top_k=1), dict(top_p=1e-6)):
    np.testing.assert_array_equal(_gen(model, ids, mask, temperature=1.3, **kw).tokens, ref)


def test_sampled_logprobs_order_and_keys(setup):
  model, ids, mask, ref = setup
  kw, n = SAMPLED, SAMPLED["num_samples"]
  out = _gen(model, ids, mask, **kw)
  N = B * n
  assert out.tokens.shape == (N, P + T)
  np.testing.assert_array_equal(out.tokens[:, :P], np.repeat(ids, n, 0))  # row i*n+j <- i
  np.testing.assert_array_equal(out.attention_mask[:, :P], np.repeat(mask, n, 0))
  np.testing.assert_allclose(out.logprobs, _teacher_forced_logprobs(model, out), atol=1e-5)
  # Processed-distribution log-probs are proper log-probs, exactly 0 off the response.
  assert (out.sample_logprobs <= 1e-6).all() and not out.sample_logprobs[
    out.response_mask == 0
  ].any()
  assert (out.sample_logprobs[out.response_mask == 1] < 0).any()
  assert len({tuple(r) for r in out.tokens[:, P:]}) > N // 2  # samples of one prompt differ
  # Same key -> same output; another key -> other samples.
  again = _gen(model, ids, mask, **kw)
  jax.tree.map(np.testing.assert_array_equal, again, out)
  other = _gen(model, ids, mask, **dict(kw, key=jax.random.key(1)))
  assert (other.tokens != out.tokens).mean() > 0.3


def _force_eos_at(steps_per_row, eos_per_row):
  """A processor forcing row r to emit eos_per_row[r] at step steps_per_row[r] (and only then)."""
  steps, eos = jnp.asarray(steps_per_row), jnp.asarray(eos_per_row)

  def processor(logits_NxV, step):
    hot_NxV = jax.nn.one_hot(eos, logits_NxV.shape[-1], dtype=bool)
    return jnp.where((step == steps)[:, None], jnp.where(hot_NxV, 1e4, -1e4), logits_NxV)

  return processor


def test_eos_masks_and_early_stop(setup):
  model, ids, mask, ref = setup
  # Rows end at steps 2, 0, 5 (EOS ids 90, 91, 90); row 3 never ends. EOS 91 is the second id.
  processor = _force_eos_at([2, 0, 5, 99], [90, 91, 90, 91])
  out = _gen(model, ids, mask, greedy=True, eos_ids=(90, 91), logit_processor=processor)
  lengths = np.array([3, 1, 6, T])
  np.testing.assert_array_equal(out.lengths, lengths)
  for r, n_r in enumerate(lengths):
    expected = ref[r, : P + n_r].copy()
    if n_r < T:
      expected[-1] = [90, 91, 90][r]
    assert ref[r, P : P + n_r - 1].tolist() == out.tokens[r, P : P + n_r - 1].tolist()
    np.testing.assert_array_equal(out.tokens[r], np.r_[expected, [90] * (T - n_r)])  # pad = eos[0]
    np.testing.assert_array_equal(out.response_mask[r], np.r_[[0] * P, [1] * n_r, [0] * (T - n_r)])
    np.testing.assert_array_equal(out.attention_mask[r], np.r_[mask[r], [1] * n_r, [0] * (T - n_r)])
  assert not out.logprobs[out.response_mask == 0].any()
  # Every row ends by step 3: the loop stops early and the tail stays pad, masked 0.
  done = _gen(
    model,
    ids,
    mask,
    greedy=True,
    eos_ids=(90, 91),
    pad_id=0,
    logit_processor=_force_eos_at([2, 0, 3, 1], [90, 91, 90, 91]),
  )
  np.testing.assert_array_equal(done.lengths, [3, 1, 4, 2])
  np.testing.assert_array_equal(done.response_mask[:, P:].sum(1), [3, 1, 4, 2])
  assert not done.tokens[:, P + 4 :].any() and not done.response_mask[:, P + 4 :].any()


def test_banned_ids_never_appear(setup):
  model, ids, mask, _ = setup
  boosted = (5, 7, 30)
  boost = lambda logits, step: logits.at[:, jnp.asarray(boosted)].add(8.0)  # ~99% on these 3
  # 5 and 30 banned: 7 takes their mass (so the boost works) and the bans hold, when sampling
  # many rows and greedily.
  kw = dict(banned_ids=(5, 30), logit_processor=boost)
  out = _gen(model, ids, mask, num_samples=16, **kw)
  gen = out.tokens[:, P:]
  assert not np.isin(gen, [5, 30]).any()
  assert (gen == 7).mean() > 0.9
  greedy = _gen(model, ids, mask, greedy=True, **kw)
  assert (greedy.tokens[:, P:] == 7).all()


def _nucleus_reference(logits, temperature, top_k, top_p):
  """numpy float64: softmax(logits / T) restricted to top-k, then to the top-p nucleus."""
  z = logits / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.zeros_like(z, bool)
  keep[order[: top_k or len(z)]] = True
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  above = np.cumsum(p[order]) - p[order]
  nucleus = np.zeros_like(keep)
  nucleus[order[above < top_p]] = True
  p = np.where(nucleus & keep, p, 0.0)
  return p / p.sum()


def test_sampled_frequencies_match_distribution(setup):
  # Temperature, then top-k (drops 2 of 7 ids), then top-p (drops the tail of the rest).
  temperature, top_k, top_p = 1.5, 5, 0.8
  model, ids, mask, _ = setup
  V = CFG.vocab_size
  fixed = np.full(V, -np.inf)
  fixed[[3, 9, 14, 20, 41, 60, 77]] = [1.0, 0.5, 0.0, -0.3, -1.0, 0.8, -2.0]
  processor = lambda logits, step: jnp.broadcast_to(jnp.asarray(fixed, jnp.float32), logits.shape)
  n, steps = 1000, 2
  out = sampling.generate(
    model,
    ids,
    mask,
    key=KEY,
    max_new_tokens=steps,
    num_samples=n,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    logit_processor=processor,
  )
  draws = np.asarray(out.tokens[:, P:]).ravel()
  freq = np.bincount(draws, minlength=V) / draws.size
  expect = _nucleus_reference(fixed, temperature, top_k, top_p)
  sigma = np.sqrt(expect * (1 - expect) / draws.size)
  assert np.all(np.abs(freq - expect) <= 4 * sigma + 1e-9), (freq, expect)
  # The sampled-distribution log-probs are exactly log(expect) of the drawn ids.
  np.testing.assert_allclose(
    np.asarray(out.sample_logprobs[:, P:]).ravel(), np.log(expect[draws]), atol=1e-5
  )


def test_sharded_equals_unsharded(setup, devices8):
  model, ids, mask, ref = setup
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = shd.shard_model(random_model(CFG), mesh)
  assert sharded.embed_tokens[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  run = lambda **kw: sampling.generate(
    sharded, ids, mask, key=KEY, max_new_tokens=T, mesh=mesh, **kw
  )
  greedy = run(greedy=True)
  assert greedy.tokens.sharding.spec[0] == ("data", "fsdp")  # rows stay batch-sharded
  np.testing.assert_array_equal(np.asarray(greedy.tokens), ref)
  mine, plain = run(**SAMPLED), _gen(model, ids, mask, **SAMPLED)
  for name in ("tokens", "response_mask", "attention_mask", "lengths"):
    np.testing.assert_array_equal(np.asarray(getattr(mine, name)), getattr(plain, name), name)
  np.testing.assert_allclose(np.asarray(mine.logprobs), plain.logprobs, atol=1e-5)
  np.testing.assert_allclose(np.asarray(mine.sample_logprobs), plain.sample_logprobs, atol=1e-5)


def test_scanned_layers_sample_like_unrolled(setup, devices8):
  model, ids, mask, ref = setup
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  scanned = shd.shard_model(stacked_copy(model), mesh)  # stacked KV cache, n rows per prompt
  np.testing.assert_array_equal(_gen(scanned, ids, mask, greedy=True).tokens, ref)
  mine = sampling.generate(scanned, ids, mask, key=KEY, max_new_tokens=T, mesh=mesh, **SAMPLED)
  plain = _gen(model, ids, mask, **SAMPLED)
  np.testing.assert_array_equal(np.asarray(mine.tokens), plain.tokens)
  np.testing.assert_allclose(np.asarray(mine.logprobs), plain.logprobs, atol=1e-5)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.93])
def test_top_p_and_top_k_filters_match_numpy(rng, top_p):
  logits = rng.standard_normal((6, 50)) * [[0.3], [1.0], [3.0], [1.0], [2.0], [8.0]]
  logits[:, [4, 17]] = -np.inf  # banned ids stay out whatever p
  filtered = np.asarray(
    jax.jit(lambda x: lp.top_p_filter(lp.top_k_filter(x, 12), top_p))(
      jnp.asarray(logits, jnp.float32)
    )
  )
  for row, out in zip(logits, filtered):
    keep = _nucleus_reference(row, 1.0, 12, top_p) > 0
    np.testing.assert_array_equal(np.isfinite(out), keep)
    np.testing.assert_array_equal(out[keep], row[keep].astype(np.float32))


def test_argument_errors(setup):
  model, ids, mask, _ = setup
  with pytest.raises(ValueError, match="temperature=0"):
    sampling.generate(model, ids, mask, key=KEY, max_new_tokens=2, temperature=0.0)
  with pytest.raises(ValueError, match=r"\[96\] outside the vocabulary"):
    sampling.generate(model, ids, mask, key=KEY, max_new_tokens=2, banned_ids=(96,))


def test_inverse_cdf_sample_frequencies_and_zero_mass_ids():
  # -inf at the first id, in the middle and at the last id: never drawn, even at u ~ 0 or ~ 1.
  logits = np.array([-np.inf, 0.3, -1.0, 2.0, -np.inf, 0.0, 1.1, -np.inf], np.float32)
  n = 20000
  keys = jax.random.split(jax.random.key(7), n)
  draws = np.asarray(
    jax.jit(lp.inverse_cdf_sample)(jnp.broadcast_to(jnp.asarray(logits), (n, logits.size)), keys)
  )
  expect = np.where(np.isfinite(logits), np.exp(logits.astype(np.float64) - 2.0), 0.0)
  expect /= expect.sum()
  freq = np.bincount(draws, minlength=logits.size) / n
  assert freq[~np.isfinite(logits)].sum() == 0
  sigma = np.sqrt(expect * (1 - expect) / n)
  assert np.all(np.abs(freq - expect) <= 4 * sigma + 1e-12), (freq, expect)
