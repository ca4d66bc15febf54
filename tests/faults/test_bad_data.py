"""Bad data files: one error line naming the file, line and field, or skipped and counted.

The data builders are called directly (fast); one CLI run checks the whole path: exit 2, one
line, and no checkpoint in the workdir.
"""

import errno
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etils import epath

from rockjax import errors
from rockjax.data import records as records_lib
from tests.fixtures import assert_one_line_error, cli, make_tokenizer

GOOD = '{"prompt": "a b", "answer": "1"}\n'

# name -> (file text, the error's text after the path, the skipped row's line)
BAD_LINES = {
  "malformed_json": (GOOD + '{"prompt": "a", \n' + GOOD, ":2: invalid JSON", 2),
  "missing_prompt": (
    GOOD + GOOD + '{"question": "a", "answer": "1"}\n',
    ":3: missing field 'prompt'",
    3,
  ),
  "non_string_prompt": (
    '{"prompt": 7, "answer": "1"}\n' + GOOD,
    ":1: field 'prompt' must be a string",
    1,
  ),
  "empty_messages": (
    '{"prompt": [], "answer": "1"}\n' + GOOD,
    ":1: field 'prompt' must be a string or",
    1,
  ),
  "not_an_object": (GOOD + "[1, 2]\n", ":2: expected a JSON object, got list", 2),
}


def _write(tmp_path, text, name="train.jsonl"):
  path = tmp_path / name
  path.write_bytes(text.encode() if isinstance(text, str) else text)
  return path


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_bad_line_names_file_and_line(tmp_path, name):
  text, message, _ = BAD_LINES[name]
  path = _write(tmp_path, text)
  with pytest.raises(errors.InputError) as e:
    records_lib.read_records(path)
  assert str(e.value).startswith(f"{path}{message}")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_skip_bad_records_skips_and_counts(tmp_path, name):
  text, message, line = BAD_LINES[name]
  path = _write(tmp_path, text)
  loaded = records_lib.read_records(path, skip_bad=True)
  good = [json.loads(t) for t in text.splitlines() if t == GOOD.strip()]  # by hand: the good lines
  assert loaded.records == good
  assert len(loaded.skipped) == 1 and loaded.skipped[0].startswith(f"{path}{message}")
  assert [r.where for r in loaded.records] == [
    f"{path}:{i}" for i in range(1, len(text.splitlines()) + 1) if i != line
  ]


def test_undecodable_line_names_its_line_and_can_be_skipped(tmp_path):
  path = _write(tmp_path, GOOD.encode() + b'{"prompt": "\xff\xfe", "answer": "1"}\n')
  with pytest.raises(errors.InputError, match=f"^{path}:2: not UTF-8 text"):
    records_lib.read_records(path)
  assert len(records_lib.read_records(path, skip_bad=True).records) == 1


@pytest.mark.parametrize(
  "text, message",
  [
    ("", ": no records$"),
    ("\n\n", ": no records$"),
    ("[1]\n{}\n", ": no records (2 bad records skipped; first: "),
  ],
)
def test_empty_dataset_names_the_file(tmp_path, text, message):
  path = _write(tmp_path, text)
  with pytest.raises(errors.InputError) as e:
    records_lib.read_records(path, skip_bad=True)
  assert str(e.value).startswith(f"{path}{message.rstrip('$')}")


def test_missing_directory_and_unreadable_files_name_the_path(tmp_path, monkeypatch):
  with pytest.raises(errors.InputError, match=f"^{tmp_path / 'none.jsonl'}: no such file$"):
    records_lib.read_records(tmp_path / "none.jsonl")
  with pytest.raises(errors.InputError, match=f"^{tmp_path}: is a directory"):
    records_lib.read_records(tmp_path)
  path = _write(tmp_path, GOOD)
  os.chmod(path, 0)
  if os.access(path, os.R_OK):  # root reads any file: make opening it fail as it would

    def denied(*args, **kwargs):
      raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(type(epath.Path(path)), "open", denied)
  with pytest.raises(errors.InputError, match=f"^{path}: cannot read \\(Permission denied\\)$"):
    records_lib.read_records(path)


def test_parquet_with_the_wrong_columns_or_bytes_names_path_and_field(tmp_path):
  path = tmp_path / "train.parquet"
  pq.write_table(pa.table({"question": ["a"], "answer": ["1"]}), path)
  with pytest.raises(errors.InputError) as e:
    records_lib.read_records(path, skip_bad=True)  # a schema problem is never skipped
  assert str(e.value) == f"{path}: no column 'prompt' (columns: ['answer', 'question'])"
  pq.write_table(pa.table({"prompt": ["a"], "answer": ["1"]}), path)
  assert records_lib.read_records(path).records == [dict(prompt="a", answer="1")]
  path.write_bytes(b"PAR1 not parquet at all")
  with pytest.raises(errors.InputError, match=f"^{path}: not a readable Parquet file"):
    records_lib.read_records(path)


def test_cli_bad_line_is_one_line_and_leaves_no_checkpoint(tmp_path):
  """The whole path: config check, build, data load; exit 2, one line, no workdir left."""
  path = _write(tmp_path, GOOD * 3 + '{"prompt": "a b"\n' + GOOD * 4)
  tok = make_tokenizer(tmp_path / "tok", ["a", "b", "1"])
  workdir = tmp_path / "run"
  proc = cli(
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.train_path={path}",
    f"--config.data.tokenizer_path={tok}",
  )
  assert_one_line_error(proc, f"{path}:4: invalid JSON", "data.skip_bad_records=True")
  assert not workdir.exists()  # a failed start leaves nothing: the fixed command is accepted
