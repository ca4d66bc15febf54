"""Prompt fields and the over-length policy: hand-built ids, kept/dropped records, counts, resume."""

import json

import ml_collections
import numpy as np
import pytest

from rockjax import data, errors
from rockjax.data import prompt_fit
from rockjax.data import records as records_lib
from tests.fixtures import word_tokenizer

# Word-level vocabulary: every expected id below is read off this table by hand.
WORDS = [
  "<pad>",
  "<bos>",
  "<eos>",
  "<unk>",
  "system",
  "user",
  "a",
  "b",
  "c",
  "d",
  "e",
  "g",
  "nothink",
]
ID = {w: i for i, w in enumerate(WORDS)}
# A Qwen3-hybrid-like template: role + content per message, then the generation prompt 'g'; a
# thinking switch that, when set to false, adds an empty-thinking marker ('nothink').
SWITCH = (
  "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
  "{% if add_generation_prompt %}g{% if enable_thinking is defined and not enable_thinking %}"
  " nothink{% endif %}{% endif %}"
)
NO_SWITCH = (
  "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
  "{% if add_generation_prompt %}g{% endif %}"
)


def _tokenizer(chat_template=None):
  return word_tokenizer(ID, chat_template)


def ids(text):
  return [ID[w] for w in text.split()]


@pytest.fixture(scope="module")
def tok():
  return _tokenizer()


def test_system_prompt_and_thinking_flag_reach_the_template():
  switch, plain = _tokenizer(SWITCH), _tokenizer(NO_SWITCH)
  fmt = records_lib.format_prompt
  assert fmt(switch, "a b") == ids("user a b g nothink")  # default False reaches the template
  assert fmt(switch, "a b", enable_thinking=True) == ids("user a b g")
  assert fmt(switch, "a b", system_prompt="c d") == ids("system c d user a b g nothink")
  own = [dict(role="system", content="e"), dict(role="user", content="a")]
  assert fmt(switch, own, system_prompt="c d") == ids("system e user a g nothink")  # its own wins
  assert fmt(plain, "a", system_prompt="c") == ids("system c user a g")
  with pytest.raises(errors.ConfigError, match="data.enable_thinking=True"):
    fmt(plain, "a", enable_thinking=True)  # a template without a switch cannot think
  with pytest.raises(errors.ConfigError, match="data.system_prompt"):
    fmt(plain, "a", system_prompt="c", use_chat_template=False)


def test_pipeline_rows_carry_the_system_prompt():
  pipe = data.PromptPipeline(
    [dict(prompt="a", answer="1")],
    _tokenizer(SWITCH),
    batch_size=1,
    max_prompt_len=8,
    prompt_format=records_lib.PromptFormat(system_prompt="c"),
    shuffle=False,
    num_epochs=1,
    process_index=0,
    process_count=1,
  )
  want = ids("system c user a g nothink")  # 6 ids, left-padded to 8
  np.testing.assert_array_equal(next(pipe)["prompt_ids_BxP"], [[0, 0, *want]])
  pipe.close()


# Prompt lengths with BOS (no chat template): 2, 3, 7, 4, 5, 2 ids.
PROMPTS = ["a", "a b", "a b c d e g", "b c d", "a b c d", "e"]
P = 4  # records 2 and 4 are over P


def _records():
  return [records_lib.Record(prompt=p, answer=str(i)) for i, p in enumerate(PROMPTS)]


def _pipe(tok, records, overflow, **kw):
  kw = dict(dict(shuffle=False, num_epochs=1, batch_size=2), **kw)
  return data.PromptPipeline(
    records, tok, max_prompt_len=P, prompt_overflow=overflow, process_index=0, process_count=1, **kw
  )


def test_drop_leaves_the_record_out_and_counts_it(tok):
  pipe = _pipe(tok, _records(), "drop")
  assert pipe.counts == {"data/prompts_truncated": 0, "data/prompts_dropped": 2}
  rows = [r for b in pipe for r in zip(b["index_B"], b["prompt_ids_BxP"])]
  assert [pipe.answers[i] for i, _ in rows] == ["0", "1", "3", "5"]
  np.testing.assert_array_equal(
    [r for _, r in rows], [[0, 0, 1, 6], [0, 1, 6, 7], [1, 7, 8, 9], [0, 0, 1, 10]]
  )


def test_truncate_keeps_the_end_and_counts_it(tok):
  pipe = _pipe(tok, _records(), "truncate", batch_size=6)
  assert pipe.counts == {"data/prompts_truncated": 2, "data/prompts_dropped": 0}
  batch = next(pipe)
  np.testing.assert_array_equal(batch["prompt_ids_BxP"][2], ids("c d e g"))  # BOS a b cut
  np.testing.assert_array_equal(batch["prompt_ids_BxP"][4], ids("a b c d"))  # BOS cut


def test_error_names_file_line_length_and_limit(tok, tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(dict(prompt=p, answer="x")) + "\n" for p in PROMPTS))
  records = records_lib.load_records(path)
  with pytest.raises(errors.InputError) as e:
    _pipe(tok, records, "error")
  assert str(e.value).startswith(f"{path}:3: prompt is 7 tokens, over data.max_prompt_len=4")
  with pytest.raises(errors.InputError, match=f"{path}: all 2 training prompts are longer"):
    _pipe(tok, [records[2], records[4]], "drop")


def test_dropping_equals_a_file_without_those_records_and_resumes_exactly(tok):
  """The stream under 'drop' is the stream of the hand-filtered file, epoch after epoch."""
  kept = [r for r in _records() if len(r["prompt"].split()) + 1 <= P]  # + BOS, by hand
  kw = dict(shuffle=True, num_epochs=3, seed=7)
  dropped = [tuple(b["prompt_ids_BxP"].ravel()) for b in _pipe(tok, _records(), "drop", **kw)]
  reference = [tuple(b["prompt_ids_BxP"].ravel()) for b in _pipe(tok, kept, "error", **kw)]
  assert dropped == reference and len(dropped) == 6
  first = _pipe(tok, _records(), "drop", **kw)
  for _ in range(4):
    next(first)
  again = _pipe(tok, _records(), "drop", **kw)
  again.set_state(first.get_state())
  assert [tuple(b["prompt_ids_BxP"].ravel()) for b in again] == dropped[4:]


@pytest.mark.parametrize(
  "change",
  [
    dict(prompt_overflow="truncate"),
    dict(prompt_format=records_lib.PromptFormat(system_prompt="c")),
    dict(prompt_format=records_lib.PromptFormat(enable_thinking=True)),
  ],
)
def test_fingerprint_covers_policy_and_prompt_format(change):
  # A template with a switch, and no prompt over P: every setting gives the same records.
  tok, records = _tokenizer(SWITCH), [dict(prompt="a", answer="1")] * 4
  kw = dict(batch_size=2, max_prompt_len=16, process_index=0, process_count=1, num_epochs=1)
  state = data.PromptPipeline(records, tok, prompt_overflow="drop", **kw).get_state()
  other = data.PromptPipeline(records, tok, **dict(dict(prompt_overflow="drop", **kw), **change))
  with pytest.raises(errors.CheckpointMismatch, match="other settings"):
    other.set_state(state)


def test_eval_prompts_keep_the_first_that_fit(tok, tmp_path):
  path = tmp_path / "eval.jsonl"
  path.write_text(
    "".join(json.dumps(dict(prompt=p, answer=str(i))) + "\n" for i, p in enumerate(PROMPTS))
  )
  c = ml_collections.ConfigDict(
    dict(
      data=dict(
        prompt_field="prompt",
        answer_field="answer",
        skip_bad_records=False,
        max_prompt_len=P,
        prompt_overflow="drop",
        use_chat_template=False,
        system_prompt="",
        enable_thinking=False,
      )
    )
  )
  fitted = prompt_fit.eval_prompts(c, tok, str(path), 3)
  assert [r["answer"] for r in fitted.records] == ["0", "1", "3"]
  ids_SxP, mask_SxP = prompt_fit.padded_prompts(fitted, P, 0)
  np.testing.assert_array_equal(ids_SxP, [[0, 0, 1, 6], [0, 1, 6, 7], [1, 7, 8, 9]])
  np.testing.assert_array_equal(mask_SxP, [[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
