"""Vocab-chunked divergence from hidden states and LM heads, never building `[B, L, V]`.

The logits of a chunk of C vocabulary columns are computed, used and dropped inside a loop:
forward keeps an online log-sum-exp per token (a plain KL also its expectation term; other
kinds sum their registry terms in a second pass over normalised log-probs); the custom VJP
recomputes each chunk's logits and accumulates the student's hidden-state and head
gradients chunk by chunk. Peak working memory is O(N*C + D*V) instead of O(N*V).

Shape letters: N flattened tokens (B*L), D hidden width (student Ds, teacher Dt), V vocabulary,
C vocabulary columns per chunk.

The teacher receives zero gradients: it is a constant of the OPD step.

The backward pass recomputes both heads' chunk logits (six head matmuls per step where autodiff
of full logits does four). When the per-token weights are known before the loss, as in the
train step, `rockjax.losses.fused_divergence` forms the gradient in the forward pass instead.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from rockjax.losses import registry

_NEG_INF = -jnp.inf


def _chunk_logits(
  h_NxD: jax.Array, w_DxV: jax.Array, i: jax.Array, chunk: int, temperature: float
) -> tuple[jax.Array, jax.Array]:
  """Tempered float32 logits `[N, C]` of chunk i and its first column index.

  The last chunk is shifted left to stay inside the vocabulary (no padded copy of the head);
  columns it shares with the previous chunk are set to -inf so each id counts once.
  """
  vocab = w_DxV.shape[1]
  start = jnp.minimum(i * chunk, vocab - chunk)
  w_DxC = jax.lax.dynamic_slice_in_dim(w_DxV, start, chunk, axis=1)
  logits_NxC = jnp.dot(h_NxD, w_DxC, preferred_element_type=jnp.float32) / temperature
  fresh_C = start + jnp.arange(chunk) >= i * chunk
  return jnp.where(fresh_C[None, :], logits_NxC, _NEG_INF), start


def _online_lse(m_N, z_N, logits_NxC):
  """One step of an online log-sum-exp: running max m and sum z of exp(x - m)."""
  m_new = jnp.maximum(m_N, jnp.max(logits_NxC, axis=-1))
  m_safe = jnp.where(m_new > _NEG_INF, m_new, 0.0)  # all -inf so far: keep exp() at 0, not nan
  scale = jnp.exp(m_N - m_safe)
  e_NxC = jnp.exp(logits_NxC - m_safe[:, None])
  return m_new, z_N * scale + jnp.sum(e_NxC, axis=-1), scale, e_NxC


def _lse(m_N, z_N):
  return jnp.where(z_N > 0, m_N + jnp.log(z_N), _NEG_INF)


def _forward(h_s, w_s, h_t, w_t, spec: registry.DivergenceSpec):
  """Per-token divergence `[N]` and the per-token constants (lse_s, lse_t, aux) of the backward."""
  d = registry.get(spec.kind)
  chunk, temperature = spec.chunk_size, spec.temperature
  n = h_s.shape[0]
  n_chunks = math.ceil(w_s.shape[1] / chunk)
  zeros = jnp.zeros((n,), jnp.float32)
  neg = jnp.full((n,), _NEG_INF, jnp.float32)
  # A plain KL whose gradient needs nothing but its value takes one pass: the expectation
  # E_pa[a - b] of unnormalised logits under the distribution a that weights the sum (student
  # for reverse KL, teacher for forward KL) gives KL = E_pa[a - b] - lse_a + lse_b.
  one_pass = d.plain_kl is not None and d.aux_terms is None

  # Pass 1: both log-normalisers (and the expectation of a one-pass kind).
  def body(i, carry):
    m_s, z_s, m_t, z_t, y = carry
    s, _ = _chunk_logits(h_s, w_s, i, chunk, temperature)
    t, _ = _chunk_logits(h_t, w_t, i, chunk, temperature)
    m_s, z_s, scale_s, e_s = _online_lse(m_s, z_s, s)
    m_t, z_t, scale_t, e_t = _online_lse(m_t, z_t, t)
    if one_pass and d.plain_kl == "student":
      y = y * scale_s + _weighted_gap(e_s, s, t)
    elif one_pass:
      y = y * scale_t + _weighted_gap(e_t, t, s)
    return m_s, z_s, m_t, z_t, y

  m_s, z_s, m_t, z_t, y = jax.lax.fori_loop(0, n_chunks, body, (neg, zeros, neg, zeros, zeros))
  lse_s, lse_t = _lse(m_s, z_s), _lse(m_t, z_t)
  if one_pass:
    value = y / z_s - lse_s + lse_t if d.plain_kl == "student" else y / z_t - lse_t + lse_s
    return value, (lse_s, lse_t, value)

  # Pass 2: terms that need normalised log-probs (e.g. a mixture), summed chunk by chunk.
  def body2(i, carry):
    value, aux = carry
    logp_s = _chunk_logits(h_s, w_s, i, chunk, temperature)[0] - lse_s[:, None]
    logp_t = _chunk_logits(h_t, w_t, i, chunk, temperature)[0] - lse_t[:, None]
    value_N, aux_N = registry.value_and_aux(logp_s, logp_t, spec)
    return value + value_N, aux + aux_N

  value, aux = jax.lax.fori_loop(0, n_chunks, body2, (zeros, zeros))
  return value, (lse_s, lse_t, aux)


def _weighted_gap(e_NxC, a_NxC, b_NxC):
  """sum_u e(u) * (a(u) - b(u)), with 0 where e == 0 even if a or b is -inf."""
  live = e_NxC > 0
  gap = jnp.where(live, a_NxC, 0.0) - jnp.where(live, b_NxC, 0.0)
  return jnp.sum(jnp.where(live, e_NxC * gap, 0.0), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked(h_s, w_s, h_t, w_t, spec):
  return _forward(h_s, w_s, h_t, w_t, spec)[0]


def _chunked_fwd(h_s, w_s, h_t, w_t, spec):
  value, consts = _forward(h_s, w_s, h_t, w_t, spec)
  return value, (h_s, w_s, h_t, w_t, consts)


def _chunked_bwd(spec, residuals, ct_N):
  h_s, w_s, h_t, w_t, (lse_s, lse_t, aux) = residuals
  chunk = spec.chunk_size
  # Chain rule through the 1/T of the tempered logits, folded into the per-token cotangent.
  ct_N = ct_N.astype(jnp.float32) / spec.temperature

  def body(i, carry):
    dh, dw = carry
    s, start = _chunk_logits(h_s, w_s, i, chunk, spec.temperature)
    t, _ = _chunk_logits(h_t, w_t, i, chunk, spec.temperature)
    g_NxC = registry.logit_grad(s - lse_s[:, None], t - lse_t[:, None], aux, spec)
    g_NxC = g_NxC * ct_N[:, None]
    w_DxC = jax.lax.dynamic_slice_in_dim(w_s, start, chunk, axis=1)
    # einsum contracts without materialising transposes of the head chunk or the hidden.
    dh = dh + jnp.einsum("nc,dc->nd", g_NxC, w_DxC, preferred_element_type=jnp.float32)
    # Shared columns of the shifted last chunk have g == 0, so adding in place is exact.
    old = jax.lax.dynamic_slice_in_dim(dw, start, chunk, axis=1)
    dw_DxC = jnp.einsum("nd,nc->dc", h_s, g_NxC, preferred_element_type=jnp.float32)
    dw = jax.lax.dynamic_update_slice_in_dim(dw, old + dw_DxC, start, axis=1)
    return dh, dw

  dh, dw = jax.lax.fori_loop(
    0,
    math.ceil(w_s.shape[1] / chunk),
    body,
    (jnp.zeros(h_s.shape, jnp.float32), jnp.zeros(w_s.shape, jnp.float32)),
  )
  return (dh.astype(h_s.dtype), dw.astype(w_s.dtype), jnp.zeros_like(h_t), jnp.zeros_like(w_t))


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def check_hidden_and_heads(
  student_hidden, student_head, teacher_hidden, teacher_head
) -> tuple[list[int], int, int]:
  """One-line errors for bad shapes of the head-level losses; (lead dims, Ds, Dt)."""
  (*lead, d_s), (*lead_t, d_t) = student_hidden.shape, teacher_hidden.shape
  if lead != lead_t:
    raise ValueError(
      f"student hidden {student_hidden.shape} and teacher hidden "
      f"{teacher_hidden.shape} must share batch/length dims"
    )
  if student_head.shape[0] != d_s or teacher_head.shape[0] != d_t:
    raise ValueError(
      f"heads must be [D, V]: student hidden D={d_s} vs head "
      f"{student_head.shape}, teacher hidden D={d_t} vs head {teacher_head.shape}"
    )
  if student_head.shape[1] != teacher_head.shape[1]:
    raise ValueError(
      f"student vocab {student_head.shape[1]} != teacher vocab "
      f"{teacher_head.shape[1]}: teacher and student must share a vocabulary"
    )
  return lead, d_s, d_t


def chunked_divergence(
  student_hidden: jax.Array,
  student_head: jax.Array,
  teacher_hidden: jax.Array,
  teacher_head: jax.Array,
  *,
  kind: str = "reverse_kl",
  chunk_size: int = 8192,
  temperature: float = 1.0,
  beta: float = 0.5,
  alpha: float = 0.9,
  spec: registry.DivergenceSpec | None = None,
) -> jax.Array:
  """Per-token divergence `[B, L]` from hidden `[B, L, D]` and heads `[D, V]`, chunked over V.

  Equals `divergence(h_s @ W_s, h_t @ W_t)` (see `rockjax.losses.divergence`) without
  materialising the logits in forward or backward. Student and teacher widths may differ; their
  vocabularies may not. Gradients flow to the student hidden states and head only.
  """
  spec = registry.spec_from(
    spec, kind=kind, temperature=temperature, beta=beta, alpha=alpha, chunk_size=chunk_size
  )
  lead, d_s, d_t = check_hidden_and_heads(
    student_hidden, student_head, teacher_hidden, teacher_head
  )
  spec = dataclasses.replace(spec, chunk_size=min(spec.chunk_size, student_head.shape[1]))
  n = math.prod(lead)
  value_N = _chunked(
    student_hidden.reshape(n, d_s), student_head, teacher_hidden.reshape(n, d_t), teacher_head, spec
  )
  return value_N.reshape(lead)


def chunked_logit_gradient_norm(
  student_hidden: jax.Array,
  student_head: jax.Array,
  teacher_hidden: jax.Array,
  teacher_head: jax.Array,
  *,
  kind: str = "reverse_kl",
  chunk_size: int = 8192,
  temperature: float = 1.0,
  beta: float = 0.5,
  alpha: float = 0.9,
  spec: registry.DivergenceSpec | None = None,
) -> jax.Array:
  """Per-token L2 norm `[B, L]` of d divergence / d student logits, chunked over V.

  A diagnostic (no gradient flows through it): for reverse_kl it is the norm of the paper's
  `g = p_s * (A - E_ps[A])`. Costs two extra passes over the heads.
  """
  spec = registry.spec_from(
    spec, kind=kind, temperature=temperature, beta=beta, alpha=alpha, chunk_size=chunk_size
  )
  lead, d_s, d_t = check_hidden_and_heads(
    student_hidden, student_head, teacher_hidden, teacher_head
  )
  n = math.prod(lead)
  h_s, h_t = student_hidden.reshape(n, d_s), teacher_hidden.reshape(n, d_t)
  h_s, w_s, h_t, w_t = jax.lax.stop_gradient((h_s, student_head, h_t, teacher_head))
  spec = dataclasses.replace(spec, chunk_size=min(spec.chunk_size, w_s.shape[1]))
  _, (lse_s, lse_t, aux) = _forward(h_s, w_s, h_t, w_t, spec)

  def body(i, sq_N):
    s, _ = _chunk_logits(h_s, w_s, i, spec.chunk_size, spec.temperature)
    t, _ = _chunk_logits(h_t, w_t, i, spec.chunk_size, spec.temperature)
    g_NxC = registry.logit_grad(s - lse_s[:, None], t - lse_t[:, None], aux, spec)
    return sq_N + jnp.sum(jnp.square(g_NxC), axis=-1)

  sq_N = jax.lax.fori_loop(
    0, math.ceil(w_s.shape[1] / spec.chunk_size), body, jnp.zeros((n,), jnp.float32)
  )
  return jnp.sqrt(sq_N).reshape(lead)


def chunked_cross_entropy(
  hidden: jax.Array,
  head: jax.Array,
  targets: jax.Array,
  *,
  chunk_size: int = 8192,
  temperature: float = 1.0,
) -> jax.Array:
  """Per-token `-log p(target)` `[B, L]` from hidden `[B, L, D]` and head `[D, V]`, chunked.

  The log-normaliser is an online log-sum-exp over vocabulary chunks inside a scan whose body
  is rematerialised, so the backward pass keeps only per-token carries, never `[B, L, V]`.
  """
  *lead, d = hidden.shape
  n = math.prod(lead)
  h_NxD = hidden.reshape(n, d)
  chunk = min(int(chunk_size), head.shape[1])

  @jax.checkpoint
  def body(carry, i):
    m_N, z_N = carry
    logits_NxC, _ = _chunk_logits(h_NxD, head, i, chunk, temperature)
    # The running max only stabilises exp(); lse = m + log z does not depend on it, so it is
    # a constant for differentiation and the gradient flows through z alone.
    m_new, z_new, _, _ = _online_lse(
      jax.lax.stop_gradient(m_N), z_N, jax.lax.stop_gradient(logits_NxC)
    )
    m_new = jax.lax.stop_gradient(m_new)
    m_safe = jnp.where(m_new > _NEG_INF, m_new, 0.0)
    z_new = z_N * jnp.exp(m_N - m_safe) + jnp.sum(jnp.exp(logits_NxC - m_safe[:, None]), -1)
    return (m_new, z_new), None

  init = (jnp.full((n,), _NEG_INF, jnp.float32), jnp.zeros((n,), jnp.float32))
  (m_N, z_N), _ = jax.lax.scan(body, init, jnp.arange(math.ceil(head.shape[1] / chunk)))
  lse_N = m_N + jnp.log(z_N)
  target_DxN = jnp.take(head, targets.reshape(n), axis=1)
  target_logit_N = (
    jnp.einsum("nd,dn->n", h_NxD, target_DxN, preferred_element_type=jnp.float32) / temperature
  )
  return (lse_N - target_logit_N).reshape(lead)
