"""A stage's model as a Hugging Face directory: the pipeline's stage export and the export of
any checkpoint (`python -m rockjax.export`), both written by `write_export`.

An export is what transformers, vLLM and lm-eval read: safetensors (sharded with an index
above 5 GiB), config.json with the tokenizer's bos/eos/pad ids, the tokenizer files and chat
template, and generation_config.json with the ids a sample ends at (eos plus the chat
template's end-of-turn tokens) and the run's evaluation decoding (eval.temperature). It is
written into DIR.tmp, then renamed to DIR: a directory named DIR is always whole.
"""

import jax
import ml_collections
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from rockjax import checkpoint as ckpt_lib
from rockjax import errors, models, storage
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax.data.paths import task_files
from rockjax.runner.stages import EXPORT_DIR, Stage, plan
from rockjax.runner.summary import CONFIG_FILE
from rockjax.runner.workdir import recorded_config


def generation_settings(config: ml_collections.ConfigDict) -> dict[str, float | int | bool]:
  """generation_config.json's decoding: the run's evaluation decoding (eval.temperature over
  the full vocabulary, as its pass@1 was measured; 0 = greedy, do_sample false)."""
  temperature = float(config.eval.temperature)
  if temperature == 0:
    return {"do_sample": False}
  # top_k 0: off (transformers' own default would be 50); top_p 1: off.
  return {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}


def write_export(
  config: ml_collections.ConfigDict,
  graphdef: nnx.GraphDef,
  params: nnx.State,
  tokenizer,
  out: epath.Path,
) -> None:
  """Write the model (graphdef, params) and `tokenizer` as the HF directory `out` (via out.tmp).

  Every process calls it (the possibly multi-host sharded weights are gathered); process 0
  writes. The rename is atomic on a local disk only; on gs:// it is a copy then a delete. A
  caller marks its work done (stage.json) only after this returns.
  """
  params = multihost_utils.process_allgather(params, tiled=True)
  if jax.process_index() == 0:
    tmp = out.parent / (out.name + ".tmp")
    for d in (tmp, out):
      if d.exists():
        d.rmtree()
    try:
      with storage.staged_dir(tmp) as local:  # a cloud workdir: written locally, then uploaded
        models.save_pretrained(
          nnx.merge(graphdef, params),
          local,
          tokenizer=tokenizer,
          generation=generation_settings(config),
        )
    except Exception as err:  # pylint: disable=broad-except  (safetensors wraps its OS errors)
      if not storage.is_disk_full(err):
        raise
      # out.tmp stays half written; it is never loaded and the next export deletes it.
      raise errors.DiskFull(
        f"HF export {out}: no space left on device; free space and run the same "
        f"command: the stage exports again from its last checkpoint"
      ) from err
    tmp.rename(out)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"rockjax:exported:{out}")


def checkpoint_steps(stage: Stage) -> list[int]:
  """The complete checkpoints of a stage (its workdir's ckpt/), oldest first."""
  directory = stage.workdir / "ckpt"
  if not directory.is_dir():
    return []
  checkpointer = ckpt_lib.Checkpointer(str(directory))
  try:
    return checkpointer.steps()
  finally:
    checkpointer.close()


def restore_params(stage: Stage, step: int) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) of the stage's checkpoint `step`: only the params are read (not the
  optimiser state), sharded over every device (a mesh of fsdp only)."""
  c = stage.config
  cfg = loading.model_config(c.model, field="model")
  graphdef, abstract = loading.abstract_params(cfg, c.seed)
  mesh = shd.make_mesh(None)
  like = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    abstract,
    shd.tree_shardings(abstract, mesh),
  )
  checkpointer = ckpt_lib.Checkpointer(str(stage.workdir / "ckpt"))
  try:
    return graphdef, checkpointer.restore_params(like, step)
  except ValueError as err:  # orbax: the saved tree differs from this model's
    raise errors.CheckpointMismatch(
      f"checkpoint {checkpointer.directory}/{step} does not hold the params of stage "
      f"{stage.name}'s model ({' '.join(str(err).split())[:300]})"
    ) from err
  finally:
    checkpointer.close()


def export_checkpoint(stage: Stage, step: int, out: epath.Path) -> None:
  """Export the stage's checkpoint `step` to `out` with write_export (the pipeline's writer)."""
  graphdef, params = restore_params(stage, step)
  tokenizer = models.load_tokenizer(stage.config.data.tokenizer_path)
  write_export(stage.config, graphdef, params, tokenizer, out)


def recorded_stages(workdir: str) -> dict[str, Stage]:
  """{name: stage} a finished or running workdir planned, from the config it recorded."""
  if not epath.Path(workdir).is_dir():
    raise errors.WorkdirError(f"--workdir={workdir}: no such directory")
  config = recorded_config(workdir)
  if config is None:
    raise errors.WorkdirError(
      f"--workdir={workdir}: no {CONFIG_FILE} there; name the directory a run was started in"
    )
  return {s.name: s for s in plan(config, workdir, task_files(config, workdir))}


def default_out(workdir: str, stage: Stage, step: int) -> epath.Path:
  """Where `python -m rockjax.export` writes without --out: the main stage's last step goes to
  WORKDIR/export_hf (where ckpt.export_hf exports it); any other checkpoint to
  WORKDIR[/STAGE]/export_hf_step_N."""
  root = epath.Path(workdir)
  if stage.name == "main" and step == stage.config.steps:
    return root / EXPORT_DIR
  return (root if stage.name == "main" else root / stage.name) / f"{EXPORT_DIR}_step_{step}"


def choose_step(stage: Stage, step: int | None) -> int:
  """`step`, or the stage's latest checkpoint; a one-line WorkdirError naming the available
  steps when there is no such checkpoint."""
  steps = checkpoint_steps(stage)
  where = stage.workdir / "ckpt"
  if not steps:
    raise errors.WorkdirError(f"stage {stage.name}: no checkpoint in {where}; train it first")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise errors.WorkdirError(
      f"--step={step}: stage {stage.name} has no checkpoint at step {step} in {where}; "
      f"available steps: {', '.join(map(str, steps))}"
    )
  return step


def check_out(out: epath.Path) -> None:
  """An existing --out is replaced only when it is an export (config.json) or empty."""
  if out.exists() and (
    not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").exists())
  ):
    raise errors.UserError(
      f"--out={out} exists and is not a HF export; name a new directory (an earlier export "
      f"there is replaced)"
    )
