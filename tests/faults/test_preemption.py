"""Preemption on a pod: a SIGTERM in the middle of a long rollout abandons it between two decode
segments, saves the last finished step and exits; kill -9 while an asynchronous checkpoint is
still being written loses only that checkpoint. Either way the resumed run ends bit for bit
where an uninterrupted run ends."""

import json
import re
import signal

import pytest

from tests.faults import workdirs

LONG = "long_rollout"  # kill_driver's FAULT_CONFIG: 4 OPD steps, rollouts of 512 in segments of 8


@pytest.fixture(scope="module")
def long_uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp("long_whole")
  proc = workdirs.driver(root, config=LONG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root


def _complete_steps(ckpt_dir) -> list[str]:
  return sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit())


def _report(stderr: str) -> dict:
  lines = [line for line in stderr.splitlines() if line.startswith("FAULT_REPORT ")]
  assert len(lines) == 1, stderr[-3000:]
  return json.loads(lines[0].removeprefix("FAULT_REPORT "))


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_sigterm_mid_rollout_abandons_it_and_resumes_to_the_same_run(tmp_path, long_uninterrupted):
  run = tmp_path / "preempted"
  # SIGTERM while the 3rd rollout's 4th segment (positions 25..32 of 512) is running.
  proc = workdirs.driver(run, "sigterm_rollout", 3, 4, config=LONG)
  assert proc.returncode == 2, proc.stderr[-3000:]
  report = _report(proc.stderr)
  assert report["segments_after_signal"] == 0, report  # no segment started after the signal
  # (tqdm.write: on stdout, beside the progress bar)
  assert "SIGTERM: rollout of step 3 abandoned after 33/512 positions; saving step 2" in proc.stdout
  last = [line for line in proc.stderr.splitlines() if line.startswith("rockjax: error:")][-1]
  assert re.fullmatch(r"rockjax: error: SIGTERM: stopped in stage \w+ at step 2/4 .*", last), last
  # The last finished step is saved, with the data position before the abandoned step's prompts.
  assert _complete_steps(run / "ckpt") == ["2"]
  data = json.loads((run / "ckpt" / "2" / "data" / "process_0-of-1.json").read_text())
  assert data["next_batch"] == 2, data
  assert workdirs.leftovers(run) == []
  print(f"SIGTERM mid-rollout: {report}")

  proc = workdirs.driver(run, config=LONG)  # resume: the rollout of step 3 is drawn again
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdirs.assert_same_run(long_uninterrupted, run, stages=(".",))


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_kill_during_an_async_save_falls_back_to_the_previous_checkpoint(tmp_path, uninterrupted):
  run = tmp_path / "killed"
  # Commits: teacher 2, 4; OPD 2, 4, 6. The 4th (OPD step 4) is still in flight when step 5
  # starts (exit 3 would mean the save held the loop), and then the process is killed.
  proc = workdirs.driver(run, "ckpt_async", 4, 0)
  assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
  assert _complete_steps(run / "ckpt") == ["2"]
  assert "ckpt/4.orbax-checkpoint-tmp" in workdirs.leftovers(run)

  proc = workdirs.driver(run)  # resumes from step 2; the half-made step 4 is never read
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdirs.assert_same_run(uninterrupted, run)
