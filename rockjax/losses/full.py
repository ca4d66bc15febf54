"""Divergences and logit gradients from full logits `[..., V]`, dispatched through the registry."""

import jax
import jax.numpy as jnp

from rockjax.losses import registry
from rockjax.losses.registry import DivergenceSpec


def _log_probs(
  student_logits: jax.Array, teacher_logits: jax.Array, spec: DivergenceSpec
) -> tuple[jax.Array, jax.Array]:
  """float32 tempered log-probs of both models (one-line error if the shapes differ)."""
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f"student logits {student_logits.shape} and teacher logits "
      f"{teacher_logits.shape} differ in shape (shared vocabulary required)"
    )
  log_softmax = lambda x: jax.nn.log_softmax(x.astype(jnp.float32) / spec.temperature, axis=-1)
  return log_softmax(student_logits), log_softmax(teacher_logits)


def divergence(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  *,
  kind: str = "reverse_kl",
  temperature: float = 1.0,
  beta: float = 0.5,
  alpha: float = 0.9,
  spec: DivergenceSpec | None = None,
) -> jax.Array:
  """Per-token divergence `[..., V] -> [...]` of the named kind from full logits (or `spec`)."""
  spec = registry.spec_from(spec, kind=kind, temperature=temperature, beta=beta, alpha=alpha)
  return registry.value_and_aux(*_log_probs(student_logits, teacher_logits, spec), spec)[0]


def divergence_terms(
  logp_s: jax.Array, logp_t: jax.Array, kind: str, beta: float = 0.5, alpha: float = 0.9
) -> jax.Array:
  """Elementwise terms `[..., V]` whose sum over the vocabulary is the divergence (log-probs in)."""
  spec = DivergenceSpec(kind, beta=beta, alpha=alpha)
  return registry.get(kind).terms(logp_s, logp_t, spec)


def reverse_kl(
  student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  """KL(p_s || p_t) per token: `[B, L, V] x2 -> [B, L]`."""
  return divergence(student_logits, teacher_logits, kind="reverse_kl", temperature=temperature)


def forward_kl(
  student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  """KL(p_t || p_s) per token: `[B, L, V] x2 -> [B, L]`."""
  return divergence(student_logits, teacher_logits, kind="forward_kl", temperature=temperature)


def jsd(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  *,
  beta: float = 0.5,
  temperature: float = 1.0,
) -> jax.Array:
  """Generalised JSD per token; beta is the teacher's weight in the mixture M."""
  return divergence(student_logits, teacher_logits, kind="jsd", temperature=temperature, beta=beta)


def logit_gradient(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  *,
  kind: str = "reverse_kl",
  temperature: float = 1.0,
  beta: float = 0.5,
  alpha: float = 0.9,
  spec: DivergenceSpec | None = None,
) -> jax.Array:
  """d divergence / d tempered student logits `[..., V]`, in closed form (the registry's).

  For reverse_kl this is the paper's `g = p_s * (A - E_ps[A])`, `A = log p_s - log p_t + 1`
  (docs/method.md, "Gradient geometry"; the +1 cancels in A - E[A]).
  At temperature T it is the gradient w.r.t. the tempered logits z/T. `spec` gives all the
  divergence's settings at once (instead of the keywords).
  """
  spec = registry.spec_from(spec, kind=kind, temperature=temperature, beta=beta, alpha=alpha)
  logp_s, logp_t = _log_probs(student_logits, teacher_logits, spec)
  _, aux = registry.value_and_aux(logp_s, logp_t, spec)
  return registry.logit_grad(logp_s, logp_t, aux, spec)


def logit_gradient_norm(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  *,
  kind: str = "reverse_kl",
  temperature: float = 1.0,
  beta: float = 0.5,
  alpha: float = 0.9,
  spec: DivergenceSpec | None = None,
) -> jax.Array:
  """Per-token L2 norm `[B, L]` of `logit_gradient`."""
  spec = registry.spec_from(spec, kind=kind, temperature=temperature, beta=beta, alpha=alpha)
  g = logit_gradient(student_logits, teacher_logits, spec=spec)
  return jnp.sqrt(jnp.sum(jnp.square(g), axis=-1))
