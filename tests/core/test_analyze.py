"""rockjax/analyze.py (`python -m rockjax.analyze`): a missing --workdir is the one line."""

import pytest

from tests.fixtures import assert_one_line_error, cli

ANALYZE = "import sys; from absl import app; from rockjax import analyze, cli; " + (
  "sys.argv[0] = 'analyze'; app.run(analyze.main, flags_parser=cli.parse_flags)"
)


# demo.py's teacher is its SFT stage's export, WORKDIR/teacher_sft/hf: a missing workdir was
# reported as a missing teacher.path.
@pytest.mark.parametrize("config", ["configs/demo.py", "configs/tiny.py"])
def test_a_missing_workdir_is_one_line_naming_workdir(tmp_path, config):
  workdir = tmp_path / "none"
  proc = cli(f"--config={config}", f"--workdir={workdir}", code=ANALYZE)
  assert_one_line_error(proc, f"--workdir={workdir}: no such directory")
  assert not workdir.exists()  # and nothing was written there (the task files)
