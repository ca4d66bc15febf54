"""Sample packing (data.pack) end to end: packed rows reach the train step, a packed run
resumes exactly, and data.epochs counts packed rows."""

import json

import jax
import numpy as np

from configs import default
from rockjax.config import run_length
from rockjax.runner import loop as train
from tests.fixtures import make_tokenizer
from tests.runner.test_loop import small_run


def _metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_packed_run_trains_on_packed_rows_and_resumes(tmp_path):
  """Train 4, stop, resume, train 4 more == train 8, on packed rows; a packed step scores more
  completion tokens than an unpacked step of as many rows (2 to 3 sequences fit 128 tokens)."""
  packed = {"data.pack": True, "data.max_len": 128}
  whole = train.run(small_run(**packed), str(tmp_path / "whole"))
  train.run(small_run(**packed, stop_after=4), str(tmp_path / "split"))
  second = train.run(small_run(**packed), str(tmp_path / "split"))
  a, b = jax.device_get(whole.state), jax.device_get(second.state)
  assert int(a.step) == int(b.step) == 8
  for name in ("params", "opt_state", "rock"):
    for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6, err_msg=name)
  assert whole.data_state == second.data_state
  train.run(small_run(steps=1, **{"data.max_len": 128}), str(tmp_path / "unpacked"))
  tokens = lambda w: _metrics(w)[0]["opd/response_tokens"]
  assert tokens(tmp_path / "whole") > 1.8 * tokens(tmp_path / "unpacked")


def test_epochs_count_packed_rows(tmp_path):
  # 6 records of 4 tokens each (2 prompt words, 1 completion word + eos): 2 a row of 8,
  # 3 rows -> ceil(3 / 2) = 2 steps (3 unpacked).
  tok = make_tokenizer(tmp_path / "tok", ["a", "b", "c"])
  path = tmp_path / "train.jsonl"
  path.write_text(
    "".join(json.dumps({"prompt": "a b", "answer": "", "solution": "c"}) + "\n" for _ in range(6))
  )
  c = default.get_config()
  c.opd.mode = "off_policy"
  c.data.update(
    task="",
    train_path=str(path),
    tokenizer_path=tok,
    use_chat_template=False,
    max_prompt_len=3,
    max_len=8,
    epochs=1.0,
    prompts_per_step=2,
    pack=True,
  )
  out, how = run_length.resolve(c)
  assert (out.steps, out.data.num_train_prompts) == (2, 6), how
  assert "ceil(3 packed rows x 1.0 epochs / 2 per step)" in how
  c.data.num_train_prompts = 6
  out, how = run_length.resolve(c, dry_run=True)  # the file is not read: an upper bound
  assert out.steps == 3 and "upper bound" in how
