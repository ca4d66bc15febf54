"""Host loop: mesh, models, data, rollout -> train_step, evaluation, checkpoints, metrics.

Every host runs this same program (jax.distributed on pods); each host feeds its shard of the
batch and XLA collectives do the rest.
"""
import copy
import logging
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from rockjax import metrics as metrics_lib
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax.experiment import Experiment, build_experiment

_log = logging.getLogger(__name__)


def _rollout(exp: Experiment, state: state_lib.TrainState, prompts: dict[str, np.ndarray],
             step: int) -> dict[str, jax.Array]:
  """Student samples completions for the step's prompts (on-policy); returns a token batch."""
  from rockjax import sampling  # pylint: disable=g-import-not-at-top
  c = exp.config.opd
  student = nnx.merge(state.graphdef, state.params)
  key = jax.random.fold_in(state.rng, step)  # resuming at step n replays rollout n exactly
  g = shd.host_to_global({"ids": prompts["prompt_ids_BxP"],
                          "mask": prompts["prompt_mask_BxP"]}, exp.mesh)
  out = sampling.generate(student, g["ids"], g["mask"], key=key,
                          max_new_tokens=c.max_new_tokens, temperature=c.sample_temperature,
                          top_p=c.top_p, top_k=c.top_k, eos_ids=exp.eos_ids,
                          num_samples=c.samples_per_prompt)
  return {"tokens": out.tokens, "attention_mask": out.attention_mask,
          "response_mask": out.response_mask}


def _next_batch(exp: Experiment, state, step: int) -> dict[str, jax.Array]:
  host = next(exp.train_data)
  if exp.config.opd.mode == "off_policy":
    keys = ("tokens_BxL", "attention_mask_BxL", "response_mask_BxL")
    return shd.host_to_global({k: host[k] for k in keys}, exp.mesh)
  return _rollout(exp, state, host, step)


def _rename(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Pipeline names (`tokens_BxL`) -> step names (`tokens`)."""
  return {k.removesuffix("_BxL"): v for k, v in batch.items()}


class _Preemption:
  """SIGTERM (TPU preemption) sets a flag; the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    _log.warning("SIGTERM: saving a checkpoint and stopping after this step")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._old)


def _check_finite(step: int, host_metrics: dict[str, tuple[float, float]], exp: Experiment):
  """A non-finite loss stops training before anything is saved (last good checkpoint kept)."""
  s, c = host_metrics["opd/loss"]
  if not np.isfinite(s) or not np.isfinite(c):
    saved = exp.checkpointer.steps()
    raise FloatingPointError(
        f"step {step}: non-finite loss (sum={s}, count={c}); training stopped. Last good "
        f"checkpoint: {'step ' + str(saved[-1]) if saved else 'none'} in "
        f"{exp.checkpointer.directory}")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train for config.steps steps in workdir (resuming if it holds a checkpoint)."""
  exp = build_experiment(config, workdir)
  c = exp.config
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  preempt = _Preemption()
  state, start = exp.state, exp.start_step
  last: dict[str, float] = {}
  pending = None  # (step, device metrics) of the previous step: pulled after dispatching next
  window: dict[str, list[float]] = {}
  # opd/kl tracks the cross-entropy when there is no teacher (plain SFT): say so on the bar.
  sft = c.opd.mode == "off_policy" and c.opd.kd_ratio == 0
  loss_label = "ce" if sft else "kl"
  stage = "sft" if sft else "kd" if c.opd.mode == "off_policy" else "opd"
  bar = tqdm.tqdm(total=c.steps, initial=start, desc=stage, disable=jax.process_index() != 0,
                  dynamic_ncols=True)
  t0 = time.perf_counter()

  def finish(step_done: int, dev_metrics) -> None:
    nonlocal last, t0
    host = metrics_lib.to_host(dev_metrics)
    _check_finite(step_done, host, exp)
    metrics_lib.accumulate(window, host)
    if step_done % c.log_every == 0 or step_done == c.steps:
      values = metrics_lib.averages({k: tuple(v) for k, v in window.items()})
      now = time.perf_counter()
      values["perf/seconds_per_step"] = (now - t0) / c.log_every
      t0 = now
      writer.write(step_done, values)
      last = values
      window.clear()
      bar.set_postfix({loss_label: f"{values.get('opd/kl', float('nan')):.4f}",
                       "rock_share": f"{values.get('rock/share_tokens', float('nan')):.2f}"})

  try:
    with jax.set_mesh(exp.mesh):
      for step in range(start, c.steps):
        batch = _rename(_next_batch(exp, state, step))
        state, dev_metrics = exp.train_step(state, exp.teacher_params, batch)
        if pending is not None:
          finish(*pending)  # step N's metrics are pulled while step N+1 runs
        pending = (step + 1, dev_metrics)
        bar.update(1)
        done = step + 1
        if c.eval.every and done % c.eval.every == 0:
          finish(*pending)
          pending = None
          values = exp.evaluate(state, done)
          writer.write(done, values)
          last.update(values)
        stop = preempt.requested or (c.stop_after and done >= c.stop_after)
        if (c.ckpt.every and done % c.ckpt.every == 0) or done == c.steps or stop:
          if pending is not None:
            finish(*pending)  # verify the state to be saved is finite first
            pending = None
          exp.checkpointer.save(done, state, exp.train_data.get_state())
        if stop:
          break
      if pending is not None:
        finish(*pending)
    data_state = exp.train_data.get_state()
    _report_rocks(exp, state)  # all processes compute; process 0 writes
  finally:
    bar.close()
    writer.close()
    preempt.restore()
    exp.checkpointer.close()
    exp.train_data.close()
  return {"state": state, "metrics": last, "experiment": exp, "data_state": data_state}


def _report_rocks(exp: Experiment, state: state_lib.TrainState) -> None:
  """Write workdir/rocks.json and print the top of the rock table."""
  from rockjax.analysis import rock_table  # pylint: disable=g-import-not-at-top
  r = exp.config.rock
  table = rock_table.rock_table(state.rock, exp.tokenizer, k=r.k, min_freq=r.min_freq,
                                exclude_top_freq=r.exclude_top_freq, selector=r.selector,
                                window=r.window)
  if jax.process_index() == 0:
    path = rock_table.write_table(exp.workdir, table)
    tqdm.tqdm.write(rock_table.format_table(table) + f"\n(full table: {path})")


def stage_then_export(config: ml_collections.ConfigDict, workdir: str, role: str) -> str:
  """Train a model in a preliminary off-policy stage, export it as a HF directory.

  role 'teacher' (teacher.source == 'sft'): SFT on the task's worked solutions, no teacher.
  role 'model' (model.source == 'kd'): the paper's stage 1, off-policy KD from the (already
  resolved) teacher with kd_ratio = model.stage_kd_ratio. The next stage then loads the export
  through the same Hugging Face path real checkpoints take. Skipped when done before.
  """
  from rockjax import models  # pylint: disable=g-import-not-at-top
  group = config[role]
  name = {"teacher": "teacher_sft", "model": "student_kd"}[role]
  export = os.path.join(workdir, name, "hf")
  if os.path.isfile(os.path.join(export, "config.json")):
    return export
  c = copy.deepcopy(config)
  with c.unlocked():
    c.model = copy.deepcopy(group)
    c.model.source = "random"
    if role == "teacher":
      c.teacher.source, c.opd.kd_ratio = "none", 0.0
    else:
      c.opd.kd_ratio = group.stage_kd_ratio
    c.opd.mode = "off_policy"
    c.rock.mode = "off"
    c.steps, c.opt.lr, c.stop_after = group.stage_steps, group.stage_lr, 0
    c.eval.every = group.stage_steps  # report the stage's pass@1 once, at the end
    c.ckpt.every, c.ckpt.resume = 0, ""
  result = run(c, os.path.join(workdir, name))
  exp = result["experiment"]
  # Gather the (possibly multi-host sharded) weights on every host; process 0 writes them.
  params = multihost_utils.process_allgather(result["state"].params, tiled=True)
  trained = nnx.merge(result["state"].graphdef, params)
  if jax.process_index() == 0:
    models.save_pretrained(trained, export)
    exp.tokenizer.save_pretrained(export)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"rockjax:{name}_exported")
  return export
