"""Entry point: `python -m rockjax.main --config=configs/demo.py --workdir=DIR [--config.a.b=v]`.

A user error (an unknown flag or config field, a bad value, a config file that does not load,
an unusable --workdir, a config that fails rockjax.config.check, any rockjax.errors.UserError
the run raises, Ctrl-C) prints ONE line `rockjax: error: ...` on stderr and exits 2; the
traceback comes too with --verbosity=1 or higher. Anything else is a bug and keeps its
traceback. The whole config is validated before anything is created on disk.
"""

import os
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from rockjax import cli

cli.setup_process()  # XLA_FLAGS and log filters, before any JAX backend starts or transformers logs

import jax  # noqa: E402

from rockjax import dry_run as dry_run_lib  # noqa: E402
from rockjax import errors  # noqa: E402
from rockjax.config import check as config_check  # noqa: E402
from rockjax.runner import pipeline  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "config file (get_config())", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, data")
_JOIN_HOSTS = cli.distributed_flags()  # --distributed and the coordinator flags
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "build abstractly (no weights) and print per-device memory"
)
_AOT_TOPOLOGY = flags.DEFINE_string(
  "aot_topology",
  None,
  "with --dry_run: compile the step for a TPU topology (e.g. v5p:2x2x2; needs libtpu, no TPU) "
  "and report its memory per device; exits 2 when the peak exceeds 80% of HBM",
)
_AOT_DUMP_DIR = flags.DEFINE_string(
  "aot_dump_dir",
  None,
  "with --aot_topology: write the optimised HLO text of the compiled train step and sampler "
  "(train_step.hlo.txt, rollout.hlo.txt) into this directory",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change", False, "run in a workdir whose recorded config differs from this one"
)
_PROFILE_STEPS = flags.DEFINE_string(
  "profile_steps",
  None,
  "a,b: write a jax.profiler trace of the main stage's train steps a..b (inclusive; the first "
  "step is 1, as in metrics.jsonl) into WORKDIR/profile/ (TensorBoard's profile plugin, xprof)",
)
flags.mark_flags_as_required(["config"])


def _run(config, workdir: str, allow_config_change: bool) -> dict[str, Any]:
  """The one call site of a run: every stage the config asks for, then the summary."""
  return pipeline.run(
    config,
    workdir,
    allow_config_change=allow_config_change,
    profile_steps=cli.profile_steps(_PROFILE_STEPS.value),  # checked in _main already
  )


def _main() -> None:
  workdir, dry_run = _WORKDIR.value, _DRY_RUN.value
  if _AOT_TOPOLOGY.value and not dry_run:
    raise errors.UserError(f"--aot_topology={_AOT_TOPOLOGY.value} needs --dry_run")
  if _AOT_DUMP_DIR.value and not _AOT_TOPOLOGY.value:
    raise errors.UserError(f"--aot_dump_dir={_AOT_DUMP_DIR.value} needs --aot_topology")
  if not dry_run and not workdir:
    raise errors.WorkdirError("--workdir is required (except with --dry_run)")
  if cli.profile_steps(_PROFILE_STEPS.value) and dry_run:  # a bad value raises its one line
    raise errors.UserError(f"--profile_steps={_PROFILE_STEPS.value}: a dry run runs no step")
  if _AOT_TOPOLOGY.value and not os.environ.get("JAX_PLATFORMS"):
    # An AOT dry run needs no accelerator (libtpu compiles for the topology's abstract
    # devices): leave any attached TPU/GPU alone.
    jax.config.update("jax_platforms", "cpu")

  cli.apply_compilation_cache(_CONFIG.value.cache.compilation)
  _JOIN_HOSTS()
  logging.info(
    "process %d/%d, %d devices", jax.process_index(), jax.process_count(), jax.device_count()
  )
  if dry_run:
    config, topology = _CONFIG.value, _AOT_TOPOLOGY.value
    if topology:
      config = dry_run_lib.for_topology(config, topology)  # mesh.num_devices from the topology
    config_check.validate(config, dry_run=True)
    # Raises after printing when it does not fit.
    dry_run_lib.print_report(config, topology, _AOT_DUMP_DIR.value)
    return
  _run(_CONFIG.value, workdir, _ALLOW_CONFIG_CHANGE.value)  # validates before touching the disk


main = cli.entry_main(_main)

if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
