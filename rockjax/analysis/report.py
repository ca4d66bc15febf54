"""The analysis report: Markdown with PNG figures and a JSON of every number in it.

Each analysis contributes a `Section`: its numbers (a JSON-able dict), its figures (PNGs it has
already saved into the report directory), Markdown text whose `{name}` placeholders are
filled from `numbers` when the report is written, so the Markdown and the JSON cannot disagree,
and warnings (degenerate comparisons) shown under its title and kept in the JSON.

Placeholders may carry a format spec: `{share:.1%}` prints the JSON's fraction 0.9666 as
"96.7%" (shares are fractions in the JSON and percentages in the Markdown); a missing value
(NaN, None in the JSON) prints as "n/a" whatever the spec.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
from collections.abc import Sequence
from typing import Any

import jax
from etils import epath

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


@dataclasses.dataclass(frozen=True)
class Figure:
  filename: str
  caption: str


@dataclasses.dataclass(frozen=True)
class Section:
  title: str
  key: str
  numbers: dict
  figures: tuple[Figure, ...]
  text: str
  warnings: tuple[str, ...] = ()  # degenerate comparisons: shown under the title, in the JSON


def _json_safe(x: Any) -> Any:
  """NaN/inf become None (strict JSON); numpy scalars and arrays become Python values."""
  # numpy values first: float64 scalars and arrays serialise as Python numbers and lists.
  if hasattr(x, "tolist"):
    x = x.tolist()
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  return x


class _Formatter(string.Formatter):
  """str.format_map with "n/a" for a missing value (None), whatever the format spec."""

  def format_field(self, value: Any, format_spec: str) -> str:
    return "n/a" if value is None else super().format_field(value, format_spec)


def fill(text: str, numbers: dict[str, Any]) -> str:
  """`text` with `{name}`, `{rows[0][id]}`, `{share:.1%}`... filled from the JSON-safe numbers."""
  return _Formatter().vformat(text, (), _json_safe(numbers))


def warning_lines(warnings: Sequence[str]) -> list[str]:
  """Markdown lines: one block quote per warning (none for no warning)."""
  return [line for w in warnings for line in (f"> **Warning:** {w}", "")]


def section_json(section: Section) -> dict[str, Any]:
  """What report.json holds for a section: its numbers, and its warnings when it has any."""
  extra = {"warnings": list(section.warnings)} if section.warnings else {}
  return _json_safe({**section.numbers, **extra})


def render_section(section: Section) -> str:
  """One section's Markdown: title, warnings, text with its numbers filled in, its figures."""
  lines = [f"## {section.title}", "", *warning_lines(section.warnings)]
  lines += [fill(section.text, section.numbers), ""]
  for fig in section.figures:
    lines += [f"![{fig.caption}]({fig.filename})", "", f"*{fig.caption}*", ""]
  return "\n".join(lines)


def write_report(out_dir: str, sections: Sequence[Section], meta: dict[str, Any]) -> dict[str, Any]:
  """Write report.md and report.json (every section's numbers under its key) into `out_dir`.

  `meta` (checkpoint, corpus settings, ...) heads both files. Returns {'markdown', 'json',
  'figures'} paths. Keys must be distinct and may not be 'meta'.
  """
  keys = [s.key for s in sections]
  if len(set(keys)) != len(keys) or "meta" in keys:
    raise ValueError(f"report sections need distinct keys other than 'meta', got {keys}")
  root = epath.Path(out_dir)
  root.mkdir(parents=True, exist_ok=True)
  # The figures are already in out_dir (each section saved its own); only the text is left.
  head = ["# Rock Token analysis", ""] + [f"- {k}: {v}" for k, v in meta.items()] + [""]
  md = "\n".join(head + [render_section(s) for s in sections])
  payload = {"meta": _json_safe(meta), **{s.key: section_json(s) for s in sections}}
  (root / REPORT_MD).write_text(md)
  (root / REPORT_JSON).write_text(json.dumps(payload, indent=1))
  return {
    "markdown": str(root / REPORT_MD),
    "json": str(root / REPORT_JSON),
    "figures": [str(root / f.filename) for s in sections for f in s.figures],
  }


def save_figure(fig: Any, out_dir: str, name: str) -> str:
  """Save a matplotlib figure as PNG into out_dir (local or cloud; process 0 writes); its name."""
  if jax.process_index() == 0:
    with (epath.Path(out_dir) / name).open("wb") as f:
      fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
  return name
