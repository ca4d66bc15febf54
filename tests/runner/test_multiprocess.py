"""Two local processes with jax.distributed (the multi-host code path of a pod), on CPU."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures import REPO


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


CPU_ENV = dict(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def start_run(workdir, *flags, processes=2, devices=4):
  """`processes` local processes of rockjax.main on configs/tiny.py, `devices` CPU devices each."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **CPU_ENV)
  cmd = [sys.executable, "-m", "rockjax.main", "--config=configs/tiny.py", f"--workdir={workdir}"]
  cmd += list(flags)
  if processes > 1:
    cmd += [
      "--distributed",
      f"--coordinator_address=127.0.0.1:{free_port()}",
      f"--num_processes={processes}",
    ]
  return [
    subprocess.Popen(
      cmd + ([f"--process_id={i}"] if processes > 1 else []),
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(processes)
  ]


def finish(procs):
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]


def metrics(workdir):
  """{step: metrics} from metrics.jsonl (written by process 0)."""
  return {l["step"]: l for l in map(json.loads, open(workdir / "metrics.jsonl"))}


@pytest.mark.slow
@pytest.mark.parametrize(
  "mode, prompts, mesh",
  [("on_policy", 8, ("-1", "1")), ("off_policy", 2, ("1", "-1"))],
)
def test_two_processes_train_and_checkpoint(tmp_path, mode, prompts, mesh):
  """On 2 x 4 devices: 8 prompts split over fsdp=8, each host reads its own 4; 2 rows on
  fsdp=1 x context=8 (the 64 tokens split, the rows not: off-policy): both hosts read both."""
  flags = [
    "--config.steps=3",
    f"--config.opd.mode={mode}",
    f"--config.data.prompts_per_step={prompts}",
    f"--config.mesh.fsdp={mesh[0]}",
    f"--config.mesh.context={mesh[1]}",
  ]
  finish(start_run(tmp_path, *flags))
  lines = metrics(tmp_path)
  assert sorted(lines) == [1, 2, 3]
  assert all(np.isfinite(l["opd/loss"]) for l in lines.values())
  assert "3" in os.listdir(tmp_path / "ckpt")


@pytest.mark.slow
def test_one_prompt_on_two_hosts_stopped_and_resumed_equals_one_host(tmp_path):
  """The paper's one prompt per step on 2 hosts: both read it, the rollout's 2 rows split over
  fsdp=2 and their 36 tokens over context=4. Stopped after 3 steps and resumed to 6 (each host
  restoring its own data position), the losses, RockStats and data position equal one
  8-device process's 6 steps."""
  one, two = tmp_path / "one", tmp_path / "two"
  flags = ["--config.data.prompts_per_step=1", "--config.mesh.fsdp=2", "--config.mesh.context=4"]
  reference = start_run(one, *flags, processes=1, devices=8)
  finish(start_run(two, *flags, "--config.stop_after=3"))
  assert sorted(metrics(two)) == [1, 2, 3]
  first = [json.loads((two / f"ckpt/3/data/process_{i}-of-2.json").read_text()) for i in (0, 1)]
  assert [p["next_batch"] for p in first] == [3, 3]
  finish(start_run(two, *flags))
  finish(reference)

  # Same rollouts and data; float32 sums reduced across processes in another order (rtol).
  want, got = metrics(one), metrics(two)
  assert sorted(want) == sorted(got) == [1, 2, 3, 4, 5, 6]
  for step in want:
    for key in ("opd/loss", "opd/kl", "rock/share_tokens"):
      if key in want[step]:
        np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-4, err_msg=key)
  rocks = [json.loads((d / "rocks.json").read_text()) for d in (one, two)]
  table = [{r["id"]: (r["freq"], r["mean_kl"], r["selected"]) for r in t["ids"]} for t in rocks]
  assert table[0].keys() == table[1].keys() and len(table[0]) > 5
  for i, (freq, mean_kl, selected) in table[0].items():
    assert table[1][i][0] == freq and table[1][i][2] == selected, i
    np.testing.assert_allclose(table[1][i][1], mean_kl, rtol=1e-4)
  (alone,) = [json.loads((one / "ckpt/6/data/process_0-of-1.json").read_text())]
  assert alone["next_batch"] == 6
  for i in (0, 1):  # same position and same fingerprint (the same record stream)
    assert json.loads((two / f"ckpt/6/data/process_{i}-of-2.json").read_text()) == alone
