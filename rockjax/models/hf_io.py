"""Hugging Face checkpoint I/O: sharded, slice-by-slice safetensors loading and export.

Loading never builds a full host copy of the model: the module is created abstractly
(nnx.eval_shape), and every parameter is assembled with jax.make_array_from_callback straight
into its target sharding, each device's callback reading only its box of the HF tensor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open

from rockjax import sharding as shd
from rockjax import storage
from rockjax.models.config import ModelConfig
from rockjax.models.decoder import Decoder
from rockjax.models.hf_names import Box, Mapping, Source, moe_layout, param_sources, read_box, to_hf
from rockjax.models.tokenizer import export_token_ids

_log = logging.getLogger(__name__)
_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
# Bytes per safetensors file of an export (larger models get several files and the index).
# 5 GiB: the size the hub's checkpoints use; transformers and vLLM read any number of files.
MAX_SHARD_BYTES = 5 * 2**30
# Present in some checkpoints, recomputed by us.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@contextlib.contextmanager
def _host_device() -> Iterator[None]:
  """Makes safetensors' jax slices land in host memory, not on an accelerator."""
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError:  # no CPU backend in this process: keep the default device
    yield
    return
  with jax.default_device(cpu):
    yield


class CheckpointReader:
  """Lazily opened safetensors files of one checkpoint directory (single file or index)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if storage.is_remote(self.path):  # safetensors memory-maps local files only
      raise ValueError(
        f"{self.path}: safetensors reads local files only; copy the directory first "
        "(rockjax.storage.local_copy, as from_pretrained does)"
      )
    index_path = os.path.join(self.path, _INDEX)
    if os.path.exists(index_path):
      with open(index_path) as f:
        self.weight_map: dict[str, str] = json.load(f)["weight_map"]
    elif os.path.exists(os.path.join(self.path, _SINGLE)):
      with safe_open(os.path.join(self.path, _SINGLE), "numpy") as f:
        self.weight_map = {k: _SINGLE for k in f.keys()}
    else:
      raise FileNotFoundError(f"{self.path}: neither {_SINGLE} nor {_INDEX} found")
    self._stack = contextlib.ExitStack()
    self._files: dict[str, Any] = {}

  def __enter__(self) -> "CheckpointReader":
    return self

  def __exit__(self, *exc: Any) -> None:
    self._stack.close()

  def has(self, key: str) -> bool:
    """Whether the checkpoint holds tensor `key`."""
    return key in self.weight_map

  def _slice(self, key: str, needed_for: str) -> Any:
    """The safetensors slice handle of `key` (opening its file on first use)."""
    if key not in self.weight_map:
      raise ValueError(f"{self.path}: missing tensor {key!r} (needed for parameter {needed_for})")
    fname = self.weight_map[key]
    if fname not in self._files:
      # 'flax' (not 'numpy'): numpy cannot represent bfloat16, the usual checkpoint dtype.
      self._files[fname] = self._stack.enter_context(
        safe_open(os.path.join(self.path, fname), "flax")
      )
    return self._files[fname].get_slice(key)

  def check(self, mapping: Mapping, needed_for: str) -> None:
    """Raises a one-line error if an HF tensor of `mapping` is missing or mis-shaped."""
    for _, source in mapping.leaves:
      key = source.key
      shape = tuple(self._slice(key, needed_for).get_shape())
      if shape != source.hf_shape:
        raise ValueError(
          f"{os.path.join(self.path, self.weight_map[key])}: tensor {key!r} has "
          f"shape {shape}, expected {source.hf_shape} (for {needed_for})"
        )

  def read(self, key: str, slices: tuple[slice, ...]) -> np.ndarray:
    """The HF sub-tensor `key[slices]` as a host numpy array."""
    with _host_device():
      return np.asarray(self._slice(key, key)[slices])


def _path_name(path: tuple[Any, ...]) -> str:
  """'layers.0.self_attn.q_proj.kernel' from an nnx state path."""
  return ".".join(str(p) for p in path)


def _normalise(index: tuple[slice, ...] | None, shape: tuple[int, ...]) -> Box:
  """A device's index (slices, possibly open) as explicit [start, stop) per dim."""
  if index is None:
    index = (slice(None),) * len(shape)
  return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def from_pretrained(
  path: str | os.PathLike,
  *,
  dtype: Any = jnp.float32,
  mesh: Mesh | None = None,
  param_dtype: Any = None,
  rules: shd.LogicalRules | None = None,
  **run_settings: Any,
) -> Decoder:
  """Loads a HF checkpoint directory (a family in rockjax.models.families) as a Decoder.

  dtype is the compute dtype; param_dtype (default: dtype) the stored parameter dtype. With a
  mesh, every parameter is placed by its logical axes and `rules` (default
  rockjax.sharding.DEFAULT_RULES); without one, on the default device. `run_settings` are
  ModelConfig's fields that come from the run, not the checkpoint (remat, scan_layers,
  attention, attention_block, mlp_chunk, moe_impl, moe_experts_axis; from models.loading.numerics);
  with scan_layers the per-layer HF tensors are stacked on load. A gs:// or s3:// directory is
  first copied whole to a local temporary directory (deleted after loading): the local disk
  needs room for the weights.
  """
  param_dtype = dtype if param_dtype is None else param_dtype
  cfg = ModelConfig.from_pretrained(path, dtype=dtype, param_dtype=param_dtype, **run_settings)
  return load_pretrained(path, cfg, mesh=mesh, rules=rules)


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, ShapeDtypeStruct state) of a Decoder of `cfg`: shapes only, nothing allocated."""
  return nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))


def param_sharding(
  var: nnx.Variable, mesh: Mesh | None, rules: shd.LogicalRules | None = None
) -> jax.sharding.Sharding:
  """Where a loaded parameter lives: by its logical axes on `mesh`, else the default device.

  The one placement rule of HF weights: from_pretrained builds each parameter in it and the
  weights cache (rockjax.models.weights_cache) restores into it, so both give the same arrays.
  """
  if mesh is None:
    return SingleDeviceSharding(jax.devices()[0])
  shape = tuple(var.get_value().shape)
  return shd.logical_sharding(shd.variable_logical_axes(var), shape, mesh, rules)


def load_pretrained(
  path: str | os.PathLike,
  cfg: ModelConfig,
  *,
  mesh: Mesh | None = None,
  rules: shd.LogicalRules | None = None,
) -> Decoder:
  """from_pretrained with the ModelConfig already made (ModelConfig.from_pretrained of `path`
  with the run's settings): the weights of `path`, each parameter placed by param_sharding."""
  graphdef, abstract_state = abstract_model(cfg)
  with storage.local_copy(path) as local, CheckpointReader(local) as reader:
    layouts = {
      i: moe_layout(cfg, reader.has, i) for i in range(cfg.num_layers) if cfg.is_moe_layer(i)
    }
    sources = param_sources(cfg, layouts)
    filled = []
    flat = list(nnx.to_flat_state(abstract_state))
    for path_tuple, var in tqdm.tqdm(flat, desc="load", disable=None, leave=False):
      name = _path_name(path_tuple)
      if name not in sources:
        raise ValueError(f"internal: no HF mapping for parameter {name}")
      filled.append(
        (path_tuple, var.replace(_load_param(reader, name, sources[name], var, mesh, rules)))
      )
    _warn_unused(reader, sources, cfg.preset.names.lm_head)
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _load_param(
  reader: CheckpointReader,
  name: str,
  source: Mapping,
  var: nnx.Variable,
  mesh: Mesh | None,
  rules: shd.LogicalRules | None,
) -> jax.Array:
  """One parameter, built shard by shard straight into its target sharding."""
  abstract = var.get_value()
  shape, dtype = tuple(abstract.shape), np.dtype(abstract.dtype)
  if source.shape != shape:
    raise ValueError(f"internal: {name} mapping shape {source.shape} != parameter {shape}")
  reader.check(source, name)
  sharding = param_sharding(var, mesh, rules)
  memo: dict[Box, np.ndarray] = {}  # replicated shards are read once, not once per device

  def callback(index: tuple[slice, ...] | None) -> np.ndarray:
    box = _normalise(index, shape)
    if box not in memo:
      memo[box] = read_box(source, box, reader.read).astype(dtype)
    return memo[box]

  return jax.make_array_from_callback(shape, sharding, callback)


def _warn_unused(reader: CheckpointReader, sources: dict[str, Mapping], lm_head: str) -> None:
  """Logs checkpoint tensors no parameter used (a tied lm_head copy is expected)."""
  used = {leaf.key for s in sources.values() for _, leaf in s.leaves}
  unused = [
    k
    for k in reader.weight_map
    if k not in used and not k.endswith(_IGNORED_SUFFIXES) and k != lm_head
  ]
  if unused:
    _log.warning("%s: %d checkpoint tensors unused, e.g. %s", reader.path, len(unused), unused[:3])


def save_pretrained(
  model: Decoder,
  path: str | os.PathLike,
  *,
  tokenizer: Any = None,
  generation: dict[str, Any] | None = None,
  max_shard_size: int = MAX_SHARD_BYTES,
  dtype: Any = None,
) -> None:
  """Writes config.json + safetensors (HF names, hub per-expert layout) for transformers.

  Tensors are written in the parameter dtype (or `dtype`); above max_shard_size bytes the
  weights are split into model-0000i-of-0000N.safetensors files plus their index
  (model.safetensors.index.json). With `tokenizer` the directory is what transformers, vLLM
  and lm-eval read: config.json carries its bos/eos/pad ids, its files and chat template are
  written, and generation_config.json holds the ids a sample ends at (eos plus the chat
  template's end-of-turn tokens: tokenizer.export_token_ids), the pad and bos ids, and
  `generation`'s settings (transformers.GenerationConfig keywords: do_sample, temperature...).
  A gs:// or s3:// `path` is written to a local temporary directory first, then uploaded.
  """
  ids = None if tokenizer is None else export_token_ids(tokenizer)
  with storage.staged_dir(path) as local:
    _save_local(model, local, max_shard_size, dtype, ids and ids["config"])
    if tokenizer is not None:
      tokenizer.save_pretrained(local)
      _save_generation_config(local, {**ids["generation"], **(generation or {})})


def _save_generation_config(path: str, settings: dict[str, Any]) -> None:
  """generation_config.json: `settings` as a transformers.GenerationConfig (validated)."""
  import transformers  # local import: only export needs it

  transformers.GenerationConfig(**settings).save_pretrained(path)


def _save_local(
  model: Decoder,
  path: str,
  max_shard_size: int,
  dtype: Any,
  special_ids: dict[str, Any] | None = None,
) -> None:
  """save_pretrained into an existing local directory; `special_ids` (bos/eos/pad: the
  tokenizer's) replace config.json's where they are set."""
  import transformers  # local import: only export needs it
  from safetensors.numpy import save_file

  cfg: ModelConfig = model.cfg
  out_dtype = np.dtype(cfg.param_dtype if dtype is None else dtype)
  params = {_path_name(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  sources = param_sources(cfg)  # export always uses the hub's per-expert layout
  missing = sorted(set(sources) ^ set(params))
  if missing:
    raise ValueError(f"model parameters and HF mapping differ: {missing[:5]}")

  # Plan files by size first (names must carry the final count), then write file by file so
  # only one file's tensors are on the host at a time. Planned per HF tensor: a layer-stacked
  # parameter is split across files like the per-layer tensors of an unrolled model.
  leaves = [(name, idx, leaf) for name, m in sources.items() for idx, leaf in m.leaves]
  groups: list[list[tuple[str, tuple[int, ...], Source]]] = [[]]
  size = 0
  for name, idx, leaf in leaves:
    nbytes = math.prod(leaf.hf_shape) * out_dtype.itemsize
    if groups[-1] and size + nbytes > max_shard_size:
      groups.append([])
      size = 0
    groups[-1].append((name, idx, leaf))
    size += nbytes
  weight_map: dict[str, str] = {}
  total = 0
  for i, group in enumerate(groups):
    fname = _SINGLE if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    tensors: dict[str, np.ndarray] = {}
    host: dict[str, np.ndarray] = {}  # each parameter fetched once per file
    for name, idx, leaf in group:
      if name not in host:
        host[name] = np.asarray(jax.device_get(params[name].get_value())).astype(out_dtype)
      tensors.update(to_hf(leaf, host[name][idx]))
    for key, t in tensors.items():
      weight_map[key] = fname
      total += t.nbytes
    save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
  if len(groups) > 1:
    with open(os.path.join(path, _INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

  hf_dict = cfg.to_hf_dict()
  hf_dict["dtype"] = out_dtype.name
  hf_dict.update({k: v for k, v in (special_ids or {}).items() if v is not None})
  model_type = hf_dict.pop("model_type")
  transformers.AutoConfig.for_model(model_type, **hf_dict).save_pretrained(path)
