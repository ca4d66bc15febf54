"""rockjax.evals.run: each response is graded against its own problem, prompts as templated."""

import types

from rockjax.data import tasks

import numpy as np
import pytest

from rockjax import errors
from rockjax.evals import formats
from rockjax.evals import run as eval_run

ANSWERS = ["7", "12", "-3"]
# Which samples of each problem answer right (the others answer 999).
RIGHT = [{0, 1}, {2}, set()]


class _Tokenizer:
  """Decodes a response token t as 'so the answer is {t - 1000}'."""

  def decode(self, ids, skip_special_tokens=True):
    return " ".join(f"so the answer is {int(t) - 1000}" for t in ids)


def _fake_generate(calls):
  """sampling.generate's stand-in: prompt column 0 holds the problem's index; sample j of it
  answers right when j is in RIGHT[index]. Rows are prompt-major, as generate's are."""

  def generate(model, ids_BxP, mask_BxP, *, key, num_samples, **kw):
    calls.append(dict(rows=len(ids_BxP), num_samples=num_samples, **kw))
    rows = []
    for problem in ids_BxP[:, 0]:
      for j in range(num_samples):
        value = int(ANSWERS[problem]) if j in RIGHT[problem] else 999
        rows.append(value + 1000)
    n = len(rows)
    tokens = np.concatenate([np.repeat(ids_BxP, num_samples, 0), np.array(rows)[:, None]], 1)
    resp = np.zeros_like(tokens)
    resp[:, -1] = 1
    return types.SimpleNamespace(tokens=tokens, response_mask=resp, truncated=np.zeros(n, bool))

  return generate


def test_each_sample_is_graded_against_its_own_problem(monkeypatch):
  calls = []
  monkeypatch.setattr(eval_run.sampling, "generate", _fake_generate(calls))
  problems = [formats.Problem(id=f"p{i}", problem=f"q{i}", answer=a) for i, a in enumerate(ANSWERS)]
  ids_PxC = np.array([[0, 5], [1, 5], [2, 5]], np.int32)
  s = eval_run.EvalSettings(num_samples=3, batch_size=2, max_new_tokens=4, temperature=0.6)
  got = eval_run.run_benchmark(
    None, _Tokenizer(), "aime24", problems, (ids_PxC, np.ones_like(ids_PxC)), s,
    index=0, eos_ids=(1,), progress=False,
  )  # fmt: skip
  expected = [[j in RIGHT[i] for j in range(3)] for i in range(3)]
  np.testing.assert_array_equal(got["correct_PxN"], expected)
  # Two decode calls of 2 prompts (the second padded with problem 0, whose rows are dropped).
  assert [c["rows"] for c in calls] == [2, 2] and len(got["responses"]) == 9
  assert [(r["id"], r["sample"]) for r in got["responses"][:4]] == [
    ("p0", 0), ("p0", 1), ("p0", 2), ("p1", 0)
  ]  # fmt: skip
  assert calls[0]["temperature"] == pytest.approx(0.6) and calls[0]["max_new_tokens"] == 4


def test_paper_template_chat_and_custom():
  p = formats.Problem(id="1", problem="Find x.", answer="2")
  assert eval_run.prompt_text("aime24", p, "paper") == "Question: Find x.\nAnswer:"
  assert eval_run.prompt_text("ifeval", p, "paper") == "Find x."  # IFEval's prompt as it is
  assert eval_run.prompt_text("math500", p, "chat") == "Find x."
  assert eval_run.prompt_text("math500", p, "Problem: {problem}\n") == "Problem: Find x.\n"


def test_prompts_are_left_padded_to_one_width_and_a_long_one_is_named(tmp_path):
  tok = tasks.make_tokenizer(tmp_path / "tok")
  short = formats.Problem(id="a", problem="What is 1+2?", answer="3")
  longer = formats.Problem(id="b", problem="What is 1+2+3+4+5+6+7+8+9?", answer="45")
  s = eval_run.EvalSettings(prompt_template="paper", max_prompt_len=200)
  prompts, width = eval_run.encode_prompts(tok, {"aime24": [short], "math500": [longer]}, s)
  assert width == 64
  text_ids = tok.encode("Question: What is 1+2?\nAnswer:", add_special_tokens=False)
  ids, mask = prompts["aime24"]
  expected = [tok.bos_token_id, *text_ids]
  assert ids.shape == (1, 64) and list(ids[0, 64 - len(expected) :]) == expected
  assert mask[0].sum() == len(expected) and mask[0, : 64 - len(expected)].sum() == 0
  with pytest.raises(errors.ConfigError, match="math500 problem 'b' is .* prompt tokens"):
    eval_run.encode_prompts(
      tok, {"math500": [longer]}, eval_run.EvalSettings(max_prompt_len=len(text_ids))
    )
