"""Steps from data.epochs (rockjax.config.run_length) by hand, resolved once before the workdir records
its config; the main stage's ckpt.export_hf export loads in transformers with the final
checkpoint's logits."""

import json
import types

import jax
import numpy as np
import pytest
from flax import nnx

import rockjax.models as rm
from configs import default, tiny
from rockjax import errors
from rockjax.config import run_length
from rockjax.runner import pipeline, stages
from rockjax.runner import summary as summary_lib
from rockjax.runner.experiment import build_experiment
from tests.fixtures import (
  CONFIGS,
  forward,
  hf_logits,
  left_padded_batch,
  make_tokenizer,
  random_model,
)


@pytest.mark.parametrize(
  "prompts,epochs,per_step,want",
  [
    (10_000, 1.0, 2, 5000),  # the paper configs' hint
    (7, 1.0, 2, 4),  # 3.5 steps: the last one is short of a full batch, still a step
    (7, 0.5, 2, 2),  # 3.5 prompts -> 1.75 steps
    (1000, 0.1, 1, 100),  # 1000 * 0.1 is 100.00000000000001 in floats: not 101
    (3, 0.01, 8, 1),  # at least one step
  ],
)
def test_epoch_steps_by_hand(prompts, epochs, per_step, want):
  assert run_length.epoch_steps(prompts, epochs, per_step) == want


def _jsonl_config(tmp_path, n: int, **fields):
  path = tmp_path / "train.jsonl"
  path.write_text(
    "".join(json.dumps({"prompt": f"p{i}", "answer": str(i)}) + "\n" for i in range(n))
  )
  c = default.get_config()
  c.data.update(task="", train_path=str(path), **fields)
  return c


def test_resolve_counts_the_train_file_and_records_the_count(tmp_path):
  c = _jsonl_config(tmp_path, 7, epochs=1.0, prompts_per_step=2, num_train_prompts=10)
  out, how = run_length.resolve(c)
  assert (out.steps, out.data.num_train_prompts) == (4, 7)
  assert c.steps == 50  # the caller's config is not changed
  assert "ceil(7 prompts x 1.0 epochs / 2 per step)" in how and "hint said 10" in how
  # Off-policy: the same records, each needing its completion field.
  c.opd.mode = "off_policy"
  with pytest.raises(errors.InputError, match=r"train.jsonl:1"):
    run_length.resolve(c)


def test_epochs_zero_keeps_steps_and_a_dry_run_uses_the_hint(tmp_path):
  c = _jsonl_config(tmp_path, 7)
  assert run_length.resolve(c)[0] is c
  c.data.update(epochs=2.0, prompts_per_step=3)
  out, how = run_length.resolve(c, dry_run=True)  # no hint: steps as given, said so
  assert out.steps == 50 and "data.num_train_prompts" in how
  c.data.num_train_prompts = 30
  assert run_length.resolve(c, dry_run=True)[0].steps == 20  # ceil(30 x 2 / 3), file unread


class _Stop(Exception):
  """Raised in place of the pipeline's planning: everything before it has happened."""


def test_the_workdir_records_the_resolved_steps_before_any_stage(tmp_path, monkeypatch):
  """tiny: 64 built-in records x 0.25 epochs / 8 per step = 2 steps in config.json."""

  seen = []

  def stop(*args, **kwargs):  # the first stage would start here: read what the workdir records
    seen.append(json.loads((tmp_path / summary_lib.CONFIG_FILE).read_text()))
    raise _Stop

  monkeypatch.setattr(pipeline, "plan", stop)
  c = tiny.get_config()
  c.data.epochs = 0.25
  with pytest.raises(_Stop):
    pipeline.run(c, str(tmp_path))
  (recorded,) = seen
  assert (recorded["steps"], recorded["data"]["num_train_prompts"]) == (2, 64)
  # The start failed before any progress: the workdir is left as it was (absent).
  assert not tmp_path.exists() or not (tmp_path / summary_lib.CONFIG_FILE).exists()


def test_plan_exports_the_main_stage_only_with_export_hf(tmp_path):
  c = tiny.get_config()
  assert c.ckpt.export_hf  # the default: every stage's final model is exported
  paths = {"train": "t.jsonl", "eval": "", "tokenizer": "tok"}
  c.ckpt.export_hf = False
  assert stages.plan(c, str(tmp_path), paths)[-1].export is None
  c.ckpt.export_hf, c.data.epochs, c.model.source = True, 1.0, "kd"
  kd, main = stages.plan(c, str(tmp_path), paths)
  assert main.export == tmp_path / stages.EXPORT_DIR
  # The stage-1 stage keeps its own export and its stage_steps length.
  assert kd.export == tmp_path / "student_kd" / "hf"
  assert (kd.config.ckpt.export_hf, kd.config.data.epochs, kd.config.steps) == (False, 0.0, 300)


def test_export_of_the_main_stage_loads_in_transformers_with_the_same_logits(tmp_path):
  """pipeline._export writes the stage's params (a random Qwen3 decoder, not trained: the
  writer is what is tested) so that transformers computes rockjax's logits, atomically."""
  import transformers

  cfg = rm.ModelConfig.from_hf(transformers.Qwen3Config(**CONFIGS["qwen3"]))
  model = random_model(cfg, seed=3)
  graphdef, params = nnx.split(model)
  tok = transformers.AutoTokenizer.from_pretrained(make_tokenizer(tmp_path / "tok", ["a", "b"]))
  stage = stages.Stage("main", tiny.get_config(), tmp_path, tmp_path / stages.EXPORT_DIR)
  state = types.SimpleNamespace(graphdef=graphdef, params=params)
  result = types.SimpleNamespace(state=state, experiment=types.SimpleNamespace(tokenizer=tok))
  pipeline._export(stage, result)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export_hf", "tok"]  # no .tmp left
  hf = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path / stages.EXPORT_DIR, attn_implementation="eager"
  ).eval()
  ids, mask = left_padded_batch(cfg.vocab_size, seed=2)
  real = mask > 0
  np.testing.assert_allclose(
    hf_logits(hf, ids, mask)[real], np.asarray(forward(model, ids, mask))[real], atol=1e-5, rtol=0
  )
  assert (tmp_path / stages.EXPORT_DIR / "tokenizer_config.json").is_file()


@pytest.mark.slow
def test_pipeline_records_epoch_steps_and_exports_the_final_student(tmp_path):
  """End to end (slow: ~40 s of compiles on a CPU): tiny, 64 built-in records x 0.25 epochs /
  8 per step = 2 steps, in config.json, the stage record and the metrics; WORKDIR/export_hf loads in transformers with the logits of
  the final checkpoint's parameters."""
  import transformers

  c = tiny.get_config()
  # Off-policy (stage-1 KD) on the task's worked solutions: no sampler to compile.
  c.opd.mode, c.rock.mode = "off_policy", "off"
  c.data.epochs, c.ckpt.export_hf, c.ckpt.every = 0.25, True, 0
  workdir = tmp_path / "run"
  summary = pipeline.run(c, str(workdir))
  recorded = json.loads((workdir / summary_lib.CONFIG_FILE).read_text())
  assert (recorded["steps"], recorded["data"]["num_train_prompts"]) == (2, 64)
  assert summary["stages"][0]["steps"] == 2
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1])["step"] == 2
  export = workdir / stages.EXPORT_DIR
  assert summary["outputs"]["hf_exports"] == [str(export)]
  assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("export_hf")) == [
    "export_hf"
  ]  # no export_hf.tmp left behind

  # The final parameters, restored from the last checkpoint (step 2) independently of the export.
  config = c.copy_and_resolve_references()
  config.steps = 2
  exp = build_experiment(config, str(workdir))
  assert exp.start_step == 2
  student = nnx.merge(exp.state.graphdef, jax.device_get(exp.state.params))
  exp.checkpointer.close()
  exp.train_data.close()
  hf = transformers.AutoModelForCausalLM.from_pretrained(export, attn_implementation="eager")
  ids, mask = left_padded_batch(c.model.arch.vocab_size, seed=2)
  real = mask > 0
  np.testing.assert_allclose(
    hf_logits(hf.eval(), ids, mask)[real],
    np.asarray(forward(student, ids, mask))[real],
    atol=1e-5,
    rtol=0,
  )


def test_epochs_count_only_the_prompts_the_pipeline_keeps(tmp_path):
  # 6 records: one bad line (skipped), 2 prompts of 5 words (over max_prompt_len=3 without a
  # chat template: dropped), 3 of 1-3 words kept -> ceil(3 x 1 / 2) = 2 steps.
  words = ["a", "b", "c", "d", "e"]
  tok = make_tokenizer(tmp_path / "tok", words)
  lines = ["a", "a b", "a b c d e", "not json", "b c d e a", "c b a"]
  path = tmp_path / "train.jsonl"
  path.write_text(
    "".join(
      (line if line == "not json" else json.dumps({"prompt": line, "answer": "1"})) + "\n"
      for line in lines
    )
  )
  c = default.get_config()
  c.data.update(
    task="",
    train_path=str(path),
    tokenizer_path=tok,
    use_chat_template=False,
    max_prompt_len=3,
    skip_bad_records=True,
    epochs=1.0,
    prompts_per_step=2,
  )
  out, how = run_length.resolve(c)
  assert (out.steps, out.data.num_train_prompts) == (2, 3), how
  assert "1 bad records skipped" in how and "2 over data.max_prompt_len dropped" in how
  c.data.prompt_overflow = "truncate"  # nothing dropped: 5 prompts -> 3 steps
  assert run_length.resolve(c)[0].steps == 3
