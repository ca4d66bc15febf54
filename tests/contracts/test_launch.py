"""launch/: each script's dry run prints exactly the commands it would run (nothing runs).

Every printed command line (`+ ...`) is parsed back into its argv by bash itself, so the
assertions see the words the real run would execute, quoting included.
"""

import importlib.metadata
import os
import re
import subprocess
import tomllib

import jax
import pytest

from tests.fixtures import REPO

CONFIG = "configs/qwen3_30b_a3b_to_4b.py"
# Every launch passes the compilation cache beside the workdir (CACHE_DIR to move it).
GS_CACHE = "--config.cache.compilation=gs://b/rockjax_cache/jax_compilation"
SCRIPTS = ["launch/lib.sh", "launch/tpu_pod.sh", "launch/xpk.sh", "launch/gpu_slurm.sbatch"]
_SUFFIX = re.compile(r"(?: >> (?P<log>\S+) 2>&1)? &$")


def launch(script, *args, **env):
  """Runs `script --dry-run args` (or without the flag when `env` has DRY_RUN=1) with `env` on
  top of a clean environment."""
  base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DRY_RUN"))}
  flag = [] if env.get("DRY_RUN") == "1" else ["--dry-run"]
  return subprocess.run(
    ["bash", script, *flag, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**base, **env},
    timeout=60,
  )


def commands(stdout):
  """[(argv, log or None, background)] of the `+ ` lines, argv as bash parses them."""
  out = []
  for line in stdout.splitlines():
    if not line.startswith("+ "):
      continue
    text, m = line[2:], _SUFFIX.search(line)
    if m:
      text = text[: m.start() - 2]
    argv = subprocess.run(
      ["bash", "-c", f"printf '%s\\0' {text}"], capture_output=True, text=True, check=True
    ).stdout.split("\0")[:-1]
    out.append((argv, m and m.group("log"), bool(m)))
  return out


def ran(proc):
  assert proc.returncode == 0, proc.stderr
  return commands(proc.stdout)


@pytest.fixture(autouse=True)
def _git_checkout():
  if subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True).returncode:
    pytest.skip("the TPU scripts ship the git HEAD: needs a git checkout")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  subprocess.run(["bash", "-n", script], cwd=REPO, check=True)


TPU = {"TPU_NAME": "my-tpu", "ZONE": "us-east5-a", "NUM_WORKERS": "4", "LOG_DIR": "logs/r1"}


def test_tpu_pod_ships_head_and_runs_every_worker():
  proc = launch("launch/tpu_pod.sh", CONFIG, "gs://b/run", "--config.steps=10", **TPU)
  cmds = ran(proc)
  version = subprocess.run(
    ["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
  ).stdout.strip()
  tarball = next(x[9:] for a, _, _ in cmds for x in a if x.startswith("--output="))
  assert ["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"] in [
    a for a, _, _ in cmds
  ]
  scp = [a for a, _, _ in cmds if a[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and "scp" in a]
  assert scp == [
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      tarball,
      f"my-tpu:rockjax-{version}.tar.gz",
      "--zone=us-east5-a",
      "--worker=all",
    ]
  ]
  ssh = [(a, log) for a, log, bg in cmds if bg]
  assert [log for _, log in ssh] == [f"logs/r1/worker-{w}.log" for w in range(4)]
  for w, (argv, _) in enumerate(ssh):
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert argv[6:8] == ["--zone=us-east5-a", f"--worker={w}"]
    remote = argv[8].removeprefix("--command=")
    assert remote == ssh[0][0][8].removeprefix("--command=")  # the same on every worker
  lines = remote.splitlines()
  # Installed once per code version: the marker file is keyed by the commit.
  assert f"code=$HOME/rockjax/{version} venv=$HOME/rockjax/venv" in lines
  assert "if [ ! -f $code/.installed ]; then" in lines
  assert '  $venv/bin/pip install -q -e "$code[tpu]"' in lines
  assert "  touch $code/.installed" in lines
  assert any(line.startswith("sudo fuser -k -9 /dev/accel*") for line in lines)  # stale TPU users
  assert lines[-1] == (
    "exec env $venv/bin/python -m rockjax.main --distributed "
    f"--config={CONFIG} --workdir=gs://b/run {GS_CACHE} --config.steps=10"
  )
  assert not any("queued-resources" in " ".join(a) for a, _, _ in cmds)
  assert "dcn_data" not in remote  # one slice: no DCN axis


def test_tpu_pod_spot_queued_resource_restarts_after_preemption():
  """Attempt 1 is preempted (worker 0 fails, the queued resource is SUSPENDED): the TPU is
  deleted and re-created, the code re-shipped and the run restarted."""
  env = dict(
    TPU,
    QUEUED="1",
    SPOT="1",
    ACCELERATOR_TYPE="v5p-16",
    RUNTIME_VERSION="v2-alpha-tpuv5",
    AOT_TOPOLOGY="v5p:2x2x2",
    DRY_RUN_STATES="NONE WAITING_FOR_RESOURCES ACTIVE SUSPENDED SUSPENDED ACTIVE",
    DRY_RUN_FAIL_ATTEMPTS="1",
  )
  proc = launch("launch/tpu_pod.sh", CONFIG, "gs://b/run", **env)
  cmds = [a for a, _, _ in ran(proc)]
  assert cmds[0] == [
    "python3",
    "-m",
    "rockjax.main",
    "--dry_run",
    "--aot_topology=v5p:2x2x2",
    f"--config={CONFIG}",
  ]
  create = [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "create",
    "my-tpu",
    "--zone=us-east5-a",
    "--accelerator-type=v5p-16",
    "--runtime-version=v2-alpha-tpuv5",
    "--node-id=my-tpu",
    "--spot",
  ]
  delete = ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-tpu"]
  kinds = []
  for a in cmds:
    if a == create:
      kinds.append("create")
    elif a[:6] == delete:
      kinds.append("delete")
    elif a[:2] == ["sleep", "60"]:
      kinds.append("wait")
    elif "scp" in a:
      kinds.append("ship")
    elif "--worker=all" in a and "ssh" in a:
      kinds.append("stop-all")
  assert kinds == ["create", "wait", "ship", "stop-all", "delete", "create", "ship"]
  assert "attempt 2" in proc.stderr and "preempted (queued resource SUSPENDED)" in proc.stderr
  # Without restarts left the same preemption ends the launch with an error.
  proc = launch("launch/tpu_pod.sh", CONFIG, "gs://b/run", **env, MAX_RESTARTS="0")
  assert proc.returncode == 2 and "giving up" in proc.stderr


def test_tpu_pod_failure_on_a_healthy_tpu_is_not_restarted():
  env = dict(TPU, QUEUED="1", ACCELERATOR_TYPE="v5p-16", RUNTIME_VERSION="v2-alpha-tpuv5")
  proc = launch("launch/tpu_pod.sh", CONFIG, "gs://b/run", **env, DRY_RUN_FAIL_ATTEMPTS="1")
  assert proc.returncode == 2 and "not a preemption" in proc.stderr
  assert "attempt 2" not in proc.stderr


def test_tpu_pod_multislice_adds_the_dcn_axis():
  env = dict(TPU, NUM_WORKERS="2", NUM_SLICES="2", QUEUED="1")
  env.update(ACCELERATOR_TYPE="v5p-16", RUNTIME_VERSION="v2-alpha-tpuv5", DRY_RUN_STATES="NONE")
  env["DRY_RUN"] = "1"  # the environment form of --dry-run
  cmds = ran(launch("launch/tpu_pod.sh", CONFIG, "gs://b/run", **env))
  create = next(a for a, _, _ in cmds if a[3:5] == ["queued-resources", "create"])
  assert "--node-count=2" in create and "--node-prefix=my-tpu" in create
  ssh = [(a[5], a[7], log) for a, log, bg in cmds if bg]
  assert ssh == [
    ("my-tpu-0", "--worker=0", "logs/r1/worker-0.log"),
    ("my-tpu-0", "--worker=1", "logs/r1/worker-1.log"),
    ("my-tpu-1", "--worker=0", "logs/r1/worker-2.log"),
    ("my-tpu-1", "--worker=1", "logs/r1/worker-3.log"),
  ]
  remote = next(a for a, _, bg in cmds if bg)[8]
  assert remote.splitlines()[-1].endswith(
    f"--workdir=gs://b/run {GS_CACHE} --config.mesh.dcn_data=2"
  )


@pytest.mark.parametrize(
  "env, message",
  [
    ({"ZONE": "z"}, "set TPU_NAME"),
    ({**TPU, "QUEUED": "1"}, "set ACCELERATOR_TYPE"),
    ({**TPU, "NUM_SLICES": "2"}, "NUM_SLICES=2 needs QUEUED=1"),
  ],
)
def test_tpu_pod_names_what_to_set(env, message):
  proc = launch("launch/tpu_pod.sh", CONFIG, "gs://b/run", **env)
  assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


def test_xpk_workload():
  env = {
    "CLUSTER": "c1",
    "TPU_TYPE": "v5p-64",
    "NUM_SLICES": "2",
    "WORKLOAD": "w1",
    "ENV_VARS": "LIBTPU_INIT_ARGS=--xla_x=1 A=2",
  }
  cmds = ran(launch("launch/xpk.sh", CONFIG, "gs://b/run", "--config.steps=10", **env))
  argv = cmds[-1][0]
  code = next(a for a in argv if a.startswith("--script-dir=")).split("=", 1)[1]
  assert ["git", "-C", REPO, "archive", "--format=tar", f"--output={code}.tar", "HEAD"] in [
    a for a, _, _ in cmds
  ]
  assert argv == [
    "xpk",
    "workload",
    "create",
    "--cluster=c1",
    "--workload=w1",
    "--tpu-type=v5p-64",
    "--num-slices=2",
    "--max-restarts=10",
    "--termination-grace-period-seconds=300",
    "--env=LIBTPU_INIT_ARGS=--xla_x=1",
    "--env=A=2",
    "--base-docker-image=python:3.11",
    f"--script-dir={code}",
    "--command=pip install -q -e '.[tpu]' && python -m rockjax.main --distributed "
    f"--config={CONFIG} --workdir=gs://b/run {GS_CACHE} --config.mesh.dcn_data=2 "
    "--config.steps=10",
  ]
  cmds = ran(launch("launch/xpk.sh", CONFIG, "gs://b/run", **env, DOCKER_IMAGE="gcr.io/p/img"))
  assert [a[0] for a, _, _ in cmds] == ["xpk"]  # nothing to ship: the image holds the code
  assert "--docker-image=gcr.io/p/img" in cmds[0][0]
  assert cmds[0][0][-1].startswith("--command=python -m rockjax.main --distributed")


def sbatch_directives():
  with open(os.path.join(REPO, "launch/gpu_slurm.sbatch")) as f:
    return [line.split()[1] for line in f if line.startswith("#SBATCH ")]


def test_gpu_slurm_directives():
  d = sbatch_directives()
  for want in (
    "--ntasks-per-node=1",
    "--signal=B:TERM@300",  # SIGTERM to the batch shell 5 minutes before the limit
    "--requeue",
    "--open-mode=append",
    "--output=logs/%x-%j.out",
  ):
    assert want in d
  assert not [x for x in d if x.startswith(("--nodes", "--gpus"))]  # from NODES / GPUS_PER_NODE


def test_gpu_slurm_submit():
  env = dict(NODES="4", GPUS_PER_NODE="4", PARTITION="gpu", ACCOUNT="lab", TIME="12:00:00")
  cmds = ran(launch("launch/gpu_slurm.sbatch", CONFIG, "/shared/run", **env, SIGNAL_SECONDS="600"))
  assert cmds[-1][0] == [
    "sbatch",
    "--nodes=4",
    "--gpus-per-node=4",
    f"--chdir={REPO}",
    "--signal=B:TERM@600",
    "--partition=gpu",
    "--account=lab",
    "--time=12:00:00",
    f"{REPO}/launch/gpu_slurm.sbatch",
    CONFIG,
    "/shared/run",
  ]
  proc = launch("launch/gpu_slurm.sbatch", CONFIG, "/shared/run", NODES="4")
  assert proc.returncode == 2 and "set GPUS_PER_NODE" in proc.stderr


SLURM_JOB = {
  "SLURM_JOB_ID": "77",
  "SLURM_JOB_NAME": "rockjax",
  "SLURM_JOB_NUM_NODES": "4",
  "VENV": "/opt/venv",
}


def test_gpu_slurm_job_runs_one_task_per_node():
  proc = launch("launch/gpu_slurm.sbatch", CONFIG, "/shared/run", "--config.steps=10", **SLURM_JOB)
  cmds = ran(proc)
  argv = [a for a, _, _ in cmds]
  assert ["source", "/opt/venv/bin/activate"] in argv
  assert ["export", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90"] in argv
  assert ["export", "NCCL_DEBUG=WARN"] in argv
  srun = [a for a, _, bg in cmds if bg]
  assert srun == [
    [
      "srun",
      "--ntasks-per-node=1",
      "--kill-on-bad-exit=1",
      "--open-mode=append",
      "--output=logs/rockjax-77/node-%n.log",
      "python",
      "-m",
      "rockjax.main",
      "--distributed",
      f"--config={CONFIG}",
      "--workdir=/shared/run",
      # the compilation cache beside the workdir, read back by a requeued job
      "--config.cache.compilation=/shared/rockjax_cache/jax_compilation",
      "--config.mesh.dcn_data=4",  # data across the 4 nodes; the config's mesh within one
      "--config.steps=10",
    ]
  ]
  assert not [a for a in argv if a[0] in ("scontrol", "kill")]


def test_gpu_slurm_job_checkpoints_and_requeues_on_sigterm():
  proc = launch("launch/gpu_slurm.sbatch", CONFIG, "/w", **SLURM_JOB, DRY_RUN_SIGTERM="1")
  argv = [a for a, _, _ in ran(proc)]
  assert argv[-2][:2] == ["kill", "-TERM"]  # forwarded to srun, which passes it to the tasks
  assert argv[-1] == ["scontrol", "requeue", "77"]
  proc = launch(
    "launch/gpu_slurm.sbatch",
    CONFIG,
    "/w",
    **SLURM_JOB,
    DRY_RUN_SIGTERM="1",
    SLURM_RESTART_COUNT="3",
    MAX_REQUEUES="3",
  )
  assert proc.returncode == 2 and "MAX_REQUEUES" in proc.stderr
  assert "scontrol" not in proc.stdout


def test_tpu_extra_pins_jax_own_tpu_requirements():
  """pyproject's `tpu` extra = jax[tpu] at the installed jax, with the libtpu/jaxlib pins that
  jax's own `tpu` extra declares."""
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    extra = tomllib.load(f)["project"]["optional-dependencies"]["tpu"]
  assert f"jax[tpu]=={jax.__version__}" in extra
  jax_tpu = [
    r.split(";")[0].replace(" ", "")
    for r in importlib.metadata.requires("jax")
    if 'extra == "tpu"' in r
  ]
  libtpu = next(r for r in jax_tpu if r.startswith("libtpu"))
  assert libtpu in extra
  assert f"jaxlib=={jax.__version__}" in extra
  assert any(r.startswith("jaxlib") for r in jax_tpu)
