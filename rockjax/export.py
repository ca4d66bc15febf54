"""HF export CLI: `python -m rockjax.export --workdir=DIR [--stage=main] [--step=N] [--out=OUT]`.

Exports one checkpoint of one stage of a run (its latest by default) as a Hugging Face
directory that transformers, vLLM and lm-eval read, with the same writer as the pipeline's
own stage exports (rockjax.runner.export). The run's recorded config (DIR/config.json) says
what the stages are; nothing is trained. Without --out: DIR/export_hf for the main stage's
last step, else DIR[/STAGE]/export_hf_step_N. User errors are one line
`rockjax: error: ...` (exit 2), as in rockjax.main.
"""

from absl import app, flags

from rockjax import cli

cli.setup_process()  # XLA_FLAGS and log filters, before any JAX backend starts or transformers logs

from etils import epath  # noqa: E402

from rockjax import errors  # noqa: E402
from rockjax.runner import export, stages  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "the run's directory (its config.json and ckpt/)")
_STAGE = flags.DEFINE_enum(
  "stage", "main", stages.STAGE_NAMES, "which stage's checkpoint: teacher_sft, student_kd, main"
)
_STEP = flags.DEFINE_integer("step", None, "the checkpoint's step (default: the stage's latest)")
_OUT = flags.DEFINE_string(
  "out",
  "",
  "the HF directory to write ('' = WORKDIR/export_hf for the main stage's last step, else "
  "WORKDIR[/STAGE]/export_hf_step_N)",
)


def _main() -> None:
  if not _WORKDIR.value:
    raise errors.WorkdirError("--workdir is required: the run's directory")
  workdir = _WORKDIR.value
  planned = export.recorded_stages(workdir)
  if _STAGE.value not in planned:
    raise errors.UserError(
      f"--stage={_STAGE.value}: {workdir} has no such stage (its stages: {', '.join(planned)})"
    )
  stage = planned[_STAGE.value]
  step = export.choose_step(stage, _STEP.value)
  out = epath.Path(_OUT.value) if _OUT.value else export.default_out(workdir, stage, step)
  export.check_out(out)
  export.export_checkpoint(stage, step, out)
  print(f"HF export of stage {stage.name} step {step}: {out}")


main = cli.entry_main(_main)

if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
