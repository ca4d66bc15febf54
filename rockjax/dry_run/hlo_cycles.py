"""Time estimates of a compiled TPU program from XLA:TPU's own cost model, read from its HLO.

XLA:TPU writes an `estimated_cycles` figure into the backend_config of most top-level
instructions of its optimised HLO (fusions, copies, pads, slices...). `cycles` sums them over
one run of a computation: a `while` counts its condition and body times its trip count
(rockjax.dry_run.hlo_loops), a `conditional` its most expensive branch, calls are entered, fusions are
not (their figure covers what they fuse). Collectives carry no figure: `collective_bytes`
lists them so a report can show what moves (rockjax.dry_run.hlo_cost.collectives).

`loop_iteration(hlo, scope)` finds the while loop whose op_name contains `scope` (a
jax.named_scope around the loop, e.g. the sampler's 'decode_loop') and returns the cycles of
one iteration of its body (nested loops by their trip counts) and what it could not count.
CLOCK_GHZ gives the clock to turn cycles into seconds, by the device kind libtpu reports.
"""

from __future__ import annotations

import dataclasses
import re

from rockjax.dry_run.hlo_loops import trip_count
from rockjax.dry_run.hlo_text import Instr, Module, parse_module

# TensorCore clock by device_kind (public spec sheets); used only to turn cycles into seconds.
CLOCK_GHZ = {
  "TPU v4": 1.05,
  "TPU v5 lite": 1.5,  # v5e
  "TPU v5": 1.75,  # v5p
  "TPU v6 lite": 1.75,  # v6e
}
_CYCLES = re.compile(r'"estimated_cycles"\s*:\s*"?(\d+)')


@dataclasses.dataclass
class Cycles:
  """Estimated cycles of one run, and the while loops whose trip count was unknown (counted
  once) -- an estimate with unknown loops is a lower bound."""

  cycles: float = 0.0
  unknown_loops: list[str] = dataclasses.field(default_factory=list)

  def add(self, other: "Cycles", times: int = 1) -> None:
    self.cycles += other.cycles * times
    self.unknown_loops += other.unknown_loops


def instr_cycles(instr: Instr) -> int:
  """The estimated_cycles XLA:TPU recorded for one instruction (0 when it recorded none)."""
  m = _CYCLES.search(instr.attrs)
  return int(m.group(1)) if m else 0


def cycles(module: Module, comp: str, memo: dict[str, Cycles] | None = None) -> Cycles:
  """Estimated cycles of one run of computation `comp` (loops inside it by their trips)."""
  memo = {} if memo is None else memo
  if comp in memo:
    return memo[comp]
  out = Cycles()
  for instr in module.computations[comp].instrs.values():
    out.cycles += instr_cycles(instr)
    if instr.opcode == "while":
      trips, _ = trip_count(module, comp, instr)
      if trips is None:
        out.unknown_loops.append(instr.name)
      for key in ("condition", "body"):
        for called in instr.called(key):
          out.add(cycles(module, called, memo), 1 if trips is None else trips)
    elif instr.opcode == "conditional":
      branches = instr.called("branch_computations") or (
        instr.called("true_computation") + instr.called("false_computation")
      )
      costs = [cycles(module, b, memo) for b in branches]
      if costs:
        out.add(max(costs, key=lambda c: c.cycles))
    elif instr.opcode in ("call", "async-start"):
      for called in instr.called("calls") + instr.called("to_apply"):
        out.add(cycles(module, called, memo))
  memo[comp] = out
  return out


def find_loop(module: Module, scope: str) -> tuple[str, Instr]:
  """(computation, while instruction) of the outermost loop whose op_name contains `scope`."""
  for comp in _reachable(module):
    for instr in module.computations[comp].instrs.values():
      if instr.opcode == "while" and scope in instr.op_name:
        return comp, instr
  raise ValueError(f"no while loop with {scope!r} in its op_name in the compiled program")


def loop_iteration(hlo_text: str, scope: str) -> tuple[Cycles, str, int | None]:
  """(cycles of one iteration of the loop named by `scope`, its body's name, its trip count)."""
  module = parse_module(hlo_text)
  comp, loop = find_loop(module, scope)
  out = Cycles()
  memo: dict[str, Cycles] = {}
  for key in ("condition", "body"):
    for called in loop.called(key):
      out.add(cycles(module, called, memo))
  (body,) = loop.called("body")
  return out, body, trip_count(module, comp, loop)[0]


def inside(module: Module, body: str, *, fusions: bool = True) -> set[str]:
  """Every computation reachable from `body` (itself included): what runs in that loop;
  fusions=False leaves out what fusions call (their instructions run inside the fusion)."""
  return set(_reachable(module, body, fusions=fusions))


def _reachable(module: Module, start: str | None = None, *, fusions: bool = True) -> list[str]:
  """Computations reachable from `start` (default: the entry), breadth first."""
  order, seen = [], set()
  queue = [module.entry if start is None else start]
  while queue:
    comp = queue.pop(0)
    if comp in seen or comp not in module.computations:
      continue
    seen.add(comp)
    order.append(comp)
    for instr in module.computations[comp].instrs.values():
      if instr.opcode == "fusion" and not fusions:
        continue
      for key in ("condition", "body", "calls", "to_apply", "branch_computations"):
        queue += instr.called(key)
  return order
