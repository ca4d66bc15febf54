"""The pipeline of stages: interrupts stop it cleanly and resume exactly, the workdir records
its config, completed stages are never redone, and the summary's arithmetic is right."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from configs import demo
from rockjax import errors, evaluation, models
from rockjax.runner import loop as train
from rockjax.runner import pipeline, stages
from rockjax.runner import summary as summary_lib


def short_demo(**overrides):
  """The CPU default's three stages, a few steps each (the demo's settings otherwise)."""
  c = demo.get_config()
  c.update_from_flattened_dict(
    {
      "teacher.stage_steps": 4,
      "model.stage_steps": 4,
      "steps": 4,
      "ckpt.every": 2,
      "data.task_size": 64,
      "eval.every": 4,
      "eval.num_prompts": 8,
      "opd.max_new_tokens": 8,
      "eval.max_new_tokens": 8,
      "data.prompts_per_step": 4,
      "mesh.fsdp": 1,
      "analysis.enabled": False,  # the analysis stage is tested on its own
      **overrides,
    }
  )
  return c


def interrupt_at(monkeypatch, stage_dir_name, step, sig):
  """Send `sig` to this process when the stage whose workdir ends in `stage_dir_name` asks
  for the batch of `step` (that step still runs, then the loop saves and stops)."""
  real = train._next_batch

  def next_batch(exp, state, s, *rest):
    if s == step and os.path.basename(exp.workdir.rstrip("/")) == stage_dir_name:
      os.kill(os.getpid(), sig)
    return real(exp, state, s, *rest)

  monkeypatch.setattr(train, "_next_batch", next_batch)


def params_of(path):
  model = models.from_pretrained(str(path))
  return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_interrupted_stages_stop_the_pipeline_and_resume_to_the_same_state(tmp_path, monkeypatch):
  # Evaluation off (it is tested elsewhere): every stage's sampler compile costs time here.
  whole = pipeline.run(short_demo(**{"eval.every": 0}), str(tmp_path / "whole"))
  split = tmp_path / "split"

  # SIGTERM during the teacher's SFT: nothing exported, no later stage started.
  interrupt_at(monkeypatch, "teacher_sft", 1, signal.SIGTERM)
  with pytest.raises(
    errors.Interrupted, match=r"SIGTERM: stopped in stage teacher_sft at step 2/4"
  ):
    pipeline.run(short_demo(**{"eval.every": 0}), str(split))
  assert sorted(os.listdir(split / "teacher_sft" / "ckpt")) == ["2"]
  assert not (split / "teacher_sft" / "hf").exists()
  assert not (split / "teacher_sft" / pipeline.STAGE_FILE).exists()
  assert not (split / "student_kd").exists() and not (split / "ckpt").exists()

  # Ctrl-C during stage-1 KD: the teacher stage completed (exported), the student's did not.
  interrupt_at(monkeypatch, "student_kd", 2, signal.SIGINT)
  with pytest.raises(errors.Interrupted, match=r"SIGINT: stopped in stage student_kd at step 3/4"):
    pipeline.run(short_demo(**{"eval.every": 0}), str(split))
  assert (split / "teacher_sft" / "hf" / "config.json").is_file()
  assert (split / "teacher_sft" / pipeline.STAGE_FILE).is_file()
  assert not (split / "student_kd" / "hf").exists() and not (split / "ckpt").exists()

  monkeypatch.undo()
  resumed = pipeline.run(short_demo(**{"eval.every": 0}), str(split))
  assert [r["stage"] for r in resumed["stages"]] == ["teacher_sft", "student_kd", "main"]
  assert [r["resumed_from"] for r in resumed["stages"]] == [2, 3, 0]
  for stage in ("teacher_sft", "student_kd"):  # exports equal the uninterrupted run's
    for a, b in zip(params_of(tmp_path / "whole" / stage / "hf"), params_of(split / stage / "hf")):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  for key in ("opd/kl", "opd/loss"):  # and so does the OPD stage that follows
    np.testing.assert_allclose(
      resumed["stages"][2]["metrics"][key], whole["stages"][2]["metrics"][key], rtol=1e-5
    )

  # A completed pipeline is never redone: a re-run trains nothing and rewrites nothing.
  before = {p: os.stat(p).st_mtime_ns for p in split.rglob("*") if p.is_file()}
  again = pipeline.run(short_demo(**{"eval.every": 0}), str(split))
  assert again == json.loads((split / summary_lib.SUMMARY_FILE).read_text())
  assert {p: os.stat(p).st_mtime_ns for p in split.rglob("*") if p.is_file()} == before


def test_a_changed_config_is_refused_with_the_differing_fields(tmp_path):
  c = short_demo()
  pipeline.prepare_workdir(c, str(tmp_path))
  changed = short_demo()
  changed.rock.mode, changed.rock.lam = "dynamic", 0.5
  with pytest.raises(
    errors.WorkdirError,
    match=r"rock\.lam: 0\.0 -> 0\.5; rock\.mode: 'off' -> 'dynamic'.*"
    r"--allow_config_change",
  ):
    pipeline.prepare_workdir(changed, str(tmp_path))
  # Fields that do not change what is computed may differ (resuming on another mesh).
  moved = short_demo()
  moved.mesh.fsdp, moved.stop_after = 2, 3
  pipeline.prepare_workdir(moved, str(tmp_path))
  pipeline.prepare_workdir(changed, str(tmp_path), allow_config_change=True)
  assert json.loads((tmp_path / summary_lib.CONFIG_FILE).read_text())["rock"]["mode"] == "dynamic"


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  f = tmp_path / "run"
  f.write_text("not a directory")
  with pytest.raises(errors.WorkdirError, match=r"run is a file; it must be a directory"):
    pipeline.run(short_demo(), str(f))


def test_plan_chains_the_stages_through_their_exports(tmp_path):
  paths = {"train": "t.jsonl", "eval": "e.jsonl", "tokenizer": "tok"}
  teacher, student, main = stages.plan(short_demo(), str(tmp_path), paths)
  assert (teacher.name, teacher.config.teacher.source, teacher.config.opd.kd_ratio) == (
    "teacher_sft",
    "none",
    0.0,
  )
  assert teacher.config.model.arch.num_layers == short_demo().teacher.arch.num_layers
  assert student.config.teacher.path == str(teacher.export) == str(tmp_path / "teacher_sft/hf")
  assert student.config.opd.kd_ratio == short_demo().model.stage_kd_ratio
  assert (main.config.model.source, main.config.model.path) == ("hf", str(student.export))
  assert main.config.data.train_path == "t.jsonl" and main.workdir == tmp_path


def test_summary_effect_is_the_paired_difference_and_the_share_of_the_gap(tmp_path):
  rng = np.random.default_rng(0)
  t, b, a = (rng.random((50, 1)) < p for p in (0.9, 0.4, 0.7))
  rec = lambda name, correct: {
    "stage": name,
    "eval_correct": correct.astype(float).tolist(),
    "workdir": str(tmp_path / name),
    "export": None,
  }
  s = summary_lib.make_summary(
    [rec("teacher_sft", t), rec("student_kd", b), rec("main", a)], tmp_path
  )
  e = s["effect"]
  assert e["delta"] == pytest.approx(a.mean() - b.mean())
  assert e["gap_closed"] == pytest.approx((a.mean() - b.mean()) / (t.mean() - b.mean()))
  ref = evaluation.paired_bootstrap(a[:, 0], b[:, 0])
  assert (e["ci_low"], e["ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]))


def test_build_experiment_refuses_pipeline_sources(tmp_path):
  from rockjax.runner.experiment import build_experiment

  with pytest.raises(errors.ConfigError, match=r"model.source='kd' is a pipeline stage"):
    build_experiment(short_demo(), str(tmp_path))


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_single_stage_run_reports_pass_at_1_and_every_observed_id(tmp_path, capsys):
  from configs import tiny

  c = tiny.get_config()
  c.update_from_flattened_dict(
    {"steps": 3, "eval.every": 3, "eval.num_prompts": 8, "eval.max_new_tokens": 8, "mesh.fsdp": 1}
  )
  # The last stage: the rock analysis on 8 held-out prompts, pointed to by the summary.
  c.update_from_flattened_dict(
    {"analysis.enabled": True, "analysis.num_prompts": 8, "analysis.batch_size": 4}
  )
  summary = pipeline.run(c, str(tmp_path))
  report = summary["outputs"]["analysis_report"]
  assert report == str(tmp_path / "analysis" / "report.md")
  assert f"rock analysis {report}" in capsys.readouterr().out
  analysis = json.loads((tmp_path / "analysis" / "report.json").read_text())
  assert analysis["rocks"]["num_sequences"] == 8
  (stage,) = summary["stages"]
  correct = np.asarray(stage["eval_correct"])
  assert correct.shape == (8, 1) and set(np.unique(correct)) <= {0.0, 1.0}
  assert stage["metrics"]["eval/pass@1"] == pytest.approx(correct.mean())
  assert summary["effect"] is None  # no stage-1 student to compare with
  table = json.loads((tmp_path / "rocks.json").read_text())
  assert (table["stage"], table["quantity"]) == ("opd", "reverse_kl")
  assert len(table["ids"]) == table["observed_vocab"] > len(table["rows"]) == c.rock.k
  scores = [r["score"] for r in table["ids"]]
  assert scores == sorted(scores, reverse=True) and all(r["freq"] > 0 for r in table["ids"])
  assert [r["id"] for r in table["ids"] if r["selected"]] == [r["id"] for r in table["rows"]]
