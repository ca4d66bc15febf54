"""The package's shape (docs/design.md, "Module layout"), read from the code's own imports.

Rooms are the flat modules of rockjax/ and its subpackages. Imports may only go down the
layers below (or stay in a layer); no two rooms import each other, directly or in a loop; no
function outside models/ runs past 60 lines; rockjax modules are imported at the top of a file.
"""

import ast
import pathlib

import pytest

from tests.fixtures import REPO

PKG = pathlib.Path(REPO) / "rockjax"
# Top to bottom. A room may import rooms of its own layer or of any layer below it.
LAYERS = [
  {"main", "analyze", "export", "convert", "evaluate"},
  {"runner"},
  {"analysis", "dry_run", "evals"},
  {"config"},
  {"step"},
  {"state", "objective"},
  {"rocks"},
  {"models", "data", "checkpoint"},
  {"losses", "sampling", "storage", "metrics", "cli"},
  {"sharding", "errors", "evaluation", "xla_flags", "batch"},
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
# 17: the entry points main.py, analyze.py, evaluate.py, export.py and convert.py (the
# weight-cache CLI; loading.py moved into models/ to make room for it) beside the 12 library
# modules.
MAX_FLAT_MODULES = 17
MAX_FUNCTION_LINES = 60


def _room(module: str) -> str | None:
  """'rockjax.runner.loop' -> 'runner'; 'rockjax' itself -> None."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[0] == "rockjax" else None


def _imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
  """(imported rockjax module, line, at the file's top level) of one file."""
  tree = ast.parse(path.read_text())
  top = {id(n) for n in tree.body}
  out = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    for name in names:
      if name.startswith("rockjax."):
        out.append((name, node.lineno, id(node) in top))
  return out


def _files():
  return sorted(PKG.rglob("*.py"))


def _edges() -> dict[str, set[str]]:
  """room -> rooms it imports (from any of its files)."""
  edges: dict[str, set[str]] = {}
  for path in _files():
    rel = path.relative_to(PKG.parent).with_suffix("")
    src = _room(".".join(rel.parts))
    if src is None:
      continue
    for name, _, _ in _imports(path):
      dst = _room(name)
      if dst is not None and dst != src and dst in LAYER:
        edges.setdefault(src, set()).add(dst)
  return edges


def test_every_room_has_a_layer():
  rooms = {p.stem if p.is_file() else p.name for p in PKG.iterdir()}
  rooms = {r for r in rooms if not r.startswith(("_", ".")) and r != "resources"}
  assert rooms - set(LAYER) == set(), "add the new module or package to LAYERS (and design.md)"


def test_no_upward_import():
  up = [
    f"{src} -> {dst}" for src, dsts in _edges().items() for dst in dsts if LAYER[dst] < LAYER[src]
  ]
  assert up == []


def test_no_import_circle():
  edges = _edges()
  seen, stack, circles = set(), [], []

  def visit(room):
    if room in stack:
      circles.append(stack[stack.index(room) :] + [room])
      return
    if room in seen:
      return
    seen.add(room)
    stack.append(room)
    for nxt in sorted(edges.get(room, ())):
      visit(nxt)
    stack.pop()

  for room in sorted(edges):
    visit(room)
  assert circles == []


def test_no_circle_between_files():
  """Module level: the files of one package do not import each other in a loop either."""
  graph: dict[str, set[str]] = {}
  modules = {".".join(p.relative_to(PKG.parent).with_suffix("").parts) for p in _files()}
  modules = {m.removesuffix(".__init__") for m in modules}
  for path in _files():
    src = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
    for name, _, _ in _imports(path):
      while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
      if name != src and not src.startswith(name + ".") and name in modules:
        graph.setdefault(src, set()).add(name)
  state: dict[str, int] = {}
  circles = []

  def visit(m, path):
    state[m] = 1
    for n in sorted(graph.get(m, ())):
      if state.get(n) == 1:
        circles.append(path[path.index(n) :] + [n] if n in path else [m, n])
      elif n not in state:
        visit(n, path + [n])
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert circles == []


def test_rockjax_imports_are_at_the_top_of_each_file():
  inner = [
    f"{p.relative_to(PKG.parent)}:{line}"
    for p in _files()
    for _, line, top in _imports(p)
    if not top
  ]
  assert inner == []


def test_flat_modules():
  flat = sorted(p.name for p in PKG.glob("*.py") if p.name != "__init__.py")
  assert len(flat) <= MAX_FLAT_MODULES, flat


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_no_long_function_outside_models(limit):
  long = []
  for path in _files():
    if "models" in path.relative_to(PKG).parts:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > limit:
          long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
  assert long == []
