"""Dry run: build a config abstractly (no weights, no data) and report per-device memory.

Parameters and optimiser state are sized exactly from their shardings on the config's
declared mesh (any size: an abstract mesh is enough). Activations come from XLA's memory
analysis of the compiled train step when the declared mesh fits the local devices (e.g. 8
fake CPU devices), and are reported as null otherwise.
"""

import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AbstractMesh, PartitionSpec

from rockjax import loading
from rockjax import settings as settings_lib
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax import step as step_lib

_GIB = 2**30


def declared_mesh_shape(c: ml_collections.ConfigDict) -> dict[str, int]:
  """Full mesh axis sizes the config declares (per slice x DCN); -1 resolves against
  mesh.num_devices (or the local devices)."""
  ici, dcn = shd.config_mesh_shapes(c.mesh)
  return shd.resolve_mesh_shape(ici, c.mesh.get("num_devices", 0) or jax.device_count(), dcn)


def _per_device_bytes(abstract_tree: Any, shardings: Any, axis_sizes: dict[str, int]) -> int:
  """Sum over leaves of the bytes one device holds (largest shard)."""
  total = 0
  for leaf, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    spec = sh.spec if hasattr(sh, "spec") else PartitionSpec()
    shard = list(leaf.shape)
    for i, axes in enumerate(tuple(spec) + (None,) * (len(shard) - len(spec))):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      shard[i] = math.ceil(shard[i] / math.prod(axis_sizes[a] for a in names))
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def report(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """Per-device memory (GiB) of params, optimiser state, teacher and activations."""
  sizes = declared_mesh_shape(c)
  n_devices = math.prod(sizes.values())
  abstract_mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
  student_cfg = loading.arch_config(c.model)
  teacher_cfg = None if c.teacher.source == "none" else loading.arch_config(c.teacher)
  tx, schedule = state_lib.make_optimizer(c.opt, c.steps)
  graphdef, params = loading.abstract_params(student_cfg)
  init = state_lib.initializer(graphdef, tx, vocab_size=student_cfg.vocab_size)
  abstract = jax.eval_shape(init, params)
  shardings = shd.tree_shardings(abstract, abstract_mesh)
  out = {
    "mesh": sizes,
    "student_params_b": _count(abstract.params) / 1e9,
    "per_device_gib": {
      "params": _per_device_bytes(abstract.params, shardings.params, sizes) / _GIB,
      "opt_state": _per_device_bytes(abstract.opt_state, shardings.opt_state, sizes) / _GIB,
      "rock_stats": _per_device_bytes(
        (abstract.rock, abstract.rock_mask), (shardings.rock, shardings.rock_mask), sizes
      )
      / _GIB,
    },
  }
  t_graphdef = t_params = t_shardings = None
  if teacher_cfg is not None:
    t_graphdef, t_params = loading.abstract_params(teacher_cfg)
    t_shardings = shd.tree_shardings(t_params, abstract_mesh)
    out["teacher_params_b"] = _count(t_params) / 1e9
    out["per_device_gib"]["teacher_params"] = _per_device_bytes(t_params, t_shardings, sizes) / _GIB
  out["per_device_gib"]["activations"] = None
  if n_devices <= jax.device_count():
    out["per_device_gib"]["activations"] = _activation_gib(
      c, sizes, init, params, t_graphdef, t_params, schedule
    )
  return out


def _activation_gib(c, sizes, init, params, t_graphdef, t_params, schedule):
  """XLA's temporary-buffer size of the compiled step on a concrete mesh of the declared shape."""
  mesh = shd.make_mesh(sizes, devices=jax.devices()[: math.prod(sizes.values())])
  like, shardings = state_lib.abstract_state(init, params, mesh)
  t_sh = None if t_params is None else shd.tree_shardings(t_params, mesh)
  t_like = (
    None
    if t_params is None
    else jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), t_params, t_sh
    )
  )
  rows, length = settings_lib.batch_shape(c)
  b_sh = shd.batch_sharding((rows, length), mesh)
  batch = {
    k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=b_sh)
    for k in ("tokens", "attention_mask", "response_mask")
  }
  settings = settings_lib.step_settings(c, t_graphdef, schedule)
  fn = step_lib.jit_train_step(settings, shardings, t_sh, b_sh)
  with jax.set_mesh(mesh):
    compiled = fn.lower(like, t_like, batch).compile()
  return compiled.memory_analysis().temp_size_in_bytes / _GIB


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def report_json(c: ml_collections.ConfigDict) -> str:
  """The report as indented JSON (what `python -m rockjax.main --dry_run` prints)."""
  return json.dumps(report(c), indent=1)
