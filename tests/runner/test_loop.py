"""End to end: the CLI on 8 fake devices, checkpoint/resume equivalence, NaN and bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from rockjax.config import settings
from rockjax.runner import loop as train
from tests.fixtures import REPO


def small_run(mode="off_policy", **overrides):
  c = tiny.get_config()
  c.opd.mode = mode
  c.steps = 8
  c.ckpt.every = 4
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.update_from_flattened_dict(overrides)
  return c


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_cli_trains_tiny_config_on_8_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    "-m",
    "rockjax.main",
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.steps=3",
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3]
  # Synthetic prompts longer than data.max_prompt_len (24) are dropped and counted once, in the
  # first line; counted here from the task's files with the tokenizer's own chat template.
  import transformers

  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "task" / "tokenizer"))
  prompts = [json.loads(l)["prompt"] for l in open(tmp_path / "task" / "train.jsonl")]
  lengths = [
    len(
      tok.apply_chat_template(
        [dict(role="user", content=p)], add_generation_prompt=True, return_dict=True
      )["input_ids"]
    )
    for p in prompts
  ]
  over = sum(n > tiny.get_config().data.max_prompt_len for n in lengths)
  assert over > 0  # the check below is not only of zeros
  counts = {"data/prompts_truncated": 0, "data/prompts_dropped": over, "data/records_skipped": 0}
  assert {k: lines[0][k] for k in counts} == counts
  assert not any(k in l for k in counts for l in lines[1:])
  assert all(np.isfinite(l["opd/loss"]) for l in lines)
  assert sorted(os.listdir(tmp_path / "ckpt"))[-1] == "3"


@pytest.mark.parametrize(
  "mode,extra",
  [("on_policy", {"opt.micro_batches": 2, "data.pad_to_multiple": 16}), ("off_policy", {})],
)
def test_resume_equals_uninterrupted(tmp_path, mode, extra):
  """Train 4, stop, resume, train 4 more == train 8 (params, moments, rock stats, data).

  On-policy this also checks the rollouts replay: their keys derive from (rng, step), and
  runs them in 2 micro-batches, padded from 24 + 12 to 48 columns.
  """
  if extra:
    assert settings.batch_shape(small_run(mode, **extra)) == (16, 48)
  whole = train.run(small_run(mode, **extra), str(tmp_path / "whole"))
  first = train.run(small_run(mode, **extra, **{"stop_after": 4}), str(tmp_path / "split"))
  assert int(first.state.step) == 4
  second = train.run(small_run(mode, **extra), str(tmp_path / "split"))
  a, b = jax.device_get(whole.state), jax.device_get(second.state)
  assert int(a.step) == int(b.step) == 8
  for name in ("params", "opt_state", "rock", "rock_mask"):
    for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
      np.testing.assert_allclose(
        np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-6, atol=1e-6, err_msg=name
      )
  assert whole.data_state == second.data_state


def test_bad_static_list_names_file_and_line(tmp_path):
  bad = tmp_path / "ids.txt"
  bad.write_text("3\n7\nseven\n")
  c = small_run(**{"rock.mode": "static", "rock.list_path": str(bad)})
  with pytest.raises(ValueError, match=r"ids.txt:3: .*'seven'"):
    train.run(c, str(tmp_path / "run"))


def test_nan_stops_training_with_last_good_checkpoint(tmp_path, monkeypatch):
  """A non-finite loss at step 3 ends the run before anything is saved after step 2."""
  from rockjax import metrics as metrics_lib

  real = metrics_lib.to_host
  calls = []

  def poisoned(m):
    host = real(m)
    calls.append(1)
    if len(calls) == 3:
      host["opd/loss"] = (float("nan"), host["opd/loss"][1])
    return host

  monkeypatch.setattr(metrics_lib, "to_host", poisoned)
  c = small_run(**{"ckpt.every": 2, "steps": 6})
  with pytest.raises(
    FloatingPointError, match=r"step 3: non-finite loss.*Last good checkpoint: step 2"
  ):
    train.run(c, str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "ckpt") if s.isdigit()) == [2]
  monkeypatch.setattr(metrics_lib, "to_host", real)
  resumed = train.run(c, str(tmp_path))  # the run resumes from the good checkpoint
  assert int(resumed.state.step) == 6


def test_sigterm_saves_and_exits_cleanly(tmp_path, monkeypatch):
  """Preemption: SIGTERM during step 2 -> that step finishes, a checkpoint is written, exit."""
  import signal

  real = train._next_batch

  def preempt_at_step_2(exp, state, step, *rest):
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(exp, state, step, *rest)

  monkeypatch.setattr(train, "_next_batch", preempt_at_step_2)
  result = train.run(small_run(**{"ckpt.every": 0}), str(tmp_path))
  assert int(result.state.step) == 2
  assert sorted(int(s) for s in os.listdir(tmp_path / "ckpt") if s.isdigit()) == [2]


def test_time_based_saves_follow_every_minutes_since_the_last_save(monkeypatch):
  """ckpt.every=10, every_minutes=1 over 25 steps, a step every 25 s (hand-computed): the
  clock saves at 3 (75 s since the start), 6 (150 s, 75 since 3), 9; step 10 by count; then
  13, 16, 19, 20 (count), 23, 25 (the last)."""
  import ml_collections

  from rockjax.runner import stopping

  now = [0.0]
  monkeypatch.setattr(stopping.time, "monotonic", lambda: now[0])
  c = ml_collections.ConfigDict({"steps": 25, "ckpt": {"every": 10, "every_minutes": 1.0}})
  schedule, saved = stopping.SaveSchedule(c), []
  for done in range(1, 26):
    now[0] += 25.0
    if schedule.due(done, stopping=False):
      saved.append(done)
      schedule.saved()
  assert saved == [3, 6, 9, 10, 13, 16, 19, 20, 23, 25]
