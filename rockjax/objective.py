"""The OPD / KD loss factory: per-token losses of a batch, weighted by the masking function.

Separate from the train step so users can jit and reuse the loss alone. Shape letters: B batch,
L sequence length, T = L - 1 predicted positions, D hidden width, V vocabulary.

Alignment: the model's output at position t predicts token t+1, so every per-token quantity
here is `[B, T]` and refers to the *emitted* id `targets_BxT = tokens_BxL[:, 1:]`.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rockjax import chunked, losses, rocks


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static (hashable) settings of the per-token loss; built from config.opd / config.rock."""
  mode: str = "on_policy"  # 'on_policy' (OPD divergence) | 'off_policy' (stage-1 KD / SFT)
  divergence: str = "reverse_kl"  # on-policy divergence: reverse_kl | forward_kl | jsd
  jsd_beta: float = 0.5  # teacher weight in the JSD mixture
  temperature: float = 1.0
  chunked: bool = True  # vocab-chunked loss from hidden states (never builds [B, T, V])
  chunk_size: int = 8192
  kd_ratio: float = 0.5  # off-policy: kd_ratio * forward_kl + (1 - kd_ratio) * cross-entropy
  normalizer: str = "tokens"  # 'tokens' | 'weights' (see losses.reduce)
  rock_mode: str = "off"  # 'off' | 'static' | 'dynamic'
  lam: float = 0.0  # weight of rock positions when rock_mode != 'off'
  grad_norm_metric: bool = True  # log the rock share of the per-token logit-gradient norm

  def __post_init__(self):
    losses.check_kind(self.divergence)
    if self.mode not in ("on_policy", "off_policy"):
      raise ValueError(f"opd.mode must be 'on_policy' or 'off_policy', got {self.mode!r}")
    if self.rock_mode not in ("off", "static", "dynamic"):
      raise ValueError(f"rock.mode must be 'off', 'static' or 'dynamic', got {self.rock_mode!r}")
    if self.normalizer not in ("tokens", "weights"):
      raise ValueError(f"opd.normalizer must be 'tokens' or 'weights', got {self.normalizer!r}")
    if not 0.0 <= self.kd_ratio <= 1.0:
      raise ValueError(f"opd.kd_ratio must be in [0, 1], got {self.kd_ratio}")

  @property
  def needs_teacher(self) -> bool:
    """Plain SFT (off-policy with kd_ratio 0) runs without a teacher."""
    return self.mode == "on_policy" or self.kd_ratio > 0


def shift(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(inputs_BxT, input_mask_BxT, targets_BxT, loss_mask_BxT) from a token batch."""
  tokens_BxL = batch["tokens"]
  attn_BxL = batch["attention_mask"].astype(jnp.int32)
  loss_mask_BxT = batch["response_mask"][:, 1:].astype(jnp.int32) * attn_BxL[:, 1:]
  return tokens_BxL[:, :-1], attn_BxL[:, :-1], tokens_BxL[:, 1:], loss_mask_BxT


def teacher_outputs(teacher: Any, inputs_BxT: jax.Array, mask_BxT: jax.Array,
                    settings: LossSettings) -> tuple[jax.Array, jax.Array] | None:
  """Teacher (hidden, head) or (logits, None), as constants of the step (no gradient)."""
  if teacher is None or not settings.needs_teacher:
    return None
  if settings.chunked:
    out = (teacher.hidden_states(inputs_BxT, mask_BxT), teacher.lm_head_weight())
  else:
    out = (teacher(inputs_BxT, mask_BxT), None)
  return jax.lax.stop_gradient(out)


def per_token_terms(student: Any, inputs_BxT: jax.Array, mask_BxT: jax.Array,
                    targets_BxT: jax.Array, teacher_out, settings: LossSettings
                    ) -> tuple[jax.Array, jax.Array, Any]:
  """(loss_BxT, kl_BxT, student_out): the differentiable per-token loss and the divergence.

  kl_BxT is what the rock statistics track: the OPD divergence on-policy, the forward KL
  off-policy (or the cross-entropy when there is no teacher).
  """
  s = settings
  kind = s.divergence if s.mode == "on_policy" else "forward_kl"
  if s.chunked:
    student_out = (student.hidden_states(inputs_BxT, mask_BxT), student.lm_head_weight())
    div = (lambda: chunked.chunked_divergence(*student_out, *teacher_out, kind=kind,
                                              chunk_size=s.chunk_size, beta=s.jsd_beta,
                                              temperature=s.temperature))
    ce = lambda: chunked.chunked_cross_entropy(*student_out, targets_BxT,
                                               chunk_size=s.chunk_size)
  else:
    student_out = (student(inputs_BxT, mask_BxT), None)
    div = lambda: losses.divergence(student_out[0], teacher_out[0], kind=kind,
                                    beta=s.jsd_beta, temperature=s.temperature)
    ce = lambda: -jnp.take_along_axis(jax.nn.log_softmax(student_out[0]),
                                      targets_BxT[..., None], axis=-1)[..., 0]
  if s.mode == "on_policy":
    kl = div()
    return kl, kl, student_out
  if not s.needs_teacher:
    loss = ce()
    return loss, loss, student_out
  kl = div()
  loss = s.kd_ratio * kl + (1.0 - s.kd_ratio) * ce() if s.kd_ratio < 1 else kl
  return loss, kl, student_out


def token_weights(rock_mask_V: jax.Array, targets_BxT: jax.Array, loss_mask_BxT: jax.Array,
                  settings: LossSettings) -> jax.Array:
  """The masking function: lam on rock positions, 1 elsewhere, 0 off the response."""
  if settings.rock_mode == "off":
    return loss_mask_BxT.astype(jnp.float32)
  return rocks.token_weights(rock_mask_V, targets_BxT, loss_mask_BxT, lam=settings.lam)


def make_loss_fn(graphdef: nnx.GraphDef, settings: LossSettings):
  """`loss_fn(params, teacher_out, batch, rock_mask_V) -> (loss, aux)`, ready for jax.grad.

  aux holds the per-token divergence, the weights, the (sum, count) of the loss and the
  student's own outputs (hidden+head or logits) for diagnostics.
  """
  def loss_fn(params: nnx.State, teacher_out, batch: dict[str, jax.Array],
              rock_mask_V: jax.Array):
    student = nnx.merge(graphdef, params)
    inputs, in_mask, targets, loss_mask = shift(batch)
    loss_BxT, kl_BxT, student_out = per_token_terms(student, inputs, in_mask, targets,
                                                    teacher_out, settings)
    w_BxT = token_weights(rock_mask_V, targets, loss_mask, settings)
    total, count = losses.reduce(loss_BxT, loss_mask, w_BxT, normalizer=settings.normalizer)
    # A batch whose weights are all zero has loss 0, not nan.
    loss = total / jnp.where(count > 0, count, 1.0)
    aux = {"kl_BxT": kl_BxT, "w_BxT": w_BxT, "sum": total, "count": count,
           "student_out": student_out}
    return loss, aux

  return loss_fn
