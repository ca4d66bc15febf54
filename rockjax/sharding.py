"""Device mesh, logical-axis rules and NamedShardings for parameters and activations.

Parameters carry *logical* axis names (``'embed'``, ``'mlp'``, ``'heads'``, ...) as NNX
``out_sharding`` metadata; a rules table maps each logical name to zero or more mesh axes of
the ``('data', 'fsdp', 'tensor')`` mesh. A dimension whose size is not divisible by its mesh
axes is replicated instead, so tiny test models still shard on 8 fake devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or axes, major to minor, or None for replicated).
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
DEFAULT_RULES: LogicalRules = (
  # Activations.
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("act_embed", None),
  ("act_vocab", "tensor"),  # logits stay vocab-sharded (never gather [B, L, V])
  ("act_heads", "tensor"),
  ("cache_length", None),
  # Parameters.
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("vocab", "tensor"),
  ("experts", "tensor"),
  ("head_dim", None),
  ("norm", None),
  ("layers", None),  # the stacked-layer axis of scanned decoders (rockjax.models.decoder)
)


def make_mesh(
  shape: Mapping[str, int] | Sequence[int] | None = None,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh; one axis may be -1 (fill with the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  if shape is None:
    shape = {"fsdp": -1}
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    sizes = [int(shape.get(name, 1)) for name in MESH_AXES]
  else:
    sizes = [int(s) for s in shape]
    if len(sizes) != len(MESH_AXES):
      raise ValueError(f"mesh shape {tuple(sizes)} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))}: sizes must be >= 1, one may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if len(devices) % known:
    raise ValueError(
      f"mesh shape {dict(zip(MESH_AXES, sizes))} (product {known}) does not "
      f"divide the {len(devices)} available devices"
    )
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    # A mesh smaller than the device set is allowed: it uses the first devices.
    devices = devices[: math.prod(sizes)]
  # Auto axes: GSPMD propagates shardings through the model; only boundaries are declared.
  return jax.make_mesh(
    tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
  )


def _axis_sizes(mesh: Mesh | jax.sharding.AbstractMesh) -> dict[str, int]:
  """Mesh axis name -> size, for concrete and abstract meshes."""
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_spec(
  logical_axes: Sequence[str | None],
  shape: Sequence[int],
  mesh: Mesh | jax.sharding.AbstractMesh,
  rules: LogicalRules | None = None,
) -> PartitionSpec:
  """Maps per-dimension logical names to a PartitionSpec valid for `shape` on `mesh`.

  Mesh axes absent from the mesh, of size 1, or already used by an earlier dimension are
  dropped; trailing axes are dropped until the dimension size is divisible (so an indivisible
  dimension ends up replicated).
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  table = dict(DEFAULT_RULES if rules is None else rules)
  sizes = _axis_sizes(mesh)
  used: set[str] = set()
  spec: list[Any] = []
  for name, dim in zip(logical_axes, shape):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = [a for a in axes if sizes.get(a, 1) > 1 and a not in used]
    while axes and dim % math.prod(sizes[a] for a in axes):
      axes.pop()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return PartitionSpec(*spec)


def logical_sharding(
  logical_axes: Sequence[str | None],
  shape: Sequence[int],
  mesh: Mesh,
  rules: LogicalRules | None = None,
) -> NamedSharding:
  """NamedSharding on `mesh` for an array of `shape` with the given logical axes."""
  return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
  """The logical axis names a parameter carries (all None when it carries none)."""
  axes = variable.get_metadata().get("out_sharding")
  ndim = len(variable.get_value().shape)
  return tuple(axes) if axes else (None,) * ndim


def tree_shardings(tree: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
  """NamedShardings for a pytree: Variables by their logical axes, any other leaf replicated.

  Works on a model's State, a whole TrainState (moments follow their parameters) and on
  abstract trees (ShapeDtypeStructs) alike.
  """
  replicated = NamedSharding(mesh, PartitionSpec())

  def one(x):
    if isinstance(x, nnx.Variable):
      shape = x.get_value().shape
      return x.replace(logical_sharding(variable_logical_axes(x), shape, mesh, rules))
    return replicated

  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: LogicalRules | None = None) -> nnx.Module:
  """Places every parameter of an already-materialised model onto `mesh` (in place)."""
  state = nnx.state(model)
  shardings = tree_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model


def constrain(
  x: jax.Array, logical_axes: Sequence[str | None], rules: LogicalRules | None = None
) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op when no mesh is set (jax.set_mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))


def batch_sharding(
  shape: Sequence[int], mesh: Mesh, rules: LogicalRules | None = None
) -> NamedSharding:
  """Sharding for a host batch [B, ...]: dim 0 on 'batch' ('data' x 'fsdp'), the rest replicated."""
  return logical_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh, rules)


def host_to_global(
  host_batch: Mapping[str, Any], mesh: Mesh, rules: LogicalRules | None = None
) -> dict[str, jax.Array]:
  """Host-local rows [b, ...] -> global arrays [b * process_count, ...] on 'batch'."""
  out = {}
  for k, v in host_batch.items():
    global_shape = (v.shape[0] * jax.process_count(),) + tuple(v.shape[1:])
    out[k] = jax.make_array_from_process_local_data(batch_sharding(global_shape, mesh, rules), v)
  return out
