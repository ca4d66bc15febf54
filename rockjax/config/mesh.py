"""Config rules for the batches a run trains on and the mesh they run on (rockjax.config.check).

Each rule yields one-line messages naming the culprit field; config_check.validate raises the
first. They mirror what the code requires: rockjax.step (updates and micro-batches split the
rows), rockjax.sharding.make_mesh (the mesh) and rockjax.sharding.constrain (strict activation
shardings: rows over data x fsdp, the padded length over context, heads over tensor).
"""

import dataclasses
import math
from typing import Iterator

import jax
import ml_collections

from rockjax import batch as batch_lib
from rockjax import sharding as shd


@dataclasses.dataclass(frozen=True)
class TrainBatch:
  """One kind of batch the run trains on (rockjax.config.settings.batch_shape)."""

  where: str  # where its rows come from, for messages
  rows: int  # rows per batch
  updates: int  # opd.updates_per_rollout of this batch (pre-stages use 1, rockjax.runner.pipeline)
  length: int  # padded length (data.pad_to_multiple)


def train_batches(c) -> list[TrainBatch]:
  """The on-policy rollout batch and/or the off-policy rows (stages included) the run trains on."""
  prompts = c.data.prompts_per_step
  pad = lambda n: batch_lib.padded_length(n, c.data.pad_to_multiple)
  on_policy = c.opd.mode == "on_policy"
  out = []
  if on_policy:
    rows = prompts * c.opd.samples_per_prompt
    where = f"data.prompts_per_step x opd.samples_per_prompt = {rows}"
    length = pad(c.data.max_prompt_len + c.opd.max_new_tokens)
    out.append(TrainBatch(where, rows, c.opd.updates_per_rollout, length))
  if not on_policy or c.teacher.source == "sft" or c.model.source == "kd":
    where = f"data.prompts_per_step = {prompts} (off-policy rows)"
    updates = 1 if on_policy else c.opd.updates_per_rollout
    out.append(TrainBatch(where, prompts, updates, pad(c.data.max_len)))
  return out


def micro_batches(c) -> Iterator[str]:
  """opd.updates_per_rollout splits the rows of every batch the run trains on into updates and
  opt.micro_batches splits each update's rows (rockjax.step)."""
  k = c.opt.micro_batches
  for b in train_batches(c):
    if b.rows % b.updates:
      yield f"opd.updates_per_rollout={b.updates}: expected a divisor of the batch rows, {b.where}"
    elif b.rows // b.updates % k:
      per = (
        f" / opd.updates_per_rollout={b.updates} = {b.rows // b.updates} rows per update"
        if b.updates > 1
        else ""
      )
      yield f"opt.micro_batches={k}: expected a divisor of the batch rows, {b.where}{per}"


def mesh_and_batch(c, dry_run: bool, devices: int, processes: int) -> Iterator[str]:
  """The mesh rockjax.sharding.make_mesh builds, and the train step's activations on it.

  Any data.prompts_per_step works on any number of hosts: rockjax.data.host_share has every
  host read the whole batch when the mesh cannot split it across them; the rollout rows per
  micro-batch must still divide data x fsdp (_activation_shards).
  """
  sizes, dcn = shd.config_mesh_shapes(c.mesh)
  for k, v in sizes.items():
    if v == 0 or v < -1:
      yield f"mesh.{k}={v}: expected a size >= 1, or -1 (all remaining devices)"
  fill = [k for k, v in sizes.items() if v == -1]
  if len(fill) > 1:
    yield f"mesh.{fill[1]}=-1: only one mesh axis may be -1 (mesh.{fill[0]} is -1 already)"
  # Real runs use every device (mesh.num_devices is a dry-run declaration, rockjax.dry_run).
  total = c.mesh.num_devices if dry_run and c.mesh.num_devices else devices
  where = (
    f"mesh.num_devices={total}"
    if dry_run and c.mesh.num_devices
    else f"{total} devices are available"
  )
  fields = {**sizes, **{f"dcn_{k}": v for k, v in dcn.items()}}
  known = math.prod(v for v in fields.values() if v != -1)
  if total % known:
    culprit = next(k for k, v in fields.items() if v > 1)
    shape = ", ".join(f"{k}={v}" for k, v in fields.items() if v != 1 or k in sizes)
    yield (
      f"mesh.{culprit}={fields[culprit]}: the mesh ({shape}) needs a device count "
      f"divisible by {known}, but {where}"
    )
    return
  granules = math.prod(dcn.values())
  if not dry_run and processes % granules:
    culprit = next(k for k, v in fields.items() if k.startswith("dcn_") and v > 1)
    yield (
      f"mesh.{culprit}={fields[culprit]}: the DCN sizes multiply to {granules} slices/nodes, "
      f"each run by its own process(es), but {processes} processes are running"
    )
  yield from _activation_shards(c, shd.resolve_mesh_shape(sizes, total, dcn), sizes, dry_run)


def _activation_shards(
  c, full: dict[str, int], sizes: dict[str, int], dry_run: bool
) -> Iterator[str]:
  """The train step's activations shard evenly (rockjax.sharding.constrain is strict): rows
  per micro-batch over data x fsdp, the padded length over context, heads over tensor.
  An indivisible one would be computed whole on every device of its axes."""
  batch = full["data"] * full["fsdp"]
  for b in train_batches(c):
    where = b.where + (f" / opd.updates_per_rollout={b.updates}" if b.updates > 1 else "")
    rows = b.rows // (c.opt.micro_batches * b.updates)
    if rows % batch:
      culprit = "fsdp" if full["fsdp"] > 1 else "data"
      fit = math.gcd(rows, batch)
      yield (
        f"mesh.{culprit}={sizes[culprit]}: the batch rows per micro-batch ({where} / "
        f"opt.micro_batches={c.opt.micro_batches} = {rows}) are not divisible by the batch "
        f"axes data x fsdp = {full['data']} x {full['fsdp']} = {batch}; shard them over "
        f"{fit} devices (e.g. mesh.data x mesh.fsdp = {fit}) and give the other "
        f"{batch // fit} to mesh.context (sequence sharding), or use more prompts per step"
      )
      return
    if b.length % full["context"]:
      yield (
        f"mesh.context={sizes['context']}: the padded sequence length {b.length} ({where} "
        f"rows; data.pad_to_multiple={c.data.pad_to_multiple}) is not divisible by the "
        f"context axis size {full['context']}; set data.pad_to_multiple to a multiple of "
        f"{full['context']}"
      )
      return
  tensor = full["tensor"]
  for g in ("model", "teacher"):
    a = c[g].arch
    # An 'hf' model's heads are in its config.json (dry runs use `arch`).
    if tensor == 1 or c[g].source == "none" or (c[g].source == "hf" and not dry_run):
      continue
    for field in ("num_heads", "num_kv_heads"):
      if a[field] % tensor:
        yield (
          f"{g}.arch.{field}={a[field]}: not divisible by the tensor axis size {tensor} "
          "(mesh.tensor x mesh.dcn_tensor; attention heads are sharded over it)"
        )
        return


def declared_mesh_shape(c: ml_collections.ConfigDict) -> dict[str, int]:
  """Full mesh axis sizes the config declares (per slice x DCN); -1 resolves against
  mesh.num_devices (or the local devices)."""
  ici, dcn = shd.config_mesh_shapes(c.mesh)
  return shd.resolve_mesh_shape(ici, c.mesh.get("num_devices", 0) or jax.device_count(), dcn)
