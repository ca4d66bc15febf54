"""The whole OPD train step: rockjax (jitted) vs the same step in PyTorch, FLOP rate, Rock-Freeze.

Prints one JSON object. Everything runs in this process on the same shapes, measured side by
side: --rounds rounds, each timing every variant once (A B C ... A B C ...), best of the rounds
per variant, so load on a shared machine hits all variants alike; compare the ratios.

  python benchmarks/step.py                          # the issue's tiny Qwen3 pair, 3 rounds
  python benchmarks/step.py --rounds 1 --steps 2     # a quick look
  python benchmarks/step.py --no-torch               # the JAX figures only

The step is `rockjax.step.train_step` as the trainer jits it (teacher forward, student forward
and backward, fused reverse-KL loss, RockStats update, AdamW) on one fixed, pre-made rollout
batch: sampling is NOT included. The PyTorch reference (`transformers` Qwen3 models from the
same configs, random init, full-vocabulary reverse KL in float32, `torch.optim.AdamW`, CPU) is
timed at 1 and 2 threads and the better counts. torch is optional: `pip install torch
--index-url https://download.pytorch.org/whl/cpu transformers` (or `pip install -e ".[parity]"`).

Figures (tokens/s counts response tokens, B x response length, over the best step time):
- `rockjax_tokens_per_s`, `torch_tokens_per_s`, `rockjax_over_torch`;
- `flops_per_step`: analytic matmul FLOPs, rockjax.flops.forward_flops_per_token per token
  (2 x multiplied parameters incl. the LM head + causal attention 2 x 2 x H x E x L / 2 per
  layer), times 3 for the student (forward + backward) and 1 for the teacher, over B x L tokens;
  `achieved_flops_per_s` = that / step time; `matmul_flops_per_s` = 2 n^3 / time of a jitted
  float32 n x n matmul (n = --matmul-n); `achieved_over_matmul` their ratio;
- `freeze_speedup`: Original (rock.mode 'off') step time / Rock-Freeze (rock.mode 'static',
  lam 0, a list of ids planted on about half the response positions) step time; when the
  installed rockjax has `opd.kept_capacity` (frozen-position skipping), both are also run with
  it (`*_kept` variants; `opd.response_len` = --response as on-policy, so the capacity is a
  fraction of the B x --response response slots): Original at 1 (the prompt skipped),
  Rock-Freeze at the kept share of those slots plus 0.05; `freeze_kept_nokl` also sets
  `opd.frozen_kl='skip'` when that field exists;
- `rock_update_share`: a jitted `rocks.update` on the step's shapes / the Original step time.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

# Measure this checkout's rockjax, not whichever copy the environment has installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Before JAX starts: rockjax's XLA:CPU flags (rockjax/xla_flags.py, as rockjax.main sets them) apply to every JAX
# variant alike, the plain-JAX references included, as they do in a rockjax run.
from rockjax import xla_flags  # noqa: E402  pylint: disable=g-import-not-at-top

xla_flags.apply()

import numpy as np

# Student ~11.5M and teacher ~18.9M parameters (tied embeddings), vocabulary 32,768.
STUDENT = dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2)
TEACHER = dict(hidden_size=384, intermediate_size=1024, num_layers=4, num_heads=6, num_kv_heads=2)
HEAD_DIM = 64


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=256, help="prompt + response tokens per row")
  p.add_argument("--response", type=int, default=192)
  p.add_argument("--vocab", type=int, default=32768)
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of)")
  p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
  p.add_argument("--frozen", type=float, default=0.5, help="share of response positions frozen")
  p.add_argument("--matmul-n", type=int, default=2048)
  p.add_argument("--attention", default="auto", help="model.attention of both rockjax models")
  p.add_argument("--remat", default="none", help="model.remat of the rockjax student")
  p.add_argument("--block-size", type=int, default=512, help="opd.block_size")
  p.add_argument("--chunk-size", type=int, default=8192, help="opd.chunk_size")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  p.add_argument("--torch-threads", type=int, nargs="+", default=[1, 2])
  return p.parse_args()


def _batch(args):
  """Left prompt + response rows; `--frozen` of the response positions carry one of 100 ids.

  Returns (batch of numpy arrays, the 100 planted ids). Ids are drawn from [100, V) elsewhere,
  so the planted ids (1..100) appear only where planted.
  """
  rng = np.random.default_rng(0)
  b, n, r = args.batch, args.length, args.response
  tokens = rng.integers(100, args.vocab, (b, n)).astype(np.int32)
  planted = np.arange(1, 101, dtype=np.int32)
  frozen = rng.random((b, n)) < args.frozen
  frozen[:, : n - r] = False
  tokens = np.where(frozen, rng.choice(planted, (b, n)), tokens).astype(np.int32)
  response = np.zeros((b, n), np.int32)
  response[:, n - r :] = 1
  batch = {"tokens": tokens, "attention_mask": np.ones((b, n), np.int32), "response_mask": response}
  return batch, planted


def _per_call(fn, steps):
  """(wall, process CPU) seconds per call of `fn` over `steps` calls (fn blocks until done).

  CPU seconds (all threads of this process) are the steadier figure on a loaded machine: time
  spent waiting for a core is not counted (spinning worker threads still are).
  """
  w0, c0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps


# ------------------------------------------------------------------ rockjax
def _configs(args):
  import rockjax.models as rm  # pylint: disable=g-import-not-at-top

  common = dict(vocab_size=args.vocab, head_dim=HEAD_DIM, tie_word_embeddings=True)
  common.update(attention=args.attention, scan_layers=True)
  student = rm.ModelConfig.for_family("qwen3", **common, **STUDENT, remat=args.remat)
  teacher = rm.ModelConfig.for_family("qwen3", **common, **TEACHER)
  return student, teacher


def _random(cfg, seed):
  """(graphdef, params) of a Decoder with N(0, 0.02) weights and unit norms, filled from numpy
  (eager jax.random init would compile a kernel per shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import rockjax.models as rm  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: rm.Decoder(cfg, rngs=nnx.Rngs(0))))

  def fill(path, x):
    norm = "norm" in jax.tree_util.keystr(path)
    value = np.ones(x.shape) if norm else 0.02 * rng.standard_normal(x.shape)
    return jnp.asarray(value, x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(fill, state)


def _param_count(state) -> int:
  import jax  # pylint: disable=g-import-not-at-top

  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


class Rockjax:
  """The jitted rockjax train step on one device, one compiled step per variant."""

  def __init__(self, args, batch, planted):
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top

    from rockjax import objective, rocks  # pylint: disable=g-import-not-at-top
    from rockjax import sharding as shd  # pylint: disable=g-import-not-at-top

    self.args, self.planted = args, planted
    self.student_cfg, self.teacher_cfg = _configs(args)
    self.graphdef, self.params = _random(self.student_cfg, 0)
    self.t_graphdef, t_params = _random(self.teacher_cfg, 1)
    self.mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    self.t_shardings = shd.tree_shardings(t_params, self.mesh)
    self.t_params = jax.device_put(t_params, self.t_shardings)
    self.batch = {k: jax.device_put(v) for k, v in batch.items()}
    self.tx = optax.adamw(1e-4)
    fields = {f.name for f in dataclasses.fields(objective.LossSettings)}
    self.has_kept, self.has_frozen_kl = "kept_capacity" in fields, "frozen_kl" in fields
    self.rock_mask = rocks.ids_to_mask(planted, args.vocab)
    self.fns, self.states = {}, {}

  def add(self, name, rock_mode, **loss_kw):
    """Compiles the step of one variant and makes its state; returns the first call's seconds."""
    import jax  # pylint: disable=g-import-not-at-top

    from rockjax import losses, objective  # noqa: I001  pylint: disable=g-import-not-at-top
    from rockjax import sharding as shd
    from rockjax import state as state_lib
    from rockjax import step as step_lib  # pylint: disable=g-import-not-at-top

    args = self.args
    mask = self.rock_mask if rock_mode == "static" else None
    init = state_lib.initializer(self.graphdef, self.tx, vocab_size=args.vocab, rock_mask_V=mask)
    _, shardings = state_lib.abstract_state(init, self.params, self.mesh)
    # A fresh copy per variant: init_state donates its params and the step donates the state.
    params = jax.tree.map(lambda x: x.copy(), self.params)
    state = state_lib.init_state(init, params, shardings, self.mesh)
    loss = objective.LossSettings(
      rock_mode=rock_mode,
      lam=0.0,
      response_len=args.response,  # as the trainer sets it on-policy (opd.max_new_tokens)
      spec=losses.DivergenceSpec(block_size=args.block_size, chunk_size=args.chunk_size),
      **loss_kw,
    )
    settings = step_lib.StepSettings(
      loss=loss, teacher_graphdef=self.t_graphdef, schedule=lambda n: 1e-4
    )
    batch_sharding = shd.batch_sharding(self.batch["tokens"].shape, self.mesh)
    fn = step_lib.jit_train_step(settings, shardings, self.t_shardings, batch_sharding)
    self.fns[name], self.states[name] = fn, state
    return self.time(name, 1)

  def time(self, name, steps):
    """Seconds per step of variant `name` over `steps` consecutive steps."""
    import jax  # pylint: disable=g-import-not-at-top

    def one():
      with jax.set_mesh(self.mesh):
        self.states[name], metrics = self.fns[name](self.states[name], self.t_params, self.batch)
      jax.block_until_ready((self.states[name], metrics))

    return _per_call(one, steps)

  def flops_per_step(self):
    """Analytic matmul FLOPs of one step (module docstring)."""
    from rockjax.dry_run import flops  # pylint: disable=g-import-not-at-top

    tokens, length = self.args.batch * self.args.length, self.args.length
    student = flops.forward_flops_per_token(self.student_cfg, length)
    teacher = flops.forward_flops_per_token(self.teacher_cfg, length)
    return tokens * (3 * student + teacher)

  def rock_update(self):
    """A jitted `rocks.update` on the step's [B, L] ids and KL: () -> seconds of one call."""
    import jax  # pylint: disable=g-import-not-at-top

    from rockjax import rocks  # pylint: disable=g-import-not-at-top

    stats = rocks.RockStats.init(self.args.vocab)
    kl_BxL = jax.numpy.ones(self.batch["tokens"].shape, jax.numpy.float32)
    update = jax.jit(rocks.update)
    args = (stats, self.batch["tokens"], kl_BxL, self.batch["response_mask"])
    jax.block_until_ready(update(*args))
    return lambda: _per_call(lambda: jax.block_until_ready(update(*args)), 20)


def matmul_timer(n):
  """() -> (wall, CPU) seconds of one jitted float32 n x n matmul on the default device."""
  import jax  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  a, b = (jax.device_put(rng.standard_normal((n, n), np.float32)) for _ in range(2))
  mm = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(mm(a, b))
  return lambda: _per_call(lambda: jax.block_until_ready(mm(a, b)), 5)


# ------------------------------------------------------------------ PyTorch
class Torch:
  """The same OPD step with transformers Qwen3 models and torch.optim.AdamW (CPU, float32)."""

  def __init__(self, args, batch):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    self.torch = torch
    torch.manual_seed(0)

    def model(arch):
      config = transformers.AutoConfig.for_model(
        "qwen3",
        vocab_size=args.vocab,
        head_dim=HEAD_DIM,
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_kv_heads"],
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        max_position_embeddings=args.length,
        tie_word_embeddings=True,
      )
      return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    self.student, self.teacher = model(STUDENT), model(TEACHER).eval()
    self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-4)
    self.ids = torch.from_numpy(batch["tokens"]).long()
    self.attn = torch.from_numpy(batch["attention_mask"]).long()
    # Output t predicts token t + 1: the loss covers outputs whose next token is a response token.
    mask = np.zeros_like(batch["response_mask"], np.float32)
    mask[:, :-1] = batch["response_mask"][:, 1:]
    self.mask = torch.from_numpy(mask)
    self.params = (
      sum(p.numel() for p in self.student.parameters()),
      sum(p.numel() for p in self.teacher.parameters()),
    )

  def step(self):
    torch = self.torch
    with torch.no_grad():
      logp_t = torch.log_softmax(self.teacher(self.ids, attention_mask=self.attn).logits, -1)
    logp_s = torch.log_softmax(self.student(self.ids, attention_mask=self.attn).logits, -1)
    kl = (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    loss = (kl * self.mask).sum() / self.mask.sum()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()

  def time(self, threads, steps):
    self.torch.set_num_threads(threads)
    return _per_call(self.step, steps)


def _torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import transformers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    return True
  except ImportError:
    return False


# ------------------------------------------------------------------ the run
def main():
  args = _parse()
  batch, planted = _batch(args)
  loss_mask = np.zeros_like(batch["response_mask"])
  loss_mask[:, :-1] = batch["response_mask"][:, 1:]
  frozen_share = float(np.isin(batch["tokens"][:, 1:], planted)[loss_mask[:, :-1] > 0].mean())
  # Shares of the response slots (B x --response), what opd.kept_capacity is a fraction of.
  response_slots = args.batch * args.response
  kept_share = float((loss_mask > 0).sum() * (1 - frozen_share) / response_slots)
  response_tokens = args.batch * args.response

  rj = Rockjax(args, batch, planted)
  variants = {"original": dict(rock_mode="off"), "freeze": dict(rock_mode="static")}
  if rj.has_kept:  # frozen-position skipping: capacity = the kept share plus a margin
    variants["original_kept"] = dict(rock_mode="off", kept_capacity=1.0)  # prompt skipped
    variants["freeze_kept"] = dict(rock_mode="static", kept_capacity=min(1.0, kept_share + 0.05))
    if rj.has_frozen_kl:  # frozen positions' KL for the statistics skipped too (no head work)
      variants["freeze_kept_nokl"] = dict(variants["freeze_kept"], frozen_kl="skip")
  first_call = {name: rj.add(name, **kw) for name, kw in variants.items()}
  timers = {name: (lambda n=name: rj.time(n, args.steps)) for name in variants}
  timers["rock_update"] = rj.rock_update()
  timers["matmul"] = matmul_timer(args.matmul_n)
  tch = None
  if not args.no_torch and _torch_available():
    tch = Torch(args, batch)
    for threads in args.torch_threads:
      tch.time(threads, 1)  # warm-up
      timers[f"torch_{threads}t"] = lambda t=threads: tch.time(t, args.steps)
  times = {name: [] for name in timers}
  for r in range(args.rounds):
    for name, timer in timers.items():
      times[name].append(timer())
    print(f"[step benchmark] round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
  out = {
    "benchmark": "OPD train step (sampling excluded: a fixed pre-made rollout batch)",
    "shape": dict(batch=args.batch, length=args.length, response=args.response, vocab=args.vocab),
    "student_params": _param_count(rj.params),
    "teacher_params": _param_count(rj.t_params),
    "attention": args.attention,
    "rounds": args.rounds,
    "steps_per_round": args.steps,
    "cpus": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "load_average": os.getloadavg(),
    "frozen_share_of_response": frozen_share,
    "kept_capacity_available": rj.has_kept,
    "first_call_seconds": {k: v[0] for k, v in first_call.items()},
    "flops_per_step": rj.flops_per_step(),
    "seconds_all_rounds": {k: [round(w, 5) for w, _ in v] for k, v in times.items()},
  }
  # The figures twice: from wall seconds and from process CPU seconds (index 0 / 1).
  for clock, i in (("wall", 0), ("cpu", 1)):
    best = {name: min(t[i] for t in ts) for name, ts in times.items()}
    out[clock] = _figures(best, out["flops_per_step"], response_tokens, args, tch)
  if tch is not None:
    out["torch_params"] = tch.params
    out["torch_version"] = tch.torch.__version__
  elif not args.no_torch:
    out["torch"] = "not installed: pip install torch transformers (CPU wheels suffice)"
  print(json.dumps(out, indent=1))


def _figures(best, flops, response_tokens, args, tch):
  """The headline ratios from the best seconds per variant (one clock)."""
  matmul = 2 * args.matmul_n**3 / best["matmul"]
  fig = {
    "seconds": best,
    "rockjax_tokens_per_s": response_tokens / best["original"],
    "achieved_flops_per_s": flops / best["original"],
    "matmul_flops_per_s": matmul,
    "achieved_over_matmul": flops / best["original"] / matmul,
    "freeze_speedup": best["original"] / best["freeze"],
    "rock_update_share": best["rock_update"] / best["original"],
  }
  if "freeze_kept" in best:
    fig["freeze_kept_speedup"] = best["original"] / best["freeze_kept"]
    fig["original_kept_speedup"] = best["original"] / best["original_kept"]
  if "freeze_kept_nokl" in best:
    fig["freeze_kept_nokl_speedup"] = best["original"] / best["freeze_kept_nokl"]
  if tch is not None:
    torch_best = min(best[f"torch_{t}t"] for t in args.torch_threads)
    fig["torch_tokens_per_s"] = response_tokens / torch_best
    fig["rockjax_over_torch"] = torch_best / best["original"]
  return fig


if __name__ == "__main__":
  main()
