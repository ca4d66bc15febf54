"""Elementwise divergence terms and logit gradients shared by every loss path.

The full-logit (losses), vocab-chunked (chunked) and token-blocked (fused) paths all use them.

Each function works on log-probabilities of any shape `[..., V]`; summing the terms over the
last axis gives the per-token divergence. Keeping one definition means both paths agree on
every edge case (-inf logits, beta at 0 or 1) by construction.
"""
from typing import Literal

import jax
import jax.numpy as jnp

Kind = Literal["reverse_kl", "forward_kl", "jsd"]
KINDS = ("reverse_kl", "forward_kl", "jsd")


def check_kind(kind: str) -> None:
  """Raise a one-line error for an unknown divergence name."""
  if kind not in KINDS:
    raise ValueError(f"unknown divergence kind {kind!r}; expected one of {KINDS}")


def _xlogy_ratio(logp_a: jax.Array, logp_b: jax.Array) -> jax.Array:
  """Elementwise p_a * (log p_a - log p_b), 0 where p_a == 0 (also with -inf logits)."""
  live = logp_a > -jnp.inf
  # Replace dead entries before subtracting so neither the value nor its gradient sees
  # -inf - -inf = nan (the double-where trick).
  safe_a = jnp.where(live, logp_a, 0.0)
  safe_b = jnp.where(live, logp_b, 0.0)
  return jnp.where(live, jnp.exp(safe_a) * (safe_a - safe_b), 0.0)


def divergence_terms(logp_s: jax.Array, logp_t: jax.Array, kind: str,
                     beta: float = 0.5) -> jax.Array:
  """Elementwise terms whose sum over the vocabulary is the divergence; inputs log-probs."""
  if kind == "reverse_kl":
    return _xlogy_ratio(logp_s, logp_t)
  if kind == "forward_kl":
    return _xlogy_ratio(logp_t, logp_s)
  if kind == "jsd":
    logm = mixture_logprobs(logp_s, logp_t, beta)
    return beta * _xlogy_ratio(logp_t, logm) + (1.0 - beta) * _xlogy_ratio(logp_s, logm)
  check_kind(kind)
  raise AssertionError("unreachable")


def mixture_logprobs(logp_s: jax.Array, logp_t: jax.Array, beta: float) -> jax.Array:
  """log M for M = beta*p_t + (1-beta)*p_s, stable for beta in [0, 1]."""
  log_b = jnp.log(jnp.float32(beta)) if beta > 0 else -jnp.inf
  log_1mb = jnp.log1p(-jnp.float32(beta)) if beta < 1 else -jnp.inf
  return jnp.logaddexp(log_b + logp_t, log_1mb + logp_s)


def logit_grad(logp_s: jax.Array, logp_t: jax.Array, aux_N: jax.Array, kind: str,
               beta: float = 0.5) -> jax.Array:
  """d divergence / d (tempered) student logits from log-probs `[N, C]` (any chunk of V).

  aux_N: the per-token constant of the kind, KL(p_s || p_t) for reverse_kl, KL(p_s || M) for
  jsd (unused for forward_kl), over the whole vocabulary.
  """
  live = logp_s > -jnp.inf
  p_s = jnp.exp(logp_s)
  if kind == "forward_kl":
    return p_s - jnp.exp(logp_t)
  if kind == "reverse_kl":
    # g = p_s * (A - E_ps[A]) with A = log p_s - log p_t; E_ps[A] is the KL itself.
    gap = jnp.where(live, logp_s, 0.0) - jnp.where(live, logp_t, 0.0)
    return jnp.where(live, p_s * (gap - aux_N[:, None]), 0.0)
  # JSD: d/dp_s of the mixture form is (1-beta) log(p_s/M); through softmax this becomes
  # (1-beta) p_s (log p_s - log M - KL(p_s || M)).
  logm = mixture_logprobs(logp_s, logp_t, beta)
  gap = jnp.where(live, logp_s, 0.0) - jnp.where(live, logm, 0.0)
  return jnp.where(live, (1.0 - beta) * p_s * (gap - aux_N[:, None]), 0.0)
