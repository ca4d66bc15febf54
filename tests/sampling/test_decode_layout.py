"""The sampler on its decode mesh (rockjax.sampling.rollout_copy): greedy rows against a transformers
reference, tied and untied, on 8 fake devices; sampled rows a function of the key alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

import rockjax.models as rm
from rockjax import sampling
from rockjax import sharding as shd
from rockjax.sampling import rollout_copy as rp
from tests.fixtures import (
  hf_logits,
  left_padded_batch,
  make_hf_model,
  np_log_softmax,
  save_hf_checkpoint,
)

pytest.importorskip("torch")
pytestmark = pytest.mark.parity

T = 6  # new tokens
TRAIN_MESH = {"fsdp": 4, "tensor": 2}  # a train layout unlike the decode mesh


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def checkpoint(request, tmp_path_factory):
  """(transformers model, its saved directory): a random float32 Qwen3, 2 KV heads."""
  hf = make_hf_model("qwen3", tie_word_embeddings=request.param)
  path = save_hf_checkpoint(hf, tmp_path_factory.mktemp("hf"))
  return hf, path


def hf_greedy(hf, ids: np.ndarray, mask: np.ndarray, steps: int):
  """Greedy continuation by transformers without a cache: a full forward per new token
  (left-pad positions as HF's generate uses them). Returns (tokens [B, T], logprobs [B, T])."""
  tokens, logps = [], []
  for _ in range(steps):
    logp_BxV = np_log_softmax(hf_logits(hf, ids, mask)[:, -1].astype(np.float64))
    tok_B = logp_BxV.argmax(-1)
    tokens.append(tok_B)
    logps.append(logp_BxV[np.arange(len(tok_B)), tok_B])
    ids = np.concatenate([ids, tok_B[:, None].astype(ids.dtype)], axis=1)
    mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
  return np.stack(tokens, 1), np.stack(logps, 1)


def _student(path, mesh):
  """The checkpoint loaded and placed in the train layout: (graphdef, params)."""
  return nnx.split(shd.shard_model(rm.from_pretrained(path), mesh))


def _generate(path, layout, ids, mask, **kw) -> sampling.Rollout:
  """Rolls out from the sampling copy, as the host loop does (copy, generate, release)."""
  mesh = shd.make_mesh(TRAIN_MESH)
  graphdef, params = _student(path, mesh)
  copier = rp.make_copier(params, mesh, dtype="float32", layout=layout)
  with rp.sampling_model(copier, graphdef, params) as student:
    out = sampling.generate(student, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=T, **kw)
    return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("layout", ["tensor", "replicated"])
def test_greedy_matches_transformers_on_the_decode_mesh(checkpoint, devices8, layout):
  hf, path = checkpoint
  ids, mask = left_padded_batch(160, batch=3, length=7)
  ids = np.where(mask > 0, ids, 0).astype(np.int32)
  want_tokens, want_logp = hf_greedy(hf, ids, mask, T)
  out = _generate(path, layout, ids, mask, key=jax.random.key(0), greedy=True)
  P = ids.shape[1]
  np.testing.assert_array_equal(out.tokens[:, P:], want_tokens)
  np.testing.assert_array_equal(out.response_mask[:, P:], 1)
  np.testing.assert_allclose(out.logprobs[:, P:], want_logp, atol=2e-5)


def test_tensor_layout_splits_heads_and_vocabulary(checkpoint, devices8):
  _, path = checkpoint
  mesh = shd.make_mesh(TRAIN_MESH)
  graphdef, params = _student(path, mesh)
  dmesh = rp.decode_mesh(params, mesh, "tensor")
  # 2 KV heads on 8 devices: tensor groups of 2, rows over the other 4; same device order.
  assert dict(dmesh.shape) == {"data": 4, "fsdp": 1, "context": 1, "tensor": 2}
  assert list(dmesh.devices.flat) == list(mesh.devices.flat)
  copy = rp.make_copier(params, mesh, dtype="bfloat16", layout="tensor")(params)
  assert copy["embed_tokens"].get_value().sharding.spec == PartitionSpec("tensor", None)
  with jax.set_mesh(dmesh):
    assert sampling.vocab_blocks(160) == 2
  assert rp.decode_tensor(params, 8, "tensor", 4) == 4
  with pytest.raises(ValueError, match="opd.rollout_tensor=3 does not divide the 8 devices"):
    rp.decode_tensor(params, 8, "tensor", 3)


def test_sampled_rows_depend_on_the_key_only(checkpoint, devices8):
  _, path = checkpoint
  ids, mask = left_padded_batch(160, batch=2, length=5)
  kw = dict(temperature=1.0, num_samples=4)
  a = _generate(path, "tensor", ids, mask, key=jax.random.key(7), **kw)
  b = _generate(path, "tensor", ids, mask, key=jax.random.key(7), **kw)
  c = _generate(path, "replicated", ids, mask, key=jax.random.key(7), **kw)
  d = _generate(path, "tensor", ids, mask, key=jax.random.key(8), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  # Another layout splits the vocabulary differently (2 blocks vs 1): same draws.
  np.testing.assert_array_equal(a.tokens, c.tokens)
  np.testing.assert_allclose(a.logprobs, c.logprobs, atol=1e-5)
  assert (a.tokens != d.tokens).any()
  # The unprocessed log-probs are those of a transformers-independent float64 softmax of the
  # rockjax full forward of the sampled rows (teacher forcing gives the same distributions).
  model = rm.from_pretrained(path)
  logits = np.asarray(model(jnp.asarray(a.tokens), jnp.asarray(a.attention_mask)), np.float64)
  P = ids.shape[1]
  logp = np_log_softmax(logits[:, P - 1 : -1])
  picked = np.take_along_axis(logp, a.tokens[:, P:, None], axis=-1)[..., 0]
  on = a.response_mask[:, P:] == 1
  np.testing.assert_allclose(a.logprobs[:, P:][on], picked[on], atol=2e-5)


def test_blocked_choice_equals_the_plain_one(rng):
  """lp.greedy / inverse_cdf_sample with G vocabulary blocks against numpy on the whole row."""
  from rockjax.sampling import processors as lp

  logits = rng.normal(size=(5, 24)).astype(np.float32)
  logits[1, [3, 17]] = 9.0  # a tie across blocks: the first id wins
  logits[2, :12] = -np.inf  # a whole block without mass
  for g in (1, 2, 3, 4):
    np.testing.assert_array_equal(lp.greedy(jnp.asarray(logits), blocks=g), logits.argmax(-1))
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(3), jnp.arange(5))
  u = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys), np.float64)
  p = np.exp(np_log_softmax(logits.astype(np.float64)))
  cdf = np.cumsum(p, axis=-1)
  want = (cdf <= (u * cdf[:, -1])[:, None]).sum(-1)
  for g in (1, 2, 3, 4):
    got = np.asarray(lp.inverse_cdf_sample(jnp.asarray(logits), keys, blocks=g))
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="does not split into 5"):
    lp.greedy(jnp.asarray(logits), blocks=5)
