"""Weight-cache CLI: `python -m rockjax.convert --config=FILE [--config.group.field=...]`.

Builds (or refreshes) the weights cache (`cache.weights`, rockjax.models.weights_cache) of
every model of the config whose source is 'hf' (model, teacher), on the config's mesh, so a
run -- every host of a pod -- restores them from there instead of reading the safetensors.
Prints one line per model; an entry already up to date is left as it is. User errors are one
line `rockjax: error: ...` (exit 2), as in rockjax.main.
"""

from absl import app, flags
from ml_collections import config_flags

from rockjax import cli

cli.setup_process()  # XLA_FLAGS and log filters, before any JAX backend starts or transformers logs

import jax  # noqa: E402

from rockjax import errors  # noqa: E402
from rockjax import sharding as shd  # noqa: E402
from rockjax.models import loading, weights_cache  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "config file (get_config())", lock_config=True
)
_JOIN_HOSTS = cli.distributed_flags()  # --distributed and the coordinator flags
flags.mark_flags_as_required(["config"])

GROUPS = ("model", "teacher")  # the config's model groups, in the order they are converted


def _hf_groups(c) -> list[str]:
  """The model groups to convert, after the one-line errors for a config with nothing to do."""
  if not c.cache.weights:
    raise errors.ConfigError(
      "cache.weights is empty: set --config.cache.weights=DIR (local or gs://) to convert into"
    )
  groups = [g for g in GROUPS if c[g].source == "hf"]
  if not groups:
    sources = ", ".join(f"{g}.source={c[g].source!r}" for g in GROUPS)
    raise errors.ConfigError(f"no model with source 'hf' to convert ({sources})")
  return groups


def _mesh(c) -> jax.sharding.Mesh:
  """The config's mesh, as build_experiment makes it; a bad shape is a one-line ConfigError."""
  ici, dcn = shd.config_mesh_shapes(c.mesh)
  try:
    return shd.make_mesh(ici, dcn=dcn)
  except ValueError as e:
    raise errors.ConfigError(f"mesh: {e}") from e


def _main() -> None:
  c = _CONFIG.value
  groups = _hf_groups(c)  # before any device or file is touched
  _JOIN_HOSTS()
  mesh = _mesh(c)
  for group in groups:
    m = c[group]
    cfg = loading.model_config(m, field=group)  # one-line errors naming group.path
    entry, seconds = weights_cache.ensure(m, cfg, mesh, c.cache.weights)
    done = "up to date" if seconds is None else f"built in {seconds:.1f} s"
    if jax.process_index() == 0:
      print(f"{group}: {m.path} -> {entry} ({done})", flush=True)


main = cli.entry_main(_main)

if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
