"""rockjax.models against transformers (PyTorch, float32): parity, export, sharded load."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import rockjax.models as rm
from rockjax import sharding as shd
from tests.fixtures import (
  CONFIGS,
  forward,
  hf_logits,
  left_padded_batch,
  make_hf_model,
  save_hf_checkpoint,
)

pytest.importorskip("torch")
pytestmark = pytest.mark.parity

# 'qwen3_moe_fused' is a second MoE model (no top-k renormalisation, MoE on odd layers only
# via decoder_sparse_step=2) saved in transformers' in-memory fused 3-D expert layout.
# 'qwen3_moe_uniform' has MoE on every layer (the other two have a dense layer), so it is the
# MoE variant a scanned decoder stacks.
VARIANTS = ["qwen3", "qwen3_moe", "qwen3_moe_fused", "qwen3_moe_uniform", "qwen2", "llama"]
_FUSED = dict(norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[])
_EXTRA = {"qwen3_moe_fused": _FUSED, "qwen3_moe_uniform": dict(mlp_only_layers=[])}


def _family(variant: str) -> str:
  return variant.removesuffix("_fused").removesuffix("_uniform")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """variant -> (checkpoint dir, the transformers model that wrote it)."""
  out = {}
  for variant in VARIANTS:
    model = make_hf_model(_family(variant), **_EXTRA.get(variant, {}))
    kwargs = {"save_original_format": False} if variant.endswith("_fused") else {}
    out[variant] = (save_hf_checkpoint(model, tmp_path_factory.mktemp(variant), **kwargs), model)
  return out


def _logits(model: rm.Decoder, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  return np.asarray(forward(model, ids, mask))


# Scanned layers (scan_layers=True) for the variants whose layers are all alike (the other MoE
# ones mix dense and MoE layers and stay unrolled: rockjax.models.ModelConfig.scans_layers).
SCANNED = ["qwen3", "qwen3_moe_uniform", "qwen2", "llama"]


@pytest.mark.parametrize(
  "variant,scan", [(v, False) for v in VARIANTS] + [(v, True) for v in SCANNED]
)
def test_logits_match_transformers_with_left_padding(checkpoints, variant, scan):
  path, hf_model = checkpoints[variant]
  if variant.endswith("_fused"):
    keys = json.dumps(sorted(_keys(path)))
    assert "experts.gate_up_proj" in keys, "fixture did not write the fused expert layout"
  model = rm.from_pretrained(path, scan_layers=scan)
  assert model.cfg.scans_layers == scan
  ids, mask = left_padded_batch(CONFIGS[_family(variant)]["vocab_size"])
  # One compiled call gives the logits and what the vocab-chunked loss consumes.
  ours, hidden, head = nnx.jit(
    lambda m, i, k: (m(i, k), m.hidden_states(i, k), m.lm_head_weight())
  )(model, ids, mask)
  ours = np.asarray(ours)
  ref = hf_logits(hf_model, ids, mask)
  assert ours.dtype == np.float32 and ours.shape == ref.shape
  real = mask > 0
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
  assert hidden.shape == ids.shape + (64,) and head.shape == (64, ours.shape[-1])
  np.testing.assert_allclose(np.asarray(hidden @ head), ours, atol=1e-5)
  if variant in ("qwen3", "qwen3_moe"):
    # Left padding must not change the real tokens' logits: row 2 unpadded == row 2 padded.
    unpadded = _logits(model, ids[2:, 4:], mask[2:, 4:])
    np.testing.assert_allclose(unpadded[0], ours[2, 4:], atol=1e-5)


def _keys(path: str) -> list[str]:
  from safetensors import safe_open

  with safe_open(os.path.join(path, "model.safetensors"), "numpy") as f:
    return list(f.keys())


@pytest.mark.parametrize(
  "variant,scan",
  [("qwen3", False), ("qwen3_moe_fused", False), ("qwen2", False), ("llama", False)]
  + [("qwen3", True), ("qwen3_moe_uniform", True)],
)
def test_export_loads_in_transformers_with_same_logits(checkpoints, variant, scan, tmp_path):
  import transformers

  path, hf_model = checkpoints[variant]
  model = rm.from_pretrained(path, scan_layers=scan)
  # Scanned: a small shard size splits the stacked parameters' layers across files.
  rm.save_pretrained(model, tmp_path, max_shard_size=40_000 if scan else 5 * 2**30)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, attn_implementation="eager"
  ).eval()
  family = _family(variant)
  ids, mask = left_padded_batch(CONFIGS[family]["vocab_size"], seed=1)
  real = mask > 0
  np.testing.assert_allclose(
    hf_logits(reloaded, ids, mask)[real], hf_logits(hf_model, ids, mask)[real], atol=1e-5, rtol=0
  )
  # And rockjax -> rockjax: export keeps every parameter bit-exact in float32.
  again = rm.from_pretrained(tmp_path, scan_layers=scan)
  for (p, a), (_, b) in zip(
    nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(again))
  ):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), str(p))


def test_sharded_index_load_on_mesh(checkpoints, tmp_path, devices8):
  _, hf_model = checkpoints["qwen3_moe"]
  path = save_hf_checkpoint(hf_model, tmp_path / "sharded", max_shard_size="40KB")
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
  # tensor=4 does not divide kv_heads=2: that dim must fall back to replicated.
  mesh = shd.make_mesh({"data": 1, "fsdp": 2, "tensor": -1})
  sharded = rm.from_pretrained(path, mesh=mesh)
  plain = rm.from_pretrained(path)

  attn, moe = sharded.layers[1].self_attn, sharded.layers[1].mlp
  specs = {
    "embed": sharded.embed_tokens[...].sharding.spec,  # [V=160, D]
    "q": attn.q_proj.kernel[...].sharding.spec,  # [D, H=4, E]
    "k": attn.k_proj.kernel[...].sharding.spec,  # [D, K=2, E]
    "experts": moe.gate_proj[...].sharding.spec,  # [X=4, D, F]: 'tensor' used once only
    "norm": sharded.norm.weight[...].sharding.spec,
  }
  assert specs == {
    "embed": P("tensor", "fsdp"),
    "q": P("fsdp", "tensor", None),
    "k": P("fsdp", None, None),
    "experts": P("tensor", "fsdp", None),
    "norm": P(None),
  }
  assert sharded.embed_tokens[...].sharding.mesh == mesh

  ids, mask = left_padded_batch(CONFIGS["qwen3_moe"]["vocab_size"], batch=4)
  graphdef, state = nnx.split(sharded)
  batch_sharding = shd.batch_sharding(ids.shape, mesh)

  @jax.jit
  def forward(state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)

  with jax.set_mesh(mesh):
    out = forward(state, jax.device_put(ids, batch_sharding), jax.device_put(mask, batch_sharding))
  assert out.sharding.spec[-1] == "tensor"  # logits stay vocab-sharded
  np.testing.assert_allclose(np.asarray(out), _logits(plain, ids, mask), atol=1e-5)
  # Scanned (every layer MoE): stacked [N, ...] parameters shard like one layer's, 'layers'
  # replicated, and are read shard by shard from the per-layer (and per-expert) HF tensors.
  _, uniform = checkpoints["qwen3_moe_uniform"]
  path = save_hf_checkpoint(uniform, tmp_path / "uniform", max_shard_size="40KB")
  scanned = rm.from_pretrained(path, mesh=mesh, scan_layers=True)
  unrolled = rm.from_pretrained(path, mesh=mesh)
  stacked_q = scanned.layers.self_attn.q_proj.kernel[...]
  stacked_experts = scanned.layers.mlp.gate_proj[...]
  assert stacked_q.sharding.spec == P(None, "fsdp", "tensor", None)
  assert stacked_experts.sharding.spec == P(None, "tensor", "fsdp", None)
  for i in range(2):
    want = unrolled.layers[i]
    np.testing.assert_array_equal(stacked_q[i], want.self_attn.q_proj.kernel[...])
    np.testing.assert_array_equal(stacked_experts[i], want.mlp.gate_proj[...])
  np.testing.assert_allclose(_logits(scanned, ids, mask), _logits(unrolled, ids, mask), atol=1e-5)


def test_missing_and_misshaped_tensors_name_file_and_key(checkpoints, tmp_path):
  from safetensors.numpy import load_file, save_file

  path, _ = checkpoints["qwen2"]
  tensors = load_file(os.path.join(path, "model.safetensors"))
  config = open(os.path.join(path, "config.json")).read()
  for case, edit in [
    ("missing", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias")),
    ("shape", lambda t: t.update({"model.norm.weight": np.ones(3, np.float32)})),
  ]:
    broken = dict(tensors)
    edit(broken)
    d = tmp_path / case
    d.mkdir()
    (d / "config.json").write_text(config)
    save_file(broken, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as info:
      rm.from_pretrained(d)
    msg = str(info.value)
    assert str(d) in msg and "\n" not in msg
    assert (
      ("k_proj.bias" in msg)
      if case == "missing"
      else ("'model.norm.weight'" in msg and "(3,)" in msg)
    )
