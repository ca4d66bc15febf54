"""Every config builds; the paper configs dry-run (no weights) with hand-counted sizes."""

import importlib

import pytest

from rockjax.config.settings import batch_shape, step_settings
from rockjax.dry_run import report as dry_run
from tests.fixtures import CONFIG_NAMES


def load(name):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds_and_is_documented(name):
  c = load(name)
  module = importlib.import_module(f"configs.{name}")
  assert "python -m rockjax.main" in module.__doc__  # the exact launch command
  assert "Expected" in module.__doc__
  step_settings(c, None, lambda n: 0.0)  # every opd/rock value is valid
  with pytest.raises(AttributeError):
    c.not_a_field = 1  # locked: typos in overrides fail loudly


def qwen3_params(a, *, moe=False):
  """Parameter count of a Qwen3(-MoE) decoder from its architecture, by hand."""
  d, h, k, e = a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim
  attn = d * h * e + 2 * d * k * e + h * e * d + 2 * e  # q, k, v, o, q/k norms
  if moe:
    mlp = d * a.num_experts + a.num_experts * 3 * d * a.moe_intermediate_size
  else:
    mlp = 3 * d * a.intermediate_size
  layer = attn + mlp + 2 * d
  head = 0 if a.tie_word_embeddings else d * a.vocab_size
  return a.vocab_size * d + a.num_layers * layer + d + head


@pytest.mark.parametrize("name", [n for n in CONFIG_NAMES if n.startswith("qwen3")])
def test_paper_configs_dry_run(name):
  c = load(name)
  # 64 devices, more than the 8 local ones: sizes only, no compile (fsdp 32 x context 2).
  c.mesh.update(fsdp=-1, num_devices=64)
  r = dry_run.report(c)
  student, teacher = qwen3_params(c.model.arch), qwen3_params(c.teacher.arch, moe=True)
  assert r["student_params_b"] == pytest.approx(student / 1e9)
  assert r["teacher_params_b"] == pytest.approx(teacher / 1e9)
  assert 4.0 < r["student_params_b"] < 4.1 and 30.4 < r["teacher_params_b"] < 30.6
  gib = r["per_device_gib"]
  # fsdp x context over 64 devices shards every big matrix: float32 params / 64, AdamW keeps
  # 2 moments.
  assert gib["params"] == pytest.approx(student * 4 / 64 / 2**30, rel=0.02)
  assert gib["opt_state"] == pytest.approx(2 * gib["params"], rel=0.01)
  assert gib["teacher_params"] == pytest.approx(teacher * 2 / 64 / 2**30, rel=0.02)
  # Rollouts sample from a bfloat16 copy split tensor-parallel over 8 devices (the student's 8
  # KV heads; rows over the other 8 groups of the 64), freed before the update: every matrix
  # and the tied table / 8, only the norm vectors whole.
  assert c.opd.rollout_sharding == "tensor" and c.opd.rollout_tensor == 0
  assert gib["rollout_copy"] == pytest.approx(student * 2 / 8 / 2**30, rel=0.01)
  assert r["mesh"] == {"data": 1, "fsdp": 32, "context": 2, "tensor": 1}
  # OPD: 2 prompts x 4 samples, 800 prompt + 8000 new tokens padded to 512s; stage 1 (the
  # authors' appendix): 128 packed rows of 16,384 tokens.
  expected = (128, 16384) if c.opd.mode == "off_policy" else (8, 9216)
  assert batch_shape(c) == expected


def test_dry_run_declares_the_hybrid_mesh():
  """4 slices along data x 16 chips each (fsdp 8 x tensor 2): the abstract mesh is 4 x 8 x 2
  and the parameters shard over fsdp x tensor = 16 devices, not over the 64."""
  c = load("qwen3_30b_a3b_to_4b")
  c.mesh.update(data=1, fsdp=-1, context=1, tensor=2, dcn_data=4, num_devices=64)
  want = {"data": 4, "fsdp": 8, "context": 1, "tensor": 2}
  assert dry_run.declared_mesh_shape(c) == want
  r = dry_run.report(c)
  assert r["mesh"] == want
  student = qwen3_params(c.model.arch)
  assert r["per_device_gib"]["params"] == pytest.approx(student * 4 / 16 / 2**30, rel=0.05)
