"""Whole-config validation, run before any work starts (and before anything is written).

`validate(config)` raises `errors.ConfigError` with one line naming the culprit field, its value
and what is expected, e.g. `rock.mode='dynamc': expected one of 'off', 'static', 'dynamic'`.
The checks are the tables of rockjax.config.fields (allowed values, ranges) plus a short list of cross-field rules that
mirror what the code requires (rockjax.sharding, rockjax.data, rockjax.runner.experiment).

A dry run (`dry_run=True`) reads no file (it builds `arch` abstractly, rockjax.dry_run), so the
path checks are skipped there and the mesh is checked against `mesh.num_devices` when set.
"""

import json
import os
from typing import Any, Iterator

import ml_collections

from rockjax import errors, storage
from rockjax.config import mesh as config_mesh
from rockjax.config.fields import (
  BENCHMARK_NAMES,
  CANONICAL,
  ENUMS,
  INT_LISTS,
  PATHS,
  RANGES,
  int_list,
)
from rockjax.models import attention, families

_GROUPS = ("model", "teacher")


def validate(
  config: ml_collections.ConfigDict,
  *,
  dry_run: bool = False,
  device_count: int | None = None,
  process_count: int | None = None,
) -> None:
  """Raises errors.ConfigError (one line) at the first problem; None when the config is usable.

  `device_count` / `process_count` default to jax's (tests pass them to simulate a pod).
  """
  if device_count is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    device_count = jax.device_count() if device_count is None else device_count
    process_count = jax.process_count() if process_count is None else process_count
  c = config
  for field, allowed in ENUMS.items():
    value = CANONICAL.get(field, lambda v: v)(get(c, field))
    if value not in allowed:
      _fail(field, value, "expected one of " + ", ".join(repr(a) for a in allowed))
  for field, spec in RANGES.items():
    value = get(c, field)
    if not _in_range(value, spec):
      _fail(field, value, f"expected {spec}" if spec[0] in "<>" else f"expected a value in {spec}")
  checks = [
    _sources(c),
    _arch(c, dry_run),
    _stages(c),
    _packing(c),
    _prompts(c),
    _bench(c),
    config_mesh.micro_batches(c),
    _rollout_copy(c),
    _skipping(c),
    config_mesh.mesh_and_batch(c, dry_run, device_count, process_count),
    _int_lists(c),
    _rock_rules(c, dry_run),
  ]
  if not dry_run:
    checks.append(_paths(c))
  for problems in checks:
    for message in problems:
      raise errors.ConfigError(message)


def get(c: ml_collections.ConfigDict, field: str) -> Any:
  """The value at a dotted field name; ConfigError when the config has no such field."""
  node = c
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise errors.ConfigError(f"config has no field {field!r} (configs/default.py lists them)")
    node = node[part]
  return node


def flat_fields(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted field name of a config, sub-dicts included (`rock`, `rock.mode`, ...)."""
  out = []
  for key, value in c.items():
    out.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out += flat_fields(value, prefix + key + ".")
  return out


def _fail(field: str, value: Any, expected: str):
  raise errors.ConfigError(f"{field}={value!r}: {expected}")


def _in_range(value: Any, spec: str) -> bool:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  if spec.startswith((">=", ">")):
    bound = float(spec.lstrip(">= "))
    return value >= bound if spec.startswith(">=") else value > bound
  lo, hi = (float(x) for x in spec[1:-1].split(","))
  return (value >= lo if spec[0] == "[" else value > lo) and (
    value <= hi if spec[-1] == "]" else value < hi
  )


def _sources(c) -> Iterator[str]:
  """Where the models come from, and the objective that needs (or not) a teacher."""
  for g in _GROUPS:
    m = c[g]
    if m.path and m.source != "hf":
      yield (
        f"{g}.path={m.path!r}: ignored because {g}.source={m.source!r} (only 'hf' reads "
        f"a path); clear it or set {g}.source='hf'"
      )
  needs_teacher = c.opd.mode == "on_policy" or c.opd.kd_ratio > 0
  if c.teacher.source == "none" and needs_teacher:
    yield (
      f"teacher.source='none': plain SFT needs opd.mode='off_policy' and opd.kd_ratio=0, "
      f"got opd.mode={c.opd.mode!r}, opd.kd_ratio={c.opd.kd_ratio!r}"
    )
  if c.model.source == "kd" and c.teacher.source == "none":
    yield "model.source='kd': stage-1 KD needs a teacher, but teacher.source='none'"


def _arch(c, dry_run: bool) -> Iterator[str]:
  """Architecture consistency (rockjax.models.ModelConfig) and a shared vocabulary."""
  for g in _GROUPS:
    a = c[g].arch
    if c[g].attention == "splash" and c[g].attention_block % attention.SPLASH_LANES:
      yield (
        f"{g}.attention_block={c[g].attention_block}: {g}.attention='splash' needs a "
        f"multiple of {attention.SPLASH_LANES}"
      )
    if a.num_heads % a.num_kv_heads:
      yield (
        f"{g}.arch.num_heads={a.num_heads}: expected a multiple of "
        f"{g}.arch.num_kv_heads={a.num_kv_heads}"
      )
    if families.get(a.family).moe:
      if a.num_experts < 1 or a.moe_intermediate_size < 1:
        yield (
          f"{g}.arch.num_experts={a.num_experts}: family {a.family!r} needs num_experts "
          f">= 1 and moe_intermediate_size >= 1 (got {a.moe_intermediate_size})"
        )
      elif not 1 <= a.num_experts_per_tok <= a.num_experts:
        yield (
          f"{g}.arch.num_experts_per_tok={a.num_experts_per_tok}: expected a value in "
          f"[1, {g}.arch.num_experts={a.num_experts}]"
        )
    elif a.num_experts:
      moe = ", ".join(repr(f.name) for f in families.PRESETS.values() if f.moe)
      yield (
        f"{g}.arch.num_experts={a.num_experts}: expected 0 for family {a.family!r} "
        f"(experts need a MoE family: {moe})"
      )
  # Random-initialised (or stage-trained) models and dry runs take the vocabulary from
  # `arch`; an 'hf' model's is in its config.json (_hf_vocab).
  if c.teacher.source != "none" and (dry_run or "hf" not in (c.model.source, c.teacher.source)):
    vs, vt = c.model.arch.vocab_size, c.teacher.arch.vocab_size
    if vs != vt:
      yield (
        f"teacher.arch.vocab_size={vt}: expected model.arch.vocab_size={vs} (teacher and "
        "student share one vocabulary)"
      )


def _stages(c) -> Iterator[str]:
  """Off-policy batches (opd.mode='off_policy' or a preliminary sft/kd stage) hold prompt +
  completion in data.max_len tokens."""
  off_policy = c.opd.mode == "off_policy" or c.teacher.source == "sft" or c.model.source == "kd"
  if off_policy and c.data.max_len <= c.data.max_prompt_len:
    yield (
      f"data.max_len={c.data.max_len}: expected > data.max_prompt_len="
      f"{c.data.max_prompt_len} (off-policy rows hold the prompt and its completion)"
    )


def _packing(c) -> Iterator[str]:
  """data.pack packs the off-policy rows of given completions (rockjax.data.packing)."""
  if not c.data.pack:
    return
  if c.opd.mode != "off_policy":
    yield (
      f"data.pack=True: needs opd.mode='off_policy', got {c.opd.mode!r} (packing joins given "
      "prompt + completion sequences; rollouts are not packed)"
    )
  elif c.opd.normalizer == "sequence":
    yield (
      "data.pack=True: opd.normalizer='sequence' averages per row, which would mix the packed "
      "sequences of a row; use 'tokens' or 'weights'"
    )


def _skipping(c) -> Iterator[str]:
  """Rock-Freeze skipping gathers hidden states: only the chunked (fused) loss has them."""
  if c.opd.kept_capacity > 0 and not c.opd.chunked:
    yield f"opd.kept_capacity={c.opd.kept_capacity!r}: skipping needs opd.chunked=True"


def _prompts(c) -> Iterator[str]:
  """A system prompt is a chat message: it needs the chat template."""
  if c.data.system_prompt and not c.data.use_chat_template:
    yield (
      f"data.system_prompt={c.data.system_prompt[:40]!r}: needs data.use_chat_template=True "
      "(a system message only exists in a chat template)"
    )


def _bench(c) -> Iterator[str]:
  """bench.prompt_template is a known name or a format string with {problem}; bench.macro
  names benchmarks rockjax.evaluate knows."""
  template = c.bench.prompt_template
  if template not in ("paper", "chat") and "{problem}" not in template:
    yield (
      f"bench.prompt_template={template[:40]!r}: expected 'paper', 'chat' or a format string "
      "containing {problem}"
    )
  unknown = [n for n in c.bench.macro.split(",") if n and n not in BENCHMARK_NAMES]
  if unknown:
    yield (
      f"bench.macro={c.bench.macro!r}: unknown benchmark {unknown[0]!r} "
      f"(expected names from {', '.join(BENCHMARK_NAMES)})"
    )


def _rollout_copy(c) -> Iterator[str]:
  """opd.rollout_sharding='train' samples the train params themselves (rockjax.sampling.rollout_copy)."""
  if c.opd.rollout_sharding == "train" and c.opd.rollout_dtype != "float32":
    yield (
      f"opd.rollout_dtype={c.opd.rollout_dtype!r}: opd.rollout_sharding='train' samples the "
      "train params as they are (no copy); use 'replicated' or 'tensor' for a cast copy"
    )
  if c.opd.rollout_tensor and c.opd.rollout_sharding != "tensor":
    yield (
      f"opd.rollout_tensor={c.opd.rollout_tensor}: only opd.rollout_sharding='tensor' splits "
      f"the sampling copy (it is {c.opd.rollout_sharding!r}); set it to 0 or use 'tensor'"
    )
  devices = c.mesh.get("num_devices", 0)
  if c.opd.rollout_tensor and devices and devices % c.opd.rollout_tensor:
    yield (f"opd.rollout_tensor={c.opd.rollout_tensor} does not divide mesh.num_devices={devices}")


def _rock_rules(c, dry_run: bool) -> Iterator[str]:
  """Counts over the vocabulary fit in it; a 'snapshot' window has a snapshot to read."""
  hf = c.model.source == "hf" and not dry_run  # the vocabulary is in config.json (_hf_vocab)
  vocab = None if hf else c.model.arch.vocab_size
  where = "" if vocab is None else f"model.arch.vocab_size={vocab}"
  if vocab is not None and c.rock.k > vocab:
    yield f"rock.k={c.rock.k}: expected at most {where} (ids selected per step)"
  if vocab is not None and c.opd.top_k > vocab:
    yield f"opd.top_k={c.opd.top_k}: expected at most {where} (0 = off)"
  if c.rock.window == "snapshot" and c.rock.snapshot_step == 0:
    yield (
      "rock.snapshot_step=0: rock.window='snapshot' selects from the statistics frozen at "
      "that step, and 0 never takes one; set rock.snapshot_step >= 1"
    )


def _int_lists(c) -> Iterator[str]:
  """Comma-separated integer lists (analysis.k_grid, analysis.subcorpus_sizes) and the
  ckpt.keep_steps tuple."""
  for field in INT_LISTS:
    value = get(c, field)
    try:
      int_list(value)
    except ValueError:
      yield f"{field}={value!r}: expected comma-separated integers >= 1, e.g. '10,20,50'"
  steps = get(c, "ckpt.keep_steps")
  if not isinstance(steps, (tuple, list)) or not all(
    isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps
  ):
    yield f"ckpt.keep_steps={steps!r}: expected a tuple of steps >= 1, e.g. (500, 1000)"


def _paths(c) -> Iterator[str]:
  """Files and directories the run reads (not needed by a dry run).

  URLs (gs://, s3://) are not checked here (that needs the cloud extras and credentials);
  reading them reports a missing file when the run gets there.
  """
  for g in _GROUPS:
    m = c[g]
    if m.source != "hf" or storage.is_remote(m.path):
      continue
    if not m.path or not os.path.isdir(m.path):
      what = "no such directory" if m.path else "no directory given"
    elif not os.path.isfile(os.path.join(m.path, "config.json")):
      what = "no config.json there"
    else:
      continue
    yield f"{g}.path={m.path!r}: {what} ({g}.source='hf' needs a Hugging Face checkpoint directory)"
  for field, kind in PATHS.items():
    path = get(c, field)
    exists = os.path.isfile if kind == "file" else os.path.isdir
    if path and not storage.is_remote(path) and not exists(path):
      yield f"{field}={path!r}: no such {'file' if kind == 'file' else 'directory'}"
  if c.rock.mode == "static" and not c.rock.list_path:
    yield (
      "rock.list_path='': rock.mode='static' needs an id list file (e.g. "
      "rockjax/resources/qwen3_paper_rocks.txt)"
    )
  if not c.data.train_path and c.data.task != "arithmetic":
    yield (
      f"data.train_path='': needed when data.task={c.data.task!r} (no built-in task); "
      "or set data.task='arithmetic'"
    )
  # The tokenizer: data.tokenizer_path, the built-in task's, or an 'hf' model every stage
  # sees (an sft teacher stage trains without the student's checkpoint).
  hf_everywhere = c.teacher.source == "hf" or (c.model.source == "hf" and c.teacher.source != "sft")
  if c.data.train_path and not c.data.tokenizer_path and not hf_everywhere:
    yield (
      "data.tokenizer_path='': needed with data.train_path when no model has "
      "source 'hf' (which tokenizer encodes the data?)"
    )
  for g in _GROUPS:
    if c[g].source == "hf" and c.teacher.source != "none" and not storage.is_remote(c[g].path):
      yield from _hf_vocab(c, g)


def _hf_vocab(c, g: str) -> Iterator[str]:
  """config.json must parse; its vocab_size must match the other model's when it is known."""
  path = os.path.join(c[g].path, "config.json")
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    yield f"{g}.path={c[g].path!r}: cannot read config.json ({type(e).__name__}: {e})"
    return
  other = "teacher" if g == "model" else "model"
  if c[other].source in ("random", "kd", "sft") and isinstance(hf, dict):
    v, vo = hf.get("vocab_size"), c[other].arch.vocab_size
    if v is not None and v != vo:
      yield (
        f"{other}.arch.vocab_size={vo}: expected {v}, the vocab_size of {g}.path="
        f"{c[g].path!r} (teacher and student share one vocabulary)"
      )
