"""A failed start leaves the workdir as it was (rockjax.runner.workdir.undo_failed_start), so
the fixed command is accepted; progress (a checkpoint, a stage) is never undone; a re-run of a
finished workdir says it has nothing to do."""

import json
import pathlib
import types

import pytest

from configs import tiny
from rockjax import errors
from rockjax.data.paths import task_files
from rockjax.runner import pipeline, stages
from rockjax.runner import workdir as workdir_lib
from rockjax.runner.summary import CONFIG_FILE
from tests.fixtures import make_tokenizer

GOOD = '{"prompt": "a b", "answer": "1"}\n'


def bad_data_config(tmp_path, **overrides):
  """configs/tiny.py on a data file whose 4th line is malformed JSON (found when the stage
  opens it, after the workdir recorded its config)."""
  path = tmp_path / "train.jsonl"
  path.write_text(GOOD * 3 + '{"prompt": "a b"\n' + GOOD * 12)
  tok = make_tokenizer(tmp_path / "tok", ["a", "b", "1"])
  c = tiny.get_config()
  c.update_from_flattened_dict(
    {
      "data.train_path": str(path),
      "data.tokenizer_path": str(tok),
      "data.prompts_per_step": 4,
      "steps": 1,
      "preflight.enabled": False,  # the teacher probe compiles: not what is tested here
      **overrides,
    }
  )
  return c


def tree(root) -> dict[str, str]:
  """{relative path: file text ('' for a directory)} of everything under root."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): ("" if p.is_dir() else p.read_text()) for p in root.rglob("*")}


def test_a_failed_start_leaves_no_workdir_and_the_fixed_command_is_accepted(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  with pytest.raises(errors.InputError, match=r"train\.jsonl:4: invalid JSON"):
    pipeline.run(bad_data_config(tmp_path), str(workdir))
  assert not workdir.exists()
  # The fixed command gets past the workdir's check to its stage (not trained here: the
  # stage stops at once, as a stop_after run does).
  fixed = bad_data_config(tmp_path, **{"data.skip_bad_records": True})
  monkeypatch.setattr(pipeline, "_run_stage", lambda stage, profile_steps=None: None)
  assert pipeline.run(fixed, str(workdir)) == {"stages": [], "complete": False}
  assert json.loads((workdir / CONFIG_FILE).read_text())["data"]["skip_bad_records"] is True


def test_a_failed_start_in_a_used_workdir_restores_its_config_and_adds_nothing(tmp_path):
  """--allow_config_change rewrote config.json, then the start failed: the old one is back."""
  workdir = tmp_path / "run"
  workdir_lib.prepare_workdir(tiny.get_config(), str(workdir))
  (workdir / "notes.txt").write_text("mine")
  before = tree(workdir)
  changed = tiny.get_config()
  changed.seed = 1
  with pytest.raises(errors.InputError), workdir_lib.undo_failed_start(str(workdir)):
    workdir_lib.prepare_workdir(changed, str(workdir), allow_config_change=True)
    (workdir / "task" / "tokenizer").mkdir(parents=True)
    raise errors.InputError("train.jsonl:4: invalid JSON")
  assert tree(workdir) == before


def test_progress_is_never_undone(tmp_path):
  """A run that wrote a checkpoint step (or stage.json) keeps everything it wrote."""
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError), workdir_lib.undo_failed_start(str(workdir)):
    (workdir / "ckpt" / "3").mkdir(parents=True)
    (workdir / CONFIG_FILE).write_text("{}")
    raise RuntimeError("after the first checkpoint")
  assert sorted(tree(workdir)) == ["ckpt", "ckpt/3", CONFIG_FILE]
  (workdir / "teacher_sft").mkdir()
  with pytest.raises(KeyboardInterrupt), workdir_lib.undo_failed_start(str(workdir)):
    (workdir / "teacher_sft" / "stage.json").write_text("{}")
    (workdir / "task").mkdir()
    raise KeyboardInterrupt
  assert (workdir / "teacher_sft" / "stage.json").exists() and (workdir / "task").exists()
  # No progress: only what this start added goes; the checkpoints stay.
  with pytest.raises(RuntimeError), workdir_lib.undo_failed_start(str(workdir)):
    (workdir / "tb").mkdir()
    (workdir / "teacher_sft" / "metrics.tmp").write_text("")
    raise RuntimeError("before any step")
  assert sorted(tree(workdir)) == [
    "ckpt",
    "ckpt/3",
    CONFIG_FILE,
    "task",
    "teacher_sft",
    "teacher_sft/stage.json",
  ]


def test_a_rerun_of_a_finished_workdir_says_it_has_nothing_to_do(tmp_path, capsys):
  """Every stage marked complete (stage.json, as a finished run writes it): the re-run trains
  nothing and says so in one line before the summary."""
  c = tiny.get_config()
  done = types.SimpleNamespace(
    metrics={"opd/kl": 0.5, "opd/loss": 0.5},
    eval_correct=None,
    step=c.steps,
    seconds=1.0,
    experiment=types.SimpleNamespace(start_step=0),
  )
  for stage in stages.plan(c, str(tmp_path), task_files(c, str(tmp_path))):
    for d in (stage.workdir, stage.export):  # trained and exported
      if d is not None:
        d.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_json(stage.workdir / stages.STAGE_FILE, pipeline._stage_record(stage, done))
  capsys.readouterr()
  summary = pipeline.run(c, str(tmp_path))
  out = capsys.readouterr().out.splitlines()
  assert out[0] == f"nothing to do: every stage in {tmp_path} is complete (summary below)"
  assert "=== rockjax run summary ===" in out
  assert [r["stage"] for r in summary["stages"]] == ["main"]
