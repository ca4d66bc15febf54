"""Per-prompt banned ids (`generate(banned_ids_BxK=...)`) against the static tuple form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockjax import sampling
from rockjax import sharding as shd
from tests.fixtures import SAMPLER_CFG, left_padded_batch, random_model

CFG = SAMPLER_CFG
B, P, T, V = 4, 7, 6, CFG.vocab_size
KEY = jax.random.key(3)
# Boosts that make the banned ids likely, so a ban that fails to hold shows; 95 = V - 1 is
# the id a -1 pad would hit if it wrapped around.
BOOST_V = np.zeros(V, np.float32)
BOOST_V[[95, 5, 7, 30]] = [50.0, 40.0, 39.0, 38.0]  # 95 always wins unless banned
BANS_BxK = np.array([[5, -1], [95, 30], [-1, -1], [7, 95]], np.int32)


def _boost(logits_NxV, step):
  return logits_NxV + jnp.asarray(BOOST_V)


@pytest.fixture(scope="module")
def setup():
  model = random_model(CFG)
  ids, mask = left_padded_batch(V, batch=B, length=P)
  return model, ids, mask


def _gen(model, ids, mask, **kw):
  kw = dict(key=KEY, max_new_tokens=T, logit_processor=_boost, **kw)
  return jax.tree.map(np.asarray, sampling.generate(model, ids, mask, **kw))


def test_row_bans_equal_the_tuple_form_row_by_row(setup):
  model, ids, mask = setup
  sample, n = dict(temperature=1.0, num_samples=3), 3  # sampled: keys must follow the rows too
  rows = _gen(model, ids, mask, banned_ids_BxK=BANS_BxK, **sample)
  for i, bans in enumerate(BANS_BxK):
    # Prompt i's samples are rows i*n .. i*n+n-1 in both runs (same keys): equal token by token.
    ref = _gen(model, ids, mask, banned_ids=tuple(int(v) for v in bans if v >= 0), **sample)
    for name in ("tokens", "response_mask", "logprobs", "sample_logprobs"):
      np.testing.assert_array_equal(
        getattr(rows, name)[i * n : (i + 1) * n], getattr(ref, name)[i * n : (i + 1) * n], name
      )
    gen = rows.tokens[i * n : (i + 1) * n, P:]
    assert not np.isin(gen, bans[bans >= 0]).any()
  # The -1 pads ban nothing: the unbanned prompt still emits the boosted last id.
  assert (rows.tokens[2 * n : 3 * n, P:] == 95).any()


def test_row_bans_are_data_one_program_for_any_ids(setup):
  model, ids, mask = setup
  before = sampling.decode_jit._cache_size()
  bans_BxK = np.c_[BANS_BxK, BANS_BxK[:, :1]]  # K = 3: a shape no other test compiled
  for shift in range(3):
    _gen(model, ids, mask, greedy=True, banned_ids_BxK=(bans_BxK + shift) % V)
  assert sampling.decode_jit._cache_size() - before == 1


def test_row_bans_sharded_equal_unsharded(setup, devices8):
  model, ids, mask = setup
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = shd.shard_model(random_model(CFG), mesh)
  kw = dict(temperature=1.0, num_samples=2, banned_ids_BxK=BANS_BxK)
  mine = sampling.generate(
    sharded, ids, mask, key=KEY, max_new_tokens=T, logit_processor=_boost, mesh=mesh, **kw
  )
  np.testing.assert_array_equal(np.asarray(mine.tokens), _gen(model, ids, mask, **kw).tokens)


def test_row_ban_errors(setup):
  model, ids, mask = setup
  with pytest.raises(ValueError, match=r"shape \(3, 2\); expected \[4, K\]"):
    _gen(model, ids, mask, greedy=True, banned_ids_BxK=BANS_BxK[:3])
  with pytest.raises(ValueError, match=r"\[-2, 96\] outside the vocabulary"):
    _gen(model, ids, mask, greedy=True, banned_ids_BxK=[[96], [1], [-2], [3]])
