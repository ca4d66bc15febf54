"""HF exports of a tiny run: the pipeline's stage export and `python -m rockjax.export` write
the same files for the same step, ckpt.export_hf turned on after a completed run exports it
without training, transformers' plain generate() stops at the EOS, and the CLI's user errors
are one line (exit 2)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from configs import tiny
from rockjax import checkpoint as ckpt_lib
from rockjax import models
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax.runner import loop, pipeline, stages
from rockjax.runner import summary as summary_lib
from tests.fixtures import REPO, assert_one_line_error


def sft_config(steps: int, every: int, export_hf: bool):
  """tiny as plain SFT (no teacher, no sampler to compile) at a constant learning rate, so a
  run of `steps` steps equals the first `steps` steps of a longer one."""
  c = tiny.get_config()
  c.update_from_flattened_dict(
    {
      "opd.mode": "off_policy",
      "opd.kd_ratio": 0.0,
      "teacher.source": "none",
      "rock.mode": "off",
      "opt.end_lr": tiny.get_config().opt.lr,  # the cosine from lr to lr: constant
      "steps": steps,
      "ckpt.every": every,
      "ckpt.export_hf": export_hf,
      "mesh.fsdp": 1,
    }
  )
  return c


def export_cli(*args, timeout=180):
  """`python -m rockjax.export ARGS` from the repo root on the CPU."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "rockjax.export", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def tensors(path) -> dict[str, np.ndarray]:
  """Every tensor of an export's safetensors files, by HF name."""
  out = {}
  for f in sorted(path.glob("*.safetensors")):
    out.update(load_file(str(f)))
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """long: 3 steps (checkpoints at 2 and 3) completed without an export, then run again with
  ckpt.export_hf turned on, where training would fail (loop.run raises). stopped: a copy of
  long as a run stopped after step 2 leaves it (checkpoint 2, no stage.json), finished with
  steps=2: it completes at that checkpoint and the pipeline exports its state. One training
  run in all (each compiles the train step)."""
  root = tmp_path_factory.mktemp("export_runs")
  long, stopped = root / "long", root / "stopped"
  pipeline.run(sft_config(3, 2, export_hf=False), str(long))
  before = sorted(p.name for p in long.iterdir())
  with pytest.MonkeyPatch.context() as mp:

    def no_training(*args, **kwargs):
      raise AssertionError("a completed stage was trained again")

    mp.setattr(loop, "run", no_training)
    pipeline.run(sft_config(3, 2, export_hf=True), str(long))
  shutil.copytree(long, stopped, ignore=shutil.ignore_patterns(stages.EXPORT_DIR))
  for name in ("ckpt/3", "stage.json", summary_lib.SUMMARY_FILE):
    path = stopped / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  pipeline.run(sft_config(2, 2, export_hf=True), str(stopped), allow_config_change=True)
  return {"long": long, "stopped": stopped, "before": before}


def test_export_hf_turned_on_after_a_completed_run_exports_it_without_training(runs):
  long = runs["long"]
  export = long / stages.EXPORT_DIR
  assert stages.EXPORT_DIR not in runs["before"]  # the first run (export_hf=False) wrote none
  assert sorted(p.name for p in export.iterdir()) == [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ]
  assert not (long / (stages.EXPORT_DIR + ".tmp")).exists()
  assert json.loads((long / "stage.json").read_text())["export"] == str(export)
  summary = json.loads((long / summary_lib.SUMMARY_FILE).read_text())
  assert summary["outputs"]["hf_exports"] == [str(export)]
  # It holds the final checkpoint's params, restored here as the loop restores a run.
  c = sft_config(3, 2, export_hf=True)
  student, step = _final_student(c, long)
  assert step == 3
  exported = models.from_pretrained(str(export), **loading.numerics(c.model))
  want, got = _params(student), _params(exported)
  assert sorted(want) == sorted(got)
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  # Once exported, a re-run changes nothing.
  mtimes = {p: p.stat().st_mtime_ns for p in export.iterdir()}
  pipeline.run(sft_config(3, 2, export_hf=True), str(long))
  assert {p: p.stat().st_mtime_ns for p in export.iterdir()} == mtimes


def _final_student(c, workdir):
  """(student, step) of the newest checkpoint, through rockjax.checkpoint (the whole state)."""
  cfg = loading.model_config(c.model)
  graphdef, abstract = loading.abstract_params(cfg, c.seed)
  tx, _ = state_lib.make_optimizer(c.opt, c.steps)
  init = state_lib.initializer(graphdef, tx, vocab_size=cfg.vocab_size, seed=c.seed)
  like, _ = state_lib.abstract_state(init, abstract, shd.make_mesh({"fsdp": 1}))
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "ckpt"))
  try:
    state, _, step = checkpointer.restore(like)
  finally:
    checkpointer.close()
  return nnx.merge(state.graphdef, state.params), step


def _params(model) -> dict[str, np.ndarray]:
  state = nnx.state(model, nnx.Param)
  return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def test_cli_export_of_a_mid_run_checkpoint_equals_the_stage_export_of_a_run_stopped_there(runs):
  long = runs["long"]
  proc = export_cli(f"--workdir={long}", "--step=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = long / f"{stages.EXPORT_DIR}_step_2"  # the documented default
  assert f"HF export of stage main step 2: {out}" in proc.stdout
  ref = runs["stopped"] / stages.EXPORT_DIR  # the 2-step run's stage export (pipeline._export)
  assert json.loads((runs["stopped"] / "stage.json").read_text())["steps"] == 2
  assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
  got, want = tensors(out), tensors(ref)
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  for name in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
    assert (out / name).read_text() == (ref / name).read_text(), name
  # Step 3 moved on from step 2: the comparison can fail.
  last = tensors(long / stages.EXPORT_DIR)
  assert any(not np.array_equal(last[k], a) for k, a in want.items())


def test_transformers_generate_stops_at_the_exports_eos(runs, tmp_path):
  """A plain generate() (no eos passed) on the export stops at the EOS; on the same weights
  without the export's special ids (the files before this fix) it runs to max_new_tokens."""
  import torch
  import transformers

  export = runs["long"] / stages.EXPORT_DIR
  old = tmp_path / "no_ids"  # config.json's ids null and no generation_config.json
  shutil.copytree(export, old)
  (old / "generation_config.json").unlink()
  config = json.loads((old / "config.json").read_text())
  config.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
  (old / "config.json").write_text(json.dumps(config))

  tok = transformers.AutoTokenizer.from_pretrained(export)
  chat = [{"role": "user", "content": "What is 8-8?"}]
  ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
  ids = torch.tensor([ids])
  lengths = {}
  for name, path in (("export", export), ("no_ids", old)):
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.eos_token_id] = 100.0  # EOS is the argmax everywhere
    model.lm_head.bias = torch.nn.Parameter(bias)
    with torch.no_grad():
      out = model.generate(ids, max_new_tokens=8)
    new = out[0, ids.shape[1] :].tolist()
    lengths[name] = len(new)
    if name == "export":
      assert new[-1] == tok.eos_token_id
  assert lengths == {"export": 1, "no_ids": 8}


def test_export_cli_errors_are_one_line(runs, tmp_path):
  long = runs["long"]
  assert_one_line_error(export_cli(f"--workdir={tmp_path / 'nope'}"), "no such directory")
  assert_one_line_error(export_cli(f"--workdir={long}", "--stage=bogus"), "--stage=bogus")
  assert_one_line_error(
    export_cli(f"--workdir={long}", "--stage=teacher_sft"), "no such stage (its stages: main)"
  )
  assert_one_line_error(
    export_cli(f"--workdir={long}", "--step=1"),
    "--step=1: stage main has no checkpoint at step 1",
    "available steps: 2, 3",
  )
