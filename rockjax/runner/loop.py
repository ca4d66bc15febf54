"""Host loop: mesh, models, data, rollout -> train_step, evaluation, checkpoints, metrics.

Every host runs this same program (jax.distributed on pods); each host feeds the rows
rockjax.data.host_share gives it (its shard of the batch, or all of it when the batch cannot be
split across hosts) and XLA collectives do the rest.
"""

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from rockjax import metrics as metrics_lib
from rockjax import sampling
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax.batch import TokenBatch
from rockjax.config import settings as settings_lib
from rockjax.rocks import table as rock_table
from rockjax.runner import profiler as profiler_lib
from rockjax.runner import stopping
from rockjax.runner.experiment import Experiment, build_experiment
from rockjax.sampling import rollout_copy as rollout_params

_log = logging.getLogger(__name__)


def _rollout(
  exp: Experiment,
  state: state_lib.TrainState,
  prompts: dict[str, np.ndarray],
  step: int,
  should_stop: Callable[[], bool] | None = None,
) -> tuple[TokenBatch, dict[str, tuple[jax.Array, jax.Array]]]:
  """Student samples completions for the step's prompts (on-policy); returns a token batch
  (opd.truncated_rollouts applied) and the rollout's metrics.

  The decode runs in segments of opd.decode_segment positions; `should_stop` is asked between
  them, and when it says stop, sampling.RolloutStopped leaves this function (the rollout is
  abandoned; the same key redraws it after a resume).
  """
  c = exp.config.opd
  key = jax.random.fold_in(state.rng, step)  # resuming at step n replays rollout n exactly
  g = shd.host_to_global(
    {"ids": prompts["prompt_ids_BxP"], "mask": prompts["prompt_mask_BxP"]},
    exp.mesh,
    global_rows=exp.config.data.prompts_per_step,
  )
  # time/rollout_s starts once the weights it samples from are ready, so it never counts the
  # previous train step (a no-op after an on-policy step, which waited for it in _train; at a
  # run's first step it waits for the initialised or restored state).
  jax.block_until_ready(state.params)
  t0 = time.perf_counter()
  # Decode from the sampling copy (opd.rollout_dtype / rollout_sharding), made once per step.
  # The copy is freed before the train step runs: leaving the block deletes its buffers
  # (rollout_params.release; PJRT frees them once the enqueued decode is done), and only the
  # rollout's token arrays, which hold no reference to it, leave this function.
  with rollout_params.sampling_model(exp.sampling_copy, state.graphdef, state.params) as student:
    out = sampling.generate(
      student,
      g["ids"],
      g["mask"],
      key=key,
      max_new_tokens=c.max_new_tokens,
      temperature=c.sample_temperature,
      top_p=c.top_p,
      top_k=c.top_k,
      eos_ids=exp.eos_ids,
      num_samples=c.samples_per_prompt,
      segment_steps=c.decode_segment,
      should_stop=should_stop,
    )
  jax.block_until_ready(out)  # the copy and the whole decode loop are done
  seconds = time.perf_counter() - t0
  batch, made = sampling.train_batch(out, c.truncated_rollouts)
  # The rollout comes back on the decode mesh (rollout_params.decode_mesh): one reshard per step
  # to the train step's rows layout on the train mesh (the same devices).
  batch = jax.tree.map(lambda v: jax.device_put(v, shd.batch_sharding(v.shape, exp.mesh)), batch)
  return batch, {**made, **_rollout_metrics(out.lengths, seconds)}


def _rollout_metrics(lengths_N: jax.Array, seconds: float) -> dict[str, tuple[Any, Any]]:
  """A rollout's timing metrics as (sum, count) pairs, so window averages stay exact.

  time/rollout_s: wall seconds from the sampling copy to the rollout's tokens being ready.
  rollout/tokens_per_s: (generated tokens, seconds): every response token, EOS included, of
    every row (also rows that opd.truncated_rollouts='drop' leaves out of the loss).
  rollout/decode_steps: the token positions the sampler decoded, the first from the prefill's
    logits; = the longest response, since its loop runs until every row has emitted an EOS or
    max_new_tokens positions are done.
  """
  return {
    "time/rollout_s": (seconds, 1.0),
    "rollout/tokens_per_s": (jnp.sum(lengths_N), seconds),
    "rollout/decode_steps": (jnp.max(lengths_N), 1.0),
  }


def _next_batch(
  exp: Experiment, state, step: int, should_stop: Callable[[], bool] | None = None
) -> tuple[TokenBatch, dict[str, Any]]:
  """The step's token batch (padded to settings.batch_shape) and the metrics of making it;
  sampling.RolloutStopped when `should_stop` abandons the step's rollout."""
  host = next(exp.train_data)
  made: dict[str, Any] = {}
  if exp.config.opd.mode == "off_policy":
    rows = exp.config.data.prompts_per_step
    token_batch = TokenBatch.of(host)  # the pipeline's token fields, this host's rows
    fields = token_batch.arrays()  # + segment ids and positions of packed rows (data.pack)
    batch = TokenBatch(**shd.host_to_global(fields, exp.mesh, global_rows=rows))
  else:
    batch, made = _rollout(exp, state, host, step, should_stop)
  return batch.pad(exp.config.data.pad_to_multiple), made


def _train(
  exp: Experiment, state: state_lib.TrainState, batch: TokenBatch, timed: bool
) -> tuple[state_lib.TrainState, dict[str, Any]]:
  """Dispatch the train step; with `timed` (on-policy steps) wait for it and log time/train_s.

  time/train_s runs from the step's dispatch (the host's argument handling, and the compile on
  a run's first step) until every output of it (new state, metrics) is ready on the device;
  pulling the metrics to the host comes later and is not counted. Waiting is an extra sync
  that only on-policy steps make: the next rollout samples from this state, so the device
  could not overlap the two anyway; what is lost is the overlap of this step with host work
  (pulling the previous step's metrics, fetching the next prompts). Off-policy steps stay fully
  asynchronous and log no times.
  """
  t0 = time.perf_counter()
  state, dev_metrics = exp.train_step(state, exp.teacher_params, batch)
  if timed:
    jax.block_until_ready((state, dev_metrics))
    dev_metrics = {**dev_metrics, "time/train_s": (time.perf_counter() - t0, 1.0)}
  return state, dev_metrics


def _check_finite(step: int, host_metrics: dict[str, tuple[float, float]], exp: Experiment):
  """A non-finite loss stops training before anything is saved (last good checkpoint kept)."""
  s, c = host_metrics["opd/loss"]
  if not np.isfinite(s) or not np.isfinite(c):
    saved = exp.checkpointer.steps()
    raise FloatingPointError(
      f"step {step}: non-finite loss (sum={s}, count={c}); training stopped. Last good "
      f"checkpoint: {'step ' + str(saved[-1]) if saved else 'none'} in "
      f"{exp.checkpointer.directory}"
    )


@dataclasses.dataclass
class RunResult:
  """What one stage's training run leaves (rockjax.runner.pipeline records and exports it)."""

  state: state_lib.TrainState  # the last state (saved as the last checkpoint)
  metrics: dict[str, float]  # the last logged window averages (+ data counts, last eval)
  experiment: Experiment  # what the run was built from (mesh, tokenizer, start_step, ...)
  data_state: dict[str, Any]  # the train pipeline's iterator state at the end
  step: int  # train steps done (config.steps when completed)
  completed: bool  # reached config.steps
  interrupted: str | None  # the stop signal's name (SIGTERM / SIGINT), None if none came
  eval_correct: np.ndarray | None  # per-prompt correctness [P, N] of the last evaluation
  rock_table: dict[str, Any]  # the labelled per-id rock table (also WORKDIR/rocks.json)
  seconds: float  # wall time of this call


class _MetricLog:
  """The host side of the metrics: step N's device metrics are pulled while step N+1 runs,
  checked for NaN, windowed and written every log_every steps (metrics.jsonl, TensorBoard),
  with the progress bar's postfix."""

  def __init__(self, exp: Experiment, workdir: str, loss) -> None:
    c = exp.config
    self.exp, self.every, self.steps = exp, c.log_every, c.steps
    self.writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
    # Prompts truncated/dropped and bad records skipped while building the data: written
    # once, with the first metrics line of this (re)start.
    self.data_counts = dict(exp.train_data.counts)
    self.unwritten = dict(self.data_counts)
    self.last: dict[str, float] = {}
    self.window: dict[str, list[float]] = {}
    self.pending = None  # (step, device metrics) of the previous step
    # opd/kl holds the stage's per-token quantity (cross-entropy in plain SFT): name it so.
    self.label = "ce" if loss.tracked == "cross_entropy" else "kl"
    self.bar = tqdm.tqdm(
      total=c.steps,
      initial=exp.start_step,
      desc=loss.stage,
      disable=jax.process_index() != 0,
      dynamic_ncols=True,
    )
    self.t0 = time.perf_counter()

  def push(self, step_done: int, dev_metrics) -> None:
    """Hold this step's metrics; pull the previous step's (it has finished by now)."""
    self.flush()
    self.pending = (step_done, dev_metrics)
    self.bar.update(1)

  def flush(self) -> None:
    """Pull, check and window the pending step's metrics (before an eval or a checkpoint)."""
    if self.pending is None:
      return
    step_done, dev_metrics = self.pending
    self.pending = None
    host = metrics_lib.to_host(dev_metrics)
    _check_finite(step_done, host, self.exp)
    metrics_lib.accumulate(self.window, host)
    if step_done % self.every == 0 or step_done == self.steps:
      self._write_window(step_done)

  def _write_window(self, step_done: int) -> None:
    values = metrics_lib.averages({k: tuple(v) for k, v in self.window.items()})
    now = time.perf_counter()
    values["perf/seconds_per_step"] = (now - self.t0) / self.every
    self.t0 = now
    values.update(self.unwritten)
    self.unwritten.clear()
    self.writer.write(step_done, values)
    self.last = values
    self.window.clear()
    kl, share = values.get("opd/kl", float("nan")), values.get("rock/share_tokens", float("nan"))
    self.bar.set_postfix({self.label: f"{kl:.4f}", "rock_share": f"{share:.2f}"})

  def write(self, step: int, values: dict[str, float]) -> None:
    """Write values outside the window (evaluations) and remember them as last logged."""
    self.writer.write(step, values)
    self.last.update(values)

  def close(self) -> None:
    self.bar.close()
    self.writer.close()


def _steps(exp: Experiment, log: _MetricLog, signals, profiler) -> tuple[Any, int, Any]:
  """The training loop proper: (last state, steps done, last evaluation's correctness)."""
  c, on_policy = exp.config, exp.config.opd.mode != "off_policy"
  state, done, eval_correct = exp.state, exp.start_step, None
  schedule = stopping.SaveSchedule(c)
  for step in range(exp.start_step, c.steps):
    profiler.before(step + 1)
    position = exp.train_data.get_state()  # before this step's prompts are drawn
    try:
      batch, batch_metrics = _next_batch(exp, state, step, signals.agreed)
    except sampling.RolloutStopped as stopped:
      # Preempted mid-rollout: the step never happened. Put the data back where it was and
      # save the last finished step (a resumed run redraws this rollout with the same key).
      if jax.process_index() == 0:
        tqdm.tqdm.write(
          f"{signals.requested}: rollout of step {step + 1} abandoned after {stopped.step}/"
          f"{c.opd.max_new_tokens} positions; saving step {done}"
        )
      exp.train_data.set_state(position)
      _save(exp, log, schedule, done, state)
      break
    state, dev_metrics = _train(exp, state, batch, timed=on_policy)
    profiler.after(step + 1, state)
    # step N's metrics are pulled while step N+1 runs (on-policy, N+1 has already finished:
    # _train waited for it to time it)
    log.push(step + 1, {**dev_metrics, **batch_metrics})
    done = step + 1
    if c.eval.every and (done % c.eval.every == 0 or done == c.steps):  # and after the last
      log.flush()
      values, eval_correct = exp.evaluate(state, done)
      log.write(done, values)
    stop = signals.agreed() or bool(c.stop_after and done >= c.stop_after)
    if schedule.due(done, stop):
      _save(exp, log, schedule, done, state)
    if stop:
      break
  return state, done, eval_correct


def _save(
  exp: Experiment, log: _MetricLog, schedule: stopping.SaveSchedule, done: int, state
) -> None:
  """Checkpoint the state after `done` steps (a step saved already is kept as it is)."""
  if done == 0:
    return  # nothing trained yet: a restart starts from the same init
  log.flush()  # verify the state to be saved is finite first
  t0 = time.perf_counter()
  exp.checkpointer.save(done, state, exp.train_data.iterator)  # each host its own data position
  # time/checkpoint_s: how long the save held the loop (with ckpt.async_save, the copy to host
  # memory and the wait for the previous save's writes), averaged over the saves of a window.
  metrics_lib.accumulate(log.window, {"time/checkpoint_s": (time.perf_counter() - t0, 1.0)})
  schedule.saved()
  log.writer.flush()  # a cloud workdir's metrics are uploaded at least this often


def run(
  config: ml_collections.ConfigDict, workdir: str, *, profile_steps: tuple[int, int] | None = None
) -> RunResult:
  """Train for config.steps steps in workdir (resuming if it holds a checkpoint).

  profile_steps=(a, b): write a jax.profiler trace of steps a..b (the first step is 1) into
  workdir/profile/ (see profiler.Profiler). A SIGTERM or Ctrl-C ends the loop with a checkpoint of
  the last finished step: after the current step, or between two decode segments of its
  rollout (abandoned; opd.decode_segment); the caller decides what an interrupted run means
  (rockjax.runner.pipeline stops every later stage).
  """
  exp = build_experiment(config, workdir)
  c, loss = exp.config, settings_lib.loss_settings(exp.config)
  log, signals, profiler = (
    _MetricLog(exp, workdir, loss),
    stopping.StopSignals(),
    profiler_lib.Profiler(workdir, profile_steps),
  )
  t_start = time.perf_counter()
  try:
    with jax.set_mesh(exp.mesh):
      state, done, eval_correct = _steps(exp, log, signals, profiler)
      profiler.stop()  # a run that ended before step b
      log.flush()
      if exp.start_step >= c.steps:
        # Resumed at its last step (stopped after the final checkpoint, before the caller
        # recorded the run): report what the finished run logged and evaluated, not nothing.
        log.last = metrics_lib.logged_at(workdir, exp.start_step)
        if c.eval.every:
          _, eval_correct = exp.evaluate(state, exp.start_step)
    data_state = exp.train_data.get_state()
    table = _report_rocks(exp, state, loss)  # all processes compute; process 0 writes
  finally:
    profiler.stop()
    log.close()
    signals.restore()
    exp.checkpointer.close()
    exp.train_data.close()
  return RunResult(
    state=state,
    metrics={**log.data_counts, **log.last},
    experiment=exp,
    data_state=data_state,
    step=done,
    completed=done >= c.steps,
    interrupted=signals.requested,
    eval_correct=eval_correct,
    rock_table=table,
    seconds=time.perf_counter() - t_start,
  )


def _report_rocks(exp: Experiment, state: state_lib.TrainState, loss) -> dict[str, Any]:
  """Write workdir/rocks.json (every observed id) and print the top of the labelled table."""
  table = rock_table.rock_table(
    state.rock,
    exp.tokenizer,
    settings_lib.rock_selection(exp.config),
    stage=loss.stage,
    quantity=loss.tracked,
  )
  if jax.process_index() == 0:
    path = rock_table.write_table(exp.workdir, table)
    tqdm.tqdm.write(rock_table.format_table(table, limit=10) + f"\n(every observed id: {path})")
  return table
