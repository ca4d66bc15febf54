"""Figure helpers shared by the report's plots: titled figures, labels that do not overprint,
percentage axes and line styles that stay apart when curves coincide.

Every report figure is a bare `matplotlib.figure.Figure` (no pyplot, no global state) drawn by
Agg. `place_labels` needs the final geometry: give the axes their scales and limits and fix the
layout (`new_figure` uses subplots_adjust, not constrained layout) before placing labels.

Shape letters: N points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window (headless machines)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

# Offsets (points) tried in turn for a label: right, above, left, below, then the diagonals
# further out. A label whose every offset overlaps an earlier label or a point is left out.
LABEL_OFFSETS = (
  (5, 3),
  (5, -9),
  (-5, 3),
  (-5, -9),
  (0, 9),
  (0, -15),
  (12, 12),
  (-12, 12),
  (12, -18),
  (-12, -18),
  (20, 2),
  (-20, 2),
)
# (marker, linestyle) per curve: curves that coincide stay distinguishable in black and white.
STYLES = (("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"), ("X", "-."))


def new_figure(title: str, figsize: tuple[float, float], ncols: int = 1, nrows: int = 1):
  """(figure, axes) with a suptitle; axes is one Axes or an array of them."""
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)  # a renderer for label placement before saving
  axes = fig.subplots(nrows, ncols, squeeze=True)
  fig.suptitle(title, fontsize=11)
  top = 1 - 0.75 / figsize[1]  # 3/4 inch for the suptitle (and panel titles), any height
  fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=top, wspace=0.3, hspace=0.45)
  return fig, axes


def percent_axis(ax: Any, which: str = "y") -> None:
  """Tick labels of a fraction axis as percentages (0.25 -> 25%)."""
  axis = ax.yaxis if which == "y" else ax.xaxis
  axis.set_major_formatter(ticker.PercentFormatter(xmax=1.0, decimals=0))


def _minor_label(v: float, _pos: Any) -> str:
  """A minor log tick's label: only at 2 and 5 times a power of ten."""
  if v <= 0:
    return ""
  m = v / 10 ** np.floor(np.log10(v))
  return f"{v:g}" if min(abs(m - 2), abs(m - 5)) < 1e-6 else ""


def plain_log_ticks(ax: Any, which: str = "both") -> None:
  """Log-axis tick labels as plain numbers (200, 0.5) instead of 2 x 10^2; minor ticks are
  labelled at 2 and 5 times a power of ten only."""
  for axis in (ax.xaxis, ax.yaxis)[(which == "y") : (1 if which == "x" else 2)]:
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.FuncFormatter(_minor_label))


def x_offsets(n: int, spread: float = 0.06) -> np.ndarray:
  """Multiplicative x offsets `[n]` around 1 (log axes): n curves on one grid side by side."""
  if n <= 1:
    return np.ones(max(n, 0))
  return np.exp(spread * (np.arange(n) - (n - 1) / 2) / (n - 1))


def _renderer(fig: Figure):
  canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
  return canvas.get_renderer()


def _point_boxes(ax: Any, x_N: np.ndarray, y_N: np.ndarray, radius: float) -> list[Any]:
  """Display-space boxes (radius pixels) around the points, obstacles for the labels."""
  xy = ax.transData.transform(np.column_stack([x_N, y_N]))
  return [Bbox.from_extents(u - radius, v - radius, u + radius, v + radius) for u, v in xy]


def place_labels(
  ax: Any, x_N: Sequence[float], y_N: Sequence[float], labels: Sequence[str], *, fontsize: int = 7
) -> int:
  """Annotate point i with labels[i] where its text overlaps no earlier label, no labelled
  point and stays inside the axes; returns how many labels found no free place (left out)."""
  x_N, y_N = np.asarray(x_N, float), np.asarray(y_N, float)
  renderer = _renderer(ax.figure)
  frame = ax.get_window_extent(renderer)
  obstacles = _point_boxes(ax, x_N, y_N, radius=3.0)
  left_out = 0
  for x, y, text in zip(x_N, y_N, labels):
    for dx, dy in LABEL_OFFSETS:
      ann = ax.annotate(
        text,
        (x, y),
        xytext=(dx, dy),
        textcoords="offset points",
        fontsize=fontsize,
        ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
        arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.5} if abs(dx) > 8 else None,
      )
      box = ann.get_window_extent(renderer)
      inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
      if inside and not any(box.overlaps(b) for b in obstacles):
        obstacles.append(box)
        break
      ann.remove()
    else:
      left_out += 1
  return left_out


def text_boxes(ax: Any) -> list[Any]:
  """Display-space boxes of the axes' annotations (tests check that none overlap)."""
  renderer = _renderer(ax.figure)
  return [t.get_window_extent(renderer) for t in ax.texts]
