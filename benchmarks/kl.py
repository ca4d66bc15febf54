"""Reverse-KL forward+backward: naive full logits vs the memory-lean paths, and PyTorch.

Prints one JSON object. Every variant runs in its own subprocess (so its peak RSS is its own),
one after another in this run, on the same shapes and seeds; compare the ratios, not the
absolute seconds (shared CPUs are noisy).

  python benchmarks/kl.py                       # V=151936, D=2560, tokens 1024 and 4096
  python benchmarks/kl.py --tokens 256 --vocab 32768 --repeats 3   # a quick look
  python benchmarks/kl.py --dtypes float32 --no-aot                # CPU float32 only

Variants: `jax_naive` (autodiff of full logits), `jax_fused` (rockjax.losses.fused: the gradient
formed in the forward pass, token block by token block; what the train step uses),
`jax_chunked` (rockjax.losses.chunked: per-token output, custom VJP that recomputes the logits) and
`torch_naive` (log_softmax of both models, autograd).

Per variant: `seconds` and `cpu_seconds` (wall and process-CPU, median of --repeats timed runs of value-and-grad w.r.t. the student
hidden states and head, after compilation and one untimed call), `cpu_peak_rss_gb` (the first
call's resident high-water mark minus the resident size just before it, inputs and compiled
program in place: its temporaries plus its outputs, the gradients, which every variant
must produce), and for JAX `cpu_xla_temp_gb` / `cpu_xla_output_gb` (the compiled program's temporary
and output buffers, from XLA's memory analysis). `cpu_xla_temp_gb` is the path's own working
memory; RSS also holds what the runtime allocates outside XLA's buffers (on XLA:CPU a program
that only writes 1.6 GB of outputs already peaks at 3-4 GB), so read its ratios loosely.

Both are XLA:CPU figures (`cpu_*` keys): CPU-only. XLA:CPU upcasts bfloat16 matmuls to float32,
so its bfloat16 memory ratios look several times worse than on an accelerator. Every size runs
in each of --dtypes (hidden states and heads in that dtype, logits float32 in every variant;
torch runs float32 only). When libtpu is installed, `tpu_aot` holds the accelerator's figures:
each JAX variant compiled ahead of time (no TPU needed) for one chip of --aot-topology at
--aot-tokens tokens in bfloat16, with XLA:TPU's `temp_gib` / `output_gib` per variant.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# Measure this checkout's rockjax, not whichever copy the environment has installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Before JAX starts: rockjax's XLA:CPU flags (rockjax/xla_flags.py, as rockjax.main sets them) apply to every JAX
# variant alike, the plain-JAX references included, as they do in a rockjax run.
from rockjax import xla_flags  # noqa: E402  pylint: disable=g-import-not-at-top

xla_flags.apply()

VARIANTS = ("jax_naive", "jax_fused", "jax_chunked", "torch_naive")
LEAN = ("jax_fused", "jax_chunked")  # compared against jax_naive
LEAN_AND_NAIVE = ("jax_naive",) + LEAN


def _rss_gb() -> float:
  """Current resident set size of this process."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _reset_peak_rss() -> None:
  """Reset the kernel's resident high-water mark (Linux), so the next peak is this run's own."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def _peak_rss_gb() -> float:
  """Resident high-water mark (VmHWM) since the last reset."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024 / 1e9
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _timed(fn, repeats):
  """Wall and process-CPU seconds of `repeats` calls of fn (CPU seconds: steadier under load)."""
  wall, cpu = [], []
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
  return wall, cpu


def _inputs(tokens, dim, vocab):
  """The same float32 inputs for every variant: student/teacher hidden [N, D] and heads [D, V]."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  h_s = rng.standard_normal((tokens, dim), np.float32)
  h_t = rng.standard_normal((tokens, dim), np.float32)
  w_s = rng.standard_normal((dim, vocab), np.float32) * np.float32(dim**-0.5)
  w_t = rng.standard_normal((dim, vocab), np.float32) * np.float32(dim**-0.5)
  return h_s, w_s, h_t, w_t


def _loss_fn(variant, args, tokens):
  """The scalar loss of one JAX variant: (h_s [N, D], W_s, h_t, W_t) -> mean reverse KL."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from rockjax import losses  # pylint: disable=g-import-not-at-top

  weights = jnp.full((1, tokens), 1.0 / tokens, jnp.float32)  # the mean
  if variant == "jax_naive":
    # float32 logits, as the fused path forms them (bf16 inputs, f32 accumulation).
    logits = lambda h, w: jnp.dot(h, w, preferred_element_type=jnp.float32)

    def loss(h, w, h_t, w_t):
      teacher_logits = jax.lax.stop_gradient(logits(h_t, w_t))
      return jnp.mean(losses.reverse_kl(logits(h, w)[None], teacher_logits[None]))
  elif variant == "jax_fused":

    def loss(h, w, h_t, w_t):
      return losses.fused_divergence(
        h[None], w, h_t[None], w_t, weights, block_size=args.block_size, chunk_size=args.chunk_size
      ).weighted_sum
  else:

    def loss(h, w, h_t, w_t):
      return jnp.mean(
        losses.chunked_divergence(h[None], w, h_t[None], w_t, chunk_size=args.chunk_size)
      )

  return loss


def _run_jax(variant, args, inputs):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  h_s, w_s, h_t, w_t = (jnp.asarray(x, args.dtypes[0]) for x in inputs)
  inputs.clear()  # drop the numpy copies: only the device arrays stay resident
  loss = _loss_fn(variant, args, h_s.shape[0])
  t0 = time.perf_counter()
  # Every array is an argument (a closed-over array would be baked into the program).
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(h_s, w_s, h_t, w_t).compile()
  compile_s = time.perf_counter() - t0
  # XLA's own figure first: it needs no run, so it is reported even if running would OOM.
  print(
    json.dumps({"cpu_xla_temp_gb": step.memory_analysis().temp_size_in_bytes / 1e9}), flush=True
  )
  # Memory of the first call, in a process that has freed nothing yet (a freed buffer the
  # allocator keeps resident would hide a later call's use): its temporaries + its outputs.
  _reset_peak_rss()
  base = _rss_gb()
  value = float(step(h_s, w_s, h_t, w_t)[0])
  peak = _peak_rss_gb() - base
  times, cpu = _timed(lambda: jax.block_until_ready(step(h_s, w_s, h_t, w_t)), args.repeats)
  mem = step.memory_analysis()
  return {
    "seconds": statistics.median(times),
    "cpu_seconds": statistics.median(cpu),
    "compile_seconds": compile_s,
    "cpu_xla_temp_gb": mem.temp_size_in_bytes / 1e9,
    "cpu_xla_output_gb": mem.output_size_in_bytes / 1e9,
    "cpu_peak_rss_gb": peak,
    "loss": value,
  }


def _run_torch(args, inputs):
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  h_s, w_s, h_t, w_t = (torch.from_numpy(x) for x in inputs)

  def step():
    h, w = h_s.clone().requires_grad_(), w_s.clone().requires_grad_()
    # The straightforward formulation users write today: full log_softmax of both models.
    with torch.no_grad():
      logp_t = torch.log_softmax(h_t @ w_t, dim=-1)
    logp_s = torch.log_softmax(h @ w, dim=-1)
    kl = (logp_s.exp() * (logp_s - logp_t)).sum(-1).mean()
    kl.backward()
    return float(kl)

  _reset_peak_rss()  # the first call's memory (see _run_jax), then the timed calls
  base = _rss_gb()
  step()
  peak = _peak_rss_gb() - base
  times, cpu = _timed(step, args.repeats)
  return {
    "seconds": statistics.median(times),
    "cpu_seconds": statistics.median(cpu),
    "cpu_peak_rss_gb": peak,
    "loss": step(),
    "torch": torch.__version__,
  }


def _aot_child(args):
  """Each JAX variant compiled for one chip of --aot-topology (bf16): XLA:TPU memory, in GiB."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from rockjax.dry_run import report as dry_run  # pylint: disable=g-import-not-at-top

  device = dry_run.topology_devices(args.aot_topology)[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  n, d, v = args.aot_tokens, args.dim, args.vocab
  like = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)
  shapes = (like(n, d), like(d, v), like(n, d), like(d, v))
  out = {"device": str(device.device_kind), "tokens": n, "dtype": "bfloat16"}
  for variant in LEAN_AND_NAIVE:
    t0 = time.perf_counter()
    step = jax.jit(jax.value_and_grad(_loss_fn(variant, args, n), argnums=(0, 1)))
    mem = step.lower(*shapes).compile().memory_analysis()
    out[variant] = {
      "temp_gib": mem.temp_size_in_bytes / 2**30,
      "output_gib": mem.output_size_in_bytes / 2**30,
      "compile_seconds": time.perf_counter() - t0,
    }
  print(json.dumps(out))


def _child(args):
  """Run one variant at one size and print its JSON line."""
  if args.variant == "aot":
    return _aot_child(args)
  inputs = list(_inputs(args.tokens[0], args.dim, args.vocab))
  if args.variant == "torch_naive":
    result = _run_torch(args, inputs)
  else:
    result = _run_jax(args.variant, args, inputs)
  print(json.dumps(result))


def _available(module: str) -> bool:
  try:
    __import__(module)
    return True
  except ImportError:
    return False


def _subprocess(args, variant, tokens, dtype):
  """Runs one child (`variant` at `tokens` in `dtype`) and merges the JSON lines it printed."""
  cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(tokens)]
  cmd += ["--dtypes", dtype, "--dim", str(args.dim), "--vocab", str(args.vocab)]
  cmd += ["--chunk-size", str(args.chunk_size), "--block-size", str(args.block_size)]
  cmd += ["--repeats", str(args.repeats), "--aot-topology", args.aot_topology]
  cmd += ["--aot-tokens", str(args.aot_tokens)]
  print(f"[kl benchmark] tokens={tokens} {dtype} {variant} ...", file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  row = {k: v for line in lines for k, v in line.items()}
  if proc.returncode != 0:  # e.g. killed for memory: keep what it reported before dying
    row["error"] = (proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"])[0]
  return row


def _ratios(row):
  """The lean variants' time and memory against naive (and torch) in one size's row."""
  naive, torch_row = row.get("jax_naive", {}), row.get("torch_naive", {})
  for name in LEAN:
    lean, tag = row.get(name, {}), name.removeprefix("jax_")
    if "cpu_xla_temp_gb" in naive and "cpu_xla_temp_gb" in lean:
      row[f"naive_over_{tag}_cpu_xla_temp"] = naive["cpu_xla_temp_gb"] / lean["cpu_xla_temp_gb"]
    if "seconds" in naive and "seconds" in lean:
      row[f"{tag}_over_naive_time"] = lean["seconds"] / naive["seconds"]
      row[f"{tag}_over_naive_cpu_time"] = lean["cpu_seconds"] / naive["cpu_seconds"]
      row[f"naive_over_{tag}_cpu_peak_rss"] = naive["cpu_peak_rss_gb"] / max(
        lean["cpu_peak_rss_gb"], 1e-9
      )
      row[f"{tag}_loss_abs_diff"] = abs(naive["loss"] - lean["loss"])
    if "seconds" in torch_row and "seconds" in lean:
      row[f"{tag}_over_torch_time"] = lean["seconds"] / torch_row["seconds"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
  parser.add_argument("--dim", type=int, default=2560)
  parser.add_argument("--vocab", type=int, default=151936)
  parser.add_argument("--chunk-size", type=int, default=8192)
  parser.add_argument("--block-size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
  parser.add_argument("--aot-topology", default="v5p:2x2x1", help="libtpu topology (1 chip used)")
  parser.add_argument("--aot-tokens", type=int, default=36096, help="tokens of the AOT compile")
  parser.add_argument("--no-aot", action="store_true", help="skip the TPU AOT memory figures")
  parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one child
  args = parser.parse_args()
  if args.variant:
    return _child(args)

  report = {
    "benchmark": "reverse_kl forward+backward",
    "dim": args.dim,
    "vocab": args.vocab,
    "chunk_size": args.chunk_size,
    "block_size": args.block_size,
    "repeats": args.repeats,
    "cpus": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "load_average": os.getloadavg(),
    "cpu_memory_note": "cpu_* memory is XLA:CPU's (CPU-only; bf16 matmuls upcast to f32)",
    "results": {},
  }
  variants = [v for v in args.variants if v != "torch_naive" or _available("torch")]
  for dtype in args.dtypes:
    for tokens in args.tokens:
      row = {}
      for variant in variants:
        if variant == "torch_naive" and dtype != "float32":
          continue  # the PyTorch reference is float32 (its CPU bf16 matmuls are not the point)
        row[variant] = _subprocess(args, variant, tokens, dtype)
      _ratios(row)
      report["results"][f"{dtype}/{tokens}"] = row
  if not args.no_aot and _available("libtpu"):
    aot = _subprocess(args, "aot", args.aot_tokens, "bfloat16")
    if "jax_naive" in aot:
      for name in LEAN:
        aot[f"naive_over_{name.removeprefix('jax_')}_temp"] = (
          aot["jax_naive"]["temp_gib"] / aot[name]["temp_gib"]
        )
    report["tpu_aot"] = {"topology": args.aot_topology, **aot}
  elif not args.no_aot:
    report["tpu_aot"] = 'libtpu not installed: pip install -e ".[aot]"'
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
