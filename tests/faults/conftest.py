"""The fault suite's shared reference run."""

import pytest

from tests.faults import workdirs


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  """The reference: the fault driver's pipeline run to the end, never killed or stopped."""
  root = tmp_path_factory.mktemp("whole")
  proc = workdirs.driver(root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root
