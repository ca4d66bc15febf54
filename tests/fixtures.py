"""Shared test helpers: float64 references, tiny random models (rockjax and Hugging Face),
a small train-step set-up, and locally built checkpoints and tokenizers (never downloaded).

Hugging Face helpers import torch/transformers inside the functions, so tests without the
`parity` extra can still import this module.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import rockjax.models as rm
from rockjax import data, losses, objective, rocks
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax import step as step_lib
from rockjax.models import ModelConfig

# The small Qwen3 the sampler, ban and rollout-copy tests decode with (qk-norm on, 2 layers).
SAMPLER_CFG = rm.ModelConfig(
  family="qwen3",
  vocab_size=96,
  hidden_size=64,
  intermediate_size=96,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=16,
  qk_norm=True,
  rope=rm.RopeConfig(theta=1000.0),
)


# The repository root: the working directory of CLI runs and the base of repo-relative paths.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every shipped config (configs/*.py), so a new one is covered by the config tests at once.
CONFIG_NAMES = sorted(
  p.stem for p in (pathlib.Path(REPO) / "configs").glob("*.py") if p.stem != "__init__"
)


# ------------------------------------------------------------------ the command line
def cli(*args, code=None, timeout=120):
  """Runs the CLI (or `python -c code` with the same argv) from the repo root on the CPU."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "rockjax.main"] if code is None else [sys.executable, "-c", code]
  return subprocess.run(
    cmd + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )


def assert_one_line_error(proc, *needles):
  """The run failed with exit 2 and one stderr line `rockjax: error: ...` holding `needles`."""
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("rockjax: error: "), proc.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


# ---------------------------------------------------------------- float64 references
def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = np.max(x, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


# The (kind, beta) cases of the loss tests: every divergence, JSD at its interior and end betas.
KIND_BETAS = [
  ("reverse_kl", 0.5),
  ("forward_kl", 0.5),
  ("jsd", 0.5),
  ("jsd", 0.1),
  ("jsd", 0.0),
  ("jsd", 1.0),
]


def np_kl(logp_a, logp_b):
  """KL(a || b) per row, 0 * log 0 = 0."""
  p_a = np.exp(logp_a)
  with np.errstate(invalid="ignore"):
    terms = np.where(p_a > 0, p_a * (logp_a - logp_b), 0.0)
  return terms.sum(-1)


def np_divergence(s, t, kind, beta=0.5, temperature=1.0):
  ls = np_log_softmax(np.asarray(s, np.float64) / temperature)
  lt = np_log_softmax(np.asarray(t, np.float64) / temperature)
  if kind == "reverse_kl":
    return np_kl(ls, lt)
  if kind == "forward_kl":
    return np_kl(lt, ls)
  with np.errstate(divide="ignore"):
    m = np.log(beta * np.exp(lt) + (1 - beta) * np.exp(ls))
  # A term with weight 0 is absent (not 0 * inf when M underflows where the other has mass).
  return (beta * np_kl(lt, m) if beta > 0 else 0.0) + (
    (1 - beta) * np_kl(ls, m) if beta < 1 else 0.0
  )


def make_hidden(rng, b=2, l=5, d_s=16, d_t=24, v=53):
  """Random (h_s, w_s, h_t, w_t) float32 hidden states and unembeddings for the loss tests."""
  return (
    rng.normal(size=(b, l, d_s)).astype(np.float32),
    (rng.normal(size=(d_s, v)) * 0.7).astype(np.float32),
    rng.normal(size=(b, l, d_t)).astype(np.float32),
    (rng.normal(size=(d_t, v)) * 0.7).astype(np.float32),
  )


# ------------------------------------------------------------------ rockjax models
def random_model(cfg: rm.ModelConfig, seed: int = 0) -> rm.Decoder:
  """A Decoder with numpy-random weights (std 0.2, norms ~1) so mistakes show in the logits.

  Built abstractly and filled from numpy: eager jax.random init compiles a kernel per shape.
  """
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: rm.Decoder(cfg, rngs=nnx.Rngs(0))))

  def fill(x):
    base = 1.0 if len(x.shape) == 1 else 0.0
    return jnp.asarray(base + 0.2 * rng.standard_normal(x.shape), x.dtype)

  return nnx.merge(graphdef, jax.tree.map(fill, state))


def stacked_copy(model: rm.Decoder, **changes: Any) -> rm.Decoder:
  """The scanned (scan_layers=True) Decoder with the same weights as an unrolled `model`
  (other ModelConfig `changes` too, e.g. remat).

  Independent of rockjax's own mappings: each stacked parameter 'layers.<rest>' is np.stack of
  the unrolled 'layers.<i>.<rest>' over i.
  """
  cfg = model.cfg.replace(scan_layers=True, **changes)
  assert cfg.scans_layers and not model.cfg.scans_layers
  unrolled = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: rm.Decoder(cfg, rngs=nnx.Rngs(0))))
  filled = []
  for path, var in nnx.to_flat_state(abstract):
    if path[0] == "layers":
      layers = range(cfg.num_layers)
      value = np.stack([np.asarray(unrolled[("layers", i, *path[1:])]) for i in layers])
    else:
      value = np.asarray(unrolled[path])
    assert value.shape == var.get_value().shape, path
    filled.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


# Jitted full forward (eager NNX calls dispatch op by op: seconds per call on a busy CPU).
forward = nnx.jit(lambda model, ids, mask: model(ids, mask))


# ------------------------------------------------------------------ a train step
V = 48
STUDENT = ModelConfig(
  family="qwen3",
  vocab_size=V,
  hidden_size=32,
  intermediate_size=48,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  qk_norm=True,
)
TEACHER = STUDENT.replace(hidden_size=40, num_heads=2, num_kv_heads=1, head_dim=16)
ROCK_IDS = np.array([3, 7, 11, 20])


def make_batch(seed=0, b=8, l=10, prompt=3):
  """Left-padded prompts followed by responses; some rows end early (right padding)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (b, l)).astype(np.int32)
  tokens[:, prompt : prompt + 3] = ROCK_IDS[rng.integers(0, 4, (b, 3))]  # plenty of rocks
  attn = np.ones((b, l), np.int32)
  attn[0, :2] = 0  # left padding
  attn[1, -3:] = 0  # a response that ended early
  resp = np.zeros((b, l), np.int32)
  resp[:, prompt:] = 1
  resp *= attn
  return {"tokens": tokens, "attention_mask": attn, "response_mask": resp}


# Flat keyword -> DivergenceSpec field: the divergence's own settings live in LossSettings.spec.
_SPEC_FIELDS = {
  "divergence": "kind",
  "jsd_beta": "beta",
  "skew_alpha": "alpha",
  "temperature": "temperature",
  "chunk_size": "chunk_size",
  "block_size": "block_size",
}


def loss_settings(**kw: Any) -> objective.LossSettings:
  """objective.LossSettings from flat keywords (divergence=, temperature=, chunk_size=, ...
  go into its DivergenceSpec, as rockjax.config.settings puts the opd fields there)."""
  spec = {_SPEC_FIELDS[k]: kw.pop(k) for k in list(kw) if k in _SPEC_FIELDS}
  return objective.LossSettings(spec=losses.DivergenceSpec(**spec), **kw)


def build(
  mesh,
  *,
  student_cfg=None,
  teacher_cfg=None,
  tx=None,
  rock_mode="static",
  lam=0.0,
  normalizer="tokens",
  chunked=True,
  dynamic_k=4,
  micro_batches=1,
  updates_per_rollout=1,
  schedule=None,
  **loss_kw,
):
  """(jitted step, state, teacher params) on `mesh`; `schedule` only feeds the opt/lr metric."""
  tx = tx or optax.adamw(1e-2)
  graphdef, params = nnx.split(random_model(student_cfg or STUDENT, seed=0))
  t_graphdef, t_params = nnx.split(random_model(teacher_cfg or TEACHER, seed=1))
  mask = rocks.ids_to_mask(ROCK_IDS, V) if rock_mode == "static" else None
  init = state_lib.initializer(graphdef, tx, vocab_size=V, seed=0, rock_mask_V=mask)
  _, shardings = state_lib.abstract_state(init, params, mesh)
  params = jax.device_put(params, shd.tree_shardings(params, mesh))
  state = state_lib.init_state(init, params, shardings, mesh)
  t_shardings = shd.tree_shardings(t_params, mesh)
  t_params = jax.device_put(t_params, t_shardings)
  settings = step_lib.StepSettings(
    loss=loss_settings(
      rock_mode=rock_mode, lam=lam, normalizer=normalizer, chunked=chunked, chunk_size=16, **loss_kw
    ),
    teacher_graphdef=t_graphdef,
    schedule=schedule or (lambda n: 1e-2),
    selection=rocks.RockSelection(k=dynamic_k, min_freq=1, exclude_top_freq=0),
    rock_schedule=rocks.RockSchedule(warmup_steps=1, select_every=1),
    micro_batches=micro_batches,
    updates_per_rollout=updates_per_rollout,
  )
  fn = step_lib.jit_train_step(settings, shardings, t_shardings, shd.batch_sharding((8, 1), mesh))
  return fn, state, t_params


def one_device_mesh():
  return shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


# ------------------------------------------------------- Hugging Face models (parity)
# Each family's tiny config; together they cover untied/tied embeddings, head_dim != D/H,
# GQA (H/K = 2), MoE with top-2 of 4 experts (plus a dense layer via mlp_only_layers),
# Llama-3 rope scaling (small original context so the scaling bites) and Qwen2 qkv bias.
_COMMON = dict(
  vocab_size=160,
  hidden_size=64,
  intermediate_size=96,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-6,
  max_position_embeddings=128,
)
CONFIGS: dict[str, dict[str, Any]] = {
  "qwen3": dict(
    _COMMON, model_type="qwen3", head_dim=24, tie_word_embeddings=False, rope_theta=1000.0
  ),
  "qwen3_moe": dict(
    _COMMON,
    model_type="qwen3_moe",
    head_dim=16,
    tie_word_embeddings=False,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[0],
  ),
  "qwen2": dict(_COMMON, model_type="qwen2", tie_word_embeddings=True),
  "llama": dict(
    _COMMON,
    model_type="llama",
    head_dim=16,
    tie_word_embeddings=False,
    attention_bias=True,
    rope_scaling=dict(
      rope_type="llama3",
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=16,
    ),
    rope_theta=500000.0,
  ),
}


def make_hf_model(family: str, seed: int = 0, **overrides: Any):
  """A float32 transformers CausalLM with every weight random (biases, norms included)."""
  import torch
  import transformers

  kw = dict(CONFIGS[family], **overrides)
  model_type = kw.pop("model_type")
  config = transformers.AutoConfig.for_model(model_type, **kw)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
    config, attn_implementation="eager", dtype=torch.float32
  ).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))  # not all ones, so norm weights are tested
      else:
        p.normal_(0.0, 0.1)
  return model


def save_hf_checkpoint(model, path: str | os.PathLike, **kwargs: Any) -> str:
  """model.save_pretrained(path, **kwargs) and return the path as a string."""
  model.save_pretrained(os.fspath(path), **kwargs)
  return os.fspath(path)


def left_padded_batch(
  vocab_size: int, batch: int = 3, length: int = 9, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Random ids [B, L] and a mask with row b left-padded by 2*b tokens (row 0 unpadded)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  for b in range(batch):
    mask[b, : min(2 * b, length - 1)] = 0
  return ids, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
  """HF position_ids for left padding: cumsum(mask) - 1, clipped at 0."""
  return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Float32 logits [B, L, V] of a transformers model with explicit left-pad positions."""
  import torch

  with torch.no_grad():
    out = model(
      input_ids=torch.as_tensor(ids, dtype=torch.long),
      attention_mask=torch.as_tensor(mask, dtype=torch.long),
      position_ids=torch.as_tensor(hf_positions(mask), dtype=torch.long),
    )
  return out.logits.float().numpy()


def assert_same_update(
  p0, ref, got, *, metric_rtol: float, param_rtol: float, kl_atol: float = 0.0, param_atol=1e-7
):
  """Two train steps from the same parameters `p0` agree: `ref` and `got` are each
  (new state, metrics); metrics (same keys), parameter updates, RockStats and rock mask."""
  (s_ref, m_ref), (s_got, m_got) = ref, got
  assert m_got.keys() == m_ref.keys()
  for key in m_ref:
    np.testing.assert_allclose(m_got[key], m_ref[key], rtol=metric_rtol, atol=1e-7, err_msg=key)
  for a, b, c in zip(*(jax.tree.leaves(x) for x in (p0, s_ref.params, s_got.params))):
    np.testing.assert_allclose(a - c, a - b, rtol=param_rtol, atol=param_atol)
  np.testing.assert_array_equal(s_got.rock.count_V, s_ref.rock.count_V)
  np.testing.assert_allclose(
    s_got.rock.kl_sum_V, s_ref.rock.kl_sum_V, rtol=metric_rtol, atol=kl_atol
  )
  np.testing.assert_array_equal(s_got.rock_mask, s_ref.rock_mask)


def word_tokenizer(vocab: dict[str, int], chat_template: str | None = None, **specials: str):
  """An in-memory WordLevel PreTrainedTokenizerFast over `vocab`, split on whitespace; its
  special tokens (all in `vocab`) are `specials`, by default <bos>/<eos>/<pad>/<unk>."""
  import tokenizers
  import transformers

  specials = specials or dict(
    bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
  )
  backend = tokenizers.Tokenizer(
    tokenizers.models.WordLevel(vocab, unk_token=specials["unk_token"])
  )
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
  if chat_template:
    tok.chat_template = chat_template
  return tok


def make_tokenizer(path: str | os.PathLike, tokens: list[str], **special: str) -> str:
  """A WordLevel tokenizer over `tokens` in order (missing specials appended), saved at `path`."""
  specials = {"unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>", **special}
  vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*tokens, *specials.values()]))}
  word_tokenizer(vocab, **specials).save_pretrained(os.fspath(path))
  return os.fspath(path)


def batches(consumed: int = 0, fingerprint: str = "f") -> data.BatchIterator:
  """A data iterator over batches of 2 of range(40) that has yielded `consumed` batches."""
  it = data.BatchIterator(
    grain.MapDataset.range(40).batch(2), fingerprint, grain.ReadOptions(num_threads=0)
  )
  for _ in range(consumed):
    next(it)
  return it


def position(n: int) -> dict:
  return {"next_batch": n, "fingerprint": "f"}


def greedy_continuation(model, ids: np.ndarray, mask: np.ndarray, new_tokens: int) -> np.ndarray:
  """[prompt, greedy tokens] by a full no-cache forward per step (numpy argmax): the sampler's
  independent reference. Causal attention makes the not-yet-generated tail (masked 0)
  irrelevant, so one compile serves every step."""
  B, P = ids.shape
  seq = np.concatenate([ids, np.zeros((B, new_tokens), np.int32)], 1)
  seq_mask = np.concatenate([mask, np.zeros((B, new_tokens), np.int32)], 1)
  for t in range(new_tokens):
    seq[:, P + t] = np.asarray(forward(model, seq, seq_mask))[:, P + t - 1].argmax(-1)
    seq_mask[:, P + t] = 1
  return seq
