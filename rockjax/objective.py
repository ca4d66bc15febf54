"""The OPD / KD loss factory: per-token losses of a batch, weighted by the masking function.

Separate from the train step so users can jit and reuse the loss alone. Shape letters: B batch,
L sequence length (padded, `TokenBatch.pad`), D hidden width, V vocabulary.

Alignment: the models run on all L positions and their output at position t predicts token
t+1, so every per-token quantity here is `[B, L]` and column t refers to the *emitted* id
`targets_BxL[:, t] = tokens_BxL[:, t + 1]`; the last column has no target (id 0, loss mask 0).
Keeping the full length (rather than L - 1) keeps shapes that kernel blocks and sequence
shards divide.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rockjax import losses, rocks
from rockjax.batch import TokenBatch
from rockjax.losses import skip_frozen

FROZEN_KL = ("forward", "skip")  # opd.frozen_kl: how skipping treats weight-0 response positions


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static (hashable) settings of the per-token loss; built from config.opd / config.rock."""

  mode: str = "on_policy"  # 'on_policy' (OPD divergence) | 'off_policy' (stage-1 KD / SFT)
  # The on-policy divergence and all its settings (kind, temperature, jsd beta, skew alpha,
  # vocabulary chunk and token block sizes); off-policy stages use its forward_kl twin
  # (`divergence_spec`). Every loss path, metric and report reads this one spec.
  spec: losses.DivergenceSpec = losses.DivergenceSpec()
  chunked: bool = True  # memory-lean loss from hidden states (never builds [B, L, V])
  loss_sharding: str = "tokens"  # the fused divergence's head layout: 'tokens' | 'vocab'
  kd_ratio: float = 0.5  # off-policy: kd_ratio * forward_kl + (1 - kd_ratio) * cross-entropy
  normalizer: str = "tokens"  # one of losses.NORMALIZERS: 'tokens' | 'weights' | 'sequence'
  rock_mode: str = "off"  # 'off' | 'static' | 'dynamic'
  lam: float = 0.0  # weight of rock positions when rock_mode != 'off'
  grad_norm_metric: bool = True  # log the rock share of the per-token logit-gradient norm
  # Rock-Freeze skipping (chunked path; losses.kept): slots for positions of weight > 0 as a
  # fraction of the response slots (response_len per row), 0 = off; what frozen positions get:
  # 'forward' (their divergence from a forward-only pass) | 'skip' (none: untracked)
  kept_capacity: float = 0.0
  response_len: int = 0  # most response positions of a row (on-policy max_new_tokens); 0 = L
  frozen_kl: str = "forward"

  def __post_init__(self):
    if self.mode not in ("on_policy", "off_policy"):
      raise ValueError(f"opd.mode must be 'on_policy' or 'off_policy', got {self.mode!r}")
    if self.rock_mode not in ("off", "static", "dynamic"):
      raise ValueError(f"rock.mode must be 'off', 'static' or 'dynamic', got {self.rock_mode!r}")
    if self.loss_sharding not in losses.fused.SHARDINGS:
      raise ValueError(
        f"opd.loss_sharding must be one of {losses.fused.SHARDINGS}, got {self.loss_sharding!r}"
      )
    if self.normalizer not in losses.NORMALIZERS:
      raise ValueError(
        f"opd.normalizer must be one of {losses.NORMALIZERS}, got {self.normalizer!r}"
      )
    if not 0.0 <= self.kept_capacity <= 1.0:
      raise ValueError(f"opd.kept_capacity must be in [0, 1], got {self.kept_capacity}")
    if self.frozen_kl not in FROZEN_KL:
      raise ValueError(f"opd.frozen_kl must be one of {FROZEN_KL}, got {self.frozen_kl!r}")
    if not 0.0 <= self.kd_ratio <= 1.0:
      raise ValueError(f"opd.kd_ratio must be in [0, 1], got {self.kd_ratio}")

  @property
  def needs_teacher(self) -> bool:
    """Plain SFT (off-policy with kd_ratio 0) runs without a teacher."""
    return self.mode == "on_policy" or self.kd_ratio > 0

  @property
  def stage(self) -> str:
    """'opd' (on-policy distillation), 'kd' (off-policy KD) or 'sft' (no teacher)."""
    return "opd" if self.mode == "on_policy" else "kd" if self.needs_teacher else "sft"

  @property
  def tracked(self) -> str:
    """The per-token quantity `opd/kl` and the rock statistics hold: the stage's divergence
    (forward KL off-policy), or the cross-entropy when there is no teacher."""
    return "cross_entropy" if self.stage == "sft" else self.divergence_kind

  @property
  def divergence_kind(self) -> str:
    """The divergence the loss uses: opd.divergence on-policy, forward KL off-policy."""
    return self.spec.kind if self.stage == "opd" else "forward_kl"

  @property
  def divergence_spec(self) -> losses.DivergenceSpec:
    """The spec of the divergence the loss uses (`spec`, as forward KL off-policy)."""
    return dataclasses.replace(self.spec, kind=self.divergence_kind)

  @property
  def ce_share(self) -> float:
    """Weight of the cross-entropy in the loss: 0 in OPD, 1 - kd_ratio in KD, 1 in SFT."""
    return {"opd": 0.0, "kd": 1.0 - self.kd_ratio, "sft": 1.0}[self.stage]


class Shifted(NamedTuple):
  """A token batch aligned for next-token prediction (output t predicts token t+1)."""

  inputs_BxL: jax.Array  # the tokens themselves: the models see every position
  input_mask_BxL: jax.Array  # the attention mask
  targets_BxL: jax.Array  # tokens shifted left by one; the last column is 0
  loss_mask_BxL: jax.Array  # 1 on response targets inside the attention mask; last column 0

  # Unpacked rows have no segment ids or positions (PackedShifted has both).
  segment_ids_BxL = property(lambda self: None)
  positions_BxL = property(lambda self: None)


class PackedShifted(NamedTuple):
  """`Shifted` of packed rows (TokenBatch.packed): the same four fields, then the segment ids
  and positions both models' forwards take."""

  inputs_BxL: jax.Array
  input_mask_BxL: jax.Array
  targets_BxL: jax.Array
  loss_mask_BxL: jax.Array  # also 0 where the target lies in another segment than its input
  segment_ids_BxL: jax.Array  # sequence of each position (1, 2, ...), 0 on padding
  positions_BxL: jax.Array  # position within its sequence


def _shift_left(x_BxL: jax.Array) -> jax.Array:
  """x[:, t + 1] at column t, 0 in the last column (same shape)."""
  return jnp.pad(x_BxL[:, 1:], ((0, 0), (0, 1)))


def shift(batch: TokenBatch | Mapping[str, jax.Array]) -> Shifted | PackedShifted:
  """Shifted(inputs, input_mask, targets, loss_mask) from a token batch (done once per step).

  Packed rows: a target in another segment than its input (the first token of the next
  sequence, predicted from the last of the previous one) is never scored.
  """
  batch = TokenBatch.of(batch)
  tokens_BxL = batch.tokens_BxL
  attn_BxL = jnp.asarray(batch.attention_mask_BxL).astype(jnp.int32)
  # The attention mask bounds the loss: a dataset's response mask may run into padding
  # (tests/faults/test_planted_bugs.py). Both as 0/1, so counts never see a 2 or a 0.5.
  on_BxL = (jnp.asarray(batch.response_mask_BxL) != 0) & (attn_BxL != 0)
  loss_mask_BxL = _shift_left(on_BxL.astype(jnp.int32))
  if not batch.packed:
    return Shifted(tokens_BxL, attn_BxL, _shift_left(tokens_BxL), loss_mask_BxL)
  seg_BxL = jnp.asarray(batch.segment_ids_BxL).astype(jnp.int32)
  loss_mask_BxL = loss_mask_BxL * (_shift_left(seg_BxL) == seg_BxL).astype(jnp.int32)
  positions_BxL = jnp.asarray(batch.positions_BxL).astype(jnp.int32)
  targets_BxL = _shift_left(tokens_BxL)
  return PackedShifted(tokens_BxL, attn_BxL, targets_BxL, loss_mask_BxL, seg_BxL, positions_BxL)


@flax.struct.dataclass
class StudentOut:
  """A model's output as a loss path uses it: the chunked path's (hidden [B, L, D], LM head
  [D, V]), or the full-logit path's logits [B, L, V] (the other fields None). The teacher's
  output (`teacher_outputs`) is the same record."""

  hidden_BxLxD: jax.Array | None = None
  head_DxV: jax.Array | None = None
  logits_BxLxV: jax.Array | None = None

  @property
  def hidden_and_head(self) -> tuple[jax.Array, jax.Array]:
    return self.hidden_BxLxD, self.head_DxV


def _packing(segment_ids_BxL, positions_BxL) -> dict[str, jax.Array]:
  """The models' packed-row keywords, or none (unpacked: the call the models always had)."""
  if segment_ids_BxL is None:
    return {}
  return dict(segment_ids_BxL=segment_ids_BxL, positions_BxL=positions_BxL)


def model_outputs(
  model: Any,
  inputs_BxL: jax.Array,
  mask_BxL: jax.Array,
  chunked: bool,
  *,
  segment_ids_BxL: jax.Array | None = None,
  positions_BxL: jax.Array | None = None,
):
  """`StudentOut` of a model on a batch: hidden + head when `chunked`, else logits.

  Packed rows pass their segment ids and positions (attention stays inside a sequence, RoPE
  restarts at 0 for each)."""
  kw = _packing(segment_ids_BxL, positions_BxL)
  if chunked:
    return StudentOut(model.hidden_states(inputs_BxL, mask_BxL, **kw), model.lm_head_weight())
  return StudentOut(logits_BxLxV=model(inputs_BxL, mask_BxL, **kw))


def teacher_outputs(
  teacher: Any,
  inputs_BxL: jax.Array,
  mask_BxL: jax.Array,
  settings: LossSettings,
  *,
  segment_ids_BxL: jax.Array | None = None,
  positions_BxL: jax.Array | None = None,
) -> StudentOut | None:
  """Teacher outputs (hidden + head, or logits), as constants of the step (no gradient); packed
  rows give the teacher the same segment ids and positions as the student."""
  if teacher is None or not settings.needs_teacher:
    return None
  out = model_outputs(
    teacher,
    inputs_BxL,
    mask_BxL,
    settings.chunked,
    segment_ids_BxL=segment_ids_BxL,
    positions_BxL=positions_BxL,
  )
  return jax.lax.stop_gradient(out)


@flax.struct.dataclass
class LossAux:
  """What the loss of one batch is made of: `loss_fn`'s auxiliary output (a pytree)."""

  total: jax.Array  # sum over tokens of weight * per-token loss (the differentiable part)
  count: jax.Array  # the normaliser: loss = total / count
  kl_BxL: jax.Array  # per-token divergence the rock statistics track (no gradient needed)
  w_BxL: jax.Array  # the per-token factors of the sum (masking function x normaliser)
  student_out: StudentOut  # the student's own outputs, for diagnostics
  grad_norm_BxL: jax.Array | None = None  # per-token |d kl / d student logits| when free
  tracked_BxL: jax.Array | None = None  # 1 where kl_BxL holds the divergence; None: everywhere
  skip_overflow: jax.Array | None = None  # 1 when skipping fell back to the full computation


def _chunked_terms(student_out, teacher_out, targets_BxL, loss_mask_BxL, w_BxL, s) -> LossAux:
  """The fused divergence (+ chunked CE off-policy) from hidden states and heads."""
  ce_share = s.ce_share
  total, kl_BxL, grad_norm_BxL = jnp.float32(0), None, None
  tracked_BxL = overflow = None
  if s.needs_teacher:
    div = skip_frozen.divergence(
      student_out.hidden_and_head,
      teacher_out.hidden_and_head,
      w_BxL * (1.0 - ce_share),  # already 0 off the loss mask
      loss_mask_BxL,
      spec=s.divergence_spec,
      sharding=s.loss_sharding,
      kept_capacity=s.kept_capacity,
      response_len=s.response_len,
      frozen_kl=s.frozen_kl,
      rock_mode=s.rock_mode,
    )
    total, kl_BxL, grad_norm_BxL = div.total, div.kl_BxL, div.grad_norm_BxL
    tracked_BxL, overflow = div.tracked_BxL, div.overflow
  if ce_share > 0:
    ce_BxL = losses.chunked_cross_entropy(
      *student_out.hidden_and_head, targets_BxL, chunk_size=s.spec.chunk_size
    )
    total = total + ce_share * losses.reduce(ce_BxL, loss_mask_BxL, w_BxL)[0]
    kl_BxL = ce_BxL if kl_BxL is None else kl_BxL
  return LossAux(total, None, kl_BxL, w_BxL, student_out, grad_norm_BxL, tracked_BxL, overflow)


def _logit_terms(student_out, teacher_out, targets_BxL, loss_mask_BxL, w_BxL, s) -> LossAux:
  """The divergence (+ CE off-policy) from full logits [B, L, V]."""
  ce_share, logits = s.ce_share, student_out.logits_BxLxV
  kl_BxL = None
  if s.needs_teacher:
    kl_BxL = losses.divergence(logits, teacher_out.logits_BxLxV, spec=s.divergence_spec)
  loss_BxL = kl_BxL
  if ce_share > 0:
    logp_BxLxV = jax.nn.log_softmax(logits)
    ce_BxL = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    loss_BxL = ce_BxL if kl_BxL is None else (1.0 - ce_share) * kl_BxL + ce_share * ce_BxL
    kl_BxL = ce_BxL if kl_BxL is None else kl_BxL
  total = losses.reduce(loss_BxL, loss_mask_BxL, w_BxL)[0]
  return LossAux(total, None, kl_BxL, w_BxL, student_out)


def loss_terms(
  student: Any,
  inputs_BxL: jax.Array,
  mask_BxL: jax.Array,
  targets_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  w_BxL: jax.Array,
  teacher_out: StudentOut | None,
  settings: LossSettings,
  *,
  segment_ids_BxL: jax.Array | None = None,
  positions_BxL: jax.Array | None = None,
) -> LossAux:
  """The weighted loss of a batch and the per-token divergence.

  kl_BxL is the OPD divergence on-policy, the forward KL off-policy (or the cross-entropy when
  there is no teacher). The chunked path forms the divergence's gradient in the forward pass
  (`losses.fused_divergence`: the weights are known here, they never depend on the
  parameters); the other path reduces full logits. Packed rows (segment ids and positions
  set) are scored per token like unpacked ones: 'tokens' and 'weights' reduce over the same
  tokens; 'sequence' (one mean per row) would mix the row's sequences and is refused.
  """
  s = settings
  if segment_ids_BxL is not None and s.normalizer == "sequence":
    raise ValueError(
      "opd.normalizer='sequence' averages per row, which mixes packed sequences: "
      "use 'tokens' or 'weights' with data.pack"
    )
  count = losses.count(loss_mask_BxL, w_BxL, normalizer=s.normalizer)
  # From here on w_BxL holds the per-token factors of the sum under opd.normalizer (divided
  # by each sequence's kept weight under 'sequence'), so every path below sums w * loss.
  w_BxL = losses.normalized_weights(loss_mask_BxL, w_BxL, normalizer=s.normalizer)
  student_out = model_outputs(
    student,
    inputs_BxL,
    mask_BxL,
    s.chunked,
    segment_ids_BxL=segment_ids_BxL,
    positions_BxL=positions_BxL,
  )
  terms = _chunked_terms if s.chunked else _logit_terms
  return terms(student_out, teacher_out, targets_BxL, loss_mask_BxL, w_BxL, s).replace(count=count)


def loss_weights(
  rock_mask_V: jax.Array, targets_BxL: jax.Array, loss_mask_BxL: jax.Array, settings: LossSettings
) -> jax.Array:
  """The masking function: lam on rock positions, 1 elsewhere, 0 off the response."""
  if settings.rock_mode == "off":
    return loss_mask_BxL.astype(jnp.float32)
  return rocks.token_weights(rock_mask_V, targets_BxL, loss_mask_BxL, lam=settings.lam)


def batch_count(rock_mask_V: jax.Array, shifted: Shifted, settings: LossSettings) -> jax.Array:
  """The loss normaliser of a whole batch (`count` of losses.reduce under opd.normalizer).

  It depends only on the rock mask, the targets and the loss mask, never on the parameters,
  so a step that splits its batch into micro-batches computes it once, before the split, and
  passes it to every micro-batch's `loss_fn(..., count=...)`: the summed loss is then exactly
  the whole batch's.
  """
  w_BxL = loss_weights(rock_mask_V, shifted.targets_BxL, shifted.loss_mask_BxL, settings)
  return losses.count(shifted.loss_mask_BxL, w_BxL, normalizer=settings.normalizer)


def make_loss_fn(graphdef: nnx.GraphDef, settings: LossSettings):
  """`loss_fn(params, teacher_out, shifted, rock_mask_V, *, count=None) -> (loss, aux)`, ready
  for jax.grad.

  `shifted` is `shift(batch)` (the step shifts once and shares it with the teacher forward).
  The loss is the weighted sum over `shifted`'s tokens divided by `count`; by default that is
  the normaliser of `shifted` itself, and a micro-batch passes its whole batch's
  (`batch_count`) so that the micro-batches' losses (and gradients) add up to the batch's.

  aux is a `LossAux`: the per-token divergence, the weights, the (total, count) of the loss,
  the per-token logit-gradient norm when it came for free, and the student's own outputs.
  """

  def loss_fn(
    params: nnx.State,
    teacher_out,
    shifted: Shifted,
    rock_mask_V: jax.Array,
    *,
    count: jax.Array | None = None,
  ):
    student = nnx.merge(graphdef, params)
    targets, loss_mask = shifted.targets_BxL, shifted.loss_mask_BxL
    w_BxL = loss_weights(rock_mask_V, targets, loss_mask, settings)
    terms = loss_terms(
      student,
      shifted.inputs_BxL,
      shifted.input_mask_BxL,
      targets,
      loss_mask,
      w_BxL,
      teacher_out,
      settings,
      segment_ids_BxL=shifted.segment_ids_BxL,
      positions_BxL=shifted.positions_BxL,
    )
    count = terms.count if count is None else jnp.asarray(count, jnp.float32)
    # A batch whose weights are all zero has loss 0, not nan.
    loss = terms.total / jnp.where(count > 0, count, 1.0)
    aux = terms.replace(count=count)
    return loss, aux

  return loss_fn
