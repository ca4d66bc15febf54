"""A full disk (ENOSPC, simulated) during a checkpoint save and during the HF export: the run
stops with one line naming the directory, exit status 2; the previous checkpoint stays intact
and is what the next start resumes from; nothing half written is restored or loaded."""

import errno
import os
import re

import numpy as np
import pytest

from rockjax import storage
from tests.faults import workdirs


def _complete_steps(ckpt_dir) -> list[str]:
  return sorted(p for p in os.listdir(ckpt_dir) if p.isdigit())


def _assert_checkpoint_equals(expected_dir, actual_dir):
  """Bit for bit: an intact checkpoint reads back exactly as the uninterrupted run wrote it."""
  expected, actual = (workdirs.checkpoint_arrays(d) for d in (expected_dir, actual_dir))
  assert sorted(actual) == sorted(expected)
  for key, x in expected.items():
    np.testing.assert_array_equal(actual[key], x, err_msg=key)


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_disk_full_in_a_checkpoint_then_the_export_stops_cleanly_and_resumes(
  tmp_path, uninterrupted
):
  run, ref = tmp_path / "full", uninterrupted / "teacher_sft"
  teacher = run / "teacher_sft"

  # The teacher stage's 2nd checkpoint (step 4) cannot be written.
  proc = workdirs.driver(run, "enospc_ckpt", 2, 0)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert re.fullmatch(
    rf"rockjax: error: checkpoint {re.escape(str(teacher))}/ckpt/4: no space left on device; "
    r"the last complete checkpoint is step 2: .*resume from it",
    last,
  ), last
  assert _complete_steps(teacher / "ckpt") == ["2"]
  assert workdirs.leftovers(run), "the failed save left no tmp dir: the fault did not hit it"
  _assert_checkpoint_equals(ref / "ckpt" / "2", teacher / "ckpt" / "2")
  assert not (teacher / "hf").exists() and not (teacher / "stage.json").exists()

  # Space again, until the export's safetensors file is cut short.
  proc = workdirs.driver(run, "enospc_export", 1, 0)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(
    f"rockjax: error: HF export {teacher / 'hf'}: no space left on device; "
  ), last
  # It resumed from step 2 (the half-written step-4 save was never read) and wrote step 4 again.
  assert _complete_steps(teacher / "ckpt") == ["2", "4"]
  _assert_checkpoint_equals(ref / "ckpt" / "4", teacher / "ckpt" / "4")
  assert (teacher / "hf.tmp").is_dir() and not (teacher / "hf").exists()
  assert not (teacher / "stage.json").exists() and not (run / "ckpt").exists()

  # A start with space left finishes the run: the same end state as the uninterrupted run.
  proc = workdirs.driver(run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdirs.assert_same_run(uninterrupted, run)


def test_disk_full_is_recognised_through_wrapping_errors():
  """orbax re-raises a writer thread's OSError inside its own; TensorStore only by its text."""
  try:
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/ckpt/4/x")
    except OSError as err:
      raise RuntimeError("async save failed") from err
  except RuntimeError as wrapped:
    assert storage.is_disk_full(wrapped)
  assert storage.is_disk_full(ValueError("WRITE failed: No space left on device [OS error: 28]"))
  assert not storage.is_disk_full(OSError(errno.EACCES, "Permission denied"))
  assert not storage.is_disk_full(RuntimeError("other"))
