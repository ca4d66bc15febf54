"""The vocabulary-sharded fused divergence and the sharded embedding lookup on 8 fake devices.

References: the unsharded fused divergence (itself checked against float64 numpy and autodiff
in test_fused.py), `jnp.take` and its autodiff, and the tokens-mode train step.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockjax import sharding as shd
from rockjax.losses import fused_divergence
from rockjax.models.embed import embed_lookup
from tests.fixtures import STUDENT, TEACHER, build, make_batch, make_hidden

T = 1.3
# Every registered kind, with non-default mixture weights.
KINDS = [
  ("reverse_kl", {}),
  ("forward_kl", {}),
  ("jsd", {"beta": 0.3}),
  ("skew_reverse_kl", {"alpha": 0.7}),
]


def _fused(mode, kind, kw, block=2):
  """fused_divergence with this layout as a function of the five arrays."""
  return lambda *a: fused_divergence(
    *a, kind=kind, temperature=T, block_size=block, chunk_size=5, sharding=mode, **kw
  )


def _outputs(f, args):
  """(weighted_sum, per_token, grad_norm, grads w.r.t. both hiddens and the student head)."""
  grads = jax.grad(lambda *a: f(*a).weighted_sum, (0, 1, 2))(*args)
  out = f(*args)
  return [out.weighted_sum, out.per_token, out.grad_norm, *grads]


def _close(got, want, tol):
  for g, w in zip(got, want):
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(np.abs(w).max(), 1e-30))


# Every kind in both head dtypes with V over all 8 devices, and the other layouts for one kind.
CASES = [(kind, kw, dtype, 8, 64) for kind, kw in KINDS for dtype in (np.float32, jnp.bfloat16)]
CASES += [
  ("jsd", {"beta": 0.3}, np.float32, 6, 64),  # 30 tokens split over 'data' only: dh psummed
  ("jsd", {"beta": 0.3}, np.float32, 8, 52),  # V over 4 devices: dW psummed over 'tensor'
  ("jsd", {"beta": 0.3}, np.float32, 8, 53),  # no axis divides V: whole heads, as in 'tokens'
]


@pytest.mark.parametrize("kind,kw,dtype,batch,vocab", CASES)
def test_vocab_sharded_equals_unsharded(rng, devices8, kind, kw, dtype, batch, vocab):
  h_s, w_s, h_t, w_t = (x.astype(dtype) for x in make_hidden(rng, b=batch, l=5, v=vocab))
  weights = rng.uniform(0.2, 2.0, size=(batch, 5)).astype(np.float32)
  weights[0, -2:] = 0.0
  args = (h_s, w_s, h_t, w_t, weights)
  want = jax.jit(lambda *a: _outputs(_fused("tokens", kind, kw), a))(*args)
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with jax.set_mesh(mesh):
    # The heads as the model lays them out (embed on fsdp, vocab on tensor).
    put = lambda x, axes: jax.device_put(x, shd.logical_sharding(axes, x.shape, mesh))
    args = (h_s, put(w_s, ("embed", "vocab")), h_t, put(w_t, ("embed", "vocab")), weights)
    got = jax.jit(lambda *a: _outputs(_fused("vocab", kind, kw), a))(*args)
  # bf16 hidden gradients are rounded once, after float32 sums taken in another order.
  _close(got, want, 1e-5 if dtype == np.float32 else 1e-2)
  assert not np.any(np.asarray(got[5], np.float32))  # the teacher's hidden gets no gradient


def test_unknown_sharding_is_a_one_line_error(rng):
  h_s, w_s, h_t, w_t = make_hidden(rng)
  with pytest.raises(ValueError, match="sharding must be one of .*'rows'"):
    fused_divergence(h_s, w_s, h_t, w_t, np.ones(h_s.shape[:2], np.float32), sharding="rows")


@pytest.mark.parametrize(
  "mesh_shape,batch,length,vocab",
  [
    ((2, 2, 2), 4, 6, 64),  # vocab over tensor, embed over fsdp, ids over data x fsdp
    ((1, 8, 1), 8, 4, 64),  # embed over fsdp, ids over fsdp: all_to_all only
    ((1, 8, 1), 4, 4, 64),  # ids alike on all devices: columns gathered, nothing scattered
    ((1, 2, 4), 2, 3, 60),  # vocab over tensor with ids alike there: partial sums psummed
  ],
)
def test_embed_lookup_equals_take(rng, devices8, mesh_shape, batch, length, vocab):
  table = rng.normal(size=(vocab, 16)).astype(np.float32)
  ids = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
  ct = rng.normal(size=(batch, length, 16)).astype(np.float32)
  want = np.take(table, ids, axis=0)
  want_grad = np.zeros_like(table)
  np.add.at(want_grad, ids.reshape(-1), ct.reshape(-1, 16))  # d sum(ct * take) / d table
  mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, mesh_shape)))
  with jax.set_mesh(mesh):
    table_s = jax.device_put(table, shd.logical_sharding(("vocab", "embed"), table.shape, mesh))
    got = jax.jit(embed_lookup)(table_s, ids)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(embed_lookup(t, ids) * ct)))(table_s)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- the compiled train step
_GATHER = re.compile(r"=\s*(.*?)\s+all-gather(?:-start)?\(")
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def all_gather_shapes(hlo: str) -> list[tuple[int, ...]]:
  """The result shapes of every all-gather in compiled HLO text."""
  shapes = []
  for line in hlo.splitlines():
    m = _GATHER.search(line)
    if m:
      shapes += [tuple(int(d) for d in s.split(",") if d) for s in _SHAPE.findall(m.group(1))]
  return shapes


# MLP widths unlike V, so that an MLP weight's gather never looks like a head's.
_STUDENT = STUDENT.replace(tie_word_embeddings=True, intermediate_size=56)
_TEACHER = TEACHER.replace(intermediate_size=56)


def _compile_step(mesh, mode):
  """(compiled HLO text, step fn, state, teacher params) of the tied-head step in `mode`."""
  fn, state, t_params = build(
    mesh,
    rock_mode="off",
    student_cfg=_STUDENT,
    teacher_cfg=_TEACHER,
    block_size=2,
    loss_sharding=mode,
  )
  with jax.set_mesh(mesh):
    hlo = fn.lower(state, t_params, make_batch()).compile().as_text()
  return hlo, fn, state, t_params


@pytest.mark.slow  # two train-step compiles (~30 s of CPU)
def test_vocab_step_has_no_head_or_activation_gather(devices8, capfd):
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  b, l = make_batch()["tokens"].shape
  v = STUDENT.vocab_size
  forbidden = set()
  for d in (STUDENT.hidden_size, TEACHER.hidden_size):
    forbidden |= {(d, v), (v, d), (b, l, d), (b * l, d)}
  capfd.readouterr()
  hlo, *_ = _compile_step(mesh, "vocab")
  log = capfd.readouterr().err
  shapes = all_gather_shapes(hlo)
  assert shapes, "no all-gather at all: the HLO scan is not reading this HLO"
  assert not forbidden & set(shapes), sorted(forbidden & set(shapes))
  assert "involuntary full rematerialization" not in log.lower()
  # The scan does find the whole-head gathers of the 'tokens' layout.
  tokens_hlo, *_ = _compile_step(mesh, "tokens")
  assert forbidden & set(all_gather_shapes(tokens_hlo))


@pytest.mark.slow  # two train-step compiles
def test_vocab_step_equals_tokens_step(devices8):
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  results = []
  for mode in ("tokens", "vocab"):
    _, fn, state, t_params = _compile_step(mesh, mode)
    with jax.set_mesh(mesh):
      state, m = fn(state, t_params, make_batch())
    results.append((float(m["opd/loss"][0] / m["opd/loss"][1]), jax.device_get(state.params)))
  (loss_t, params_t), (loss_v, params_v) = results
  np.testing.assert_allclose(loss_v, loss_t, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_v), jax.tree.leaves(params_t)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
