"""Fixtures of the analysis tests."""

import pytest

from rockjax.analysis import report, selection_figures


@pytest.fixture
def saved(monkeypatch):
  """{file name: Figure} of every figure the code under test saves (no PNG is written)."""
  figs = {}

  def record(fig, out_dir, name):
    figs[name] = fig
    return name

  monkeypatch.setattr(report, "save_figure", record)
  monkeypatch.setattr(selection_figures, "save_figure", record)
  return figs
