"""rockjax.config.check: each bad field is named in one line; the shipped configs pass."""

import importlib
import json
import os

import ml_collections
import pytest

from configs import tiny
from rockjax import errors
from rockjax.config import check as config_check
from tests.fixtures import CONFIG_NAMES, REPO


def config(**overrides):
  c = tiny.get_config()
  c.update_from_flattened_dict(overrides)
  return c


def rejects(c, field, **kwargs):
  """validate(c) raises a one-line ConfigError that starts with the culprit `field=`."""
  kwargs.setdefault("device_count", 8)
  with pytest.raises(errors.ConfigError) as err:
    config_check.validate(c, **kwargs)
  message = str(err.value)
  assert message.startswith(f"{field}="), message
  assert "\n" not in message
  return message


BAD_VALUES = [  # (field, bad value, what the message says is expected)
  ("rock.mode", "dynamc", "expected one of 'off', 'static', 'dynamic'"),
  ("model.source", "sft", "expected one of 'random', 'hf', 'kd'"),  # teacher-only value
  ("teacher.source", "kd", "'none', 'sft'"),  # student-only value
  ("model.arch.family", "gpt2", "'llama'"),
  ("teacher.dtype", "fp8", "'bfloat16'"),
  ("model.param_dtype", "float64", "'float32'"),
  ("opd.mode", "online", "'on_policy', 'off_policy'"),
  ("opd.divergence", "kl", "'reverse_kl'"),
  ("opd.normalizer", "sequences", "'tokens', 'weights'"),
  ("rock.selector", "grad_norm", "'rock_score'"),
  ("rock.window", "weekly", "'recent'"),
  ("data.task_difficulty", "insane", "'easy'"),
  ("steps", 0, "expected >= 1"),
  ("data.prompts_per_step", 0, "expected >= 1"),
  ("opd.samples_per_prompt", 0, "expected >= 1"),
  ("opt.lr", -1e-3, "expected >= 0"),
  ("opt.lr", float("nan"), "expected >= 0"),
  ("opd.kd_ratio", 1.5, "in [0, 1]"),
  ("opd.jsd_beta", -0.1, "in [0, 1]"),
  ("opd.temperature", 0.0, "expected > 0"),
  ("opd.top_p", 0.0, "in (0, 1]"),
  ("opd.top_p", 1.5, "in (0, 1]"),
  ("rock.decay", 0.0, "in (0, 1]"),
  ("opt.warmup_frac", 1.0, "in [0, 1)"),
  ("eval.temperature", -0.1, "expected >= 0"),
  ("opt.micro_batches", 0, "expected >= 1"),
  ("opd.kept_capacity", 1.5, "in [0, 1]"),
  ("opd.frozen_kl", "drop", "'forward', 'skip'"),
  ("data.pad_to_multiple", 0, "expected >= 1"),
  ("ckpt.keep", 0, "expected >= 1"),
  ("ckpt.every_minutes", -1.0, "expected >= 0"),
  ("ckpt.keep_steps", (100, 0), "expected a tuple of steps >= 1"),
  ("opd.decode_segment", -1, "expected >= 0"),
  ("teacher.arch.num_layers", 0, "expected >= 1"),
  ("model.attention", "flash", "'einsum', 'blocked', 'cudnn', 'splash'"),
  ("teacher.attention_block", 0, "expected >= 1"),
  ("teacher.moe_impl", "sorted", "'ragged_dot', 'megablox'"),
  ("teacher.moe_experts_axis", "experts", "'fsdp'"),  # rockjax.sharding.MESH_AXES
  ("model.remat", "dots", "expected one of 'none', 'full', 'dots_saveable', 'save_names'"),
  ("analysis.k_grid", "10,x", "expected comma-separated integers >= 1"),
  ("analysis.subcorpus_sizes", "0,50", "expected comma-separated integers >= 1"),
  ("analysis.alpha", 1.0, "expected a value in (0, 1)"),
  ("analysis.batch_size", 0, "expected >= 1"),
  ("opd.rollout_dtype", "float16", "expected one of 'float32', 'bfloat16'"),
  ("opd.rollout_sharding", "fsdp", "expected one of 'replicated', 'tensor', 'train'"),
  ("data.prompt_overflow", "cut", "expected one of 'truncate', 'drop', 'error'"),
]


@pytest.mark.parametrize("field,value,expected", BAD_VALUES)
def test_bad_value_names_field_value_and_expectation(field, value, expected):
  message = rejects(config(**{field: value}), field)
  assert f"{field}={value!r}" in message and expected in message


CROSS_FIELD = [  # (overrides on configs/tiny.py, the culprit field)
  ({"teacher.source": "none"}, "teacher.source"),  # on-policy needs a teacher
  ({"teacher.source": "none", "opd.mode": "off_policy"}, "teacher.source"),  # kd_ratio 0.5
  (
    {"teacher.source": "none", "opd.mode": "off_policy", "opd.kd_ratio": 0.0, "model.source": "kd"},
    "model.source",
  ),
  ({"model.path": "/ckpt/qwen"}, "model.path"),  # source 'random' would ignore it
  ({"teacher.source": "sft", "teacher.path": "/ckpt/qwen"}, "teacher.path"),
  ({"model.arch.num_heads": 3}, "model.arch.num_heads"),  # kv heads 2
  ({"teacher.arch.family": "qwen3_moe"}, "teacher.arch.num_experts"),
  ({"model.arch.num_experts": 4}, "model.arch.num_experts"),  # dense family
  (
    {
      "teacher.arch.family": "qwen3_moe",
      "teacher.arch.num_experts": 4,
      "teacher.arch.moe_intermediate_size": 8,
      "teacher.arch.num_experts_per_tok": 8,
    },
    "teacher.arch.num_experts_per_tok",
  ),
  ({"teacher.arch.vocab_size": 256}, "teacher.arch.vocab_size"),
  ({"opd.mode": "off_policy", "data.max_len": 24}, "data.max_len"),  # = max_prompt_len
  ({"model.source": "kd", "data.max_len": 10}, "data.max_len"),  # the KD stage is off-policy
  ({"opt.micro_batches": 3}, "opt.micro_batches"),  # 8 prompts x 2 samples = 16 rows
  ({"opt.micro_batches": 16, "model.source": "kd"}, "opt.micro_batches"),  # KD stage: 8 rows
  ({"mesh.data": 3}, "mesh.data"),  # 3 does not divide 8 devices
  ({"mesh.data": 16, "mesh.fsdp": 1}, "mesh.data"),
  ({"mesh.tensor": -1}, "mesh.tensor"),  # fsdp is -1 already
  ({"mesh.data": 0}, "mesh.data"),
  ({"model.attention": "splash", "model.attention_block": 96}, "model.attention_block"),
  ({"opd.rollout_sharding": "train", "opd.rollout_dtype": "bfloat16"}, "opd.rollout_dtype"),
  ({"opd.kept_capacity": 0.5, "opd.chunked": False}, "opd.kept_capacity"),  # no hidden states
  ({"data.system_prompt": "Be brief.", "data.use_chat_template": False}, "data.system_prompt"),
]


def test_remat_accepts_the_legacy_booleans_as_given_on_the_command_line():
  for value in ("True", "False", "offload"):
    config_check.validate(config(**{"teacher.remat": value}), device_count=8, process_count=1)


@pytest.mark.parametrize("overrides,field", CROSS_FIELD)
def test_cross_field_rule_names_culprit(overrides, field):
  rejects(config(**overrides), field)


def test_dry_run_checks_the_declared_mesh():
  message = rejects(
    config(**{"mesh.num_devices": 6, "mesh.tensor": 4}), "mesh.tensor", dry_run=True
  )
  assert "mesh.num_devices=6" in message
  # 8 declared devices on a 1-device machine: fine for a dry run (sizes only).
  config_check.validate(
    config(**{"mesh.num_devices": 8, "mesh.tensor": 2}),
    dry_run=True,
    device_count=1,
  )


def test_dcn_mesh_sizes_multiply_the_slice_sizes():
  """mesh.dcn_* multiply the per-slice sizes: the device count and the process count see the
  full mesh (as rockjax.sharding.make_mesh builds it)."""
  pod = {
    "mesh.fsdp": 4,
    "mesh.context": -1,
    "mesh.tensor": 2,
    "mesh.dcn_data": 2,
    "mesh.num_devices": 64,
  }
  config_check.validate(config(**pod), dry_run=True, device_count=8, process_count=1)
  message = rejects(config(**{**pod, "mesh.num_devices": 60}), "mesh.fsdp", dry_run=True)
  assert "dcn_data=2" in message and "divisible by 16" in message
  rejects(config(**{"mesh.dcn_data": 0}), "mesh.dcn_data")
  # 2 slices/nodes need their own processes: one process cannot drive both.
  message = rejects(config(**{"mesh.dcn_fsdp": 2}), "mesh.dcn_fsdp")
  assert "1 processes are running" in message


def test_any_prompt_count_is_valid_on_a_mesh_that_divides_it():
  """rockjax.data.host_share has every host read a batch the hosts cannot split; the rows per
  micro-batch must divide data x fsdp, the rest of the devices go to context."""
  for prompts, fsdp, context in ((1, 2, 4), (3, 2, 4), (4, -1, 1)):
    c = config(**{"data.prompts_per_step": prompts, "mesh.fsdp": fsdp, "mesh.context": context})
    config_check.validate(c, device_count=8, process_count=1)


def test_indivisible_activations_name_the_axis_and_dimension():
  """Rows, padded length and heads that their mesh axes cannot divide are config errors
  (rockjax.sharding.constrain would raise inside the step; replication would redo the work
  on every device). tiny: 8 prompts x 2 samples = 16 rows of 24 + 12 = 36 tokens."""
  # 1 prompt x 2 samples = 2 rows on fsdp = 8: the paper config's situation.
  message = rejects(config(**{"data.prompts_per_step": 1}), "mesh.fsdp")
  assert "= 2) are not divisible by the batch axes data x fsdp = 1 x 8 = 8" in message
  assert "mesh.context" in message
  # 16 rows / 4 micro-batches = 4 per micro-batch over data 2 x fsdp 4.
  message = rejects(config(**{"opt.micro_batches": 4, "mesh.data": 2}), "mesh.fsdp")
  assert "opt.micro_batches=4 = 4)" in message and "2 x 4 = 8" in message
  # 36 tokens over context 8.
  message = rejects(config(**{"mesh.fsdp": 1, "mesh.context": 8}), "mesh.context")
  assert "padded sequence length 36" in message and "multiple of 8" in message
  # data.pad_to_multiple fixes it: 40 tokens.
  ok = config(**{"mesh.fsdp": 1, "mesh.context": 8, "data.pad_to_multiple": 8})
  config_check.validate(ok, device_count=8, process_count=1)
  # 2 kv heads over tensor 4 (and over a DCN part of tensor).
  message = rejects(config(**{"mesh.tensor": 4}), "model.arch.num_kv_heads")
  assert "tensor axis size 4" in message
  rejects(
    config(**{"teacher.arch.num_heads": 3, "teacher.arch.num_kv_heads": 1, "mesh.tensor": 2}),
    "teacher.arch.num_heads",
  )


@pytest.fixture
def hf_dir(tmp_path):
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 128}))
  return d


def paths_case(tmp_path, hf_dir, name):
  """(overrides, culprit) of the path checks, built on real files under tmp_path."""
  data = tmp_path / "train.jsonl"
  data.write_text('{"prompt": "1+1", "answer": "2"}\n')
  garbage = tmp_path / "garbage"
  garbage.mkdir()
  (garbage / "config.json").write_text("{not json")
  missing = str(tmp_path / "missing")
  return {
    "hf_no_config_json": ({"model.source": "hf", "model.path": str(tmp_path)}, "model.path"),
    "hf_empty_path": ({"teacher.source": "hf"}, "teacher.path"),
    "hf_bad_json": ({"model.source": "hf", "model.path": str(garbage)}, "model.path"),
    "hf_vocab": (
      {"teacher.source": "hf", "teacher.path": str(hf_dir), "model.arch.vocab_size": 256},
      "model.arch.vocab_size",
    ),
    "train_path": ({"data.train_path": missing}, "data.train_path"),
    "eval_path": ({"data.eval_path": missing}, "data.eval_path"),
    "tokenizer_path": ({"data.tokenizer_path": missing}, "data.tokenizer_path"),
    "list_path": ({"rock.mode": "static", "rock.list_path": missing}, "rock.list_path"),
    "static_no_list": ({"rock.mode": "static"}, "rock.list_path"),
    "resume": ({"ckpt.resume": missing}, "ckpt.resume"),
    "no_task": ({"data.task": ""}, "data.train_path"),
    "no_tokenizer": ({"data.train_path": str(data)}, "data.tokenizer_path"),
  }[name]


PATH_CASES = [
  "hf_no_config_json",
  "hf_empty_path",
  "hf_bad_json",
  "hf_vocab",
  "train_path",
  "eval_path",
  "tokenizer_path",
  "list_path",
  "static_no_list",
  "resume",
  "no_task",
  "no_tokenizer",
]


@pytest.mark.parametrize("name", PATH_CASES)
def test_path_checks_name_the_field_and_skip_in_dry_runs(tmp_path, hf_dir, name):
  overrides, field = paths_case(tmp_path, hf_dir, name)
  rejects(config(**overrides), field)
  if name != "hf_vocab":  # a dry run builds both models from `arch`: their vocabs must match
    # A dry run reads no file: the same config passes there.
    config_check.validate(config(**overrides), dry_run=True, device_count=8)


@pytest.mark.parametrize("group", ["model", "teacher"])
def test_a_missing_model_directory_is_named_as_missing_not_as_lacking_config_json(tmp_path, group):
  need = f"({group}.source='hf' needs a Hugging Face checkpoint directory)"
  missing = str(tmp_path / "nope")
  message = rejects(config(**{f"{group}.source": "hf", f"{group}.path": missing}), f"{group}.path")
  assert message == f"{group}.path={missing!r}: no such directory {need}"
  message = rejects(
    config(**{f"{group}.source": "hf", f"{group}.path": str(tmp_path)}), f"{group}.path"
  )
  assert message == f"{group}.path={str(tmp_path)!r}: no config.json there {need}"
  message = rejects(config(**{f"{group}.source": "hf"}), f"{group}.path")
  assert message == f"{group}.path='': no directory given {need}"


def test_missing_field_is_named():
  d = tiny.get_config().to_dict()
  del d["rock"]["window"]
  with pytest.raises(errors.ConfigError, match=r"no field 'rock.window'"):
    config_check.validate(ml_collections.ConfigDict(d), device_count=8)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_configs_validate(name, tmp_path, hf_dir):
  c = importlib.import_module(f"configs.{name}").get_config()
  # Dry runs: the paper configs on their declared 8 devices, from a 1-device machine.
  config_check.validate(c, dry_run=True, device_count=1)
  if c.model.source == "hf":  # real runs: stand-in checkpoint dirs and data for the paper's
    hf_dir.joinpath("config.json").write_text(json.dumps({"vocab_size": 151936}))
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n')
    c.update_from_flattened_dict(
      {"model.path": str(hf_dir), "teacher.path": str(hf_dir), "data.train_path": str(data)}
    )
    if c.rock.mode == "static" and not c.rock.list_path:
      c.rock.list_path = os.path.join(REPO, "rockjax/resources/qwen3_paper_rocks.txt")
  config_check.validate(c, device_count=8)


def test_tables_name_real_fields():
  """Every table entry is a field of configs/default.py (a typo there would KeyError)."""
  c = importlib.import_module("configs.default").get_config()
  names = set(config_check.flat_fields(c))
  for field in list(config_check.ENUMS) + list(config_check.RANGES) + list(config_check.PATHS):
    assert field in names, field
