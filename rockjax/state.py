"""TrainState pytree, the optax optimiser, and sharded initialisation by abstract evaluation."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from rockjax import rocks
from rockjax import sharding as shd


@struct.dataclass
class TrainState:
  """Everything that changes during training and is checkpointed (the teacher is not here)."""

  step: jax.Array  # int32 []: optimiser updates so far (train_step calls x opd.updates_per_rollout)
  params: nnx.State  # the student's variables
  opt_state: Any
  rock: rocks.RockStats  # persistent per-id statistics
  rock_mask: jax.Array  # bool [V]: the current rock selection the masking function uses
  rng: jax.Array  # uint32 [2]; rollouts use fold_in(rng, step) so resuming replays them
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


def make_optimizer(
  opt: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
  """AdamW with linear warm-up then cosine decay and global-norm clipping (the paper's recipe).

  Returns (tx, schedule) where `schedule(n)` is the learning rate of update n + 1 (n = the
  optimiser's update count, = TrainState.step): the warm-up curve is read at n + 1, so the
  first update already moves (lr / warmup), update `warmup` is the first at the peak and update
  `total_steps` ends at `end_lr`. Micro-batches (opt.micro_batches) live inside the train step,
  so each update is one tick of this schedule; a train_step call makes opd.updates_per_rollout
  updates, so a run's `total_steps` is settings.total_updates (config.steps x that).
  """
  warmup = max(1, int(round(opt.warmup_frac * total_steps)))
  curve = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=opt.lr,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=opt.end_lr,
  )

  def schedule(count):
    return curve(count + 1)

  tx = optax.chain(
    optax.clip_by_global_norm(opt.clip) if opt.clip > 0 else optax.identity(),
    optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay),
  )
  return tx, schedule


def initializer(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  *,
  vocab_size: int,
  seed: int = 0,
  rock_mask_V: Any = None,
) -> Callable[[nnx.State], TrainState]:
  """params -> the initial TrainState around them (for jit or eval_shape)."""

  def init(params: nnx.State) -> TrainState:
    mask = jnp.zeros((vocab_size,), bool) if rock_mask_V is None else jnp.asarray(rock_mask_V, bool)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rock=rocks.RockStats.init(vocab_size),
      rock_mask=mask,
      rng=jax.random.PRNGKey(seed),
      graphdef=graphdef,
      tx=tx,
    )

  return init


def abstract_state(
  init: Callable[[nnx.State], TrainState],
  abstract_params: nnx.State,
  mesh: Mesh,
  rules: shd.LogicalRules | None = None,
) -> tuple[TrainState, Any]:
  """(ShapeDtypeStructs carrying their target shardings, shardings) of the state; no memory."""
  abstract = jax.eval_shape(init, abstract_params)
  shardings = shd.tree_shardings(abstract, mesh, rules)
  like = jax.tree.map(
    lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings
  )
  return like, shardings


def init_state(
  init: Callable[[nnx.State], TrainState], params: nnx.State, shardings: Any, mesh: Mesh
) -> TrainState:
  """The initial state, built by one jit that writes every shard (moments too) in place.

  `params` are already placed (see rockjax.models.loading.load_params); they are donated, so the
  full state is never materialised twice or on one device.
  """
  with jax.set_mesh(mesh):
    return jax.jit(init, out_shardings=shardings, donate_argnums=0)(params)
