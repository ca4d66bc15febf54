"""The data reader's bad-line messages: file:line, the JSON error at its column, and the field
that skips bad records (rockjax.data.records)."""

import pytest

from rockjax import errors
from rockjax.data import records as records_lib

GOOD = '{"prompt": "a b", "answer": "1"}\n'
HINT = "set data.skip_bad_records=True to skip bad records (counted as data/records_skipped)"


def test_invalid_json_names_file_line_column_the_error_and_the_skip_field(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text(GOOD + '{"prompt": "a b"\n' + '{"prompt": "open\n' + GOOD)
  with pytest.raises(errors.InputError) as e:
    records_lib.read_records(path)
  assert str(e.value) == (
    f"{path}:2: invalid JSON: Expecting ',' delimiter at column 17; {HINT}"  # past the line
  )
  loaded = records_lib.read_records(path, skip_bad=True)
  assert loaded.skipped == [  # skipped (and logged) without the hint
    f"{path}:2: invalid JSON: Expecting ',' delimiter at column 17",
    f"{path}:3: invalid JSON: Unterminated string starting at column 12",
  ]


def test_every_skippable_row_error_names_the_skip_field(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text(GOOD + '{"answer": "1"}\n')
  with pytest.raises(errors.InputError) as e:
    records_lib.read_records(path)
  assert str(e.value) == f"{path}:2: missing field 'prompt' (fields: ['answer']); {HINT}"
