"""Two local processes with jax.distributed (the multi-host code path of a pod), on CPU."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["on_policy", "off_policy"])
def test_two_processes_train_and_checkpoint(tmp_path, mode):
  port = free_port()
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
  )
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "rockjax.main",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path}",
        "--config.steps=3",
        f"--config.opd.mode={mode}",
        "--distributed",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]  # written by process 0
  assert [l["step"] for l in lines] == [1, 2, 3]
  assert all(np.isfinite(l["opd/loss"]) for l in lines)
  assert "3" in os.listdir(tmp_path / "ckpt")
