"""The Decoder on packed rows: each sequence of a row gets the logits it gets alone.

References: the same model on each sequence alone (no padding), and the transformers PyTorch
implementation in float64 on each sequence alone (parity). Positions default to each token's
index within its segment.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rockjax.models as rm
from rockjax.models import decoder
from tests.fixtures import SAMPLER_CFG, forward, make_hf_model, random_model, save_hf_checkpoint

LENGTHS = [[5, 7, 3], [9, 2]]  # sequences of each row, back to back, then padding
L = 18


def packed_row_ids(vocab: int, seed: int = 0):
  """(ids, segment ids, positions) [2, L] and each row's sequences as id lists."""
  rng = np.random.default_rng(seed)
  ids, seg, pos = (np.zeros((len(LENGTHS), L), np.int32) for _ in range(3))
  pieces = []
  for b, lengths in enumerate(LENGTHS):
    start, row = 0, []
    for k, n in enumerate(lengths):
      row.append(rng.integers(1, vocab, n).astype(np.int32))
      ids[b, start : start + n], seg[b, start : start + n] = row[-1], k + 1
      pos[b, start : start + n] = np.arange(n)
      start += n
    pieces.append(row)
  return ids, seg, pos, pieces


def test_segment_positions_restart_per_segment():
  _, seg, pos, _ = packed_row_ids(10)
  got = np.asarray(decoder._segment_positions(jnp.asarray(seg)))
  real = seg > 0
  np.testing.assert_array_equal(got[real], pos[real])


@pytest.mark.parametrize(
  "attention,scan", [("einsum", False), ("blocked", False), ("blocked", True)]
)
def test_packed_row_logits_equal_each_sequence_alone(attention, scan):
  cfg = SAMPLER_CFG.replace(attention=attention, attention_block=4, scan_layers=scan)
  model = random_model(cfg)
  ids, seg, pos, pieces = packed_row_ids(cfg.vocab_size)
  run = nnx.jit(
    lambda m, i, s, p: m(i, (s > 0).astype(jnp.int32), segment_ids_BxL=s, positions_BxL=p)
  )
  got = np.asarray(run(model, ids, seg, pos))
  derived = np.asarray(nnx.jit(lambda m, i, s: m(i, None, segment_ids_BxL=s))(model, ids, seg))
  real = seg > 0
  np.testing.assert_allclose(derived[real], got[real], atol=1e-6)  # default positions
  # Alone: one piece a row, right-padded (causal attention never reads the padding).
  flat = [piece for row in pieces for piece in row]
  alone_ids, alone_mask = np.zeros((len(flat), L), np.int32), np.zeros((len(flat), L), np.int32)
  for i, piece in enumerate(flat):
    alone_ids[i, : len(piece)], alone_mask[i, : len(piece)] = piece, 1
  alone = np.asarray(forward(model, alone_ids, alone_mask))
  starts = [s for row in LENGTHS for s in np.cumsum([0] + row[:-1])]
  rows = [b for b, row in enumerate(LENGTHS) for _ in row]
  for i, piece in enumerate(flat):
    span = slice(starts[i], starts[i] + len(piece))
    np.testing.assert_allclose(got[rows[i], span], alone[i, : len(piece)], atol=2e-5)
  # Without its segment ids the row is one sequence: later pieces see earlier ones.
  plain = np.asarray(forward(model, ids, real.astype(np.int32)))
  assert np.abs(plain[0, 5:12] - got[0, 5:12]).max() > 1e-2


@pytest.mark.parity
@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_packed_row_logits_match_transformers_float64(family, tmp_path):
  """Each sequence of a packed row against the PyTorch model (float64; the MoE in float32) run
  on it alone."""
  torch = pytest.importorskip("torch")
  hf_model = make_hf_model(family)
  path = save_hf_checkpoint(hf_model, tmp_path / family)
  model = rm.from_pretrained(path)
  if family == "qwen3":  # torch's grouped expert matmul (MoE) has no float64
    hf_model = hf_model.double()
  ids, seg, pos, pieces = packed_row_ids(model.cfg.vocab_size, seed=1)
  got = nnx.jit(
    lambda m, i, s, p: m(i, (s > 0).astype(jnp.int32), segment_ids_BxL=s, positions_BxL=p)
  )(model, ids, seg, pos)
  got = np.asarray(got)
  for b, row in enumerate(pieces):
    start = 0
    for piece in row:
      with torch.no_grad():
        want = hf_model(input_ids=torch.as_tensor(piece[None], dtype=torch.long)).logits[0]
      want = want.float().numpy()
      np.testing.assert_allclose(got[b, start : start + len(piece)], want, atol=1e-4)
      start += len(piece)
