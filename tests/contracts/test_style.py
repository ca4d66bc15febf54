"""The code stays formatted and lint-clean (ruff, configured in pyproject.toml)."""

import subprocess
import sys

from tests.fixtures import REPO


def ruff(*args):
  return subprocess.run(
    [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True, timeout=120
  )


def test_code_is_formatted():
  proc = ruff("format", "--check", ".")
  assert proc.returncode == 0, f"run `ruff format .`:\n{proc.stdout}{proc.stderr}"


def test_no_unused_or_undefined_names():
  proc = ruff("check", ".")
  assert proc.returncode == 0, proc.stdout + proc.stderr
