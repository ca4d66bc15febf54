"""Report text: shares print as percentages in the Markdown while the JSON keeps the raw
fractions, a missing value prints as n/a, warnings show under their section's title and are
kept in the JSON."""

import json

from rockjax.analysis import report


def test_fill_prints_fractions_as_percentages_and_missing_values_as_na():
  numbers = {"share": 0.96666, "rows": [{"kl_share": 0.0349}], "gone": float("nan"), "n": 7}
  text = "{share:.1%} {rows[0][kl_share]:.1%} {gone:.1%} {n}"
  assert report.fill(text, numbers) == "96.7% 3.5% n/a 7"


def test_markdown_percentages_json_fractions_and_warnings(tmp_path):
  sec = report.Section(
    title="S",
    key="s",
    numbers={"coverage": 0.9622},
    figures=(),
    text="The rocks carry {coverage:.1%} of the KL.",
    warnings=("only 6 random ids",),
  )
  plain = report.Section("T", "t", {"x": 1}, (), "x = {x}")
  paths = report.write_report(str(tmp_path), [sec, plain], {"student": "test"})
  md = open(paths["markdown"]).read()
  data = json.load(open(paths["json"]))
  assert "The rocks carry 96.2% of the KL." in md and "0.9622" not in md
  assert data["s"] == {"coverage": 0.9622, "warnings": ["only 6 random ids"]}
  assert data["t"] == {"x": 1}  # no warnings key without a warning
  # The warning sits between the section's title and its text.
  assert md.index("## S") < md.index("> **Warning:** only 6 random ids") < md.index("The rocks")
