"""A reader for XLA's optimised HLO text (`compiled.as_text()`): computations, instructions,
shapes and the attributes the cost counter needs (rockjax.dry_run.hlo_cost).

Only what the text states is parsed; no XLA library is involved, so the same reader serves
XLA:CPU executables and those libtpu compiles ahead of time for a TPU topology.
"""

from __future__ import annotations

import dataclasses
import math
import re

_COMMENT = re.compile(r"/\*.*?\*/")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([^\]]*)\]")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")


@dataclasses.dataclass(frozen=True)
class Array:
  """One array type: element type and dimensions (a scalar has none)."""

  dtype: str
  dims: tuple[int, ...]

  @property
  def size(self) -> int:
    return math.prod(self.dims)

  def __str__(self) -> str:
    return f"{self.dtype}[{','.join(map(str, self.dims))}]"


@dataclasses.dataclass(frozen=True)
class Instr:
  """One HLO instruction: `name = type opcode(operands), attributes`."""

  name: str
  type_text: str  # e.g. 'f32[16,32]{1,0}' or a tuple '(s32[], bf16[8,4]{1,0})'
  opcode: str
  operands: tuple[str, ...]  # operand names without '%' (a constant's literal for constant)
  attrs: str  # everything after the operand list, unparsed

  @property
  def arrays(self) -> tuple[Array, ...]:
    """The arrays of the result type, in order (one unless it is a tuple)."""
    return parse_arrays(self.type_text)

  def attr(self, key: str) -> str | None:
    """The raw value of attribute `key` (braces kept), or None."""
    m = re.search(rf"(?:^|[ ,]){re.escape(key)}=", self.attrs)
    if not m:
      return None
    rest = self.attrs[m.end() :]
    if rest[:1] in "{(":
      return rest[: _balanced_end(rest, 0)]
    if rest[:1] == '"':
      return rest[: rest.index('"', 1) + 1]
    return re.match(r"[^,\s]*", rest).group(0)

  @property
  def op_name(self) -> str:
    """The jax op path from the instruction's metadata ('' when it has none)."""
    m = re.search(r'op_name="([^"]*)"', self.attrs)
    return m.group(1) if m else ""

  def called(self, key: str) -> tuple[str, ...]:
    """Computation names in attribute `key` (calls=, body=, branch_computations={...})."""
    raw = self.attr(key)
    return () if raw is None else tuple(re.findall(r"%?([\w.\-]+)", raw.strip("{}")))


@dataclasses.dataclass
class Computation:
  """A named computation: its instructions in order, by name, and its root."""

  name: str
  instrs: dict[str, Instr]
  root: str


@dataclasses.dataclass
class Module:
  """The computations of an HLO module and the name of its entry."""

  computations: dict[str, Computation]
  entry: str

  def instr(self, name: str) -> Instr | None:
    """An instruction by name anywhere in the module (names are unique module-wide)."""
    return self._index.get(name)

  def __post_init__(self):
    self._index = {n: i for c in self.computations.values() for n, i in c.instrs.items()}


def parse_arrays(type_text: str) -> tuple[Array, ...]:
  """Every array type named in a (possibly tuple) type text, layouts ignored."""
  out = []
  for dtype, dims in _ARRAY.findall(_COMMENT.sub("", type_text)):
    sizes = [int(re.sub(r"^<=", "", d)) for d in dims.split(",") if d.strip()]
    out.append(Array(dtype, tuple(sizes)))
  return tuple(out)


def _balanced_end(text: str, start: int) -> int:
  """Index just past the bracket group opening at text[start] ('(' or '{')."""
  depth, quote = 0, False
  for i in range(start, len(text)):
    ch = text[i]
    if ch == '"' and text[i - 1] != "\\":
      quote = not quote
    elif not quote and ch in "({[":
      depth += 1
    elif not quote and ch in ")}]":
      depth -= 1
      if depth == 0:
        return i + 1
  raise ValueError(f"unbalanced brackets in HLO text: {text[start : start + 80]!r}")


def _split_top(text: str) -> list[str]:
  """Split on commas outside brackets."""
  parts, depth, cur = [], 0, []
  for ch in text:
    depth += ch in "({[" and 1 or 0
    depth -= ch in ")}]" and 1 or 0
    if ch == "," and depth == 0:
      parts.append("".join(cur).strip())
      cur = []
    else:
      cur.append(ch)
  if "".join(cur).strip():
    parts.append("".join(cur).strip())
  return parts


def parse_instr(line: str) -> tuple[Instr, bool] | None:
  """(instruction, is_root) of one instruction line, or None for other lines."""
  m = _INSTR.match(_COMMENT.sub("", line))
  if not m:
    return None
  root, name, rest = bool(m.group(1)), m.group(2), m.group(3)
  if rest.startswith("("):
    end = _balanced_end(rest, 0)
  else:
    end = len(rest.split(" ", 1)[0])
  type_text, rest = rest[:end], rest[end:]
  op = _OPCODE.match(rest)
  if not op:
    return None
  args_end = _balanced_end(rest, op.end() - 1)
  args = rest[op.end() : args_end - 1]
  # Operands print as '%name' (older XLA: 'f32[2]{0} %name'); a constant's operand is a literal.
  operands = tuple(a.split()[-1].lstrip("%") if a.split() else a for a in _split_top(args))
  return Instr(name, type_text, op.group(1), operands, rest[args_end:].lstrip(", ")), root


def _open_brackets(text: str) -> int:
  """Brackets opened and not closed in `text`, outside double-quoted strings."""
  depth, quote, prev = 0, False, ""
  for ch in text:
    if ch == '"' and prev != "\\":
      quote = not quote
    elif not quote:
      depth += (ch in "({[") - (ch in ")}]")
    prev = ch
  return depth


def _logical_lines(text: str):
  """Lines of the text with an instruction's continuation lines joined (a kernel's
  backend config or frontend attributes can span several)."""
  pending, depth = "", 0
  for line in text.splitlines():
    if pending:
      pending, depth = pending + line, depth + _open_brackets(line)
    elif line.startswith(" ") and _open_brackets(line) > 0:
      pending, depth = line, _open_brackets(line)
    else:
      yield line
      continue
    if depth <= 0:
      yield pending
      pending = ""
  if pending:
    yield pending


def parse_module(text: str) -> Module:
  """The computations of `compiled.as_text()` (or any HLO module text)."""
  computations, entry, current = {}, "", None
  for line in _logical_lines(text):
    if current is None:
      head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
      if head and not line.startswith("HloModule"):
        current = Computation(head.group(2), {}, "")
        entry = head.group(2) if head.group(1) else entry
      continue
    if line.startswith("}"):  # may go on: '}, execution_thread="sparsecore"'
      computations[current.name] = current
      current = None
      continue
    parsed = parse_instr(line)
    if parsed:
      instr, is_root = parsed
      current.instrs[instr.name] = instr
      current.root = instr.name if is_root else current.root
  if not entry:
    raise ValueError("no ENTRY computation in the HLO text")
  return Module(computations, entry)
