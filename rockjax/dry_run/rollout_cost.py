"""The rollout in the dry run: the real sampler compiled ahead of time, and what one decode step
costs by XLA:TPU's own cost model.

`compile_rollout` lowers `sampling.decode_jit` exactly as a run calls it (the sampling copy in
opd.rollout_dtype on its decode mesh, data.prompts_per_step prompts of data.max_prompt_len
tokens, opd.samples_per_prompt samples of opd.max_new_tokens tokens) with abstract arguments,
so no weight exists. `rollout_figures` reads the compiled program:

- `est_ms_per_decode_step`: the estimated cycles of one iteration of the decode while_loop
  (rockjax.dry_run.hlo_cycles; nested layer loops by their trip counts) at the chip's clock;
  `est_prefill_ms`: everything outside that loop; `est_rollout_seconds`: the prefill plus
  max_new_tokens decode steps (a batch whose rows all stop early runs fewer);
- `loop_collectives`: every collective inside the decode loop with its per-device result
  shapes and bytes (XLA's cycle figures leave collectives out: these say what would add);
- `loop_moves`: instructions inside the decode loop that move at least one layer's KV cache
  per device (copies, materialised slices, whole-layer writes): a cache that "never moves"
  has none (`cache_moves`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from rockjax import sampling
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax.dry_run import hlo_cost, hlo_cycles
from rockjax.dry_run.hlo_text import Array, Module, parse_module
from rockjax.models.cache import KV_AXES
from rockjax.sampling import rollout_copy as rollout_params

COLLECTIVE_LIMIT_BYTES = 2**20  # a collective this large inside the decode loop is a finding
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_ITEMSIZE.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})
# Opcodes that only name or forward buffers (no data moves).
_NAMING = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call")


def array_bytes(a: Array) -> int:
  """Bytes of one HLO array (unknown element types count 4 bytes)."""
  return a.size * _ITEMSIZE.get(a.dtype, 4)


def compile_rollout(c: ml_collections.ConfigDict, mesh: Mesh) -> tuple[jax.stages.Compiled, Mesh]:
  """(the sampler of a run of config `c` on the train mesh `mesh`, compiled with abstract
  arguments on the decode mesh of opd.rollout_sharding; that decode mesh)."""
  graphdef, params = loading.abstract_params(loading.arch_config(c.model))
  layout, tensor = c.opd.rollout_sharding, c.opd.rollout_tensor
  dmesh = rollout_params.decode_mesh(params, mesh, layout, tensor)
  if layout == "train":
    shardings, dtype = shd.tree_shardings(params, mesh), jnp.float32
  else:
    shardings = rollout_params.copy_shardings(params, mesh, layout, tensor)
    dtype = rollout_params.DTYPES[c.opd.rollout_dtype]
  like = lambda a, s: jax.ShapeDtypeStruct(a.shape, dtype, sharding=s)
  copy = jax.tree.map(like, params, shardings)
  shape = (c.data.prompts_per_step, c.data.max_prompt_len)
  prompts = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=shd.batch_sharding(shape, dmesh))
  cfg = sampling.SamplingConfig(
    max_new_tokens=c.opd.max_new_tokens,
    top_p=float(c.opd.top_p),
    top_k=int(c.opd.top_k),
    eos_ids=(0,),  # any one id: the program is the same for every EOS id
    num_samples=c.opd.samples_per_prompt,
  )
  key = jax.eval_shape(lambda: jax.random.key(0))
  temperature = jax.ShapeDtypeStruct((), jnp.float32)
  with jax.set_mesh(dmesh):
    lowered = sampling.decode_jit.lower(graphdef, copy, prompts, prompts, key, temperature, cfg)
    return lowered.compile(), dmesh


def layer_cache_bytes(c: ml_collections.ConfigDict, dmesh: Mesh) -> int:
  """Bytes of one layer's K (or V) cache on one device of the decode mesh `dmesh`."""
  cfg = loading.arch_config(c.model)
  rows = c.data.prompts_per_step * c.opd.samples_per_prompt
  slots = c.data.max_prompt_len + c.opd.max_new_tokens - 1
  shape = (1, rows, cfg.num_kv_heads, slots, cfg.head_dim)
  spec = shd.logical_to_spec(KV_AXES, shape, dmesh)
  sizes = dict(zip(dmesh.axis_names, dmesh.axis_sizes))
  split = math.prod(sizes[a] for entry in spec for a in shd.spec_axes(entry))
  itemsize = jnp.dtype(rollout_params.DTYPES.get(c.opd.rollout_dtype, jnp.float32)).itemsize
  return math.prod(shape) * itemsize // split


def loop_collectives(hlo_text: str, scope: str = sampling.LOOP_SCOPE) -> list[dict[str, Any]]:
  """Every collective inside the loop named `scope`: kind, per-device shapes, bytes, and
  how often one iteration runs it (nested loops' trips)."""
  module = parse_module(hlo_text)
  _, body, _ = hlo_cycles.loop_iteration(hlo_text, scope)
  inside = hlo_cycles.inside(module, body)
  out = []
  for col in hlo_cost.collectives(hlo_text):
    if col.computation in inside:
      out.append(
        {
          "kind": col.kind,
          "shapes": [str(a) for a in col.arrays],
          "bytes": sum(array_bytes(a) for a in col.arrays),
          # The decode loop's trip count is data-dependent (counted once), so a collective's
          # executions per program are its executions per decode step.
          "per_step": col.executions,
          "op": col.op_name,
        }
      )
  return out


def loop_moves(hlo_text: str, min_bytes: int, scope: str = sampling.LOOP_SCOPE) -> list[str]:
  """Instructions of the loop `scope` (its body, nested loops and calls; not inside fusions)
  that write at least `min_bytes` per device: a copy, a materialised slice, or a
  dynamic-update-slice whose update (not just its in-place result) is that large."""
  module = parse_module(hlo_text)
  _, body, _ = hlo_cycles.loop_iteration(hlo_text, scope)
  found = []
  for comp in sorted(hlo_cycles.inside(module, body, fusions=False)):
    for instr in module.computations[comp].instrs.values():
      if instr.opcode in _NAMING or instr.opcode.endswith("-done"):
        continue
      written = _written_bytes(module, instr)
      if written >= min_bytes:
        shapes = ", ".join(str(a) for a in instr.arrays)
        found.append(f"{instr.opcode} {instr.name} writes {written / 2**20:.1f} MiB ({shapes})")
  return found


def _written_bytes(module: Module, instr) -> int:
  """Bytes an instruction writes: its result, except that an in-place dynamic-update-slice
  (alone or as a fusion's root) writes only its update operand."""
  dus = instr
  if instr.opcode == "fusion":
    (called,) = instr.called("calls")
    comp = module.computations[called]
    dus = comp.instrs[comp.root]
  if dus.opcode == "dynamic-update-slice":
    update = module.instr(dus.operands[1])
    if update is not None:
      return sum(array_bytes(a) for a in update.arrays)
  if instr.opcode in hlo_cost.COLLECTIVES or instr.opcode.removesuffix("-start") in (
    hlo_cost.COLLECTIVES
  ):
    return 0  # reported by loop_collectives
  arrays = instr.arrays
  if instr.opcode == "copy-start":
    arrays = arrays[:1]  # (destination, source, context): one array moves
  return max((array_bytes(a) for a in arrays), default=0)


def rollout_figures(
  compiled: jax.stages.Compiled, device_kind: str, c: ml_collections.ConfigDict, dmesh: Mesh
) -> dict[str, Any]:
  """The rollout section's cost figures (see the module docstring); the memory verdict is the
  dry run's (rockjax.dry_run)."""
  clock = hlo_cycles.CLOCK_GHZ.get(device_kind)
  text = compiled.as_text()
  step, _, _ = hlo_cycles.loop_iteration(text, sampling.LOOP_SCOPE)
  module = parse_module(text)
  whole = hlo_cycles.cycles(module, module.entry)  # the decode loop counted once (unknown trips)
  prefill_cycles = whole.cycles - step.cycles
  collectives = loop_collectives(text)
  moves = loop_moves(text, layer_cache_bytes(c, dmesh))
  out: dict[str, Any] = {
    "layout": c.opd.rollout_sharding,
    "decode_mesh": dict(zip(dmesh.axis_names, dmesh.axis_sizes)),
    "rows": c.data.prompts_per_step * c.opd.samples_per_prompt,
    "max_new_tokens": c.opd.max_new_tokens,
    "est_cycles_per_decode_step": step.cycles,
    "clock_ghz": clock,
    "loop_collectives": collectives,
    "loop_collective_bytes_per_step": sum(x["bytes"] * x["per_step"] for x in collectives),
    "large_loop_collectives": [x for x in collectives if x["bytes"] >= COLLECTIVE_LIMIT_BYTES],
    "loop_moves": moves,
    "cache_moves": bool(moves),
    "unknown_loops": step.unknown_loops,
  }
  if clock:
    to_ms = lambda cycles: cycles / clock / 1e6
    out["est_ms_per_decode_step"] = to_ms(step.cycles)
    out["est_prefill_ms"] = to_ms(prefill_cycles)
    steps = c.opd.max_new_tokens - 1  # the first token comes from the prefill's logits
    out["est_rollout_seconds"] = to_ms(prefill_cycles + step.cycles * steps) / 1e3
  return out


def train_step_seconds(compiled: jax.stages.Compiled, device_kind: str) -> float | None:
  """The train step's estimated seconds by the same cost model (all loops by their trips)."""
  clock = hlo_cycles.CLOCK_GHZ.get(device_kind)
  if not clock:
    return None
  module = parse_module(compiled.as_text())
  return hlo_cycles.cycles(module, module.entry).cycles / clock / 1e9
