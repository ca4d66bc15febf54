"""The knockout census on a bigram model with planted Pillar, Stumbling Block and neutral ids.

The model's next-token logits depend only on the current token (a table), so every decode is
known by hand: each problem's prompt ends in a "kind" token that starts a chain, a response is
right when it contains the answer id Z, and banning an id sends a chain to its second choice.
"""

import dataclasses
import struct as pystruct
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, struct

from rockjax import sampling
from rockjax.analysis import knockout, knockout_report

V, EOS = 32, 1
A, B_, Z, N, W, S, D, E = 10, 11, 12, 13, 14, 15, 16, 17  # B_: B is the problems' letter
GOOD, BAD, WEAK = 2, 3, 4  # the prompt's last token
# (from, to, score): the highest score wins; the next one is what a ban of it falls back to.
CHAINS = [
  (GOOD, A, 5), (GOOD, B_, 4),  # right through A (the planted Pillar), wrong through B
  (A, Z, 5), (Z, N, 5), (Z, EOS, 4), (N, EOS, 5),  # N: emitted but harmless (neutral)
  (B_, W, 5), (W, EOS, 5),
  (BAD, S, 5), (BAD, A, 4), (S, W, 5),  # S: the planted Stumbling Block
  (WEAK, D, 5), (WEAK, E, 4), (D, Z, 5), (E, W, 5),  # D: one problem only, not significant
]  # fmt: skip
KINDS = [GOOD] * 27 + [BAD] * 12 + [WEAK]  # baseline: 27 + 1 right of 40
NEVER = [5, 6, 7, 8, 9, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28]  # never emitted
CANDIDATES = [A, S, N, D] + NEVER  # 20 ids
P, T = 5, 6


@struct.dataclass
class _Cache:
  """The sampler threads a cache through its loop; a bigram model needs none."""

  rows_N: jax.Array

  def repeat_rows(self, n: int) -> "_Cache":
    return _Cache(jnp.repeat(self.rows_N, n, axis=0))


@dataclasses.dataclass(frozen=True)
class _Cfg:
  vocab_size: int


class Bigram(nnx.Module):
  """logits(next) = table[current token], in the call convention of rockjax.models.Decoder."""

  def __init__(self, table_VxV: np.ndarray):
    self.cfg = _Cfg(table_VxV.shape[0])
    self.table = nnx.Param(jnp.asarray(table_VxV, jnp.float32))

  def init_cache(self, batch: int, slots: int, dtype=None) -> _Cache:
    return _Cache(jnp.zeros((batch,), jnp.int32))

  def logits(self, hidden_BxLxV: jax.Array, strict: bool = True) -> jax.Array:  # noqa: ARG002
    return hidden_BxLxV @ self.table[...]

  def __call__(self, ids_BxL, mask_BxL, cache=None, return_hidden=False):
    hidden_BxLxV = jax.nn.one_hot(ids_BxL, self.cfg.vocab_size)
    return (hidden_BxLxV if return_hidden else self.logits(hidden_BxLxV)), cache


class Tokenizer:
  """Ids as space-separated numbers."""

  def decode(self, ids, skip_special_tokens=True):
    return " ".join(str(int(i)) for i in ids)

  def convert_ids_to_tokens(self, i):
    return f"t{i}"


def grade(text: str, answer: str) -> bool:
  return answer in text.split()


@pytest.fixture(scope="module")
def problem():
  table = np.zeros((V, V), np.float32)
  for src, dst, score in CHAINS:
    table[src, dst] = score
  rng = np.random.default_rng(0)
  ids = rng.integers(20, 29, (len(KINDS), P)).astype(np.int32)  # filler, then the kind
  ids[:, -1] = KINDS
  mask = np.ones_like(ids)
  mask[::3, :2] = 0  # some left padding
  return Bigram(table), ids, mask, [str(Z)] * len(KINDS)


@pytest.fixture(scope="module")
def result(problem):
  model, ids, mask, answers = problem
  kw = dict(grade=grade, tokenizer=Tokenizer(), max_new_tokens=T, eos_ids=(EOS,))
  return knockout.census(model, ids, mask, answers, CANDIDATES, batch_rows=64, **kw)


def _by_id(result):
  return {e["id"]: e for e in result["candidates"]}


def test_planted_ids_are_classified(result):
  by_id = _by_id(result)
  # Hand-computed accuracies: banning A breaks the 27 GOOD problems, banning S repairs the 12
  # BAD ones, banning D breaks the one WEAK problem, everything else changes nothing.
  assert result["baseline_accuracy"] == pytest.approx(28 / 40)
  expected = {A: 1 / 40, S: 40 / 40, D: 27 / 40} | {v: 28 / 40 for v in [N] + NEVER}
  for v, acc in expected.items():
    assert by_id[v]["accuracy"] == pytest.approx(acc), v
    assert by_id[v]["delta"] == pytest.approx(acc - 28 / 40), v
  assert by_id[A]["class"] == "strong_pillar"
  assert by_id[S]["class"] == "strong_stumbling_block"
  # D: Delta = -0.025 <= -eps, but one discordant problem cannot be significant: a bootstrap
  # resample leaves it out (delta* = 0) with chance (39/40)**40, so p ~ 2 * 0.363.
  assert by_id[D]["class"] == "neutral"
  assert by_id[D]["p_value"] == pytest.approx(2 * (39 / 40) ** 40, abs=0.03)
  assert all(by_id[v]["class"] == "neutral" for v in [N] + NEVER)
  assert result["classes"] == dict(strong_pillar=1, neutral=18, strong_stumbling_block=1)
  # Emitted by the baseline: A and Z-N chains on 28 problems, S on 12, D on 1, NEVER never.
  assert [by_id[v]["baseline_emitted"] for v in (A, S, N, D)] == [27, 12, 28, 1]
  assert all(by_id[v]["baseline_emitted"] == 0 for v in NEVER)


def test_census_compiles_the_sampler_once_for_20_candidates(result):
  # 21 conditions x 40 problems = 840 rows in 14 batches of 64 (56 padding rows).
  assert (result["num_rows"], result["num_batches"], result["num_padding_rows"]) == (840, 14, 56)
  assert result["num_compilations"] == 1


def test_samples_and_answers_follow_their_problem(problem, result):
  # Two (greedy, identical) samples per problem and per-problem answers: BAD problems now
  # want W. By hand: baseline 40/40; banning A fails the 27 GOOD, S the 12 BAD, D the WEAK one.
  model, ids, mask, _ = problem
  answers = [str(W) if k == BAD else str(Z) for k in KINDS]
  kw = dict(grade=grade, tokenizer=Tokenizer(), max_new_tokens=T, eos_ids=(EOS,))
  two = knockout.census(
    model, ids, mask, answers, [A, S, D], num_samples=2, batch_rows=16, progress=False, **kw
  )
  assert two["baseline_accuracy"] == 1.0
  by_id = _by_id(two)
  assert [by_id[v]["accuracy"] for v in (A, S, D)] == pytest.approx([13 / 40, 28 / 40, 39 / 40])
  once = _by_id(result)
  assert [by_id[v]["baseline_emitted"] for v in (A, S, D)] == [
    2 * once[v]["baseline_emitted"] for v in (A, S, D)
  ]


def test_census_rows_equal_the_static_ban_per_candidate(problem, result):
  # Independent path: the tuple form (one program per id), graded here.
  model, ids, mask, answers = problem
  correct_XxB = np.array(result["correct_XxB"])
  for x, banned in [(0, ()), (1, (A,)), (2, (S,)), (4, (D,))]:
    out = sampling.generate(
      model, ids, mask, key=jax.random.key(0), max_new_tokens=T, greedy=True, eos_ids=(EOS,),
      banned_ids=banned,
    )  # fmt: skip
    tokens, resp = np.asarray(out.tokens), np.asarray(out.response_mask) > 0
    ref = [grade(Tokenizer().decode(t[r]), a) for t, r, a in zip(tokens, resp, answers)]
    np.testing.assert_array_equal(correct_XxB[x], ref, err_msg=str(banned))


def test_statistics_match_independent_computations(result):
  entries = result["candidates"]
  p_C = np.array([e["p_value"] for e in entries])
  # Bonferroni and BH by hand: sort, scale by m / rank, running minimum from the top.
  m = len(p_C)
  np.testing.assert_allclose([e["p_bonferroni"] for e in entries], np.minimum(1, p_C * m))
  order = np.argsort(p_C)
  scaled = p_C[order] * m / np.arange(1, m + 1)
  bh = np.empty(m)
  bh[order] = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1)
  np.testing.assert_allclose([e["p_bh"] for e in entries], bh)
  assert result["significant_bonferroni"] == int(np.sum(np.minimum(1, p_C * m) <= 0.05))
  # Sign test: A and D negative, S positive, 17 ties: 2 * P(X <= 1), X ~ Bin(3, 1/2) = 1.
  assert result["sign_test"] == dict(negative=2, positive=1, zero=17, p_value=1.0)
  # S: 12 of 40 problems discordant, all in its favour. The bootstrap p (the census default)
  # counts resamples with delta* <= 0, i.e. none of the 12 drawn: chance (28/40)**40 ~ 6e-7,
  # so none of 10,000 resamples does and p = 2 (1 + 0) / (10,000 + 1).
  p_s = next(e["p_value"] for e in entries if e["id"] == S)
  assert result["settings"]["test"] == "bootstrap"
  assert p_s == pytest.approx(2 / 10_001)


@pytest.mark.parametrize(
  "delta, p, expected",
  [
    (-0.01, 0.049, "strong_pillar"),  # the boundary Delta = -eps counts
    (-0.009, 0.001, "neutral"),  # significant but smaller than eps
    (-0.5, 0.05, "neutral"),  # large but p is not < alpha
    (0.02, 0.01, "strong_stumbling_block"),
    (0.0, 1.0, "neutral"),
  ],
)
def test_epsilon_rule(delta, p, expected):
  assert knockout.knockout_class(delta, p, eps=0.01, alpha=0.05) == expected


def test_section_numbers_fill_the_text_and_the_figure_shows_the_deltas(result, tmp_path):
  sec = knockout_report.section(result, str(tmp_path))
  assert sec.key == "knockout"
  text = sec.text.format(**sec.numbers)  # every placeholder has a number
  assert f"| {A} | t{A} | 27 | -67.5% |" in text  # Delta 1/40 - 28/40, in percentage points
  assert sec.numbers[f"id{A}_delta"] == round(1 / 40 - 28 / 40, 4)  # the JSON keeps fractions
  assert sec.numbers[f"id{A}_class"] == "strong_pillar"
  png = (tmp_path / sec.figures[0].filename).read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and pystruct.unpack(">II", png[16:24])[0] > 300
  # The bars are the Deltas in candidate order, coloured by class.
  ax = knockout_report.delta_figure(result).axes[0]
  bars = [p for p in ax.patches if p.get_width() > 0]
  np.testing.assert_allclose(
    [b.get_height() for b in bars], [e["delta"] for e in result["candidates"]]
  )
  colours = {knockout_report.COLOURS[e["class"]] for e in result["candidates"]}
  assert len(colours) == 3


def test_census_argument_errors(problem):
  model, ids, mask, answers = problem
  kw = dict(grade=grade, tokenizer=Tokenizer(), max_new_tokens=T, eos_ids=(EOS,))
  with pytest.raises(ValueError, match="distinct"):
    knockout.census(model, ids, mask, answers, [A, A], **kw)
  with pytest.raises(ValueError, match="one per prompt"):
    knockout.census(model, ids, mask, answers[:3], [A], **kw)


def test_the_worked_case_is_a_pillar_by_bootstrap_and_neutral_by_permutation():
  """200 problems, the baseline right on all, the ban wrong on 5 (Delta = -0.025). By hand:
  the permutation test swaps the 5 discordant pairs' labels, exactly 2 of the 32 patterns are
  as extreme, p = 0.0625 > 0.05 (Neutral); a bootstrap resample keeps delta* <= -0.005 < 0
  unless it draws none of the 5, chance (195/200)**200 ~ 0.0063, so p ~ 0.0126 < 0.05 (Strong
  Pillar, as Delta <= -eps)."""
  acc_XxB = np.ones((2, 200))
  acc_XxB[1, :5] = 0.0
  kw = dict(eps=0.01, alpha=0.05, resamples=10_000, seed=0)
  boot = knockout._classify(acc_XxB, [7], test="bootstrap", **kw)["candidates"][0]
  perm = knockout._classify(acc_XxB, [7], test="permutation", **kw)["candidates"][0]
  assert boot["delta"] == perm["delta"] == pytest.approx(-0.025)
  assert boot["p_value"] == pytest.approx(2 * (195 / 200) ** 200, abs=0.004)
  assert perm["p_value"] == pytest.approx(2 / 32, abs=0.008) and perm["p_value"] > 0.05
  assert (boot["class"], perm["class"]) == ("strong_pillar", "neutral")
  # The corrections adjust the same p the class read (one test here: unchanged).
  assert boot["p_bonferroni"] == boot["p_bh"] == boot["p_value"]


def test_an_unknown_test_fails_before_any_decode(problem, monkeypatch):
  model, ids, mask, answers = problem
  monkeypatch.setattr(sampling, "generate", lambda *a, **k: pytest.fail("decoded"))
  kw = dict(grade=grade, tokenizer=Tokenizer(), max_new_tokens=T, eos_ids=(EOS,))
  with pytest.raises(ValueError, match="test='wilcoxon'"):
    knockout.census(model, ids, mask, answers, [A], test="wilcoxon", **kw)


# Per-problem grading with several samples: a stand-in sampler (the documented contract of
# sampling.generate: N = B * n rows, prompt-major, row i*n + j is sample j of prompt i) whose
# response names its prompt's problem tag, its sample index and the row's banned id, and a
# grader that reads them back and records which answer each response was graded against.
TAG0, SAMPLE0, NS = 40, 50, 3  # problem b's tag is TAG0 + b; sample j is written SAMPLE0 + j
# Correct samples per problem (of NS) per condition, chosen by hand: baseline, then bans.
RIGHT = {-1: [3, 2, 1, 0, 3, 1, 2], 5: [0, 2, 1, 0, 3, 1, 2], 6: [3, 3, 3, 3, 0, 0, 0]}


@dataclasses.dataclass(frozen=True)
class _Out:
  tokens: np.ndarray
  response_mask: np.ndarray


def _tagged_generate(model, ids_BxP, mask_BxP, *, banned_ids_BxK, num_samples, **kw):
  n, (rows, p) = num_samples, ids_BxP.shape
  resp_Nx3 = np.stack(
    [
      np.repeat(ids_BxP[:, -1], n),  # the problem tag, repeated prompt-major
      np.tile(SAMPLE0 + np.arange(n), rows),  # sample j of each prompt
      np.repeat(np.maximum(np.asarray(banned_ids_BxK)[:, 0], 0), n),  # the ban (0: none)
    ],
    axis=1,
  )
  tokens = np.concatenate([np.repeat(ids_BxP, n, axis=0), resp_Nx3], axis=1)
  mask = np.concatenate([np.zeros((rows * n, p), np.int32), np.ones((rows * n, 3), np.int32)], 1)
  return _Out(tokens.astype(np.int32), mask)


def test_each_sample_is_graded_against_its_own_problem(monkeypatch):
  B = len(RIGHT[-1])
  ids = np.full((B, 3), 2, np.int32)
  ids[:, -1] = TAG0 + np.arange(B)
  answers = [f"answer-{b}" for b in range(B)]  # a different answer per problem
  graded = []

  def record(text, answer):
    tag, sample, ban = (int(t) for t in text.split())
    b, j = tag - TAG0, sample - SAMPLE0
    graded.append((b, answer))
    return j < RIGHT[ban if ban else -1][b]  # the first RIGHT[.][b] samples are right

  monkeypatch.setattr(sampling, "generate", _tagged_generate)
  model = types.SimpleNamespace(cfg=_Cfg(64))
  # 4 prompts (12 rows) a batch: batches cut across problems and conditions (21 rows in all).
  out = knockout.census(
    model, ids, np.ones_like(ids), answers, [5, 6], grade=record, tokenizer=Tokenizer(),
    max_new_tokens=3, eos_ids=(EOS,), num_samples=NS, batch_rows=4, progress=False,
  )  # fmt: skip
  assert all(answer == f"answer-{b}" for b, answer in graded)  # each against its own answer
  assert len(graded) == 3 * B * NS  # every sample of every condition, and no padding row
  expected_XxB = np.array([RIGHT[-1], RIGHT[5], RIGHT[6]]) / NS  # problem by problem
  np.testing.assert_allclose(out["correct_XxB"], expected_XxB)
  assert out["baseline_accuracy"] == pytest.approx(12 / 21)
  by_id = _by_id(out)
  assert by_id[5]["accuracy"] == pytest.approx(9 / 21)
  assert by_id[6]["accuracy"] == pytest.approx(12 / 21)  # the baseline's total, elsewhere
  assert (out["num_rows"], out["num_padding_rows"]) == (21, 3)
