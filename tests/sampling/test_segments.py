"""generate(segment_steps=K): the decode in segments draws the tokens of the one-program decode,
stops between segments when asked, and ends as soon as every row has."""

import jax
import numpy as np
import pytest

from rockjax import sampling
from rockjax import sharding as shd
from tests.fixtures import SAMPLER_CFG, greedy_continuation, left_padded_batch, random_model
from tests.sampling.test_sampler import SAMPLED, _force_eos_at

CFG = SAMPLER_CFG
B, P, T = 4, 7, 12
KEY = jax.random.key(3)


@pytest.fixture(scope="module")
def setup():
  """The model, prompts, and their greedy continuation by full no-cache forwards (numpy argmax)."""
  model = random_model(CFG)
  ids, mask = left_padded_batch(CFG.vocab_size, batch=B, length=P)
  seq = greedy_continuation(model, ids, mask, T)
  return model, ids, mask, seq


def _gen(model, ids, mask, **kw):
  return sampling.generate(model, ids, mask, key=KEY, max_new_tokens=T, **kw)


@pytest.mark.parametrize("steps", [1, 4, 5])
def test_greedy_segments_equal_full_forwards(setup, steps):
  model, ids, mask, ref = setup
  out = _gen(model, ids, mask, greedy=True, segment_steps=steps)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.lengths), [T] * B)


def test_sampled_segments_draw_the_same_tokens_on_a_mesh(setup, devices8):
  model, ids, mask, _ = setup
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = shd.shard_model(random_model(CFG), mesh)
  whole = _gen(sharded, ids, mask, mesh=mesh, **SAMPLED)
  parts = _gen(sharded, ids, mask, mesh=mesh, segment_steps=3, **SAMPLED)
  for name in ("tokens", "response_mask", "attention_mask", "lengths", "truncated"):
    np.testing.assert_array_equal(
      np.asarray(getattr(parts, name)), np.asarray(getattr(whole, name))
    )
  for name in ("logprobs", "sample_logprobs"):
    np.testing.assert_array_equal(
      np.asarray(getattr(parts, name)), np.asarray(getattr(whole, name))
    )
  assert parts.tokens.sharding.spec[0] == ("data", "fsdp")


def test_should_stop_abandons_between_segments(setup):
  model, ids, mask, _ = setup
  asked = []

  def should_stop():
    asked.append(1)
    return len(asked) == 3  # before the third segment

  with pytest.raises(sampling.RolloutStopped) as stopped:
    _gen(model, ids, mask, greedy=True, segment_steps=2, should_stop=should_stop)
  assert stopped.value.step == 1 + 2 * 2  # token 0 from the prefill, then two segments of 2
  assert len(asked) == 3


def test_segments_end_when_every_row_has(setup):
  model, ids, mask, ref = setup
  asked = []
  # Every row emits an EOS by step 3: a segment of 2 after the prefill's token 0 takes 1..2,
  # the next 3..4 and sees them all done; no third segment is asked for.
  processor = _force_eos_at([2, 0, 3, 1], [90, 91, 90, 91])
  out = _gen(
    model,
    ids,
    mask,
    greedy=True,
    eos_ids=(90, 91),
    logit_processor=processor,
    segment_steps=2,
    should_stop=lambda: asked.append(1) or False,
  )
  np.testing.assert_array_equal(np.asarray(out.lengths), [3, 1, 4, 2])
  assert len(asked) == 2
  assert ref[0, P : P + 2].tolist() == np.asarray(out.tokens)[0, P : P + 2].tolist()


def test_negative_segment_steps_is_one_line(setup):
  model, ids, mask, _ = setup
  with pytest.raises(ValueError, match=r"segment_steps=-1: expected 0"):
    _gen(model, ids, mask, greedy=True, segment_steps=-1)
