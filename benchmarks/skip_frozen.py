"""Rock-Freeze skipping (opd.kept_capacity) vs the masked step: matmul FLOPs and CPU step time.

Prints one JSON object. One train step (teacher forward, student forward and backward, fused
loss, AdamW update) of tiny Qwen3-style models on one device, half of every response frozen
(a static 100-id list at lam 0), compiled three ways: skip off (every position runs the heads),
skip on with frozen_kl='forward' and with frozen_kl='skip'.

  python benchmarks/skip_frozen.py                 # V=32768, 8 rows of 256, 192 response
  python benchmarks/skip_frozen.py --repeats 1 --vocab 65536

FLOPs are per step, from the compiled HLO (rockjax.dry_run.hlo_cost). The skipping step holds a
`lax.cond` whose fallback branch is the full loss; hlo_cost counts a conditional's most
expensive branch, so the skipping branch alone is counted from a second compile in which the
cond is replaced by that branch (`skip_branch_flops`). Times are the median of --repeats
alternating runs (off, forward, skip, off, ...) after compilation: shared CPUs are noisy,
read the ratios.
"""

import argparse
import contextlib
import json
import statistics
import time
from unittest import mock

from rockjax import xla_flags

xla_flags.apply()  # before JAX starts, as rockjax.main does

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rockjax import losses, objective, rocks
from rockjax import models as rm
from rockjax import sharding as shd
from rockjax import state as state_lib
from rockjax import step as step_lib
from rockjax.dry_run import hlo_cost
from rockjax.losses import skip_frozen

VARIANTS = {"off": {}, "forward": {"frozen_kl": "forward"}, "skip": {"frozen_kl": "skip"}}


def random_model(cfg: rm.ModelConfig, seed: int) -> rm.Decoder:
  """A decoder with numpy-random weights (no per-shape init kernels)."""
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: rm.Decoder(cfg, rngs=nnx.Rngs(0))))
  fill = lambda x: jnp.asarray(  # noqa: E731
    (1.0 if len(x.shape) == 1 else 0.0) + 0.05 * rng.standard_normal(x.shape), x.dtype
  )
  return nnx.merge(graphdef, jax.tree.map(fill, state))


def batch_and_rocks(args) -> tuple[dict, np.ndarray]:
  """Prompt then response; every other response target is one of 100 rock ids (half frozen)."""
  rng = np.random.default_rng(0)
  rock_ids = np.arange(100, 200)
  tokens = rng.integers(200, args.vocab, (args.rows, args.length)).astype(np.int32)
  prompt = args.length - args.response
  frozen = np.arange(prompt, args.length, 2)
  tokens[:, frozen] = rng.choice(rock_ids, (args.rows, len(frozen)))
  resp = np.zeros_like(tokens)
  resp[:, prompt:] = 1
  return {"tokens": tokens, "attention_mask": np.ones_like(tokens), "response_mask": resp}, rock_ids


def build(args, variant: dict, rock_ids):
  """(jitted step, state, teacher params) for one variant on one device."""
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  student = rm.ModelConfig(
    family="qwen3",
    vocab_size=args.vocab,
    hidden_size=args.dim,
    intermediate_size=3 * args.dim,
    num_layers=args.layers,
    num_heads=4,
    num_kv_heads=2,
    head_dim=args.dim // 4,
    qk_norm=True,
  )
  teacher = student.replace(hidden_size=args.dim * 3 // 2, intermediate_size=4 * args.dim)
  graphdef, params = nnx.split(random_model(student, 0))
  t_graphdef, t_params = nnx.split(random_model(teacher, 1))
  tx = optax.adamw(1e-4)
  init = state_lib.initializer(
    graphdef, tx, vocab_size=args.vocab, seed=0, rock_mask_V=rocks.ids_to_mask(rock_ids, args.vocab)
  )
  _, shardings = state_lib.abstract_state(init, params, mesh)
  state = state_lib.init_state(init, params, shardings, mesh)
  t_shardings = shd.tree_shardings(t_params, mesh)
  skip = dict(kept_capacity=args.kept_capacity, response_len=args.response) if variant else {}
  loss = objective.LossSettings(
    rock_mode="static",
    lam=0.0,
    spec=losses.DivergenceSpec(block_size=args.block_size),
    **skip,
    **variant,
  )
  settings = step_lib.StepSettings(loss=loss, teacher_graphdef=t_graphdef, schedule=lambda n: 0.0)
  fn = step_lib.jit_train_step(settings, shardings, t_shardings, shd.batch_sharding((8, 1), mesh))
  return fn, state, t_params, mesh


def flops(fn, state, t_params, batch, mesh) -> float:
  with jax.set_mesh(mesh):
    return hlo_cost.matmul_flops(fn.lower(state, t_params, batch).compile().as_text()).flops


@contextlib.contextmanager
def skip_branch_only():
  """Traces skip_frozen's `lax.cond(overflow, full, skipped, ...)` as `skipped(...)` alone."""
  with mock.patch.object(skip_frozen.jax.lax, "cond", lambda pred, t, f, *ops: f(*ops)):
    yield


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab", type=int, default=32768)
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--rows", type=int, default=8)
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--response", type=int, default=192)
  p.add_argument("--kept_capacity", type=float, default=0.5)
  p.add_argument("--block_size", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  batch, rock_ids = batch_and_rocks(args)
  out = {"args": vars(args), "flops": {}, "seconds": {}}
  runs = {}
  for name, variant in VARIANTS.items():
    fn, state, t_params, mesh = build(args, variant, rock_ids)
    out["flops"][name] = flops(fn, state, t_params, batch, mesh)
    if variant:
      with skip_branch_only():
        branch = build(args, variant, rock_ids)
        out["flops"][name + "_skip_branch"] = flops(*branch[:3], batch, mesh)
    with jax.set_mesh(mesh):
      state, metrics = fn(state, t_params, batch)  # compile and warm up
      assert float(metrics.get("opd/skip_overflow", (0,))[0]) == 0, "batch overflowed"
    runs[name] = (fn, state, t_params, mesh)
  times = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name, (fn, state, t_params, mesh) in runs.items():
      with jax.set_mesh(mesh):
        start = time.perf_counter()
        new_state, _ = fn(state, t_params, batch)
        jax.block_until_ready(new_state)
        times[name].append(time.perf_counter() - start)
      runs[name] = (fn, new_state, t_params, mesh)
  out["seconds"] = {k: statistics.median(v) for k, v in times.items()}
  f = out["flops"]
  out["flop_ratio_off_over"] = {k: f["off"] / f[k + "_skip_branch"] for k in ("forward", "skip")}
  out["time_ratio_off_over"] = {
    k: out["seconds"]["off"] / out["seconds"][k] for k in ("forward", "skip")
  }
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
