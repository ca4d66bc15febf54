"""grain pipelines: exact padding and masks, sharding, epochs, and resumable iterator state."""

import json

import numpy as np
import pytest

from rockjax import data
from rockjax.data import records as records_lib
from tests.fixtures import word_tokenizer

# Word-level test vocabulary: the expected ids below are read off this table by hand.
VOCAB = {
  "<pad>": 0,
  "<bos>": 1,
  "<eos>": 2,
  "<unk>": 3,
  "a": 4,
  "b": 5,
  "c": 6,
  "d": 7,
  "e": 8,
  "f": 9,
  "g": 10,
}


def _tokenizer(chat_template=None):
  return word_tokenizer(VOCAB, chat_template)


@pytest.fixture(scope="module")
def tok():
  return _tokenizer()


def _records(n):
  return [dict(prompt="a b", answer=str(i)) for i in range(n)]


def test_load_records_jsonl(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text(
    '{"q": "a b", "ans": 66, "sol": "c"}\n\n'
    '{"q": [{"role": "user", "content": "a"}], "ans": "x", "sol": "d"}\n'
  )
  records = records_lib.load_records(
    path, prompt_field="q", answer_field="ans", completion_field="sol"
  )
  assert records == [
    dict(prompt="a b", answer="66", completion="c"),
    dict(prompt=[dict(role="user", content="a")], answer="x", completion="d"),
  ]


@pytest.mark.parametrize(
  "content, message",
  [
    ('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n', r"r\.jsonl:2: missing field \'answer\'"),
    ('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", \n', r"r\.jsonl:3: invalid JSON"),
    ('{"prompt": 5, "answer": "1"}\n', r"r\.jsonl:1: field \'prompt\' must be a string"),
    ("[1, 2]\n", r"r\.jsonl:1: expected a JSON object"),
    ("\n", r"r\.jsonl: no records"),
  ],
)
def test_load_records_errors_name_file_line_and_field(tmp_path, content, message):
  path = tmp_path / "r.jsonl"
  path.write_text(content)
  with pytest.raises(ValueError, match=message):
    records_lib.load_records(path)


def test_format_prompt_plain_and_chat(tok):
  assert records_lib.format_prompt(tok, "a b c") == [1, 4, 5, 6]  # BOS + words
  chat = _tokenizer(
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}g{% endif %}"
  )
  assert records_lib.format_prompt(chat, "a b") == [1, 4, 5, 10]  # template BOS, content, 'g'
  assert records_lib.format_prompt(chat, "a b", use_chat_template=False) == [1, 4, 5]
  assert records_lib.format_prompt(chat, [dict(role="user", content="c")]) == [1, 6, 10]


def test_left_pad_truncates_from_the_left():
  ids_P, mask_P = records_lib.left_pad([4, 5, 6], 5, 0)
  np.testing.assert_array_equal(ids_P, [0, 0, 4, 5, 6])
  np.testing.assert_array_equal(mask_P, [0, 0, 1, 1, 1])
  ids_P, mask_P = records_lib.left_pad([1, 4, 5, 6, 7, 8], 4, 0)
  np.testing.assert_array_equal(ids_P, [5, 6, 7, 8])
  np.testing.assert_array_equal(mask_P, [1, 1, 1, 1])
  assert ids_P.dtype == mask_P.dtype == np.int32


def test_prompt_pipeline_exact_batch(tok):
  records = [
    dict(prompt="a", answer="w"),
    dict(prompt="a b", answer="x"),
    dict(prompt="a b c", answer="y"),
    dict(prompt="a b c d e f", answer="z"),
  ]
  pipe = data.PromptPipeline(
    records,
    tok,
    batch_size=4,
    max_prompt_len=5,
    prompt_overflow="truncate",  # the last prompt (7 ids) keeps its last 5
    shuffle=False,
    num_epochs=1,
    process_index=0,
    process_count=1,
  )
  assert pipe.num_batches == 1
  batch = next(pipe)
  assert sorted(batch) == ["index_B", "prompt_ids_BxP", "prompt_mask_BxP"]
  np.testing.assert_array_equal(
    batch["prompt_ids_BxP"], [[0, 0, 0, 1, 4], [0, 0, 1, 4, 5], [0, 1, 4, 5, 6], [5, 6, 7, 8, 9]]
  )
  np.testing.assert_array_equal(
    batch["prompt_mask_BxP"], [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
  )
  np.testing.assert_array_equal(batch["index_B"], [0, 1, 2, 3])
  assert {v.dtype for v in batch.values()} == {np.dtype(np.int32)}
  assert [pipe.answers[i] for i in batch["index_B"]] == ["w", "x", "y", "z"]
  with pytest.raises(StopIteration):
    next(pipe)
  pipe.close()


def test_short_final_batch_is_padded_with_flagged_fillers(tok):
  pipe = data.PromptPipeline(
    _records(5),
    tok,
    batch_size=4,
    max_prompt_len=3,
    shuffle=False,
    num_epochs=1,
    process_index=0,
    process_count=1,
    drop_remainder=False,
  )
  batches = list(pipe)
  np.testing.assert_array_equal(batches[1]["index_B"], [4, -1, -1, -1])
  np.testing.assert_array_equal(batches[1]["prompt_ids_BxP"], [[1, 4, 5]] * 4)
  assert data.FILLER_INDEX == -1


def test_shuffle_covers_each_epoch_once_in_a_new_order(tok):
  pipe = data.PromptPipeline(
    _records(8),
    tok,
    batch_size=4,
    max_prompt_len=3,
    seed=1,
    num_epochs=2,
    process_index=0,
    process_count=1,
  )
  order = np.concatenate([b["index_B"] for b in pipe])
  assert order.shape == (16,)
  assert sorted(order[:8]) == sorted(order[8:]) == list(range(8))
  assert list(order[:8]) != list(range(8)) and list(order[:8]) != list(order[8:])


def test_host_indices_hand_made():
  np.testing.assert_array_equal(
    data.host_indices(11, process_index=1, process_count=2, drop_remainder=False),
    [1, 3, 5, 7, 9, -1],
  )
  np.testing.assert_array_equal(
    data.host_indices(11, process_index=0, process_count=2, drop_remainder=True), [0, 2, 4, 6, 8]
  )
  with pytest.raises(ValueError, match="process_index=2"):
    data.host_indices(4, process_index=2, process_count=2, drop_remainder=True)


@pytest.mark.parametrize("num_records, drop_remainder", [(10, True), (11, False)])
def test_hosts_get_disjoint_shards_covering_the_data(tok, num_records, drop_remainder):
  seen = []
  for host in range(2):
    pipe = data.PromptPipeline(
      _records(num_records),
      tok,
      batch_size=3,
      max_prompt_len=3,
      seed=5,
      num_epochs=1,
      process_index=host,
      process_count=2,
      drop_remainder=drop_remainder,
    )
    # 5 or 6 rows per host, batch 3: whatever the batching drops must be the same per host.
    idx = np.concatenate([b["index_B"] for b in pipe])
    seen.append(set(idx[idx >= 0].tolist()) if not drop_remainder else set(idx.tolist()))
    assert pipe.num_batches == (1 if drop_remainder else 2)
  assert not seen[0] & seen[1]
  if not drop_remainder:
    assert seen[0] | seen[1] == set(range(num_records))


def test_hosts_cover_everything_when_batches_divide(tok):
  shards = [
    set(
      np.concatenate(
        [
          b["index_B"]
          for b in data.PromptPipeline(
            _records(12),
            tok,
            batch_size=3,
            max_prompt_len=3,
            seed=2,
            num_epochs=1,
            process_index=h,
            process_count=2,
          )
        ]
      ).tolist()
    )
    for h in range(2)
  ]
  assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(12))


def _pipe(tok, **kw):
  kw = dict(batch_size=3, max_prompt_len=4, seed=0, process_index=0, process_count=1) | kw
  return data.PromptPipeline(
    [dict(prompt=" ".join("abcdefg"[: 1 + i % 7]), answer=str(i)) for i in range(10)], tok, **kw
  )


def test_resume_from_state_gives_the_same_batches(tok):
  pipe = _pipe(tok)  # repeats forever, reshuffled every epoch
  for _ in range(3):
    next(pipe)
  state = json.loads(json.dumps(pipe.get_state()))  # must survive a JSON checkpoint
  assert state["next_batch"] == 3
  expected = [next(pipe) for _ in range(2)]
  fresh = _pipe(tok)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  with pytest.raises(ValueError, match="other settings"):
    _pipe(tok, batch_size=2).set_state(state)


def test_resume_through_orbax_with_grain_handler(tok, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  pipe = _pipe(tok)
  for _ in range(3):
    next(pipe)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(pipe.iterator)))
    mngr.wait_until_finished()
  expected = next(pipe)["index_B"]
  fresh = _pipe(tok)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(
      7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh.iterator))
    )
  np.testing.assert_array_equal(next(fresh)["index_B"], expected)


def test_completion_pipeline_layout(tok):
  records = [
    dict(prompt="a b", answer="", completion="c d"),
    dict(prompt="a", answer="", completion="c d e f g"),
  ]
  pipe = data.CompletionPipeline(
    records,
    tok,
    batch_size=2,
    max_prompt_len=4,
    max_len=8,
    shuffle=False,
    num_epochs=1,
    process_index=0,
    process_count=1,
  )
  batch = next(pipe)
  # Prompt region [0, 4) left-padded; completion + eos from column 4, right-padded. A completion
  # longer than its 4 columns is cut and loses its eos.
  np.testing.assert_array_equal(
    batch["tokens_BxL"], [[0, 1, 4, 5, 6, 7, 2, 0], [0, 0, 1, 4, 6, 7, 8, 9]]
  )
  np.testing.assert_array_equal(
    batch["attention_mask_BxL"], [[0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]]
  )
  np.testing.assert_array_equal(
    batch["response_mask_BxL"], [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
  )
  np.testing.assert_array_equal(batch["index_B"], [0, 1])
  with pytest.raises(ValueError, match="completion_field"):
    data.CompletionPipeline(
      [dict(prompt="a", answer="")],
      tok,
      batch_size=1,
      max_prompt_len=2,
      max_len=4,
      process_index=0,
      process_count=1,
    )


# Meshes on the 8 fake devices and, by hand, how many row blocks each splits a G-row batch
# into: 'batch' maps to data x fsdp; axes are dropped from the minor end until G divides.
BATCH_SHARDS = {
  "fsdp8": ({"fsdp": 8}, {1: 1, 2: 1, 3: 1, 4: 1, 8: 8}),
  "data2_fsdp2_tensor2": ({"data": 2, "fsdp": 2, "tensor": 2}, {1: 1, 2: 2, 3: 1, 4: 4, 8: 4}),
}

# (mesh, prompts_per_step G, process count N) -> per host, the record indices of its first
# batch (16 records, no shuffle). Hosts read disjoint strided shards when the mesh splits the
# batch into a multiple of N blocks, else all read the whole batch: records 0..G-1.
HOST_ROWS = {
  **{(m, g, 1): [list(range(g))] for m in BATCH_SHARDS for g in (1, 2, 3, 4, 8)},
  ("fsdp8", 1, 2): [[0], [0]],
  ("fsdp8", 2, 2): [[0, 1], [0, 1]],
  ("fsdp8", 3, 2): [[0, 1, 2], [0, 1, 2]],
  ("fsdp8", 4, 2): [[0, 1, 2, 3], [0, 1, 2, 3]],
  ("fsdp8", 8, 2): [[0, 2, 4, 6], [1, 3, 5, 7]],
  ("fsdp8", 1, 4): [[0]] * 4,
  ("fsdp8", 2, 4): [[0, 1]] * 4,
  ("fsdp8", 3, 4): [[0, 1, 2]] * 4,
  ("fsdp8", 4, 4): [[0, 1, 2, 3]] * 4,
  ("fsdp8", 8, 4): [[0, 4], [1, 5], [2, 6], [3, 7]],
  ("data2_fsdp2_tensor2", 1, 2): [[0], [0]],
  ("data2_fsdp2_tensor2", 2, 2): [[0], [1]],
  ("data2_fsdp2_tensor2", 3, 2): [[0, 1, 2], [0, 1, 2]],
  ("data2_fsdp2_tensor2", 4, 2): [[0, 2], [1, 3]],
  ("data2_fsdp2_tensor2", 8, 2): [[0, 2, 4, 6], [1, 3, 5, 7]],
  ("data2_fsdp2_tensor2", 1, 4): [[0]] * 4,
  ("data2_fsdp2_tensor2", 2, 4): [[0, 1]] * 4,
  ("data2_fsdp2_tensor2", 3, 4): [[0, 1, 2]] * 4,
  ("data2_fsdp2_tensor2", 4, 4): [[0], [1], [2], [3]],
  ("data2_fsdp2_tensor2", 8, 4): [[0, 4], [1, 5], [2, 6], [3, 7]],
}


def _host_batches(g, n, shards, *, shuffle, batches=1):
  """Per host: record indices of its first `batches` batches, as host_share says it reads."""
  out = []
  for host in range(n):
    share = data.host_share(g, batch_shards=shards, process_index=host, process_count=n)
    ds = data.build_dataset(
      16,
      lambda i: {},
      batch_size=share.rows,
      seed=3,
      shuffle=shuffle,
      process_index=share.shard,
      process_count=share.shards,
    )
    out.append([ds[b]["index_B"].tolist() for b in range(batches)])
  return out


@pytest.mark.parametrize("mesh_name", sorted(BATCH_SHARDS))
def test_batch_shards_hand_counted(mesh_name):
  from rockjax import sharding

  shape, want = BATCH_SHARDS[mesh_name]
  mesh = sharding.make_mesh(shape)
  assert {g: sharding.batch_shards(g, mesh) for g in want} == want


@pytest.mark.parametrize("key", sorted(HOST_ROWS))
def test_host_share_rows_hand_made(key):
  mesh_name, g, n = key
  got = _host_batches(g, n, BATCH_SHARDS[mesh_name][1][g], shuffle=False)
  assert [b[0] for b in got] == HOST_ROWS[key]


def test_hosts_reading_the_whole_batch_read_what_one_host_reads():
  """One prompt per step on 4 hosts: every host's shuffled stream is the 1-host stream."""
  (alone,) = _host_batches(1, 1, 1, shuffle=True, batches=20)
  assert sorted(sum(alone[:16], [])) == list(range(16))  # a real shuffle, not the identity
  assert sum(alone[:16], []) != list(range(16))
  assert _host_batches(1, 4, 1, shuffle=True, batches=20) == [alone] * 4


def test_host_share_rejects_shards_that_do_not_split_the_batch():
  with pytest.raises(ValueError, match="batch_shards=2 does not split a batch of 3 rows"):
    data.host_share(3, batch_shards=2, process_index=0, process_count=1)
