"""`python -m rockjax.main` with bad input: one stderr line naming the culprit, exit 2, no
workdir. Each case is a subprocess (parse-time cases < 1 s, validation cases import jax)."""

import json

import pytest

from tests.fixtures import assert_one_line_error, cli


def bad_config_file(tmp_path):
  path = tmp_path / "broken.py"
  path.write_text(
    "from configs import default\n\n\ndef get_config():\n"
    "  c = default.get_config()\n  c.rock.modee = 'static'\n  return c\n"
  )
  return str(path)


CASES = {  # name -> (extra args (WORKDIR / TMP substituted), substrings of the error line)
  "unknown_field": (
    ["--config=configs/tiny.py", "--config.rock.lamda=0"],
    ["unknown config field 'rock.lamda' (did you mean 'rock.lam'?)"],
  ),
  "renamed_field": (
    ["--config=configs/tiny.py", "--config.opt.grad_accum=2"],
    ["unknown config field 'opt.grad_accum' (did you mean 'opt.micro_batches'?)"],
  ),
  "bad_type": (
    ["--config=configs/tiny.py", "--config.steps=ten"],
    ["config field 'steps'", "'ten'", "int"],
  ),
  "missing_config_file": (["--config=configs/nope.py"], ["configs/nope.py", "no such"]),
  "config_fails_to_import": (["--config=BROKEN"], ["broken.py:6", "AttributeError", "modee"]),
  "workdir_is_file": (
    ["--config=configs/tiny.py", "--workdir=TMP/afile"],
    ["--workdir=", "afile", "must be a directory"],
  ),
  "no_workdir": (["--config=configs/tiny.py", "--workdir="], ["--workdir is required"]),
  "no_config": ([], ["--config is required"]),
  # These pass the parser and fail validation (after importing jax, before any directory).
  "bad_enum": (
    ["--config=configs/tiny.py", "--config.rock.mode=dynamc"],
    ["rock.mode='dynamc': expected one of 'off', 'static', 'dynamic'"],
  ),
  "missing_data_file": (
    ["--config=configs/tiny.py", "--config.data.train_path=TMP/none.jsonl"],
    ["data.train_path=", "none.jsonl", "no such file"],
  ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_workdir(tmp_path, name):
  args, needles = CASES[name]
  (tmp_path / "afile").write_text("")
  workdir = tmp_path / "run"
  args = [
    a.replace("TMP", str(tmp_path)).replace("BROKEN", bad_config_file(tmp_path)) for a in args
  ]
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={workdir}")
  assert_one_line_error(cli(*args), *needles)
  assert not workdir.exists()


def test_verbosity_adds_the_traceback(tmp_path):
  proc = cli(
    "--config=configs/tiny.py",
    "--config.rock.lamda=0",
    f"--workdir={tmp_path / 'run'}",
    "--verbosity=1",
  )
  assert proc.returncode == 2
  assert "Traceback (most recent call last)" in proc.stderr
  assert proc.stderr.splitlines()[-1] == (
    "rockjax: error: unknown config field 'rock.lamda' (did you mean 'rock.lam'?)"
  )


# The run raising an interrupt after its checkpoint: main's one call site (_run) is patched.
INTERRUPT = """
import sys
from absl import app
from rockjax import errors, main
def _run(config, workdir, allow_config_change):
  raise {exc}
main._run = _run
app.run(main.main, flags_parser=main.cli.parse_flags)
"""


@pytest.mark.parametrize(
  "exc,line",
  [
    (
      "errors.Interrupted('SIGTERM: saved a checkpoint at step 3 in ' + workdir)",
      "SIGTERM: saved a checkpoint at step 3 in ",
    ),
    ("KeyboardInterrupt()", "interrupted"),
  ],
)
def test_interrupt_is_one_line(tmp_path, exc, line):
  proc = cli(
    "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", code=INTERRUPT.format(exc=exc)
  )
  assert assert_one_line_error(proc).removeprefix("rockjax: error: ").startswith(line)


def test_valid_override_runs(tmp_path):
  """A correct override passes the parser and the validator (a dry run: no training)."""
  proc = cli(
    "--config=configs/tiny.py",
    "--config.rock.lam=0.5",
    "--config.mesh.fsdp=1",
    "--dry_run",
    "--allow_config_change",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr == ""
  want = {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}
  assert json.loads(proc.stdout)["mesh"] == want
