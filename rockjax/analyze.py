"""Rock analysis CLI: `python -m rockjax.analyze --config=CONFIG --workdir=DIR [--student=...]`.

Decodes the evaluation set with the trained student, scores it with the teacher, selects the
Rock Tokens and writes the report (rockjax.analysis.run.run_analysis) into
WORKDIR/analysis/ or --out. User errors are one line `rockjax: error: ...` (exit 2), as in
rockjax.main.
"""

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from rockjax import cli

cli.setup_process()  # XLA_FLAGS and log filters, before any JAX backend starts or transformers logs

from rockjax import errors  # noqa: E402
from rockjax.analysis import run as analysis_run  # noqa: E402
from rockjax.config import check as config_check  # noqa: E402
from rockjax.data.paths import task_files  # noqa: E402
from rockjax.runner import stages  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "the run's config file (get_config())", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "the trained run's directory")
_STUDENT = flags.DEFINE_string(
  "student", "", "a HF directory or checkpoint directory ('' = WORKDIR's final checkpoint)"
)
_OUT = flags.DEFINE_string("out", "", "report directory ('' = WORKDIR/analysis)")
flags.mark_flags_as_required(["config"])


def _check_workdir(workdir: str) -> None:
  """A one-line WorkdirError unless --workdir is an existing directory (a trained run's)."""
  root = epath.Path(workdir)
  if not root.exists():
    raise errors.WorkdirError(f"--workdir={workdir}: no such directory (the trained run's)")
  if not root.is_dir():
    raise errors.WorkdirError(
      f"--workdir={workdir} is a file; it must be the trained run's directory"
    )


def _main() -> None:
  if not _WORKDIR.value:
    raise errors.WorkdirError("--workdir is required: the trained run's directory")
  config, workdir = _CONFIG.value, _WORKDIR.value
  _check_workdir(workdir)  # before the config's paths: a wrong --workdir is the likelier mistake
  config_check.validate(config)
  config = stages.with_recorded_reuse(config, workdir)  # its stages may be another workdir's
  main_config = stages.main_stage_config(config, workdir, task_files(config, workdir))
  result = analysis_run.run_analysis(main_config, workdir, student=_STUDENT.value, out=_OUT.value)
  print(f"rock analysis report: {result.get('markdown', result['out_dir'])} "
        f"({result['seconds']:.0f} s)")  # fmt: skip


main = cli.entry_main(_main)

if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
