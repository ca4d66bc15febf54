"""Entry point: `python -m rockjax.main --config=configs/demo.py --workdir=DIR [--config.a.b=v]`."""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (get_config())",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, data")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "call jax.distributed.initialize() (multi-host pods)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "with --distributed: host:port of process 0 (auto on TPU/Slurm)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "with --distributed: process count (auto on TPU/Slurm)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "with --distributed: this process's index (auto on TPU/Slurm)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "build abstractly (no weights) and print per-device memory")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  import jax  # pylint: disable=g-import-not-at-top  (after flags, so XLA_FLAGS may be set)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info("process %d/%d, %d devices", jax.process_index(), jax.process_count(),
               jax.device_count())
  if _DRY_RUN.value:
    from rockjax import dry_run  # pylint: disable=g-import-not-at-top
    print(dry_run.report_json(_CONFIG.value))
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (except with --dry_run)")
  from rockjax import train  # pylint: disable=g-import-not-at-top
  result = train.run(_CONFIG.value, _WORKDIR.value)
  logging.info("final metrics: %s", result["metrics"])


if __name__ == "__main__":
  app.run(main)
