"""What each config field may hold: allowed values, numeric ranges, legacy spellings and paths.

The tables rockjax.config.check checks a config against, one row per field (`configs/default.py`
documents each field). Cross-field rules (mesh, stages, micro-batches, files) live in
rockjax.config.check.
"""

from typing import Any

from rockjax.data.prompt_fit import OVERFLOW_POLICIES
from rockjax.data.tasks.arithmetic import DIFFICULTIES
from rockjax.evaluation import TESTS as PAIRED_TESTS
from rockjax.models.loading import DTYPES
from rockjax.losses import KINDS, NORMALIZERS
from rockjax.losses.fused import SHARDINGS
from rockjax.models import attention, grouped_matmul, remat
from rockjax.models.config import FAMILIES
from rockjax.objective import FROZEN_KL
from rockjax.rocks.stats import SELECTORS, WINDOWS
from rockjax.sampling.rollout_copy import DTYPES as ROLLOUT_DTYPES
from rockjax.sampling.rollout_copy import LAYOUTS as ROLLOUT_LAYOUTS
from rockjax.sampling.rollout_batch import TRUNCATED_POLICIES as TRUNCATED_ROLLOUTS
from rockjax.sharding import MESH_AXES

SOURCES = {"model": ("random", "hf", "kd"), "teacher": ("random", "hf", "none", "sft")}
_GROUPS = ("model", "teacher")

# field -> allowed values.
ENUMS: dict[str, tuple[str, ...]] = {
  "opd.mode": ("on_policy", "off_policy"),
  "opd.divergence": KINDS,
  "opd.normalizer": NORMALIZERS,
  "opd.loss_sharding": SHARDINGS,
  "opd.frozen_kl": FROZEN_KL,
  "opd.rollout_dtype": tuple(ROLLOUT_DTYPES),
  "opd.rollout_sharding": ROLLOUT_LAYOUTS,
  "opd.truncated_rollouts": TRUNCATED_ROLLOUTS,
  "rock.mode": ("off", "static", "dynamic"),
  "rock.selector": SELECTORS,
  "rock.window": WINDOWS,
  "data.task": ("arithmetic", ""),  # '' = no built-in task: data.train_path is required
  "data.task_difficulty": tuple(DIFFICULTIES),
  "data.prompt_overflow": OVERFLOW_POLICIES,
  "data.pack": (False, True),  # off-policy sample packing (rockjax.data.packing)
  "analysis.knockout_pool": ("rock_score", "rocks_and_controls"),  # rockjax.analysis.studies
  "analysis.knockout_test": PAIRED_TESTS,
}
# field -> how a value is read before the checks (legacy spellings of an enum).
CANONICAL: dict[str, Any] = {}
# field -> allowed range: '>= x', '> x' or an interval '[a, b]', '(a, b]', '[a, b)', ...
RANGES: dict[str, str] = {
  "steps": ">= 1",
  "log_every": ">= 1",
  "stop_after": ">= 0",
  "opd.jsd_beta": "[0, 1]",
  "opd.temperature": "> 0",
  "opd.kd_ratio": "[0, 1]",
  "opd.skew_alpha": "[0, 1]",
  "opd.chunk_size": ">= 1",
  "opd.block_size": ">= 1",
  "opd.kept_capacity": "[0, 1]",
  "opd.samples_per_prompt": ">= 1",
  "opd.max_new_tokens": ">= 1",
  "opd.updates_per_rollout": ">= 1",
  "opd.sample_temperature": "> 0",
  "opd.top_p": "(0, 1]",
  "opd.top_k": ">= 0",
  "opd.rollout_tensor": ">= 0",
  "rock.lam": "[0, 1]",  # a down-weight of rock positions: more than 1 would up-weight them
  "rock.k": ">= 1",
  "rock.min_freq": ">= 0",
  "rock.exclude_top_freq": ">= 0",
  "rock.decay": "(0, 1]",
  "rock.warmup_steps": ">= 0",
  "rock.select_every": ">= 1",
  "rock.snapshot_step": ">= 0",
  "opt.lr": ">= 0",
  "opt.end_lr": ">= 0",
  "opt.warmup_frac": "[0, 1)",
  "opt.b1": "[0, 1)",
  "opt.b2": "[0, 1)",
  "opt.eps": "> 0",
  "opt.weight_decay": ">= 0",
  "opt.clip": ">= 0",
  "opt.micro_batches": ">= 1",
  "data.task_size": ">= 1",
  "data.prompts_per_step": ">= 1",
  "data.epochs": ">= 0",
  "data.num_train_prompts": ">= 0",
  "data.max_prompt_len": ">= 1",
  "data.max_len": ">= 2",
  "data.pad_to_multiple": ">= 1",
  "mesh.num_devices": ">= 0",
  "mesh.dcn_data": ">= 1",
  "mesh.dcn_fsdp": ">= 1",
  "mesh.dcn_context": ">= 1",
  "mesh.dcn_tensor": ">= 1",
  "ckpt.every": ">= 0",
  "ckpt.keep": ">= 1",
  "ckpt.every_minutes": ">= 0",
  "opd.decode_segment": ">= 0",
  "eval.every": ">= 0",
  "eval.num_prompts": ">= 1",
  "eval.num_samples": ">= 1",
  "eval.temperature": ">= 0",
  "eval.max_new_tokens": ">= 1",
  "bench.num_samples": ">= 1",
  "bench.temperature": ">= 0",
  "bench.top_p": "(0, 1]",
  "bench.max_new_tokens": ">= 1",
  "bench.max_prompt_len": ">= 1",
  "bench.batch_size": ">= 1",
  "analysis.num_prompts": ">= 1",
  "analysis.max_new_tokens": ">= 0",
  "analysis.temperature": "> 0",
  "analysis.batch_size": ">= 1",
  "analysis.subcorpus_repeats": ">= 1",
  "analysis.num_random": ">= 1",
  "analysis.knockout_candidates": ">= 1",
  "analysis.knockout_max_new_tokens": ">= 0",  # 0 = analysis.max_new_tokens
  "analysis.knockout_batch_rows": ">= 1",
  "analysis.early_step": ">= 0",  # 0 = no early training step
  "analysis.knockout_eps": ">= 0",
  "analysis.bootstrap_resamples": ">= 1",
  "analysis.alpha": "(0, 1)",
  "preflight.determinism_tol": ">= 0",  # rockjax.runner.preflight; 0 = no teacher probe
}
for _g in _GROUPS:
  ENUMS.update(
    {
      f"{_g}.source": SOURCES[_g],
      f"{_g}.dtype": tuple(DTYPES),
      f"{_g}.param_dtype": tuple(DTYPES),
      f"{_g}.arch.family": tuple(sorted(set(FAMILIES.values()))),
      f"{_g}.attention": attention.IMPLEMENTATIONS,
      f"{_g}.moe_impl": grouped_matmul.IMPLEMENTATIONS,
      f"{_g}.moe_experts_axis": ("",) + MESH_AXES,
      f"{_g}.remat": remat.POLICIES,
    }
  )
  CANONICAL[f"{_g}.remat"] = remat.canonical
  RANGES.update(
    {
      f"{_g}.attention_block": ">= 1",
      f"{_g}.mlp_chunk": ">= 0",
      f"{_g}.stage_steps": ">= 1",
      f"{_g}.stage_lr": ">= 0",
      f"{_g}.stage_kd_ratio": "[0, 1]",
      f"{_g}.arch.rope_theta": "> 0",
      f"{_g}.arch.rms_norm_eps": "> 0",
      f"{_g}.arch.num_experts": ">= 0",
      f"{_g}.arch.num_experts_per_tok": ">= 0",
      f"{_g}.arch.moe_intermediate_size": ">= 0",
    }
  )
  RANGES.update(
    {
      f"{_g}.arch.{k}": ">= 1"
      for k in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
      )
    }
  )
# Benchmarks rockjax.evaluate reads (rockjax.evals.formats loads each published format).
BENCHMARK_NAMES = ("aime24", "aime25", "hmmt25_feb", "math500", "ifeval")
# Comma-separated lists of positive integers ("10,20,50").
INT_LISTS = ("analysis.k_grid", "analysis.subcorpus_sizes")


def int_list(text: str) -> tuple[int, ...]:
  """The ints of a comma-separated list field; ValueError unless all are integers >= 1."""
  values = tuple(int(t) for t in str(text).replace(" ", "").split(",") if t)
  if not values or min(values) < 1:
    raise ValueError(f"expected comma-separated integers >= 1, got {text!r}")
  return values


# Fields holding a file or directory that must exist when set (skipped by dry runs).
PATHS = {
  "data.train_path": "file",
  "data.eval_path": "file",
  "data.tokenizer_path": "dir",
  "rock.list_path": "file",
  "ckpt.resume": "dir",
  "analysis.early_checkpoint": "dir",
  "analysis.control_match_list": "file",
  "pipeline.reuse": "dir",
}
