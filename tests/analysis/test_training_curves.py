"""Training curves from hand-written metrics.jsonl files: the numbers and the plotted lines are
the logged values, missing files, keys and unreadable lines are said in the section, and a
workdir with no metrics at all gives a section without a figure instead of an error."""

import json

import numpy as np

from rockjax.analysis import report, training_curves


def _write(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def test_curves_and_table_from_metrics_files(tmp_path, saved):
  main = [
    {"step": 10, "opd/loss": 0.4, "opd/kl": 0.4, "rock/share_kl": 0.5, "rock/share_tokens": 0.3},
    {"step": 20, "opd/loss": 0.1, "opd/kl": 0.08, "rock/share_kl": 0.7, "rock/share_tokens": 0.4},
    "{not json",
    {"step": 20, "eval/pass@1": 0.825},
  ]
  _write(tmp_path / "metrics.jsonl", main)
  _write(tmp_path / "student_kd" / "metrics.jsonl", [{"step": 5, "opd/loss": 3.0, "opd/kl": 2.5}])
  (tmp_path / "student_kd" / "stage.json").write_text(json.dumps({"quantity": "forward_kl"}))
  sec = training_curves.section(str(tmp_path), str(tmp_path))
  rows = {r["name"]: r for r in sec.numbers["stages"]}
  assert not rows["teacher_sft"]["found"]
  m = rows["main"]
  assert (m["first_loss"], m["last_loss"], m["last_kl"]) == (0.4, 0.1, 0.08)
  assert (m["last_pass_at_1"], m["last_share_kl"], m["steps_logged"]) == (0.825, 0.7, 2)
  assert m["bad_lines"] == 1 and m["missing_text"] == "rock/share_grad_norm"
  assert rows["student_kd"]["quantity"] == "forward_kl"
  assert sec.numbers["main_pass_at_1"] == 0.825
  md = report.render_section(sec)
  assert "| main | 2 (20) | 0.4 -> 0.1 | reverse_kl" not in md  # no stage.json: 'divergence'
  assert (
    "| main | 2 (20) | 0.4 -> 0.1 | divergence: 0.4 -> 0.08 | 82.5% | 70.0% / 40.0% / n/a |" in md
  )
  assert "teacher_sft: no " in md and "main: not logged: rock/share_grad_norm." in md
  assert "main: 1 unreadable line(s) skipped." in md
  fig = saved[training_curves.FIGURE]
  loss_ax, kl_ax, pass_ax, share_ax = fig.axes
  assert fig._suptitle.get_text().startswith("Training curves")
  for ax in fig.axes:
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
  assert loss_ax.get_yscale() == "log" and kl_ax.get_yscale() == "log"
  main_loss = next(ln for ln in loss_ax.lines if ln.get_label() == "main")
  np.testing.assert_allclose(main_loss.get_xdata(), [10, 20])
  np.testing.assert_allclose(main_loss.get_ydata(), [0.4, 0.1])
  assert [ln.get_label() for ln in kl_ax.lines] == ["student_kd (forward_kl)", "main"]
  np.testing.assert_allclose(pass_ax.lines[0].get_ydata(), [0.825])


def test_no_metrics_at_all_says_so(tmp_path, saved):
  sec = training_curves.section(str(tmp_path), str(tmp_path))
  assert sec.figures == () and saved == {}
  md = report.render_section(sec)
  assert "No metrics.jsonl was found" in md and "main: no " in md
  assert sec.numbers["main_pass_at_1"] is None
