"""rockjax.models without PyTorch: KV-cache decoding, remat, config handling, tokenizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rockjax.models as rm
from rockjax.models.layers import MLP
from rockjax.models.moe import MoE
from tests.fixtures import SAMPLER_CFG, forward, left_padded_batch, make_tokenizer, random_model

DENSE = SAMPLER_CFG
MOE = DENSE.replace(
  family="qwen3_moe",
  num_experts=4,
  num_experts_per_tok=2,
  moe_intermediate_size=32,
  norm_topk_prob=False,
)


@pytest.mark.parametrize("cfg", [DENSE, MOE], ids=["dense", "moe"])
def test_kv_cache_decode_matches_full_forward(cfg):
  model = random_model(cfg)
  B, P, T = 3, 6, 3
  prompt, prompt_mask = left_padded_batch(cfg.vocab_size, batch=B, length=P)
  new = np.random.default_rng(1).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
  full = np.asarray(
    forward(
      model, np.concatenate([prompt, new], 1), np.concatenate([prompt_mask, np.ones_like(new)], 1)
    )
  )
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, ids, mask, cache, index):
    return nnx.merge(graphdef, state)(ids, mask, cache=cache, cache_index=index)

  cache = model.init_cache(B, P + T + 2)  # spare slots stay invalid
  # Chunked prefill (4 + 2 tokens) exercises T > 1 at a non-zero, traced cache_index.
  first, cache = step(state, prompt[:, :4], prompt_mask[:, :4], cache, jnp.int32(0))
  second, cache = step(state, prompt[:, 4:], prompt_mask[:, 4:], cache, jnp.int32(4))
  prefill = np.concatenate([np.asarray(first), np.asarray(second)], axis=1)
  real = prompt_mask > 0
  np.testing.assert_allclose(prefill[real], full[:, :P][real], atol=1e-4)
  for t in range(T):
    logits, cache = step(
      state, new[:, t : t + 1], np.ones((B, 1), np.int32), cache, jnp.int32(P + t)
    )
    np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, P + t], atol=1e-4)
  assert int(cache.index) == P + T
  np.testing.assert_array_equal(np.asarray(cache.mask_BxS[:, :P]), prompt_mask)
  assert step._cache_size() == 3  # one trace per chunk length, not per cache_index


def test_cache_defaults_and_hidden_output():
  model = random_model(DENSE)
  ids, mask = left_padded_batch(DENSE.vocab_size, batch=2, length=5)
  full = np.asarray(forward(model, ids, mask))

  @nnx.jit
  def step(model, ids, mask, cache, kv_mask=None):
    # cache_index and positions default to the cache's own index and valid-slot count.
    return model(ids, mask, cache=cache, kv_mask_BxS=kv_mask, return_hidden=True)

  cache = model.init_cache(2, 8)
  _, cache = step(model, ids[:, :3], mask[:, :3], cache)
  hidden, after = step(model, ids[:, 3:], mask[:, 3:], cache)
  logits = np.asarray(hidden @ model.lm_head_weight())
  np.testing.assert_allclose(logits, full[:, 3:], atol=1e-4)
  assert int(after.index) == 5
  # An explicit kv_mask_BxS replaces the cache's validity mask for attention.
  kv_mask = np.array(after.mask_BxS)
  same, _ = step(model, ids[:, 3:], mask[:, 3:], cache, kv_mask)
  np.testing.assert_allclose(np.asarray(same), np.asarray(hidden), atol=1e-6)
  kv_mask[0, 2] = 0  # hide one real prompt token of row 0 from the new queries
  hidden_out, _ = step(model, ids[:, 3:], mask[:, 3:], cache, kv_mask)
  assert not np.allclose(np.asarray(hidden_out[0]), np.asarray(hidden[0]), atol=1e-3)
  np.testing.assert_allclose(np.asarray(hidden_out[1]), np.asarray(hidden[1]), atol=1e-6)


def test_remat_gives_same_loss_and_grads():
  ids, mask = left_padded_batch(DENSE.vocab_size, batch=2, length=6)

  def loss_and_grads(cfg):
    graphdef, state = nnx.split(random_model(cfg))

    def loss(state):
      return jnp.mean(nnx.merge(graphdef, state)(ids, mask) ** 2)

    return jax.jit(jax.value_and_grad(loss))(state)

  (l0, g0), (l1, g1) = loss_and_grads(DENSE), loss_and_grads(DENSE.replace(remat=True))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


@pytest.mark.parametrize("block", [MLP, MoE], ids=["dense", "moe"])
def test_mlp_chunk_gives_same_values_and_grads(block):
  """Token-chunked MLP / MoE (L = 10, not a multiple of the chunk 4) == the whole sequence,
  value and gradients w.r.t. the weights and the input."""
  cfg = MOE.replace(hidden_size=16, intermediate_size=24, moe_intermediate_size=8)
  graphdef, state = nnx.split(block(cfg, rngs=nnx.Rngs(0)))
  chunked_graphdef, _ = nnx.split(block(cfg.replace(mlp_chunk=4), rngs=nnx.Rngs(0)))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 10, 16)), jnp.float32)

  def value_and_grads(graphdef):
    loss = lambda state, x: jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(state, x)

  (l0, g0), (l1, g1) = value_and_grads(graphdef), value_and_grads(chunked_graphdef)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7), g0, g1)


def test_bfloat16_compute_stays_close_to_float32():
  model = random_model(DENSE)
  ids, mask = left_padded_batch(DENSE.vocab_size, batch=2, length=5)
  ref = np.asarray(forward(model, ids, mask))
  bf16 = rm.Decoder(DENSE.replace(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
  nnx.update(bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model)))
  out = forward(bf16, ids, mask)
  assert out.dtype == jnp.float32 and bf16.embed_tokens[...].dtype == jnp.bfloat16
  real = mask > 0
  assert np.abs(np.asarray(out) - ref)[real].max() < 0.05 * np.abs(ref).max()


def test_save_and_load_roundtrip_without_hf_config(tmp_path):
  model = random_model(MOE.replace(tie_word_embeddings=True))
  rm.save_pretrained(model, tmp_path, max_shard_size=20_000)  # forces a sharded index
  assert (tmp_path / "model.safetensors.index.json").exists()
  again = rm.from_pretrained(tmp_path)
  assert again.cfg == model.cfg
  for (p, a), (_, b) in zip(
    nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(again))
  ):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), str(p))


def test_config_from_hf_errors_and_roundtrip():
  with pytest.raises(ValueError, match="unsupported model_type 'gpt2'.*qwen3"):
    rm.ModelConfig.from_hf({"model_type": "gpt2"})
  base = DENSE.to_hf_dict()
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    rm.ModelConfig.from_hf({**base, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(ValueError, match="sliding-window"):
    rm.ModelConfig.from_hf(
      {**base, "use_sliding_window": True, "layer_types": ["sliding_attention"] * 2}
    )
  assert rm.ModelConfig.from_hf(MOE.to_hf_dict()) == MOE
  assert [
    MOE.replace(decoder_sparse_step=2, mlp_only_layers=(3,)).is_moe_layer(i) for i in range(6)
  ] == [False, True, False, False, False, True]


def test_tokenizer_load_and_vocab_check(tmp_path):
  words = ["<unk>", "</s>", "<pad>"] + [f"w{i}" for i in range(10)]
  teacher = rm.load_tokenizer(make_tokenizer(tmp_path / "t", words))
  same = rm.load_tokenizer(make_tokenizer(tmp_path / "s", words))
  bigger = rm.load_tokenizer(make_tokenizer(tmp_path / "b", words + ["x", "y"]))
  swapped = [words[0], words[2], words[1]] + words[3:]  # same size, eos/pad ids swapped
  other_eos = rm.load_tokenizer(make_tokenizer(tmp_path / "e", swapped))
  assert teacher("w1 w2")["input_ids"] == same("w1 w2")["input_ids"] == [4, 5]
  assert rm.check_vocab_compatible(teacher, same) == len(teacher) == 13
  with pytest.raises(ValueError, match=r"teacher=13, student=15\): vocab sizes differ") as info:
    rm.check_vocab_compatible(teacher, bigger)
  assert "\n" not in str(info.value)
  with pytest.raises(
    ValueError, match="eos_token_id teacher=1 student=2; pad_token_id teacher=2 student=1"
  ):
    rm.check_vocab_compatible(teacher, other_eos)
  with pytest.raises(ValueError, match="teacher=96, student=128"):
    rm.check_vocab_compatible(DENSE, DENSE.replace(vocab_size=128))
  with pytest.raises(TypeError, match="like with like"):
    rm.check_vocab_compatible(teacher, DENSE)
