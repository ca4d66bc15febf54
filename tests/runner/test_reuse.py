"""pipeline.reuse: a new workdir takes another workdir's completed preliminary stages when
their configs match (fields only the main stage reads may differ), and trains the rest."""

import json

import numpy as np
import pytest

from rockjax import errors
from rockjax.runner import pipeline, stages
from rockjax.runner import summary as summary_lib
from rockjax.runner import workdir as workdir_lib
from tests.runner.test_pipeline import params_of, short_demo


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished three-stage run (evaluation off: it is tested elsewhere) and its summary."""
  root = tmp_path_factory.mktemp("reuse") / "first"
  config = short_demo(**{"eval.every": 0, "ckpt.export_hf": True})
  return root, pipeline.run(config, str(root))


def test_reused_stages_are_not_trained_and_the_main_stage_starts_from_their_exports(
  finished, tmp_path, capsys
):
  first, _ = finished
  again = tmp_path / "again"
  # The same config (export and rock tracking aside): the main stage must train exactly as the
  # first run's did, from the first run's stage-1 export.
  config = short_demo(**{"eval.every": 0, "ckpt.export_hf": True, "pipeline.reuse": str(first)})
  summary = pipeline.run(config, str(again))
  assert not (again / "teacher_sft").exists() and not (again / "student_kd").exists()
  by_name = {r["stage"]: r for r in summary["stages"]}
  assert by_name["teacher_sft"]["reused_from"] == str(first)
  assert by_name["student_kd"]["workdir"] == str(first / "student_kd")
  assert not by_name["main"].get("reused_from")
  recorded = json.loads((again / summary_lib.CONFIG_FILE).read_text())
  assert recorded["pipeline"]["reuse"] == str(first)
  for a, b in zip(
    params_of(first / stages.EXPORT_DIR), params_of(again / stages.EXPORT_DIR), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert f"(reused from {first})" in capsys.readouterr().out


def test_rock_freeze_after_a_run_reuses_both_stages_and_the_summary_says_so(finished, tmp_path):
  first, _ = finished
  config = short_demo(
    **{
      "eval.every": 0,
      "pipeline.reuse": str(first),
      "rock.mode": "dynamic",
      "rock.lam": 0.0,
      "rock.warmup_steps": 1,
      "rock.select_every": 1,
    }
  )
  summary = pipeline.run(config, str(tmp_path / "freeze"))
  assert [r.get("reused_from") for r in summary["stages"]] == [str(first), str(first), None]
  text = summary_lib.format_summary(summary)
  assert "rock.mode='dynamic', rock.lam=0" in text and "frozen" in text


def test_a_stage_whose_config_differs_is_trained_here_with_the_fields_named(
  finished, tmp_path, capsys
):
  first, _ = finished
  # A longer stage 1: the teacher is reused, stage 1 differs in model.stage_steps.
  config = short_demo(**{"eval.every": 0, "pipeline.reuse": str(first), "model.stage_steps": 6})
  plan = stages.plan(config, str(tmp_path / "w"), {"train": "t", "eval": "e", "tokenizer": "k"})
  assert plan[0].reused_from == str(first)
  assert not plan[1].reused_from
  assert "model.stage_steps: 4 -> 6" in plan[1].reuse_note
  assert plan[1].workdir == tmp_path / "w" / "student_kd"


def test_reuse_of_a_directory_that_is_not_a_workdir_is_one_line(tmp_path):
  config = short_demo(**{"pipeline.reuse": str(tmp_path)})
  with pytest.raises(errors.ConfigError, match=r"pipeline.reuse=.*no config.json there"):
    stages.plan(config, str(tmp_path / "w"), {"train": "t", "eval": "e", "tokenizer": "k"})


@pytest.mark.parametrize(
  "lam, share, warned", [(0.0, 0.7, True), (0.0, 0.3, False), (0.5, 0.9, True), (1.0, 0.9, False)]
)
def test_summary_warns_when_frozen_rocks_carry_most_of_the_loss(lam, share, warned):
  record = {
    "rock": {"mode": "dynamic", "lam": lam, "ids": "top-10 by rock_score"},
    "metrics": {"rock/share_kl": share},
  }
  lines = summary_lib.rock_lines(record)
  assert any("WARNING" in line and f"{100 * share:.0f}%" in line for line in lines) == warned


def test_summary_compares_the_main_stage_with_the_reused_workdirs(tmp_path):
  def record(stage, correct):
    return {
      "stage": stage,
      "eval_correct": [[c] for c in correct],
      "workdir": str(tmp_path),
      "export": None,
      "rock": {"mode": "off", "lam": 0.0, "ids": "top-10"},
    }

  # Hand-computed: the reference gets 3 of 4 prompts, this run 1 of 4 (one it had, none new).
  ref = record("main", [1, 0, 1, 1])
  records = [record("student_kd", [0, 0, 1, 0]), record("main", [0, 0, 1, 0])]
  out = summary_lib.make_summary(records, tmp_path, reference=ref)
  v = out["versus_reused"]
  assert (v["before"], v["after"], v["delta"], v["num_prompts"]) == (0.75, 0.25, -0.5, 4)
  assert v["ci_low"] <= -0.5 <= v["ci_high"]
  assert summary_lib.make_summary(records, tmp_path)["versus_reused"] is None


def test_a_field_added_since_the_workdir_was_made_and_left_empty_is_no_change():
  config = short_demo()
  recorded = config.to_dict()
  del recorded["pipeline"]  # a workdir made before pipeline.reuse existed
  assert workdir_lib.config_changes(recorded, config) == []
  config.pipeline.reuse = "/elsewhere"
  assert workdir_lib.config_changes(recorded, config) == [
    "pipeline.reuse: '<absent>' -> '/elsewhere'"
  ]
  # A boolean field added later and left off (data.pack) is no change either; turned on, it is.
  del recorded["data"]["pack"]
  config.pipeline.reuse = ""
  assert workdir_lib.config_changes(recorded, config) == []
  config.data.pack = True
  assert workdir_lib.config_changes(recorded, config) == ["data.pack: '<absent>' -> True"]


def test_a_later_command_with_the_plain_config_plans_with_the_recorded_reuse(tmp_path):
  """rockjax.analyze on a reusing workdir with the config file alone finds the reused exports."""
  recorded = short_demo(**{"pipeline.reuse": "/first"}).to_dict()
  (tmp_path / summary_lib.CONFIG_FILE).write_text(json.dumps(recorded))
  plain = short_demo()
  assert stages.with_recorded_reuse(plain, str(tmp_path)).pipeline.reuse == "/first"
  assert plain.pipeline.reuse == ""  # the caller's config is not changed
  # A reuse the command names itself stands; a workdir that reused nothing changes nothing.
  mine = short_demo(**{"pipeline.reuse": "/other"})
  assert stages.with_recorded_reuse(mine, str(tmp_path)).pipeline.reuse == "/other"
  assert stages.with_recorded_reuse(plain, str(tmp_path / "absent")) is plain
