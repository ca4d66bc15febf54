"""Sample packing (data.pack): the first-fit packer, packed rows, the loss mask over them, the
packing pipeline (layout, resumable state) and the config rules. Every expected row below is
worked out by hand from the word-level vocabulary."""

import json

import numpy as np
import pytest

from configs import tiny
from rockjax import data, errors, objective
from rockjax.batch import TokenBatch
from rockjax.config import check as config_check
from rockjax.data import packing
from tests.fixtures import word_tokenizer

VOCAB = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "a": 4, "b": 5, "c": 6, "d": 7}
VOCAB.update({"e": 8, "f": 9, "g": 10})


@pytest.fixture(scope="module")
def tok():
  return word_tokenizer(VOCAB)


# ----------------------------------------------------------------------------- the packer
def test_first_fit_by_hand():
  # Capacity 10: 6 opens row 0 (room 4); 5 opens row 1 (room 5); 4 fills row 0; 3 goes to
  # row 1 (room 2); 2 fills row 1.
  assert packing.first_fit([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
  # One open row: 5 closes row 0 for good, so 4 joins row 1 (room 1) instead.
  assert packing.first_fit([6, 5, 4], 10, open_rows=1) == [[0], [1, 2]]
  assert packing.first_fit([6, 5, 4], 10) == [[0, 2], [1]]
  assert packing.first_fit([10, 1, 10], 10) == [[0], [1], [2]]
  with pytest.raises(ValueError, match="sequence 1 has 11 tokens"):
    packing.first_fit([3, 11], 10)


def test_plan_covers_every_record_once_within_capacity():
  lengths = np.random.default_rng(0).integers(1, 40, 300)
  rows = packing.plan(lengths, 64, seed=5)
  members = sorted(i for row in rows for i in row)
  assert members == list(range(300))
  assert max(sum(lengths[i] for i in row) for row in rows) <= 64
  assert rows == packing.plan(lengths, 64, seed=5)  # deterministic
  assert rows != packing.plan(lengths, 64, seed=6)  # the seed shuffles the records
  assert packing.plan([3, 4, 5], 8, seed=0, shuffle=False) == [[0, 1], [2]]
  # Far fewer rows than records: the packer fills rows (~20 tokens a record, 64 a row).
  assert len(rows) < 300 * 24 / 64


def test_sequence_cuts_as_the_unpacked_row_does():
  # max_prompt_len 3 keeps the prompt's last 3 ids; max_len 7 leaves 4 for the completion,
  # which loses its eos (id 2).
  s = packing.sequence([1, 4, 5, 6, 7], [6, 7, 8, 9, 2], max_prompt_len=3, max_len=7)
  assert s.ids.tolist() == [5, 6, 7, 6, 7, 8, 9] and s.prompt_len == 3


def test_packed_row_and_its_loss_mask_by_hand():
  """Sequence A: prompt [11, 12], completion [13, 14, 2]; sequence B: no prompt, completion
  [22, 2]. B's first token is a response token: only the segment rule keeps it from being
  scored as the prediction made at A's last token."""
  a = packing.PackedSequence(np.array([11, 12, 13, 14, 2], np.int32), 2)
  b = packing.PackedSequence(np.array([22, 2], np.int32), 0)
  row = packing.packed_row([a, b], 10, pad=0)
  assert row["tokens_L"].tolist() == [11, 12, 13, 14, 2, 22, 2, 0, 0, 0]
  assert row["attention_mask_L"].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
  assert row["response_mask_L"].tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
  assert row["segment_ids_L"].tolist() == [1, 1, 1, 1, 1, 2, 2, 0, 0, 0]
  assert row["positions_L"].tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 0, 0]
  batch = {k.replace("_L", "_BxL"): v[None] for k, v in row.items()}
  shifted = objective.shift(batch)
  # Column t scores token t + 1: 13, 14 and 2 of A (t = 1, 2, 3), then B's 2 (t = 5); t = 4
  # (A's eos -> B's 22) crosses the boundary.
  assert np.asarray(shifted.loss_mask_BxL)[0].tolist() == [0, 1, 1, 1, 0, 1, 0, 0, 0, 0]
  assert np.asarray(shifted.targets_BxL)[0].tolist() == [12, 13, 14, 2, 22, 2, 0, 0, 0, 0]
  # Without the segment ids the same row would score the crossing.
  plain = objective.shift({k: batch[f"{k}_BxL"] for k in packing_free})
  assert int(np.asarray(plain.loss_mask_BxL)[0, 4]) == 1
  with pytest.raises(ValueError, match="do not fit a row of 6"):
    packing.packed_row([a, b], 6, pad=0)


def test_token_batch_carries_and_pads_packed_fields():
  row = packing.packed_row([packing.PackedSequence(np.array([5, 6, 2], np.int32), 1)], 4, 0)
  batch = TokenBatch.of({k.replace("_L", "_BxL"): v[None] for k, v in row.items()})
  assert batch.packed and sorted(batch.arrays()) == sorted(
    ["tokens_BxL", "attention_mask_BxL", "response_mask_BxL", "segment_ids_BxL", "positions_BxL"]
  )
  padded = batch.pad(6)
  assert np.asarray(padded.segment_ids_BxL).tolist() == [[1, 1, 1, 0, 0, 0]]
  assert np.asarray(padded.positions_BxL).tolist() == [[0, 1, 2, 0, 0, 0]]
  unpacked = TokenBatch.of({k: row[f"{k}_L"][None] for k in packing_free})
  assert not unpacked.packed and unpacked.segment_ids_BxL is None
  only_segments = {k.replace("_L", "_BxL"): v[None] for k, v in row.items() if "pos" not in k}
  with pytest.raises(KeyError, match="needs both"):
    TokenBatch.of(only_segments)


packing_free = ("tokens", "attention_mask", "response_mask")


# ----------------------------------------------------------------------------- the pipeline
RECORDS = [  # prompt ids (bos + words) + completion ids (words + eos)
  dict(prompt="a b", answer="", completion="c d"),  # [1 4 5] + [6 7 2]: 6 tokens
  dict(prompt="a", answer="", completion="c d e f g"),  # [1 4] + [6 7 8 9 10 2]: 8 tokens
  dict(prompt="b", answer="", completion="c"),  # [1 5] + [6 2]: 4 tokens
  dict(prompt="a", answer="", completion="d e"),  # [1 4] + [7 8 2]: 5 tokens
]


def _pipe(tok, **kw):
  kw = (
    dict(
      batch_size=3,
      max_prompt_len=4,
      max_len=10,
      shuffle=False,
      num_epochs=1,
      process_index=0,
      process_count=1,
      pack=True,
    )
    | kw
  )
  return data.CompletionPipeline(RECORDS, tok, **kw)


def test_packing_pipeline_rows_by_hand(tok):
  # Unshuffled first fit into 10 tokens: 6 opens row 0, 8 opens row 1, 4 fills row 0,
  # 5 opens row 2.
  pipe = _pipe(tok)
  assert pipe.rows == [[0, 2], [1], [3]] and pipe.num_batches == 1
  batch = next(pipe)
  np.testing.assert_array_equal(
    batch["tokens_BxL"],
    [
      [1, 4, 5, 6, 7, 2, 1, 5, 6, 2],
      [1, 4, 6, 7, 8, 9, 10, 2, 0, 0],
      [1, 4, 7, 8, 2, 0, 0, 0, 0, 0],
    ],
  )
  np.testing.assert_array_equal(
    batch["segment_ids_BxL"],
    [
      [1, 1, 1, 1, 1, 1, 2, 2, 2, 2],
      [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
      [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    ],
  )
  np.testing.assert_array_equal(
    batch["positions_BxL"],
    [
      [0, 1, 2, 3, 4, 5, 0, 1, 2, 3],
      [0, 1, 2, 3, 4, 5, 6, 7, 0, 0],
      [0, 1, 2, 3, 4, 0, 0, 0, 0, 0],
    ],
  )
  np.testing.assert_array_equal(
    batch["response_mask_BxL"],
    [
      [0, 0, 0, 1, 1, 1, 0, 0, 1, 1],
      [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
      [0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
    ],
  )
  np.testing.assert_array_equal(batch["attention_mask_BxL"], batch["segment_ids_BxL"] > 0)
  np.testing.assert_array_equal(batch["index_B"], [0, 1, 2])
  loss_mask = np.asarray(objective.shift(TokenBatch.of(batch)).loss_mask_BxL)
  np.testing.assert_array_equal(
    loss_mask,
    [
      [0, 0, 1, 1, 1, 0, 0, 1, 1, 0],
      [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
      [0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    ],
  )
  # The same tokens are scored as in the unpacked rows: every completion token, 3 + 6 + 2 + 3.
  unpacked = next(_pipe(tok, batch_size=4, pack=False))
  assert loss_mask.sum() == 14 == np.asarray(objective.shift(unpacked).loss_mask_BxL).sum()


def test_packing_pipeline_resumes_and_refuses_other_settings(tok):
  pipe = _pipe(tok, batch_size=1, shuffle=True, num_epochs=None, seed=3)
  for _ in range(4):  # past the first epoch of 3 rows
    next(pipe)
  state = json.loads(json.dumps(pipe.get_state()))
  expected = next(pipe)
  fresh = _pipe(tok, batch_size=1, shuffle=True, num_epochs=None, seed=3)
  fresh.set_state(state)
  got = next(fresh)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  unpacked = _pipe(tok, batch_size=1, shuffle=True, num_epochs=None, seed=3, pack=False)
  with pytest.raises(errors.CheckpointMismatch, match="other settings"):
    unpacked.set_state(state)


# ----------------------------------------------------------------------------- config rules
def _rejects(field, **overrides):
  c = tiny.get_config()
  c.update_from_flattened_dict(overrides)
  with pytest.raises(errors.ConfigError) as err:
    config_check.validate(c, device_count=8)
  message = str(err.value)
  assert message.startswith(f"{field}=") and "\n" not in message, message
  return message


def test_config_rules():
  assert "opd.mode='off_policy'" in _rejects("data.pack", **{"data.pack": True})
  message = _rejects(
    "data.pack",
    **{"data.pack": True, "opd.mode": "off_policy", "opd.normalizer": "sequence"},
  )
  assert "'tokens' or 'weights'" in message
