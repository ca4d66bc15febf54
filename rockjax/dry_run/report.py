"""Dry run: build a config abstractly (no weights, no data) and report per-device memory.

Parameters and optimiser state are sized exactly from their shardings on the config's
declared mesh (any size: an abstract mesh is enough).

Two compiled figures, both of the real jitted train step lowered with abstract arguments:
- `xla_cpu_temp`: XLA:CPU's temporary-buffer size, when the declared mesh fits the local
  devices (e.g. 8 fake CPU devices); null otherwise. XLA:CPU schedules and fuses differently
  from TPU/GPU, so this says nothing about accelerator memory.
- `aot` (with `aot_topology`, e.g. 'v5p:2x2x2'): the step compiled ahead of time by libtpu for
  the compile-only devices of a TPU topology (`jax.experimental.topologies`), so no TPU is
  needed. XLA:TPU's memory analysis gives the bytes per device of the arguments, outputs,
  aliased (donated) buffers and temporaries; the peak is arguments + temp + outputs - aliased
  (an upper bound); the matmul FLOPs per device are counted from the optimised HLO with loops
  by their trip counts (rockjax.dry_run.hlo_cost; XLA's cost analysis, kept as xla_flops_*, counts
  each loop body once), and `redundancy` compares them with an even split of the analytic
  `model_flops` (1 = no repeated work; 8 = every one of 8 devices does everything). The step
  fits when the peak is at most FIT_FRACTION of the device's HBM (HBM_GIB). XLA:TPU refuses to compile a step that
  needs more than the HBM; the report then carries XLA's message (`xla_error`) instead.
"""

import functools
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AbstractMesh, PartitionSpec

from rockjax import errors
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax import step as step_lib
from rockjax.config import run_length
from rockjax.config import settings as settings_lib
from rockjax.config.mesh import declared_mesh_shape
from rockjax.dry_run import hlo_cost, rollout_cost
from rockjax.dry_run.flops import step_model_flops
from rockjax.sampling import rollout_copy as rollout_params

_GIB = 2**30

# HBM of one JAX device, by the device_kind libtpu reports. On v4, v5e, v5p and v6e a device
# is a chip; on v2/v3 it is one of a chip's two cores, on TPU7x one of its two chiplets.
HBM_GIB = {
  "TPU v2": 8,
  "TPU v3": 16,
  "TPU v4": 32,
  "TPU v5 lite": 16,  # v5e
  "TPU v5": 95,  # v5p
  "TPU v6 lite": 32,  # v6e (Trillium)
  "TPU7x": 96,  # Ironwood: 192 GiB per chip
}
# Headroom for what the memory analysis does not see (runtime, fragmentation, host transfers).
FIT_FRACTION = 0.8


@functools.cache
def topology_devices(name: str) -> tuple[jax.Device, ...]:
  """The compile-only devices of a TPU topology such as 'v5p:2x2x2' (needs libtpu, not a TPU)."""
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise errors.UserError(f'--aot_topology={name} needs libtpu: pip install -e ".[aot]"') from None
  if jax.default_backend() != "tpu":
    # No TPU attached: tell libtpu it is one host (else it probes the Cloud TPU metadata server
    # and warns on stderr) and let it load beside another process using it (its lockfile).
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    return tuple(topologies.get_topology_desc(name, "tpu").devices)
  except (jax.errors.JaxRuntimeError, RuntimeError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise errors.UserError(
      f"--aot_topology={name}: libtpu cannot make this topology (names look like v5p:2x2x2, "
      f"v5e:2x2, v4:2x2x1, v6e:2x2): {reason}"
    ) from None


def for_topology(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The config with mesh.num_devices set to the topology's device count (0 means "set it")."""
  n = len(topology_devices(name))
  declared = c.mesh.get("num_devices", 0)
  if declared and declared != n:
    raise errors.ConfigError(
      f"mesh.num_devices={declared}: --aot_topology={name} has {n} devices; "
      f"set mesh.num_devices={n} or 0"
    )
  c = c.copy_and_resolve_references()
  c.mesh.num_devices = n
  return c


def _per_device_bytes(abstract_tree: Any, shardings: Any, axis_sizes: dict[str, int]) -> int:
  """Sum over leaves of the bytes one device holds (largest shard)."""
  total = 0
  for leaf, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    spec = sh.spec if hasattr(sh, "spec") else PartitionSpec()
    shard = list(leaf.shape)
    for i, axes in enumerate(tuple(spec) + (None,) * (len(shard) - len(spec))):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      shard[i] = math.ceil(shard[i] / math.prod(axis_sizes[a] for a in names))
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def _abstract(c: ml_collections.ConfigDict):
  """(init, student params, teacher graphdef, teacher params, lr schedule), all abstract."""
  student_cfg = loading.arch_config(c.model)
  tx, schedule = state_lib.make_optimizer(c.opt, settings_lib.total_updates(c))
  graphdef, params = loading.abstract_params(student_cfg)
  init = state_lib.initializer(graphdef, tx, vocab_size=student_cfg.vocab_size)
  t_graphdef = t_params = None
  if c.teacher.source != "none":
    t_graphdef, t_params = loading.abstract_params(loading.arch_config(c.teacher))
  return init, params, t_graphdef, t_params, schedule


def report(
  c: ml_collections.ConfigDict, aot_topology: str | None = None, dump_dir: str | None = None
) -> dict[str, Any]:
  """Per-device memory (GiB) of params, optimiser state, teacher; compiled-step figures.

  With `aot_topology`, c.mesh.num_devices must equal its device count (see for_topology); an
  on-policy config also gets the compiled sampler's `rollout` section
  (rockjax.dry_run.rollout_cost), and with `dump_dir` both programs' optimised HLO text is
  written there (train_step.hlo.txt, rollout.hlo.txt).
  `steps` says the run length the schedule was built for (data.epochs needs a prompt count).
  """
  c, how = run_length.resolve(c, dry_run=True)
  sizes = declared_mesh_shape(c)
  n_devices = math.prod(sizes.values())
  out = _memory_report(c, how, sizes)
  if aot_topology:
    out.update(_aot_report(c, aot_topology, n_devices, out["model_flops"]["total"], dump_dir))
  elif n_devices <= jax.device_count():
    compiled = compile_step(c, jax.devices()[:n_devices])
    out["per_device_gib"]["xla_cpu_temp"] = compiled.memory_analysis().temp_size_in_bytes / _GIB
  return out


def _memory_report(c: ml_collections.ConfigDict, how: str, sizes: dict[str, int]) -> dict[str, Any]:
  """The report's sections sized from the abstract state's shardings alone (nothing compiled)."""
  abstract_mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
  init, params, _, t_params, _ = _abstract(c)
  abstract = jax.eval_shape(init, params)
  shardings = shd.tree_shardings(abstract, abstract_mesh)
  out = {
    "mesh": sizes,
    "steps": {"steps": c.steps, "how": how},
    "student_params_b": _count(abstract.params) / 1e9,
    "per_device_gib": {
      "params": _per_device_bytes(abstract.params, shardings.params, sizes) / _GIB,
      "opt_state": _per_device_bytes(abstract.opt_state, shardings.opt_state, sizes) / _GIB,
      "rock_stats": _per_device_bytes(
        (abstract.rock, abstract.rock_mask), (shardings.rock, shardings.rock_mask), sizes
      )
      / _GIB,
    },
  }
  # The sampling copy (rockjax.sampling.rollout_copy) is live only while rolling out: it is freed
  # before the train step, so it is not part of the compiled step's peak below.
  out["per_device_gib"]["rollout_copy"] = (
    rollout_params.bytes_per_device(
      params,
      abstract_mesh,
      dtype=c.opd.rollout_dtype,
      layout=c.opd.rollout_sharding,
      tensor=c.opd.rollout_tensor,
    )
    / _GIB
  )
  out["model_flops"] = step_model_flops(c)
  if t_params is not None:
    t_shardings = shd.tree_shardings(t_params, abstract_mesh)
    out["teacher_params_b"] = _count(t_params) / 1e9
    out["per_device_gib"]["teacher_params"] = _per_device_bytes(t_params, t_shardings, sizes) / _GIB
  # XLA:CPU's figure does not predict TPU/GPU memory; it is kept for CPU runs and tests.
  out["per_device_gib"]["xla_cpu_temp"] = None
  return out


def _aot_report(
  c: ml_collections.ConfigDict,
  aot_topology: str,
  n_devices: int,
  model_flops_total: float,
  dump_dir: str | None,
) -> dict[str, Any]:
  """Sections `aot` (libtpu's compiled step, or XLA's refusal) and, on-policy, `rollout`."""
  devices = topology_devices(aot_topology)
  if len(devices) != n_devices:
    raise errors.ConfigError(
      f"mesh.num_devices: the mesh has {n_devices} devices but --aot_topology={aot_topology} "
      f"has {len(devices)}"
    )
  out: dict[str, Any] = {}
  start = time.perf_counter()
  try:
    compiled = compile_step(c, devices)
    figures = aot_figures(compiled, devices, model_flops_total)
    out["aot"] = {"topology": aot_topology, **figures}
    _dump(dump_dir, "train_step.hlo.txt", compiled)
  except jax.errors.JaxRuntimeError as e:
    reason = _xla_refusal(e)
    kind = devices[0].device_kind
    out["aot"] = {"topology": aot_topology, "device_kind": kind, "devices": len(devices)}
    out["aot"].update(hbm_gib=HBM_GIB.get(kind), xla_error=reason, fits=False)
  out["aot"]["compile_seconds"] = round(time.perf_counter() - start, 2)
  if c.opd.mode == "on_policy" and "xla_error" not in out["aot"]:
    out["rollout"] = _rollout_report(c, devices, out["aot"], dump_dir)
  return out


def _dump(dump_dir: str | None, name: str, compiled: jax.stages.Compiled) -> None:
  """Writes a compiled program's optimised HLO text to dump_dir/name (no-op without a dir)."""
  if dump_dir:
    os.makedirs(dump_dir, exist_ok=True)
    with open(os.path.join(dump_dir, name), "w") as f:
      f.write(compiled.as_text())


def _rollout_report(
  c: ml_collections.ConfigDict,
  devices: Sequence[jax.Device],
  aot: dict[str, Any],
  dump_dir: str | None,
) -> dict[str, Any]:
  """The compiled sampler's figures, beside the train step's time by the same cost model."""
  start = time.perf_counter()
  mesh = shd.make_mesh(declared_mesh_shape(c), devices=list(devices))
  try:
    compiled, dmesh = rollout_cost.compile_rollout(c, mesh)
  except jax.errors.JaxRuntimeError as e:
    reason = _xla_refusal(e)
    return {"layout": c.opd.rollout_sharding, "xla_error": reason, "fits_beside_train_state": False}
  _dump(dump_dir, "rollout.hlo.txt", compiled)
  kind = devices[0].device_kind
  peak, hbm = peak_bytes(compiled.memory_analysis()) / _GIB, HBM_GIB.get(kind)
  # What stays in HBM while rolling out: the train step's arguments (train state, teacher).
  resident = aot.get("per_device_gib", {}).get("arguments", 0.0)
  out = {"peak_gib": peak, "resident_gib": resident}
  out["fits_beside_train_state"] = None if hbm is None else peak + resident <= FIT_FRACTION * hbm
  out.update(rollout_cost.rollout_figures(compiled, kind, c, dmesh))
  train_s = aot.get("est_seconds")
  out["train_step_est_seconds"] = train_s
  rollout_s = out.get("est_rollout_seconds")
  if train_s and rollout_s:
    out["generation_share"] = rollout_s / (rollout_s + train_s)
  out["compile_seconds"] = round(time.perf_counter() - start, 2)
  return out


def _xla_refusal(e: jax.errors.JaxRuntimeError) -> str:
  """XLA:TPU's one-line reason for refusing a program larger than HBM (it has the sizes);
  any other error is re-raised."""
  if "RESOURCE_EXHAUSTED" not in str(e):
    raise e
  return str(e).strip().splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")


def peak_bytes(m: Any) -> int:
  """Everything live at once, less the donated inputs the outputs reuse (MaxText's "total"),
  from a compiled program's memory analysis: XLA's own peak_memory_in_bytes can come out
  below temp alone (it misses buffers inside loops), so verdicts use this upper bound."""
  return (
    m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  )


def compile_step(
  c: ml_collections.ConfigDict, devices: Sequence[jax.Device]
) -> jax.stages.Compiled:
  """The jitted train step lowered with abstract state, teacher and batch (with their shardings)
  on the declared mesh over `devices` (local, or a TPU topology's), compiled."""
  init, params, t_graphdef, t_params, schedule = _abstract(c)
  mesh = shd.make_mesh(declared_mesh_shape(c), devices=list(devices))
  like, shardings = state_lib.abstract_state(init, params, mesh)
  t_sh = None if t_params is None else shd.tree_shardings(t_params, mesh)
  t_like = (
    None
    if t_params is None
    else jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), t_params, t_sh
    )
  )
  rows, length = settings_lib.batch_shape(c)
  b_sh = shd.batch_sharding((rows, length), mesh)
  fields = ("tokens", "attention_mask", "response_mask")
  if c.data.pack and c.opd.mode == "off_policy":  # packed rows: the packed step's program
    fields += ("segment_ids", "positions")
  batch = {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=b_sh) for k in fields}
  settings = settings_lib.step_settings(c, t_graphdef, schedule)
  fn = step_lib.jit_train_step(settings, shardings, t_sh, b_sh)
  with jax.set_mesh(mesh):
    return fn.lower(like, t_like, batch).compile()


def aot_figures(
  compiled: jax.stages.Compiled,
  devices: Sequence[jax.Device],
  model_flops_total: float | None = None,
) -> dict[str, Any]:
  """XLA's memory (GiB per device) and cost analysis of a compiled step, the matmul FLOPs per
  device counted from its HLO (rockjax.dry_run.hlo_cost), their redundancy against an even split of
  `model_flops_total` (the analytic step count), and the verdict."""
  m = compiled.memory_analysis()
  sizes = {
    "arguments": m.argument_size_in_bytes,
    "outputs": m.output_size_in_bytes,
    "aliased": m.alias_size_in_bytes,
    "temp": m.temp_size_in_bytes,
  }
  peak = peak_bytes(m)  # XLA's own peak_memory_in_bytes is reported for reference only
  kind = devices[0].device_kind
  hbm = HBM_GIB.get(kind)
  flops = float((compiled.cost_analysis() or {}).get("flops", 0.0))
  counted = hlo_cost.matmul_flops(compiled.as_text())
  even_share = None if not model_flops_total else model_flops_total / len(devices)
  return {
    "device_kind": kind,
    "devices": len(devices),
    "per_device_gib": {
      **{k: v / _GIB for k, v in sizes.items()},
      "peak": peak / _GIB,
      "xla_peak": getattr(m, "peak_memory_in_bytes", 0) / _GIB,
      "hbm": hbm,
    },
    "hbm_utilisation": None if hbm is None else peak / _GIB / hbm,
    # Matmuls per device with every loop counted by its trips and the splash kernels by
    # shape; above 1 the redundancy is work some devices repeat (replicated compute).
    "flops_per_device": counted.flops,
    "flops_total": counted.flops * len(devices),
    "redundancy": None if even_share is None else counted.flops / even_share,
    "flops_by_kind": counted.by_kind,
    "flops_notes": {
      "unknown_loops": counted.unknown_loops,
      "unrecognised_custom_calls": counted.unrecognised_custom_calls,
    },
    # XLA's cost analysis counts the body of every loop once (scanned layers, micro-batches,
    # attention blocks) and the splash kernels as 0, so these undercount the step.
    "xla_flops_per_device": flops,
    # XLA:TPU's estimated cycles of the whole step (loops by their trips) at the chip's clock.
    "est_seconds": rollout_cost.train_step_seconds(compiled, kind),
    "xla_flops_total": flops * len(devices),
    "fits": None if hbm is None else peak / _GIB <= FIT_FRACTION * hbm,
  }


def check_fits(r: dict[str, Any]) -> None:
  """errors.UserError unless the AOT peak per device is within FIT_FRACTION of its HBM."""
  aot = r.get("aot")
  if aot is None or aot["fits"]:
    return
  if "xla_error" in aot:
    raise errors.UserError(
      f"--aot_topology={aot['topology']}: XLA:TPU could not fit the step on a "
      f"{aot['device_kind']}: {aot['xla_error']}"
    )
  gib = aot["per_device_gib"]
  if aot["fits"] is None:
    raise errors.UserError(
      f"--aot_topology={aot['topology']}: no HBM size known for device kind "
      f"{aot['device_kind']!r}; peak {gib['peak']:.2f} GiB per device"
    )
  raise errors.UserError(
    f"--aot_topology={aot['topology']}: peak {gib['peak']:.2f} GiB per device exceeds "
    f"{FIT_FRACTION:.0%} of the {gib['hbm']} GiB HBM of a {aot['device_kind']} "
    f"({aot['hbm_utilisation']:.0%} used)"
  )


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def print_report(
  c: ml_collections.ConfigDict, aot_topology: str | None = None, dump_dir: str | None = None
) -> None:
  """What `python -m rockjax.main --dry_run [--aot_topology=T] [--aot_dump_dir=D]` does:
  print the report as indented JSON, then raise errors.UserError when the AOT peak does not
  fit (check_fits)."""
  r = report(c, aot_topology, dump_dir)
  print(json.dumps(r, indent=1), flush=True)
  check_fits(r)
