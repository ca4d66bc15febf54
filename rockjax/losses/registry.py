"""The divergence registry: each kind's per-token terms, logit gradient and gradient auxiliary.

Every loss path (full logits, vocab-chunked, token-blocked fused, the logit-gradient helpers)
dispatches through `get(spec.kind)`, so a kind is defined once, here, and an unknown kind raises
the same one-line error everywhere. Adding a kind is one `register(Divergence(...))` below plus
its float64 reference in tests/losses/test_divergences.py.

Functions of a kind work on float32 log-probabilities `logp_[..., V]` of any leading shape (a
whole vocabulary or a chunk of it): the divergence is the sum of `terms` over V, and
`grad(logp_s, logp_t, aux, spec)` is d divergence / d (tempered) student logits, where `aux [...]`
is the sum of `aux_terms` over the whole vocabulary (the divergence itself when None). Summing
terms chunk by chunk is what lets the chunked path never build `[N, V]`.
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

_REGISTRY: dict[str, "Divergence"] = {}


@dataclasses.dataclass(frozen=True)
class DivergenceSpec:
  """Static settings of one divergence; the single static argument of the custom VJPs."""

  kind: str = "reverse_kl"
  temperature: float = 1.0
  beta: float = 0.5  # jsd: teacher weight in M = beta*p_t + (1-beta)*p_s
  alpha: float = 0.9  # skew_reverse_kl: teacher weight in M = alpha*p_t + (1-alpha)*p_s
  chunk_size: int = 8192  # vocabulary columns per chunk (chunked and fused paths)
  block_size: int = 512  # tokens per block (fused path)

  def __post_init__(self):
    check_kind(self.kind)
    for name, cast in (
      ("temperature", float),
      ("beta", float),
      ("alpha", float),
      ("chunk_size", int),
      ("block_size", int),
    ):
      object.__setattr__(self, name, cast(getattr(self, name)))
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")
    if not 0.0 <= self.beta <= 1.0:
      raise ValueError(f"jsd beta must be in [0, 1], got {self.beta}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"skew_reverse_kl alpha must be in [0, 1], got {self.alpha}")
    if self.block_size < 1 or self.chunk_size < 1:
      raise ValueError(
        f"block_size={self.block_size} and chunk_size={self.chunk_size} must be >= 1"
      )


def spec_from(spec: DivergenceSpec | None, **settings) -> DivergenceSpec:
  """`spec`, or one built from a public function's keyword `settings`; never both at once.

  The public functions take the divergence's settings as keywords (kind=, temperature=, beta=,
  alpha=, ...) or whole, as `spec=`: the train step, the rock analysis and the reports pass the
  run's one spec, so a setting added to DivergenceSpec reaches every path without new keywords.
  """
  if spec is None:
    return DivergenceSpec(**settings)
  defaults = {f.name: f.default for f in dataclasses.fields(DivergenceSpec)}
  given = sorted(k for k, v in settings.items() if v != defaults[k])
  if given:
    raise ValueError(f"pass the divergence as spec= or as keywords, not both (also got {given})")
  return spec


@dataclasses.dataclass(frozen=True)
class Divergence:
  """One registered kind (see the module docstring for the signatures)."""

  name: str
  terms: Callable[..., jax.Array]  # (logp_s, logp_t, spec) -> [..., V]
  grad: Callable[..., jax.Array]  # (logp_s, logp_t, aux, spec) -> [..., V]
  aux_terms: Callable[..., jax.Array] | None = None  # (logp_s, logp_t, spec) -> [..., V]
  # 'student' if the kind is KL(p_s || p_t), 'teacher' if KL(p_t || p_s): the chunked path then
  # gets the value from unnormalised logits in one pass over the heads instead of two.
  plain_kl: str | None = None
  title: str = ""  # how reports name it ('reverse KL'); the kind's name when empty

  def __post_init__(self):
    if self.plain_kl not in (None, "student", "teacher"):
      raise ValueError(f"plain_kl must be None, 'student' or 'teacher', got {self.plain_kl!r}")


def register(divergence: Divergence) -> Divergence:
  """Add a kind to the registry (its name must be new)."""
  if divergence.name in _REGISTRY:
    raise ValueError(f"divergence kind {divergence.name!r} is already registered")
  _REGISTRY[divergence.name] = divergence
  return divergence


def title(kind: str) -> str:
  """The kind's name in reports and tables ('reverse KL')."""
  check_kind(kind)
  return _REGISTRY[kind].title or kind


def check_kind(kind: str) -> None:
  """Raise a one-line error naming an unknown kind and listing the registered ones."""
  if kind not in _REGISTRY:
    raise ValueError(f"unknown divergence kind {kind!r}; registered kinds: {', '.join(_REGISTRY)}")


def get(kind: str) -> Divergence:
  """The registered kind of that name (one-line error otherwise)."""
  check_kind(kind)
  return _REGISTRY[kind]


def vocab_sum(x: jax.Array) -> jax.Array:
  """Sum over the last (vocabulary) axis: the default reduction of `value_and_aux`."""
  return jnp.sum(x, axis=-1)


def value_and_aux(
  logp_s, logp_t, spec: DivergenceSpec, vsum: Callable[[jax.Array], jax.Array] = vocab_sum
) -> tuple[jax.Array, jax.Array]:
  """(divergence, gradient auxiliary) summed over the last axis of `logp_[..., V]`.

  `vsum` reduces `[..., V]` terms to `[...]`; a vocabulary-sharded caller passes one that also
  sums across its shards (a psum), so every kind works on a slice of the vocabulary.
  """
  d = get(spec.kind)
  value = vsum(d.terms(logp_s, logp_t, spec))
  aux = value if d.aux_terms is None else vsum(d.aux_terms(logp_s, logp_t, spec))
  return value, aux


def logit_grad(logp_s, logp_t, aux, spec: DivergenceSpec) -> jax.Array:
  """d divergence / d tempered student logits `[..., V]`, given the whole-vocabulary aux `[...]`."""
  return get(spec.kind).grad(logp_s, logp_t, aux, spec)


# ------------------------------------------------------------------------------- helpers
def xlogy_ratio(logp_a: jax.Array, logp_b: jax.Array) -> jax.Array:
  """Elementwise p_a * (log p_a - log p_b), 0 where p_a == 0 (also with -inf logits)."""
  live = logp_a > -jnp.inf
  # Replace dead entries before subtracting so neither the value nor its gradient sees
  # -inf - -inf = nan (the double-where trick).
  safe_a = jnp.where(live, logp_a, 0.0)
  safe_b = jnp.where(live, logp_b, 0.0)
  return jnp.where(live, jnp.exp(safe_a) * (safe_a - safe_b), 0.0)


def mixture_logprobs(logp_s: jax.Array, logp_t: jax.Array, w_t: float) -> jax.Array:
  """log M for M = w_t*p_t + (1-w_t)*p_s, stable for w_t in [0, 1]."""
  if w_t >= 1.0:
    return logp_t
  if w_t <= 0.0:
    return logp_s
  # Where both are -inf, logaddexp's gradient is nan (exp(-inf - -inf)): feed it zeros there.
  dead = (logp_s == -jnp.inf) & (logp_t == -jnp.inf)
  logm = jnp.logaddexp(
    math.log(w_t) + jnp.where(dead, 0.0, logp_t), math.log1p(-w_t) + jnp.where(dead, 0.0, logp_s)
  )
  return jnp.where(dead, -jnp.inf, logm)


def _softmax_grad(logp_s: jax.Array, a: jax.Array, mean_a: jax.Array) -> jax.Array:
  """p_s * (a - E_ps[a]): the gradient through the softmax of a divergence with dD/dp_s = a."""
  live = logp_s > -jnp.inf
  return jnp.where(live, jnp.exp(logp_s) * (a - mean_a[..., None]), 0.0)


def _gap(logp_a: jax.Array, logp_b: jax.Array) -> jax.Array:
  """log p_a - log p_b where p_a > 0, else 0 (no nan from -inf - -inf)."""
  live = logp_a > -jnp.inf
  return jnp.where(live, logp_a, 0.0) - jnp.where(live, logp_b, 0.0)


# --------------------------------------------------------------------------------- kinds
# reverse_kl = KL(p_s || p_t), the paper's OPD loss. dD/dp_s = log(p_s/p_t) + 1 (the +1
# cancels in a - E[a]), and E_ps[log(p_s/p_t)] is the divergence itself: aux = value.
register(
  Divergence(
    "reverse_kl",
    title="reverse KL",
    terms=lambda logp_s, logp_t, spec: xlogy_ratio(logp_s, logp_t),
    grad=lambda logp_s, logp_t, aux, spec: _softmax_grad(logp_s, _gap(logp_s, logp_t), aux),
    plain_kl="student",
  )
)

# forward_kl = KL(p_t || p_s), the paper's stage-1 KD loss. dD/dp_s = -p_t/p_s, so through the
# softmax g = p_s - p_t: no auxiliary.
register(
  Divergence(
    "forward_kl",
    title="forward KL",
    terms=lambda logp_s, logp_t, spec: xlogy_ratio(logp_t, logp_s),
    grad=lambda logp_s, logp_t, aux, spec: jnp.exp(logp_s) - jnp.exp(logp_t),
    plain_kl="teacher",
  )
)


# jsd = beta*KL(p_t || M) + (1-beta)*KL(p_s || M), M = beta*p_t + (1-beta)*p_s. With
# dM/dp_s = 1-beta the mixture terms cancel: dD/dp_s = (1-beta) log(p_s/M) (+ const), so
# g = (1-beta) p_s (log(p_s/M) - KL(p_s || M)); aux = KL(p_s || M).
def _jsd_terms(logp_s, logp_t, spec):
  logm = mixture_logprobs(logp_s, logp_t, spec.beta)
  # A term of weight 0 is absent (not 0 * inf where M lacks mass the other side has).
  teacher = spec.beta * xlogy_ratio(logp_t, logm) if spec.beta > 0 else 0.0
  student = (1.0 - spec.beta) * xlogy_ratio(logp_s, logm) if spec.beta < 1 else 0.0
  return teacher + student


def _jsd_grad(logp_s, logp_t, aux, spec):
  a = (1.0 - spec.beta) * _gap(logp_s, mixture_logprobs(logp_s, logp_t, spec.beta))
  return _softmax_grad(logp_s, a, (1.0 - spec.beta) * aux)


register(
  Divergence(
    "jsd",
    title="JSD",
    terms=_jsd_terms,
    grad=_jsd_grad,
    aux_terms=lambda logp_s, logp_t, spec: xlogy_ratio(
      logp_s, mixture_logprobs(logp_s, logp_t, spec.beta)
    ),
  )
)


# skew_reverse_kl = KL(p_s || M), M = alpha*p_t + (1-alpha)*p_s (DistiLLM's skew reverse KL with
# their lambda = 1 - alpha); alpha = 1 is reverse_kl, alpha = 0 is identically 0. Here M moves
# with p_s (dM/dp_s = 1-alpha), so dD/dp_s = log(p_s/M) + 1 - (1-alpha) p_s/M: with
# a = log(p_s/M) - (1-alpha) p_s/M, g = p_s (a - E_ps[a]) and aux = E_ps[a].
def _skew_a(logp_s, logp_t, spec):
  live = logp_s > -jnp.inf
  gap = _gap(logp_s, mixture_logprobs(logp_s, logp_t, spec.alpha))
  # p_s/M = exp(gap) <= 1/(1-alpha); at alpha = 1 the term is absent (p_s/p_t may overflow).
  return jnp.where(live, gap - (1.0 - spec.alpha) * jnp.exp(gap), 0.0) if spec.alpha < 1 else gap


register(
  Divergence(
    "skew_reverse_kl",
    title="skew reverse KL",
    terms=lambda logp_s, logp_t, spec: xlogy_ratio(
      logp_s, mixture_logprobs(logp_s, logp_t, spec.alpha)
    ),
    grad=lambda logp_s, logp_t, aux, spec: _softmax_grad(
      logp_s, _skew_a(logp_s, logp_t, spec), aux
    ),
    aux_terms=lambda logp_s, logp_t, spec: jnp.where(
      logp_s > -jnp.inf, jnp.exp(logp_s) * _skew_a(logp_s, logp_t, spec), 0.0
    ),
  )
)

KINDS = tuple(_REGISTRY)  # the registered kinds, in registration order
