"""Single-sample estimators of KL(p_s || p_t) from the sampled tokens' log-probs."""

import jax
import jax.numpy as jnp


def sampled_kl(
  student_logprobs: jax.Array, teacher_logprobs: jax.Array, *, estimator: str = "k1"
) -> jax.Array:
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
