"""Per-token divergences between student and teacher, their reductions and logit gradients.

Everything here is pure and jittable, computes in float32 whatever the input dtype, and takes
the student first and the teacher second. Shape letters: B batch, L length, V vocabulary,
D hidden width, N = B*L flattened tokens.

Divergences are named, never a bare beta (peers use beta with opposite meanings):
  reverse_kl = KL(p_s || p_t)   (the paper's OPD loss)
  forward_kl = KL(p_t || p_s)   (the paper's stage-1 KD loss)
  jsd        = beta*KL(p_t || M) + (1-beta)*KL(p_s || M),  M = beta*p_t + (1-beta)*p_s
The memory-lean variants that never build [B, L, V] are re-exported here:
`chunked_divergence` (rockjax.chunked: per-token output, any cotangent) and `fused_divergence`
(rockjax.fused: weighted sum whose gradient is formed in the forward pass, no recomputation).
"""
import jax
import jax.numpy as jnp

# Re-exported: one module for every divergence.
from rockjax.chunked import chunked_cross_entropy, chunked_divergence, chunked_logit_gradient_norm  # noqa: F401
from rockjax.fused import FusedDivergence, fused_divergence  # noqa: F401
from rockjax.kl_terms import KINDS, check_kind, divergence_terms, mixture_logprobs  # noqa: F401


def _log_softmax32(logits: jax.Array, temperature: float) -> jax.Array:
  """float32 log_softmax of logits / temperature."""
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def divergence(student_logits: jax.Array, teacher_logits: jax.Array, *, kind: str = "reverse_kl",
               temperature: float = 1.0, beta: float = 0.5) -> jax.Array:
  """Per-token divergence `[..., V] -> [...]` of the named kind from full logits."""
  check_kind(kind)
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"student logits {student_logits.shape} and teacher logits "
                     f"{teacher_logits.shape} differ in shape (shared vocabulary required)")
  logp_s = _log_softmax32(student_logits, temperature)
  logp_t = _log_softmax32(teacher_logits, temperature)
  return jnp.sum(divergence_terms(logp_s, logp_t, kind, beta), axis=-1)


def reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array, *,
               temperature: float = 1.0) -> jax.Array:
  """KL(p_s || p_t) per token: `[B, L, V] x2 -> [B, L]`."""
  return divergence(student_logits, teacher_logits, kind="reverse_kl", temperature=temperature)


def forward_kl(student_logits: jax.Array, teacher_logits: jax.Array, *,
               temperature: float = 1.0) -> jax.Array:
  """KL(p_t || p_s) per token: `[B, L, V] x2 -> [B, L]`."""
  return divergence(student_logits, teacher_logits, kind="forward_kl", temperature=temperature)


def jsd(student_logits: jax.Array, teacher_logits: jax.Array, *, beta: float = 0.5,
        temperature: float = 1.0) -> jax.Array:
  """Generalised JSD per token; beta is the teacher's weight in the mixture M."""
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
  return divergence(student_logits, teacher_logits, kind="jsd", temperature=temperature,
                    beta=beta)


def sampled_kl(student_logprobs: jax.Array, teacher_logprobs: jax.Array, *,
               estimator: str = "k1") -> jax.Array:
  """Single-sample estimators of KL(p_s || p_t) from the sampled tokens' log-probs `[B, L]`.

  With r = log p_t(x) - log p_s(x) and x ~ p_s: k1 = -r (unbiased, high variance),
  k2 = r^2 / 2 (biased, low variance), k3 = (e^r - 1) - r (unbiased, non-negative).
  """
  log_ratio = teacher_logprobs.astype(jnp.float32) - student_logprobs.astype(jnp.float32)
  if estimator == "k1":
    return -log_ratio
  if estimator == "k2":
    return 0.5 * jnp.square(log_ratio)
  if estimator == "k3":
    return jnp.expm1(log_ratio) - log_ratio
  raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1', 'k2' or 'k3'")


def reduce(per_token_BxL: jax.Array, mask_BxL: jax.Array, weights_BxL: jax.Array | None = None,
           *, normalizer: str = "tokens") -> tuple[jax.Array, jax.Array]:
  """Masked, weighted reduction -> `(sum, count)`; the loss is `sum / count`.

  normalizer='tokens' counts the response tokens (the paper's baseline: lambda changes the loss
  scale); 'weights' divides by the sum of weights (the authors' freeze code: lambda changes the
  effective learning rate instead). Sums, not means, so callers can add micro-batches and hosts
  before dividing once.
  """
  mask = mask_BxL.astype(bool)
  w = jnp.ones(per_token_BxL.shape, jnp.float32) if weights_BxL is None else (
      weights_BxL.astype(jnp.float32))
  # where, not multiply: garbage (inf/nan) at padded positions must not leak into the sum.
  total = jnp.sum(jnp.where(mask, per_token_BxL.astype(jnp.float32) * w, 0.0))
  return total, count(mask, w, normalizer=normalizer)


def count(mask_BxL: jax.Array, weights_BxL: jax.Array, *, normalizer: str = "tokens"
          ) -> jax.Array:
  """The `count` of `reduce`: masked tokens ('tokens') or the masked sum of weights ('weights')."""
  mask = mask_BxL.astype(bool)
  if normalizer == "tokens":
    return jnp.sum(mask, dtype=jnp.float32)
  if normalizer == "weights":
    return jnp.sum(jnp.where(mask, weights_BxL.astype(jnp.float32), 0.0))
  raise ValueError(f"unknown normalizer {normalizer!r}; expected 'tokens' or 'weights'")


def logit_gradient(student_logits: jax.Array, teacher_logits: jax.Array, *,
                   temperature: float = 1.0) -> jax.Array:
  """d reverse_kl / d student logits: `g = p_s * (A - E_ps[A])`, `A = log p_s - log p_t + 1`.

  The +1 cancels in A - E[A]; it is kept to mirror the paper's formula (docs/method.md,
  "Gradient geometry").
  At temperature T this is the gradient w.r.t. the tempered logits z/T.
  """
  logp_s = _log_softmax32(student_logits, temperature)
  logp_t = _log_softmax32(teacher_logits, temperature)
  live = logp_s > -jnp.inf
  p_s = jnp.exp(logp_s)
  a = jnp.where(live, logp_s - jnp.where(live, logp_t, 0.0) + 1.0, 0.0)
  mean_a = jnp.sum(p_s * a, axis=-1, keepdims=True)
  return jnp.where(live, p_s * (a - mean_a), 0.0)


def logit_gradient_norm(student_logits: jax.Array, teacher_logits: jax.Array, *,
                        temperature: float = 1.0) -> jax.Array:
  """Per-token L2 norm `[B, L]` of `logit_gradient`."""
  g = logit_gradient(student_logits, teacher_logits, temperature=temperature)
  return jnp.sqrt(jnp.sum(jnp.square(g), axis=-1))
