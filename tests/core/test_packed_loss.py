"""Packed rows (data.pack) train on exactly what unpacked rows train on: the same loss, the same
gradient, the same metrics and rock statistics.

The same four (prompt, completion) sequences go (a) one per row in the off-policy layout
(prompt left-padded to P, completion right-padded after it) and (b) two per packed row. Runs
with x64 on and float64 parameters and matmuls; the model computes norms, RoPE, attention
softmax and the loss in float32 by design, so the two agree to float32 rounding (~1e-7), not
1e-10; a packing mistake (a cross-segment key, a wrong position, one token more or less in the
mean) moves the loss by more than 1e-3, which the test also shows. Independent reference: the
off-policy loss in float64 numpy from each sequence's logits computed alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rockjax import objective
from rockjax.data import packing
from tests import fixtures as fx

SPANS = [(3, 4), (2, 6), (4, 2), (1, 5)]  # (prompt, completion) tokens of each sequence
P, C, L_PACKED = 4, 6, 16
ROWS = [[0, 1], [2, 3]]  # 7 + 8 and 6 + 6 tokens in rows of 16
KD_RATIO = 0.5


@pytest.fixture
def x64():
  before = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", before)


def sequences() -> list[packing.PackedSequence]:
  rng = np.random.default_rng(0)
  return [
    packing.PackedSequence(rng.integers(1, fx.V, p + c).astype(np.int32), p) for p, c in SPANS
  ]


def unpacked_batch(seqs) -> dict[str, np.ndarray]:
  """One sequence a row: prompt right-aligned in [0, P), completion from column P."""
  shape = (len(seqs), P + C)
  tokens, attn, resp = (np.zeros(shape, np.int32) for _ in range(3))
  for i, s in enumerate(seqs):
    p, c = s.prompt_len, len(s.ids) - s.prompt_len
    tokens[i, P - p : P + c] = s.ids
    attn[i, P - p : P + c] = 1
    resp[i, P : P + c] = 1
  return dict(tokens=tokens, attention_mask=attn, response_mask=resp)


def packed_batch(seqs) -> dict[str, np.ndarray]:
  rows = [packing.packed_row([seqs[i] for i in row], L_PACKED, 0) for row in ROWS]
  return {k.removesuffix("_L"): np.stack([r[k] for r in rows]) for k in rows[0]}


def models(attention: str, dtype=jnp.float32):
  kw = dict(dtype=dtype, param_dtype=dtype, attention=attention, attention_block=4)
  return fx.random_model(fx.STUDENT.replace(**kw), 0), fx.random_model(fx.TEACHER.replace(**kw), 1)


def loss_and_grads(student, teacher, settings, batch):
  graphdef, params = nnx.split(student)
  loss_fn = objective.make_loss_fn(graphdef, settings)

  @jax.jit
  def run(params, batch):
    sh = objective.shift(batch)
    t_out = objective.teacher_outputs(
      teacher,
      sh.inputs_BxL,
      sh.input_mask_BxL,
      settings,
      segment_ids_BxL=sh.segment_ids_BxL,
      positions_BxL=sh.positions_BxL,
    )
    rock_mask_V = jnp.zeros(fx.V, bool)
    return jax.value_and_grad(loss_fn, has_aux=True)(params, t_out, sh, rock_mask_V)

  (loss, aux), grads = run(params, batch)
  return float(loss), float(aux.count), grads


@pytest.mark.parametrize("attention,chunked", [("einsum", True), ("blocked", False)])
def test_packed_loss_and_gradients_equal_unpacked(x64, attention, chunked):
  student, teacher = models(attention, jnp.float64)
  s = fx.loss_settings(mode="off_policy", kd_ratio=KD_RATIO, chunked=chunked, chunk_size=16)
  seqs = sequences()
  loss_u, count_u, grads_u = loss_and_grads(student, teacher, s, unpacked_batch(seqs))
  loss_p, count_p, grads_p = loss_and_grads(student, teacher, s, packed_batch(seqs))
  assert count_u == count_p == sum(c for _, c in SPANS)  # every completion token, once
  np.testing.assert_allclose(loss_p, loss_u, rtol=1e-6)
  flat_u, flat_p = nnx.to_flat_state(grads_u), nnx.to_flat_state(grads_p)
  for (path, g_u), (_, g_p) in zip(flat_u, flat_p):
    g_u, g_p = np.asarray(g_u.get_value()), np.asarray(g_p.get_value())
    assert np.abs(g_u).max() > 0, path
    np.testing.assert_allclose(g_p, g_u, rtol=1e-5, atol=1e-6 * np.abs(g_u).max(), err_msg=path)
  # The same packed tokens without their segment ids (one sequence a row as far as attention,
  # positions and the label shift know): far off.
  plain = {k: v for k, v in packed_batch(seqs).items() if k not in ("segment_ids", "positions")}
  assert abs(loss_and_grads(student, teacher, s, plain)[0] - loss_u) > 1e-3


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_packed_loss_matches_float64_reference_per_sequence():
  """kd_ratio x KL(teacher || student) + (1 - kd_ratio) x CE, the token mean over every
  completion token, from each sequence's logits computed alone (no padding, no packing)."""
  student, teacher = models("einsum")
  s = fx.loss_settings(mode="off_policy", kd_ratio=KD_RATIO, chunked=True, chunk_size=16)
  seqs = sequences()
  # Each sequence alone: one a row, right-padded (causal attention never reads the padding).
  n = max(len(q.ids) for q in seqs)
  ids, mask = np.zeros((len(seqs), n), np.int32), np.zeros((len(seqs), n), np.int32)
  for i, q in enumerate(seqs):
    ids[i, : len(q.ids)], mask[i, : len(q.ids)] = q.ids, 1
  ls_all, lt_all = (_np_log_softmax(fx.forward(m, ids, mask)) for m in (student, teacher))
  terms = []
  for seq, ls, lt in zip(seqs, ls_all, lt_all):
    for j in range(seq.prompt_len, len(seq.ids)):  # position j - 1 predicts token j
      kl = np.sum(np.exp(lt[j - 1]) * (lt[j - 1] - ls[j - 1]))
      terms.append(KD_RATIO * kl - (1 - KD_RATIO) * ls[j - 1, seq.ids[j]])
  loss, count, _ = loss_and_grads(student, teacher, s, packed_batch(sequences()))
  assert count == len(terms)
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)


def test_packed_train_step_equals_unpacked():
  """The jitted step with 2 micro-batches (segment ids and positions split with the rows):
  same loss, KL, token count, parameter update and rock statistics (the per-id KL counts the
  same positions)."""
  mesh = fx.one_device_mesh()
  seqs = sequences()
  out = []
  for batch in (unpacked_batch(seqs), packed_batch(seqs)):
    fn, state, t_params = fx.build(
      mesh, rock_mode="dynamic", mode="off_policy", kd_ratio=KD_RATIO, micro_batches=2
    )
    p0 = jax.tree.map(np.asarray, state.params)
    with jax.set_mesh(mesh):
      out.append(fn(state, t_params, {k: jnp.asarray(v) for k, v in batch.items()}))
  (s_u, m_u), (s_p, m_p) = out
  for key in ("opd/loss", "opd/kl", "opd/response_tokens", "rock/share_kl"):
    np.testing.assert_allclose(np.asarray(m_p[key]), np.asarray(m_u[key]), rtol=2e-5, err_msg=key)
  assert float(m_p["opd/response_tokens"][0]) == sum(c for _, c in SPANS)
  np.testing.assert_array_equal(s_p.rock.count_V, s_u.rock.count_V)
  np.testing.assert_allclose(s_p.rock.kl_sum_V, s_u.rock.kl_sum_V, rtol=1e-5, atol=1e-6)
  for a, u, p in zip(*(jax.tree.leaves(x) for x in (p0, s_u.params, s_p.params))):
    np.testing.assert_allclose(a - np.asarray(p), a - np.asarray(u), rtol=1e-4, atol=1e-7)
