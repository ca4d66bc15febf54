"""Build the student and teacher a config asks for: random init or a Hugging Face directory."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from rockjax import sharding as shd
from rockjax.models import hf_dirs, hf_io, weights_cache
from rockjax.models.config import ModelConfig, RopeConfig
from rockjax.models.decoder import Decoder

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(name: str) -> Any:
  """jnp dtype from its config name, with a one-line error naming the bad value."""
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def model_config(m: ml_collections.ConfigDict, *, field: str = "model") -> ModelConfig:
  """ModelConfig for a model sub-config: the checkpoint's config.json, else `arch`."""
  if m.source == "hf":
    # config.json, safetensors and no remote code, each a one-line InputError naming the path.
    hf_dirs.check_model_dir(m.path, field=f"{field}.path")
    return ModelConfig.from_pretrained(m.path, **numerics(m))
  if m.source != "random":
    raise ValueError(f"{field}.source={m.source!r}; expected 'random' or 'hf'")
  return arch_config(m)


def numerics(m: ml_collections.ConfigDict) -> dict[str, Any]:
  """The ModelConfig fields that come from the run, not the checkpoint."""
  return dict(
    dtype=dtype(m.dtype),
    param_dtype=dtype(m.param_dtype),
    remat=m.remat,
    attention=m.attention,
    attention_block=m.attention_block,
    mlp_chunk=m.mlp_chunk,
    moe_impl=m.moe_impl,
    moe_experts_axis=m.moe_experts_axis,
    scan_layers=m.scan_layers,
  )


def arch_config(m: ml_collections.ConfigDict) -> ModelConfig:
  """ModelConfig from the `arch` fields alone (random init and dry runs)."""
  a = m.arch
  return ModelConfig.for_family(
    a.family,
    vocab_size=a.vocab_size,
    hidden_size=a.hidden_size,
    intermediate_size=a.intermediate_size,
    num_layers=a.num_layers,
    num_heads=a.num_heads,
    num_kv_heads=a.num_kv_heads,
    head_dim=a.head_dim,
    rms_norm_eps=a.rms_norm_eps,
    rope=RopeConfig(theta=a.rope_theta),
    tie_word_embeddings=a.tie_word_embeddings,
    num_experts=a.num_experts,
    num_experts_per_tok=a.num_experts_per_tok,
    moe_intermediate_size=a.moe_intermediate_size,
    norm_topk_prob=a.norm_topk_prob,
    **numerics(m),
  )


def model_factory(cfg: ModelConfig) -> Callable[[nnx.Rngs], Decoder]:
  """rngs -> a freshly initialised Decoder (traced under jit / eval_shape by the callers)."""
  return lambda rngs: Decoder(cfg, rngs=rngs)


def abstract_params(cfg: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, ShapeDtypeStruct params) of a model: shapes only, nothing allocated."""
  return nnx.split(nnx.eval_shape(lambda: model_factory(cfg)(nnx.Rngs(seed))))


def load_params(
  m: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh, seed: int, *, cache_dir: str = ""
) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) placed on the mesh: read from the HF directory, or random and sharded.

  With `cache_dir` (the config's cache.weights) an HF model comes from its orbax copy there
  (rockjax.models.weights_cache), made from the HF directory on the first load.
  """
  if m.source == "hf" and cache_dir:
    return weights_cache.load(m, cfg, mesh, cache_dir)
  if m.source == "hf":
    model = hf_io.from_pretrained(m.path, mesh=mesh, **numerics(m))
    return nnx.split(model)
  graphdef, abstract = abstract_params(cfg, seed)
  init = lambda: nnx.split(model_factory(cfg)(nnx.Rngs(seed)))[1]
  with jax.set_mesh(mesh):
    params = jax.jit(init, out_shardings=shd.tree_shardings(abstract, mesh))()
  return graphdef, params
