"""kill -9 at planned moments of a pipeline (rollout, step, checkpoint write and commit, HF
export, stage record), then resume: the end state equals an uninterrupted run's, bit for bit.

The CI test makes 4 kills; the seeded 9-kill loop is slow (`pytest -m slow tests/faults`).
"""

import random
import signal

import pytest

from tests.faults import workdirs

# (phase, n-th call of the restarted process, delay range in seconds). Ordered along the
# pipeline so that every planned kill fires: the teacher SFT stage, its export, then OPD.
SLOW_PLAN = (
  ("task", (1, 1), (0.0, 0.0)),  # the synthetic task: tokenizer half written
  ("step", (1, 3), (0.0, 0.0)),  # teacher SFT step 1-3
  ("ckpt_commit", (1, 1), (0.0, 0.0)),  # its next checkpoint: tmp dir written, not renamed
  ("export", (1, 1), (0.0, 0.0)),  # weights in hf.tmp, no tokenizer, no rename
  ("stage_record", (1, 1), (0.0, 0.0)),  # hf exported, stage.json not written
  ("rollout", (1, 3), (0.0, 0.05)),  # OPD rollout 1-3 (a delay: mid-decode or the step after)
  ("ckpt_write", (1, 1), (0.005, 0.1)),  # the next OPD checkpoint, killed while it is written
  ("step", (1, 2), (0.0, 0.0)),
  ("ckpt_commit", (1, 1), (0.0, 0.0)),
)
CI_PLAN = (
  ("task", 1, 0.0),  # the synthetic task: tokenizer_config.json written, tokenizer.json not
  ("ckpt_commit", 2, 0.0),  # the teacher's step-4 checkpoint, written but not committed
  ("export", 1, 0.0),  # the teacher's export, half written
  ("rollout", 2, 0.0),  # the second OPD rollout
)


def draw(seed: int) -> list[tuple[str, int, float]]:
  """The slow loop's kill points: SLOW_PLAN's phases with seeded call numbers and delays."""
  rng = random.Random(seed)
  return [(phase, rng.randint(*n), round(rng.uniform(*delay), 3)) for phase, n, delay in SLOW_PLAN]


def kill_and_resume(workdir, plan) -> list[str]:
  """Run the driver once per kill point (each must die by SIGKILL), then once to the end."""
  fired = []
  for point in plan:
    proc = workdirs.driver(workdir, *point)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-3000:])
    fired.append(point)
  proc = workdirs.driver(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return fired


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_four_kills_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
  fired = kill_and_resume(tmp_path / "killed", CI_PLAN)
  assert len(fired) == 4
  workdirs.assert_same_run(uninterrupted, tmp_path / "killed")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_seeded_kill_loop_resumes_to_the_uninterrupted_state(tmp_path, uninterrupted, seed):
  plan = draw(seed)
  fired = kill_and_resume(tmp_path / "killed", plan)
  assert len(fired) == len(SLOW_PLAN) >= 5
  workdirs.assert_same_run(uninterrupted, tmp_path / "killed")


def test_a_metrics_line_torn_by_a_kill_is_cut_before_the_resumed_run_appends(tmp_path):
  """A kill mid-write leaves a line without its newline; appending to it would merge two."""
  from rockjax import metrics

  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "opd/kl": 0.5}\n{"step": 2, "opd/k')
  assert metrics.logged_at(str(tmp_path), 2) == {}  # the torn line is no record
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(2, {"opd/kl": 0.25, "opd/loss": float("nan")})
  writer.write(2, {"eval/pass@1": 0.5})  # an evaluation logged at the same step
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert lines[0] == '{"step": 1, "opd/kl": 0.5}' and len(lines) == 3
  logged = metrics.logged_at(str(tmp_path), 2)
  assert logged["opd/kl"] == 0.25 and logged["eval/pass@1"] == 0.5
  assert logged["opd/loss"] != logged["opd/loss"]  # a non-finite value comes back as nan
  assert metrics.logged_at(str(tmp_path), 1) == {"opd/kl": 0.5}
