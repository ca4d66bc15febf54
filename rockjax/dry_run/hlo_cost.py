"""Matmul FLOPs per device and collectives of a compiled step, read from its optimised HLO.

XLA's `compiled.cost_analysis()` counts the body of every while loop once (scanned layers,
fused-loss token blocks, micro-batches) and a Mosaic kernel without a cost estimate (the TPU
splash attention) as 0. `matmul_flops` walks the HLO instead (rockjax.dry_run.hlo_text):

- `dot` and `ragged-dot`: 2 x output elements x the lhs contracting size (a ragged dot
  [M, K] x [G, K, N] is 2 x M x K x N: each row meets one group);
- `convolution` (XLA:TPU writes most dots as convolutions): XLA's own rule, 2 x batch x
  input features per group x output features x the valid (output, kernel) position pairs of
  each spatial dimension, so padding and dilation holes are not counted;
- fusions and calls are entered; a `while` counts its body times its trip count: the
  `known_trip_count` XLA records, else the loop condition's constant bound with the counter's
  start (the tuple it is given) and step (its body's add); a loop whose count is neither is
  counted once and named in `unknown_loops`; a `conditional` counts its most expensive branch;
- TPU custom calls (Mosaic/Pallas kernels): the `cost_estimate` a kernel carries (megablox),
  else the splash-attention rule below by kernel name; any other custom call that computes
  is named in `unrecognised_custom_calls` (counted 0).

Splash attention (`splash_{mha,mqa}_{fwd,dq,dkv}...`), q [b, h, Lq, E] (the first floating
operand), k [b, K, Lk, E] (the second; [Lk, E] for mqa): the forward is two matmuls (q k^T
and p v), 4 b h Lq Lk E; the dq kernel recomputes q k^T and does do v^T and ds k (6 b h Lq Lk
E); the dkv kernel recomputes q k^T and does p^T do, do v^T and ds^T q (8 b h Lq Lk E; 10 when
it also writes dq, the fused backward). All are times SPLASH_CAUSAL_FRACTION, the useful share
of rockjax's causal mask, as in dry_run.flops.step_model_flops (the kernel also computes the masked
half of each diagonal block: the true work is (n + 1) / 2n of the square for n blocks).

Elementwise work (norms, softmax, activations, optimiser) is not counted: matmuls dominate.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

from rockjax.dry_run.hlo_loops import trip_count
from rockjax.dry_run.hlo_text import Array, Instr, Module, parse_arrays, parse_module

SPLASH_CAUSAL_FRACTION = 0.5
# Matmul units (multiples of b h Lq Lk E) of the splash kernels, before the causal fraction.
_SPLASH_UNITS = {"fwd": 4, "dq": 6, "dkv": 8}
# Custom calls that move, annotate or allocate data but do no arithmetic worth counting.
NO_FLOP_TARGETS = frozenset(
  {
    "AllocateBuffer",
    "AssumeGatherIndicesInBound",
    "PrepareAsyncCallStart",
    "PrepareAsyncCallDone",
    "Sharding",
    "SPMDFullToShardShape",
    "SPMDShardToFullShape",
    "MoveToHost",
    "MoveToDevice",
    "LayoutConstraint",
    "annotate_device_placement",
    "TopK",
    "ZeroCrop",  # XLA:TPU crops a padded shard (seen at 2 updates per rollout batch)
  }
)
# Mosaic kernels XLA:TPU emits that do integer bookkeeping, no matmul (ragged-dot's group
# offsets).
NO_FLOP_KERNELS = ("ragged-dot-metadata",)
COLLECTIVES = (
  "all-gather",
  "all-reduce",
  "reduce-scatter",
  "all-to-all",
  "ragged-all-to-all",
  "collective-permute",
)


@dataclasses.dataclass(frozen=True)
class Loop:
  """A while loop: its trip count (None when unknown) and where the count came from."""

  name: str
  trips: int | None
  source: str  # 'known_trip_count', 'condition' or 'unknown'
  op_name: str  # the jax op path from the metadata, for reading


@dataclasses.dataclass
class FlopCount:
  """Matmul FLOPs of one execution on one device, by kind, and what could not be counted."""

  flops: float = 0.0
  by_kind: dict[str, float] = dataclasses.field(default_factory=dict)
  loops: list[Loop] = dataclasses.field(default_factory=list)
  unknown_loops: list[str] = dataclasses.field(default_factory=list)
  unrecognised_custom_calls: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of the program, as compiled: what it moves and where it sits."""

  kind: str  # one of COLLECTIVES
  name: str
  arrays: tuple[Array, ...]  # result arrays (per device)
  computation: str
  in_loop: bool  # inside a while body (at any depth)
  executions: int  # times it runs per step (loop trip counts multiplied; unknown counts 1)
  op_name: str


def _operand_array(module: Module, instr: Instr, i: int) -> Array:
  return module.instr(instr.operands[i]).arrays[0]


def _int_list(raw: str | None) -> list[int]:
  return [int(x) for x in re.findall(r"\d+", raw or "")]


def dot_flops(module: Module, instr: Instr) -> float:
  """2 x output elements x lhs contracting size (dot and ragged-dot)."""
  lhs = _operand_array(module, instr, 0)
  contracting = _int_list(instr.attr("lhs_contracting_dims"))
  flops = 2.0 * instr.arrays[0].size * math.prod(lhs.dims[d] for d in contracting)
  if set(_int_list(instr.attr("lhs_ragged_dims"))) & set(contracting):
    # Ragged contraction ([K, M] x [M, N] -> [G, K, N]): each group sums its own rows only.
    flops /= _operand_array(module, instr, 2).size
  return flops


def _valid_positions(n_in: int, n_kernel: int, n_out: int, win: dict[str, int]) -> int:
  """(output, kernel) index pairs of one spatial dimension that read a real input element
  (not padding, not a hole of the lhs dilation)."""
  stride, pad, dil, base = win["stride"], win["pad_lo"], win["rhs_dilate"], win["lhs_dilate"]
  count = 0
  for k in range(n_kernel):
    if base == 1:  # closed form: outputs o with 0 <= o * stride - pad + k * dil < n_in
      lo = max(0, -(-(pad - k * dil) // stride))
      hi = min(n_out - 1, (n_in - 1 + pad - k * dil) // stride)
      count += max(0, hi - lo + 1)
      continue
    for o in range(n_out):
      at = o * stride - pad + k * dil
      count += at % base == 0 and 0 <= at // base < n_in
  return count


def _window(raw: str | None, rank: int) -> list[dict[str, int]]:
  """Per spatial dimension: stride, low padding, lhs (base) and rhs (window) dilation."""
  dims = [{"stride": 1, "pad_lo": 0, "lhs_dilate": 1, "rhs_dilate": 1} for _ in range(rank)]
  for key, value in re.findall(r"(\w+)=([\d_x\-]+)", raw or ""):
    for d, part in enumerate(value.split("x")[:rank]):
      if key == "pad":
        dims[d]["pad_lo"] = int(part.split("_")[0])
      elif key in ("stride", "lhs_dilate", "rhs_dilate"):
        dims[d][key] = int(part)
  return dims


def convolution_flops(module: Module, instr: Instr) -> float:
  """XLA's HloCostAnalysis count of a convolution (see the module docstring)."""
  lhs, rhs = _operand_array(module, instr, 0), _operand_array(module, instr, 1)
  out = instr.arrays[0]
  lhs_l, rhs_l, out_l = re.split(r"_|->", instr.attr("dim_labels"))
  spatial = [c for c in lhs_l if c.isdigit()]
  win = _window(instr.attr("window"), len(spatial))
  positions = 1
  for d, s in enumerate(sorted(spatial)):
    n_in, n_k, n_out = lhs.dims[lhs_l.index(s)], rhs.dims[rhs_l.index(s)], out.dims[out_l.index(s)]
    positions *= _valid_positions(n_in, n_k, n_out, win[d])
  groups = int(instr.attr("feature_group_count") or 1)
  batch_groups = int(instr.attr("batch_group_count") or 1)
  in_features = lhs.dims[lhs_l.index("f")] // groups
  batch = lhs.dims[lhs_l.index("b")] // batch_groups
  return 2.0 * batch * in_features * out.dims[out_l.index("f")] * positions


def _kernel_name(instr: Instr) -> str:
  """The Mosaic kernel's name (its `kernel_name` attribute, else the jax op path)."""
  m = re.search(r'kernel_name="?([\w\-.]+)', instr.attrs)
  return m.group(1) if m else f"{instr.name} {instr.op_name}"


def custom_call_flops(module: Module, instr: Instr) -> tuple[str, float] | None:
  """(kind, FLOPs) of a custom call by the rules above; (target, 0) for data movement; None
  for one that computes but is not recognised."""
  target = (instr.attr("custom_call_target") or '""').strip('"')
  if target in NO_FLOP_TARGETS:
    return target, 0.0
  if target != "tpu_custom_call":
    return None
  estimate = re.search(r'"cost_estimate"\s*:\s*\{[^}]*"flops"\s*:\s*"?(\d+)', instr.attrs)
  if estimate:
    return "kernel_cost_estimate", float(estimate.group(1))
  if any(k in _kernel_name(instr) for k in NO_FLOP_KERNELS):
    return "kernel_bookkeeping", 0.0
  splash = re.search(r"splash_(mha|mqa)_(fwd|dq|dkv)", _kernel_name(instr))
  if not splash:
    return None
  floats = [
    a
    for a in (module.instr(o).arrays[0] for o in instr.operands if module.instr(o))
    if a.dtype.startswith(("f", "bf"))
  ]
  q, k = floats[0], floats[1]
  *bh, _, E = q.dims
  units = _SPLASH_UNITS[splash.group(2)]
  if splash.group(2) == "dkv" and sum(a.dims == q.dims for a in instr.arrays) > 2 * (
    k.dims == q.dims
  ):
    units += 2  # the fused backward also writes dq (ds k); dk, dv are k-shaped
  flops = units * math.prod(bh) * q.dims[-2] * k.dims[-2] * E * SPLASH_CAUSAL_FRACTION
  return f"splash_{splash.group(2)}", flops


# ---- walking the module ----------------------------------------------------------------


def _add(into: FlopCount, other: FlopCount, times: int = 1) -> None:
  """into += times x other (notes merged once)."""
  into.flops += times * other.flops
  for kind, f in other.by_kind.items():
    into.by_kind[kind] = into.by_kind.get(kind, 0.0) + times * f
  into.loops += other.loops
  into.unknown_loops += other.unknown_loops
  into.unrecognised_custom_calls += other.unrecognised_custom_calls


def _count(into: FlopCount, kind: str, flops: float) -> None:
  into.flops += flops
  into.by_kind[kind] = into.by_kind.get(kind, 0.0) + flops


def _computation_cost(module: Module, comp: str, memo: dict[str, FlopCount]) -> FlopCount:
  """Matmul FLOPs of one run of computation `comp` (loops inside it counted by trips)."""
  if comp in memo:
    return memo[comp]
  out = FlopCount()
  for instr in module.computations[comp].instrs.values():
    op = instr.opcode
    if op == "dot" or op == "ragged-dot":
      _count(out, op, dot_flops(module, instr))
    elif op == "convolution":
      _count(out, op, convolution_flops(module, instr))
    elif op == "custom-call":
      counted = custom_call_flops(module, instr)
      if counted is None:
        target = (instr.attr("custom_call_target") or "?").strip('"')
        out.unrecognised_custom_calls.append(f"{target}:{_kernel_name(instr)} ({instr.name})")
      elif counted[1]:
        _count(out, *counted)
    elif op == "while":
      trips, source = trip_count(module, comp, instr)
      out.loops.append(Loop(instr.name, trips, source, instr.op_name))
      if trips is None:
        out.unknown_loops.append(f"{instr.name} ({instr.op_name}): counted once")
      (body,) = instr.called("body")
      _add(out, _computation_cost(module, body, memo), 1 if trips is None else trips)
    elif op == "conditional":
      branches = instr.called("branch_computations") or (
        instr.called("true_computation") + instr.called("false_computation")
      )
      costs = [_computation_cost(module, b, memo) for b in branches]
      _add(out, max(costs, key=lambda c: c.flops))
    elif not op.endswith(("-done", "-update")):  # an async pair's work is in its start
      for key in ("calls", "to_apply"):
        for called in instr.called(key):
          _add(out, _computation_cost(module, called, memo))
  memo[comp] = out
  return out


def matmul_flops(hlo_text: str) -> FlopCount:
  """Matmul FLOPs per device of one run of a compiled program (`compiled.as_text()`)."""
  module = parse_module(hlo_text)
  return _computation_cost(module, module.entry, {})


def _visits(module: Module):
  """(computation, executions, in_loop) for every call path from the entry."""
  stack = [(module.entry, 1, False)]
  while stack:
    comp, times, in_loop = stack.pop()
    yield comp, times, in_loop
    for instr in module.computations[comp].instrs.values():
      if instr.opcode == "while":
        trips, _ = trip_count(module, comp, instr)
        stack += [(b, times * (trips or 1), True) for b in instr.called("body")]
      elif not instr.opcode.endswith(("-done", "-update")):
        keys = ("calls", "branch_computations", "true_computation", "false_computation")
        stack += [(c, times, in_loop) for k in keys for c in instr.called(k)]


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective of a compiled program with its per-device result arrays, computation
  and executions per step (async start/done pairs listed once, with the done's result)."""
  module = parse_module(hlo_text)
  done_of = {
    i.operands[0]: i
    for c in module.computations.values()
    for i in c.instrs.values()
    if i.opcode.endswith("-done") and i.operands
  }
  found = []
  for comp, times, in_loop in _visits(module):
    for instr in module.computations[comp].instrs.values():
      kind = instr.opcode.removesuffix("-start")
      result = done_of.get(instr.name, instr) if instr.opcode.endswith("-start") else instr
      if instr.opcode == "async-start":  # a wrapped collective: its kind is the wrapped op's
        (called,) = instr.called("calls")
        kind = module.computations[called].instrs[module.computations[called].root].opcode
      if kind in COLLECTIVES and not instr.opcode.endswith("-done"):
        arrays = parse_arrays(result.type_text)
        found.append(Collective(kind, instr.name, arrays, comp, in_loop, times, instr.op_name))
  return found


def collective_summary(found: list[Collective]) -> dict[str, int]:
  """Count of collectives by kind (for reports)."""
  return dict(collections.Counter(c.kind for c in found))
