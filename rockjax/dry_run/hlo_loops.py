"""Trip counts of XLA while loops in optimised HLO (rockjax.dry_run.hlo_text).

XLA records `known_trip_count` in a while's backend_config when it proves the count (XLA:CPU
does; XLA:TPU's printed HLO does not). Otherwise the count is read from the loop itself: the
condition compares a counter (an element of the loop tuple) with a constant, the tuple the
loop is given starts the counter at a constant, and the body adds a constant to it. Copies,
conversions and the small fusions XLA wraps these scalars in are looked through.
"""

from __future__ import annotations

import re

from rockjax.dry_run.hlo_text import Instr, Module


def _scalar(module: Module, comp: str, name: str, env: dict[str, object]):
  """The value of a scalar integer instruction: an int, ('iv', offset) for the loop counter
  (tuple element `env['index']` of the loop parameter) plus a constant, or None."""
  instr = module.computations[comp].instrs.get(name)
  if instr is None:
    return None
  op = instr.opcode
  if op == "constant":
    m = re.fullmatch(r"-?\d+", instr.operands[0]) if instr.operands else None
    return int(m.group(0)) if m else None
  if op in ("copy", "bitcast", "convert", "reshape"):
    return _scalar(module, comp, instr.operands[0], env)
  if op == "parameter":
    return env.get(f"param{instr.operands[0]}")
  if op == "get-tuple-element":
    source = module.computations[comp].instrs.get(instr.operands[0])
    index = int(instr.attr("index"))
    if source is not None and source.opcode == "parameter" and env.get("loop"):
      return ("iv", 0) if index == env["index"] else env["invariant"].get(index)
    if source is not None and source.opcode == "tuple":
      return _scalar(module, comp, source.operands[index], env)
    return None
  if op in ("add", "subtract"):
    a, b = (_scalar(module, comp, o, env) for o in instr.operands)
    sign = 1 if op == "add" else -1
    if isinstance(a, int) and isinstance(b, int):
      return a + sign * b
    if isinstance(a, tuple) and isinstance(b, int):
      return ("iv", a[1] + sign * b)
    if isinstance(b, tuple) and isinstance(a, int) and op == "add":
      return ("iv", b[1] + a)
    return None
  if op == "fusion":
    (called,) = instr.called("calls")
    inner = {f"param{i}": _scalar(module, comp, o, env) for i, o in enumerate(instr.operands)}
    return _scalar(module, called, module.computations[called].root, inner)
  return None


def _compare(module: Module, comp: str, name: str, env) -> tuple[str, object, object] | None:
  """(direction, lhs, rhs) of the compare a loop condition returns (through a fusion)."""
  instr = module.computations[comp].instrs[name]
  if instr.opcode == "fusion":
    (called,) = instr.called("calls")
    inner = {f"param{i}": _scalar(module, comp, o, env) for i, o in enumerate(instr.operands)}
    return _compare(module, called, module.computations[called].root, inner)
  if instr.opcode != "compare":
    return None
  a, b = (_scalar(module, comp, o, env) for o in instr.operands)
  return instr.attr("direction"), a, b


def _invariant_constants(module: Module, comp: str, init: Instr, body: str) -> dict[int, int]:
  """Loop tuple elements that start as a constant and the body passes on unchanged (XLA can
  hoist a loop's bound into its tuple): {index: value}."""
  root = module.computations[body].instrs[module.computations[body].root]
  out = {}
  for index, name in enumerate(root.operands):
    passed = module.computations[body].instrs.get(name)
    if passed is None or passed.opcode != "get-tuple-element" or passed.attr("index") != str(index):
      continue
    if module.computations[body].instrs[passed.operands[0]].opcode != "parameter":
      continue
    value = _scalar(module, comp, init.operands[index], {})
    if isinstance(value, int):
      out[index] = value
  return out


def trip_count(module: Module, comp: str, loop: Instr) -> tuple[int | None, str]:
  """(trips, source) of a while instruction in computation `comp`; (None, 'unknown') when
  neither XLA's known_trip_count nor the condition's constant bound gives it."""
  known = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', loop.attrs)
  if known:
    return int(known.group(1)), "known_trip_count"
  (cond,) = loop.called("condition")
  (body,) = loop.called("body")
  init = module.computations[comp].instrs.get(loop.operands[0])
  body_root = module.computations[body].instrs[module.computations[body].root]
  if init is None or init.opcode != "tuple" or body_root.opcode != "tuple":
    return None, "unknown"
  invariant = _invariant_constants(module, comp, init, body)
  for index in range(len(init.operands)):
    env = {"loop": True, "index": index, "invariant": invariant}
    cmp = _compare(module, cond, module.computations[cond].root, env)
    if cmp is None:
      continue
    direction, a, b = cmp
    if isinstance(b, tuple) and isinstance(a, int):  # bound first: flip the comparison
      direction = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE"}.get(direction, direction)
      a, b = b, a
    if not (isinstance(a, tuple) and isinstance(b, int)):
      continue
    bound = b - a[1]  # the condition is `counter DIRECTION bound`
    start = _scalar(module, comp, init.operands[index], {})
    step = _scalar(module, body, body_root.operands[index], env)
    if not (isinstance(start, int) and isinstance(step, tuple)):
      return None, "unknown"
    # Trips = ceil(span / stride) with both counted in the direction the counter moves.
    span, stride = {
      "LT": (bound - start, step[1]),
      "LE": (bound - start + 1, step[1]),
      "GT": (start - bound, -step[1]),
      "GE": (start - bound + 1, -step[1]),
    }.get(direction, (0, 0))
    if stride <= 0:
      return None, "unknown"
    return max(0, -(-span // stride)), "condition"
  return None, "unknown"
