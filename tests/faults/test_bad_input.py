"""Bad model, tokenizer, config and rock-list input: one line naming the culprit, and nothing
half-made left behind (the command-line cases check the exit code and the workdir)."""

import json
import os
import pathlib
import re
import shutil

import pytest
from flax import nnx

from configs import tiny
from rockjax import errors, models
from rockjax.models import loading
from rockjax.config import check as config_check
from rockjax.data.tasks import arithmetic
from rockjax.rocks import lists as rock_lists
from rockjax.runner import experiment, preflight
from tests.fixtures import REPO, assert_one_line_error, cli, make_tokenizer

PACKAGE = pathlib.Path(REPO) / "rockjax"


def config(**overrides):
  c = tiny.get_config()
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A loadable HF directory of configs/tiny.py's student (vocab 128) with its task tokenizer."""
  path = tmp_path_factory.mktemp("hf") / "student"
  cfg = loading.arch_config(tiny.get_config().model)
  models.save_pretrained(models.Decoder(cfg, rngs=nnx.Rngs(0)), path)
  arithmetic.make_tokenizer(path)
  return path


def _edit_config(d, **changes):
  hf = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**hf, **changes}))


def _only(d, name):
  """Replace the safetensors weights by a file `name` (what a pickled checkpoint holds)."""
  (d / "model.safetensors").unlink()
  (d / name).write_bytes(b"\x80\x04pickled")


MODEL_DIR_CASES = {  # name -> (how to break a good directory, what the message says)
  "missing": (lambda d: shutil.rmtree(d), "no such directory"),
  "a_file": (lambda d: (shutil.rmtree(d), d.write_text("x")), "not a directory"),
  "no_config_json": (lambda d: (d / "config.json").unlink(), "no config.json"),
  "config_not_json": (lambda d: (d / "config.json").write_text("{oops"), "not valid JSON"),
  "config_not_object": (lambda d: (d / "config.json").write_text("[1]"), "not a JSON object"),
  "auto_map": (
    lambda d: _edit_config(d, auto_map={"AutoConfig": "modeling_x.XConfig"}),
    "asks for remote code (auto_map); rockjax never enables trust_remote_code",
  ),
  "unknown_model_type": (
    lambda d: _edit_config(d, model_type="secret_lm"),
    "model_type='secret_lm' is not a transformers model type",
  ),
  "not_a_rockjax_family": (
    lambda d: _edit_config(d, model_type="gpt2"),
    "model_type='gpt2' is not one rockjax implements",
  ),
  "no_weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
  "only_pytorch_bin": (
    lambda d: _only(d, "pytorch_model.bin"),
    "weights only as pytorch_model.bin (a pickle); rockjax loads weights only from safetensors",
  ),
  "only_pt": (lambda d: _only(d, "consolidated.pt"), "weights only as consolidated.pt"),
  "index_names_missing_shard": (
    lambda d: (d / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    ),
    "names 1 missing file(s), e.g. model-00002-of-00002.safetensors",
  ),
}


def broken_copy(model_dir, tmp_path, case):
  d = tmp_path / "broken"
  shutil.copytree(model_dir, d)
  MODEL_DIR_CASES[case][0](d)
  return d


@pytest.mark.parametrize("group", ["model", "teacher"])
@pytest.mark.parametrize("case", list(MODEL_DIR_CASES))
def test_bad_model_directory_is_one_line_naming_field_and_path(model_dir, tmp_path, case, group):
  d = broken_copy(model_dir, tmp_path, case)
  c = config(**{f"{group}.source": "hf", f"{group}.path": str(d)})
  with pytest.raises(errors.InputError) as err:
    preflight.check_files(c)
  message = str(err.value)
  assert message.startswith(f"{group}.path={str(d)!r}: "), message
  assert MODEL_DIR_CASES[case][1] in message and "\n" not in message, message
  # The same check guards loading (build_experiment, the analysis), not only the pipeline.
  with pytest.raises(errors.InputError, match=re.escape(MODEL_DIR_CASES[case][1])):
    loading.model_config(c[group], field=group)


def test_a_good_model_directory_passes_and_loads(model_dir):
  c = config(**{"model.source": "hf", "model.path": str(model_dir)})
  preflight.check_files(c)
  assert loading.model_config(c.model).vocab_size == 128  # configs/tiny.py's


TOKENIZER_CASES = {
  "missing": (lambda d: shutil.rmtree(d), "no such directory"),
  "no_tokenizer_files": (
    lambda d: [p.unlink() for p in d.iterdir()],
    "no tokenizer (tokenizer.json or tokenizer_config.json)",
  ),
  "auto_map": (
    lambda d: (d / "tokenizer_config.json").write_text(
      json.dumps({"auto_map": {"AutoTokenizer": ["tok.XTokenizer", None]}})
    ),
    "tokenizer_config.json asks for remote code (auto_map); rockjax never enables",
  ),
  "garbage_tokenizer_json": (
    lambda d: (d / "tokenizer.json").write_text("{not json"),
    "transformers cannot load this tokenizer",
  ),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_bad_tokenizer_directory_is_one_line_naming_field_and_path(tmp_path, case):
  d = tmp_path / "tok"
  arithmetic.make_tokenizer(d)
  TOKENIZER_CASES[case][0](d)
  with pytest.raises(errors.InputError) as err:
    if case == "garbage_tokenizer_json":  # the files are there: loading finds the problem
      models.load_tokenizer(d)
    else:
      preflight.check_files(config(**{"data.tokenizer_path": str(d)}))
  message = str(err.value)
  assert message.startswith(f"data.tokenizer_path={str(d)!r}: "), message
  assert TOKENIZER_CASES[case][1] in message and "\n" not in message, message


BAD_VALUES = [  # (overrides on configs/tiny.py, culprit field, what the message says)
  ({"rock.lam": 1.5}, "rock.lam", "in [0, 1]"),
  ({"rock.lam": -0.1}, "rock.lam", "in [0, 1]"),
  ({"rock.k": 0}, "rock.k", "expected >= 1"),
  ({"rock.k": 129}, "rock.k", "at most model.arch.vocab_size=128"),
  ({"opd.top_k": 500}, "opd.top_k", "at most model.arch.vocab_size=128"),
  ({"rock.window": "snapshot"}, "rock.snapshot_step", "0 never takes one"),
  ({"preflight.determinism_tol": -1.0}, "preflight.determinism_tol", "expected >= 0"),
]


@pytest.mark.parametrize("overrides,field,expected", BAD_VALUES)
def test_invalid_config_value_names_field_and_value(overrides, field, expected):
  with pytest.raises(errors.ConfigError) as err:
    config_check.validate(config(**overrides), device_count=8, process_count=1)
  message = str(err.value)
  value = overrides.get(field, 0)
  assert message.startswith(f"{field}={value!r}"), message
  assert expected in message and "\n" not in message, message


def test_the_bounds_themselves_are_valid():
  ok = {"rock.lam": 1.0, "rock.k": 128, "opd.top_k": 128, "preflight.determinism_tol": 0.0}
  config_check.validate(config(**ok), device_count=8, process_count=1)
  snapshot = {"rock.window": "snapshot", "rock.snapshot_step": 2}
  config_check.validate(config(**snapshot), device_count=8, process_count=1)


def test_static_rock_list_id_outside_the_vocabulary_names_file_line_id_and_size(tmp_path):
  path = tmp_path / "rocks.txt"
  path.write_text("# my rocks\n5 7\n3 128\n")  # 128 is one past configs/tiny.py's vocabulary
  c = config(**{"rock.mode": "static", "rock.list_path": str(path)})
  with pytest.raises(errors.InputError) as err:
    experiment._rock_mask(c, 128)  # what build_experiment reads the list with
  assert str(err.value) == f"{path}:3: id list entry '128' is out of range for vocab_size 128"


def test_missing_rock_list_is_one_line(tmp_path):
  path = tmp_path / "gone.txt"
  with pytest.raises(errors.InputError, match=re.escape(f"{path}: no such id list file")):
    rock_lists.load_id_list(path, vocab_size=128)


# ----------------------------------------------- no remote code, no pickles (source grep)
FORBIDDEN = {  # pattern -> why it may never appear in rockjax's source
  r"trust_remote_code\s*[=:]\s*(?!False\b)": "trust_remote_code must never be enabled",
  r"[\"']trust_remote_code[\"']\s*:\s*True": "trust_remote_code must never be enabled",
  r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b": "no pickle-based loading",
  r"torch\.load\(": "weights only from safetensors",
  r"allow_pickle\s*=\s*True": "no pickled numpy arrays",
  r"pickle\.loads?\(": "no pickle-based loading",
}


def _violations(text):
  return [
    (why, line)
    for line in text.splitlines()
    for pattern, why in FORBIDDEN.items()
    if re.search(pattern, line)
  ]


def test_the_grep_catches_what_it_forbids():
  planted = (
    "AutoTokenizer.from_pretrained(p, trust_remote_code=True)\n"
    "cfg = dict(trust_remote_code=flag)\nimport pickle\nstate = torch.load(f)\n"
    "np.load(f, allow_pickle=True)\n"
  )
  assert len(_violations(planted)) == 5
  assert not _violations("AutoTokenizer.from_pretrained(p, trust_remote_code=False)\n")


def test_package_never_enables_remote_code_or_unpickles():
  files = sorted(PACKAGE.rglob("*.py"))
  assert len(files) > 30  # the whole package, not an empty glob
  found = [(f"{f.relative_to(PACKAGE)}", v) for f in files for v in _violations(f.read_text())]
  assert not found, found


# ----------------------------------------- the command line: exit 2, no checkpoint written
def test_cli_refuses_a_pickled_student_before_creating_the_workdir(model_dir, tmp_path):
  d = broken_copy(model_dir, tmp_path, "only_pytorch_bin")
  workdir = tmp_path / "run"
  args = ["--config=configs/tiny.py", f"--workdir={workdir}", "--config.model.source=hf"]
  proc = cli(*args, f"--config.model.path={d}")
  assert_one_line_error(proc, f"model.path={str(d)!r}", "pytorch_model.bin", "safetensors")
  assert not workdir.exists()


def test_cli_refuses_a_student_whose_tokenizer_differs_and_writes_no_checkpoint(
  model_dir, tmp_path
):
  d = tmp_path / "other_tokenizer"
  shutil.copytree(model_dir, d)
  for name in os.listdir(d):
    if name.startswith(("tokenizer", "special_tokens", "chat_template")):
      os.remove(d / name)
  make_tokenizer(d, ["Solve", "for", "x"])  # a different vocabulary of 6 ids
  workdir = tmp_path / "run"
  args = ["--config=configs/tiny.py", f"--workdir={workdir}", "--config.model.source=hf"]
  proc = cli(*args, f"--config.model.path={d}", timeout=300)
  assert_one_line_error(proc, "tokenizers differ", f"model.path={str(d)!r}", "data tokenizer")
  assert not (workdir / "ckpt").exists()
