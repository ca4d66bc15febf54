"""Device mesh, logical-axis rules and NamedShardings for parameters and activations.

Parameters carry *logical* axis names (``'embed'``, ``'mlp'``, ``'heads'``, ...) as NNX
``out_sharding`` metadata; a rules table maps each logical name to zero or more mesh axes of
the ``('data', 'fsdp', 'context', 'tensor')`` mesh ('context' splits the sequence of the train
step's activations). A parameter dimension whose size is not divisible by its mesh axes is
replicated instead, so tiny test models still shard on 8 fake devices; an activation dimension
(`constrain`) that its mesh axes cannot divide is an error, not a silent replication (every
device would redo the whole computation).

On several TPU slices or GPU nodes the mesh is hybrid: each axis is (its size within a slice
or node, over the fast ICI/NVLink links) x (the number of slices or nodes along it, over the
slower data-centre network, DCN); `make_mesh(shape, dcn=...)` lays the devices out so that an
axis with a DCN part crosses slices only in its outer (slowest-varying) part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")  # tensor innermost (fastest links)

# Logical name -> mesh axis (or axes, major to minor, or None for replicated).
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
DEFAULT_RULES: LogicalRules = (
  # Activations.
  ("batch", ("data", "fsdp")),
  ("length", "context"),  # sequence sharding; attention gathers K/V over it
  ("act_embed", None),
  ("act_vocab", "tensor"),  # logits stay vocab-sharded (never gather [B, L, V])
  ("act_heads", "tensor"),
  ("cache_length", None),
  # Parameters.
  # Context shards hold different tokens but the same weights: shard the weights over it too
  # (FSDP-style, gathered per layer), else parameters and moments double per chip.
  ("embed", ("fsdp", "context")),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("vocab", "tensor"),
  ("experts", "tensor"),
  ("head_dim", None),
  ("norm", None),
  ("layers", None),  # the stacked-layer axis of scanned decoders (rockjax.models.decoder)
)


def _sizes_in_axis_order(shape: Mapping[str, int] | Sequence[int] | None, what: str) -> list[int]:
  """Per-axis sizes, in MESH_AXES order, from a {name: size} mapping or a 4-sequence."""
  if shape is None:
    return [1] * len(MESH_AXES)
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown {what} axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    return [int(shape.get(name, 1)) for name in MESH_AXES]
  sizes = [int(s) for s in shape]
  if len(sizes) != len(MESH_AXES):
    raise ValueError(f"{what} shape {tuple(sizes)} must have {len(MESH_AXES)} entries {MESH_AXES}")
  return sizes


def config_mesh_shapes(mesh_config: Any) -> tuple[dict[str, int], dict[str, int]]:
  """(ici, dcn) axis sizes from the config's `mesh` group: `data`/`fsdp`/`context`/`tensor` are
  the sizes within one slice (TPU) or node (GPU), `dcn_<axis>` (default 1) the number of
  slices or nodes along each axis. A config without `context` (older ones) gets 1."""
  ici = {name: int(mesh_config.get(name, 1)) for name in MESH_AXES}
  dcn = {name: int(mesh_config.get(f"dcn_{name}", 1)) for name in MESH_AXES}
  return ici, dcn


def resolve_mesh_shape(
  shape: Mapping[str, int] | Sequence[int] | None,
  num_devices: int,
  dcn: Mapping[str, int] | Sequence[int] | None = None,
) -> dict[str, int]:
  """Full mesh axis sizes (per-slice size x DCN size) for `num_devices` devices.

  `shape` holds the sizes within one slice/node (one may be -1: the rest of the slice's
  devices); `dcn` the number of slices/nodes along each axis (all >= 1).
  """
  sizes = _sizes_in_axis_order({"fsdp": -1} if shape is None else shape, "mesh")
  outer = _sizes_in_axis_order(dcn, "dcn mesh")
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))}: sizes must be >= 1, one may be -1")
  if any(s < 1 for s in outer):
    raise ValueError(f"dcn mesh shape {dict(zip(MESH_AXES, outer))}: sizes must be >= 1")
  known = math.prod(s for s in sizes if s != -1) * math.prod(outer)
  if num_devices % known:
    dcn_part = f" x dcn {dict(zip(MESH_AXES, outer))}" if math.prod(outer) > 1 else ""
    raise ValueError(
      f"mesh shape {dict(zip(MESH_AXES, sizes))}{dcn_part} (product {known}) does not "
      f"divide the {num_devices} available devices"
    )
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  return {name: s * o for name, s, o in zip(MESH_AXES, sizes, outer)}


def _process_is_granule(devices: Sequence[Any], count: int) -> bool:
  """Whether the `count` DCN granules are processes (True) or TPU slices (False): slices when
  the devices' `slice_index` splits them into `count` groups, else processes (one per node)."""
  slices = {getattr(d, "slice_index", None) for d in devices}
  if len(slices) == count and None not in slices:
    return False
  processes = {d.process_index for d in devices}
  if len(processes) == count:
    return True
  raise ValueError(
    f"the dcn mesh has {count} slices/nodes (the product of mesh.dcn_*), but the devices span "
    f"{len(slices - {None}) or 1} TPU slice(s) and {len(processes)} process(es)"
  )


def make_mesh(
  shape: Mapping[str, int] | Sequence[int] | None = None,
  devices: Sequence[jax.Device] | None = None,
  dcn: Mapping[str, int] | Sequence[int] | None = None,
) -> Mesh:
  """Builds a ('data', 'fsdp', 'context', 'tensor') mesh; one axis of `shape` may be -1 (fill).

  Without `dcn` (or with all DCN sizes 1) `shape` is the whole mesh and may use only the first
  devices. With `dcn`, `shape` is the mesh within one granule -- a TPU slice (devices'
  `slice_index`) or, where slices do not split the devices that way (GPU clusters), a process
  (one per node) -- and axis i of the full mesh has size shape[i] x dcn[i], with the granule
  as the slower-varying part (jax.experimental.mesh_utils.create_hybrid_device_mesh). Every
  device is used.
  """
  devices = list(jax.devices() if devices is None else devices)
  outer = _sizes_in_axis_order(dcn, "dcn mesh")
  full = resolve_mesh_shape(shape, len(devices), outer)
  inner = [full[name] // o for name, o in zip(MESH_AXES, outer)]
  used = math.prod(full.values())
  # Auto axes: GSPMD propagates shardings through the model; only boundaries are declared.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if math.prod(outer) == 1:
    # A mesh smaller than the device set is allowed: it uses the first devices.
    devices = devices[:used]
    slices = {getattr(d, "slice_index", None) for d in devices}
    if len(slices) > 1:
      raise ValueError(
        f"the devices span {len(slices)} TPU slices: set mesh.dcn_data (or dcn_fsdp, "
        "dcn_context, dcn_tensor) so that the DCN sizes multiply to the slice count"
      )
    return jax.make_mesh(tuple(inner), MESH_AXES, axis_types=auto, devices=devices)
  if used != len(devices):
    raise ValueError(f"mesh {full} (with dcn) must use all {len(devices)} devices")
  array = mesh_utils.create_hybrid_device_mesh(
    inner, outer, devices, process_is_granule=_process_is_granule(devices, math.prod(outer))
  )
  return Mesh(array, MESH_AXES, axis_types=auto)


def decode_mesh(mesh_config: Any) -> Mesh:
  """The config's mesh with its context axis folded into fsdp, for whole-sequence decodes and
  scoring outside training (the analysis, rockjax.evaluate): they split rows only, so their
  lengths need not divide a context axis."""
  ici, dcn = config_mesh_shapes(mesh_config)
  ici["fsdp"], ici["context"] = -1 if ici["fsdp"] == -1 else ici["fsdp"] * ici["context"], 1
  return make_mesh(ici, dcn=dcn)


def _axis_sizes(mesh: Mesh | jax.sharding.AbstractMesh) -> dict[str, int]:
  """Mesh axis name -> size, for concrete and abstract meshes."""
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_spec(
  logical_axes: Sequence[str | None],
  shape: Sequence[int],
  mesh: Mesh | jax.sharding.AbstractMesh,
  rules: LogicalRules | None = None,
  *,
  strict: bool = False,
) -> PartitionSpec:
  """Maps per-dimension logical names to a PartitionSpec valid for `shape` on `mesh`.

  Mesh axes absent from the mesh, of size 1, or already used by an earlier dimension are
  dropped. A dimension its mesh axes do not divide: with `strict`, a ValueError naming the
  logical name, mesh axis, dimension and sizes; else trailing axes are dropped until the size
  divides (so an indivisible parameter dimension ends up replicated).
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  table = dict(DEFAULT_RULES if rules is None else rules)
  sizes = _axis_sizes(mesh)
  used: set[str] = set()
  spec: list[Any] = []
  for i, (name, dim) in enumerate(zip(logical_axes, shape)):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = [a for a in axes if sizes.get(a, 1) > 1 and a not in used]
    if strict and dim % math.prod(sizes[a] for a in axes):
      over = " x ".join(f"{a}={sizes[a]}" for a in axes)
      raise ValueError(
        f"activation dimension {i} ({name!r}) of shape {tuple(shape)} has size {dim}, not "
        f"divisible by mesh axes {over} ({math.prod(sizes[a] for a in axes)} shards); change "
        "the mesh or the batch/sequence shape instead of replicating the work on every device"
      )
    while axes and dim % math.prod(sizes[a] for a in axes):
      axes.pop()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return PartitionSpec(*spec)


def spec_axes(entry: Any) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name or a tuple of names), as a tuple."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


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
  x: jax.Array,
  logical_axes: Sequence[str | None],
  rules: LogicalRules | None = None,
  *,
  strict: bool = True,
) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op when no mesh is set (jax.set_mesh).

  strict (activations of the train step): a dimension its mesh axes cannot divide raises a
  ValueError instead of being replicated (logical_to_spec). The sampler passes strict=False:
  it may hold fewer rows (one prompt) than devices.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(logical_axes, x.shape, mesh, rules, strict=strict)
  return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(
  shape: Sequence[int], mesh: Mesh, rules: LogicalRules | None = None
) -> NamedSharding:
  """Sharding for a host batch [B, ...]: dim 0 on 'batch' ('data' x 'fsdp'), the rest replicated."""
  return logical_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh, rules)


def batch_shards(rows: int, mesh: Mesh, rules: LogicalRules | None = None) -> int:
  """Into how many row blocks batch_sharding splits a batch of `rows` rows (1: replicated)."""
  spec = logical_to_spec(("batch",), (rows,), mesh, rules)[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return math.prod(_axis_sizes(mesh)[a] for a in axes)


def host_to_global(
  host_batch: Mapping[str, Any],
  mesh: Mesh,
  rules: LogicalRules | None = None,
  *,
  global_rows: int,
) -> dict[str, jax.Array]:
  """Host rows -> global arrays [global_rows, ...] sharded on 'batch'.

  Each host passes what rockjax.data.host_share told it to read: either its own
  global_rows / process_count rows (hosts read disjoint rows), or all global_rows rows, the
  same on every host (then each device keeps the rows it holds).
  """
  out = {}
  for k, v in host_batch.items():
    global_shape = (global_rows,) + tuple(v.shape[1:])
    out[k] = jax.make_array_from_process_local_data(
      batch_sharding(global_shape, mesh, rules), v, global_shape
    )
  return out
