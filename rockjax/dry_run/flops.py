"""Analytic model FLOPs of a config's train step (the dry run's `model_flops`, the MFU basis).

Counts the matmuls a step's model passes need per token, with rockjax's causal mask halving
attention's score and value matmuls; rockjax.dry_run.hlo_cost counts what XLA compiled.
"""

import math

import ml_collections

from rockjax.models import loading
from rockjax.config import settings as settings_lib
from rockjax.config.mesh import declared_mesh_shape
from rockjax.models.config import ModelConfig


def forward_flops_per_token(cfg: ModelConfig, length: int) -> float:
  """Matmul FLOPs of one token's forward pass through `cfg` in a causal sequence of `length`:
  2 x (the parameters it multiplies: attention projections, the dense MLP or the routed
  experts plus the router, the LM head) + the attention scores and values (2 x 2 x H x E x
  length / 2 per layer on average under the causal mask)."""
  D, H, K, E = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  attn_params = D * H * E * 2 + D * K * E * 2  # q, o; k, v
  per_token = 0.0
  for i in range(cfg.num_layers):
    if cfg.is_moe_layer(i):
      mlp = cfg.num_experts_per_tok * 3 * D * cfg.moe_intermediate_size + D * cfg.num_experts
    else:
      mlp = 3 * D * cfg.intermediate_size
    per_token += 2 * (attn_params + mlp) + 2 * H * E * length
  return per_token + 2 * D * cfg.vocab_size


def step_model_flops(c: ml_collections.ConfigDict) -> dict[str, float]:
  """Analytic FLOPs of one train step on the config's batch (rollouts not included): the
  student's forward, backward (2 x forward) and, with remat, one more forward; the teacher's
  forward. `per_device` is the total over the declared mesh's devices (an even split)."""
  rows, length = settings_lib.batch_shape(c)
  tokens = rows * length
  student_cfg = loading.arch_config(c.model)
  passes = 3 + (student_cfg.remat != "none")
  total = passes * tokens * forward_flops_per_token(student_cfg, length)
  if settings_lib.loss_settings(c).needs_teacher and c.teacher.source != "none":
    total += tokens * forward_flops_per_token(loading.arch_config(c.teacher), length)
  devices = math.prod(declared_mesh_shape(c).values())
  return {"total": total, "per_device": total / devices}
