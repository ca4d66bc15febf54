"""rockjax-side test helpers: fast random Decoders and a jitted forward."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rockjax.models as rm


def random_model(cfg: rm.ModelConfig, seed: int = 0) -> rm.Decoder:
  """A Decoder with numpy-random weights (std 0.2, norms ~1) so mistakes show in the logits.

  Built abstractly and filled from numpy: eager jax.random init compiles a kernel per shape.
  """
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: rm.Decoder(cfg, rngs=nnx.Rngs(0))))
  def fill(x):
    base = 1.0 if len(x.shape) == 1 else 0.0
    return jnp.asarray(base + 0.2 * rng.standard_normal(x.shape), x.dtype)
  return nnx.merge(graphdef, jax.tree.map(fill, state))


# Jitted full forward (eager NNX calls dispatch op by op: seconds per call on a busy CPU).
forward = nnx.jit(lambda model, ids, mask: model(ids, mask))
