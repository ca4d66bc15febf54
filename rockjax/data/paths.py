"""Where a run's data lives: the config's files, or the embedded synthetic task.

The task (rockjax/data/tasks/) is written once into WORKDIR/task by process 0; the other hosts
wait for it.
"""

import jax
import ml_collections
from etils import epath
from jax.experimental import multihost_utils

from rockjax.data.tasks import arithmetic


def task_files(c: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Data paths: the config's, or the embedded synthetic task (written into workdir/task once)."""
  paths = {"train": c.data.train_path, "eval": c.data.eval_path, "tokenizer": c.data.tokenizer_path}
  if not c.data.train_path:
    task_dir = epath.Path(workdir) / "task"
    if jax.process_index() == 0 and not task_dir.exists():
      # Written whole into task.tmp, then renamed: a run killed mid-write (the tokenizer writes
      # tokenizer_config.json before tokenizer.json) leaves only task.tmp, rewritten next time.
      tmp = task_dir.parent / "task.tmp"
      if tmp.exists():
        tmp.rmtree()
      arithmetic.prepare_demo(
        tmp, n_train=c.data.task_size, seed=c.seed, difficulty=c.data.task_difficulty
      )
      tmp.rename(task_dir)
    if jax.process_count() > 1:  # the other hosts read what process 0 wrote
      multihost_utils.sync_global_devices("rockjax:task_written")
    paths["train"] = paths["train"] or str(task_dir / "train.jsonl")
    paths["eval"] = paths["eval"] or str(task_dir / "eval.jsonl")
    paths["tokenizer"] = paths["tokenizer"] or str(task_dir / "tokenizer")
  if not paths["tokenizer"]:
    for m in (c.teacher, c.model):
      if m.source == "hf":
        paths["tokenizer"] = m.path
        break
  if not paths["tokenizer"]:
    raise ValueError(
      "data.tokenizer_path is empty and neither model is a HF directory: say which tokenizer to use"
    )
  return paths
