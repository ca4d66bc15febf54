"""Rollout and train times of on-policy steps (time/*, rollout/tokens_per_s, decode_steps) and
the --profile_steps trace; no timing thresholds, only what the numbers must equal."""

import json
import math

import numpy as np
import pytest

from configs import tiny
from rockjax import cli as cli_lib
from rockjax import errors, sampling
from rockjax.runner import loop as train
from rockjax.runner import pipeline
from tests.fixtures import assert_one_line_error, cli

TIMES = ("time/rollout_s", "time/train_s", "rollout/tokens_per_s", "rollout/decode_steps")


def tiny_on_policy(steps):
  c = tiny.get_config()
  c.opd.mode = "on_policy"
  c.steps, c.log_every, c.ckpt.every, c.eval.every = steps, 1, 0, 0
  return c


def recording_generate(monkeypatch, *forced):
  """Patch sampling.generate to keep each rollout's response lengths (as numpy); call i gets
  the keyword args forced[i] (when given) on top of the loop's own."""
  real, lengths = sampling.generate, []

  def generate(*args, **kwargs):
    extra = forced[len(lengths)] if len(lengths) < len(forced) else {}
    out = real(*args, **{**kwargs, **extra})
    lengths.append(np.asarray(out.lengths))
    return out

  monkeypatch.setattr(sampling, "generate", generate)
  return lengths


def logged(workdir):
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
  """Two on-policy steps through pipeline.run with profile_steps=(2, 2); step 1 samples with
  the tokenizer's EOS ids, step 2 with none (so no row can end early). (workdir, metric lines,
  each step's response lengths)."""
  workdir = tmp_path_factory.mktemp("run")
  with pytest.MonkeyPatch.context() as mp:
    lengths = recording_generate(mp, {}, {"eos_ids": ()})
    pipeline.run(tiny_on_policy(2), str(workdir), profile_steps=(2, 2))
  return workdir, logged(workdir), lengths


def test_on_policy_steps_log_the_four_times(profiled_run):
  _, lines, lengths = profiled_run
  assert [line["step"] for line in lines] == [1, 2] and len(lengths) == 2
  for line in lines:
    for key in TIMES:
      assert math.isfinite(line[key]) and line[key] > 0, (key, line)


def test_decode_steps_and_tokens_per_s_match_the_rollout(profiled_run):
  """decode_steps is the longest response (EOS included); tokens/s is the summed response
  tokens over the logged rollout seconds."""
  _, lines, lengths = profiled_run
  max_new = tiny_on_policy(2).opd.max_new_tokens
  for line, lengths_N in zip(lines, lengths):
    assert line["rollout/decode_steps"] == lengths_N.max() <= max_new
    assert line["rollout/tokens_per_s"] == pytest.approx(
      lengths_N.sum() / line["time/rollout_s"], rel=1e-12
    )


def test_without_eos_every_row_decodes_max_new_tokens(profiled_run):
  """Step 2 has no EOS id at all: the loop runs all max_new_tokens positions for every row,
  so by hand decode_steps = 12 and the tokens are 8 prompts x 2 samples x 12 = 192."""
  _, lines, lengths = profiled_run
  c = tiny_on_policy(2)
  assert (c.opd.max_new_tokens, c.data.prompts_per_step, c.opd.samples_per_prompt) == (12, 8, 2)
  np.testing.assert_array_equal(lengths[1], np.full(16, 12))
  line = lines[1]
  assert line["rollout/decode_steps"] == 12
  assert line["rollout/tokens_per_s"] == pytest.approx(192 / line["time/rollout_s"], rel=1e-12)
  assert line["rollout/truncated"] == 1.0


def test_profile_steps_write_a_trace(profiled_run):
  workdir, _, _ = profiled_run
  traces = list((workdir / "profile").glob("plugins/profile/*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, list((workdir / "profile").rglob("*"))


def test_off_policy_steps_log_no_times(tmp_path):
  c = tiny_on_policy(1)
  c.opd.mode = "off_policy"
  train.run(c, str(tmp_path))
  (line,) = logged(tmp_path)
  assert not set(TIMES) & set(line)


def test_profile_steps_values():
  assert cli_lib.profile_steps(None) is None
  assert cli_lib.profile_steps("3,5") == (3, 5)
  assert cli_lib.profile_steps("4, 4") == (4, 4)
  for bad in ("5,3", "0,2", "-1,2", "2", "a,b", "1,2,3", ""):
    with pytest.raises(errors.UserError, match="--profile_steps"):
      cli_lib.profile_steps(bad)


@pytest.mark.parametrize("value", ["5,3", "-1,2", "two,three"])
def test_bad_profile_steps_is_one_line_exit_2(tmp_path, value):
  workdir = tmp_path / "run"
  proc = cli("--config=configs/tiny.py", f"--workdir={workdir}", f"--profile_steps={value}")
  assert_one_line_error(proc, f"--profile_steps={value}", "1 <= a <= b")
  assert not workdir.exists()


def test_profile_steps_with_dry_run_is_one_line_exit_2():
  proc = cli("--config=configs/tiny.py", "--dry_run", "--profile_steps=1,2")
  assert_one_line_error(proc, "--profile_steps=1,2", "dry run")


# main's call site with pipeline.run patched: what the flag hands to the run.
PASSED = """
from absl import app
from rockjax import main
from rockjax.runner import pipeline
pipeline.run = lambda config, workdir, **kw: print("profile_steps", kw["profile_steps"])
app.run(main.main, flags_parser=main.cli.parse_flags)
"""


@pytest.mark.parametrize("args,want", [([], "None"), (["--profile_steps=2,3"], "(2, 3)")])
def test_the_flag_reaches_pipeline_run(tmp_path, args, want):
  proc = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", *args, code=PASSED)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[-1] == f"profile_steps {want}"
