"""Per-token divergences between student and teacher, their reductions and logit gradients.

Everything here is pure and jittable, computes in float32 whatever the input dtype, and takes
the student first and the teacher second. Shape letters: B batch, L length, V vocabulary,
D hidden width, N = B*L flattened tokens.

Divergences are named, never a bare beta (peers use beta with opposite meanings); each kind is
registered once in `registry` and every path below dispatches through it:
  reverse_kl      = KL(p_s || p_t)   (the paper's OPD loss)
  forward_kl      = KL(p_t || p_s)   (the paper's stage-1 KD loss)
  jsd             = beta*KL(p_t || M) + (1-beta)*KL(p_s || M),  M = beta*p_t + (1-beta)*p_s
  skew_reverse_kl = KL(p_s || M),  M = alpha*p_t + (1-alpha)*p_s  (alpha = 1: reverse_kl)
Paths: full logits (`full`: `divergence`, `reverse_kl`, ...), vocab-chunked from hidden states
and heads (`chunked`: per-token output, any cotangent) and token-blocked (`fused`: weighted sum
whose gradient is formed in the forward pass, no recomputation); `reduce` and `sampled` hold
the reductions and the single-sample estimators.
"""

from rockjax.losses.chunked import (
  chunked_cross_entropy,
  chunked_divergence,
  chunked_logit_gradient_norm,
)
from rockjax.losses.full import (
  divergence,
  divergence_terms,
  forward_kl,
  jsd,
  logit_gradient,
  logit_gradient_norm,
  reverse_kl,
)
from rockjax.losses.fused import FusedDivergence, fused_divergence
from rockjax.losses.reduce import NORMALIZERS, count, normalized_weights, reduce
from rockjax.losses.registry import KINDS, DivergenceSpec, check_kind, mixture_logprobs, title
from rockjax.losses.sampled import sampled_kl

__all__ = [
  "KINDS",
  "NORMALIZERS",
  "DivergenceSpec",
  "FusedDivergence",
  "check_kind",
  "chunked_cross_entropy",
  "chunked_divergence",
  "chunked_logit_gradient_norm",
  "count",
  "divergence",
  "divergence_terms",
  "forward_kl",
  "fused_divergence",
  "jsd",
  "logit_gradient",
  "logit_gradient_norm",
  "mixture_logprobs",
  "normalized_weights",
  "reduce",
  "reverse_kl",
  "sampled_kl",
  "title",
]
