"""Sampling throughput: rockjax `generate` (JAX, jitted KV-cache loop) vs transformers `generate`.

Prints one JSON object. Both run in this process, one after the other, on the same tiny random
Qwen3 checkpoint (written by transformers into a temp dir and loaded by rockjax from it), the
same prompts (left-padded), pure sampling at temperature 1 (no top-k/top-p) and exactly
--new-tokens tokens per row (rockjax: no EOS ids; transformers: min_new_tokens = max_new_tokens).

  python benchmarks/sampling.py                                  # hidden 256, 4 layers, V 4096
  python benchmarks/sampling.py --batch 4 --new-tokens 32 --repeats 2   # a quick look

With libtpu installed (the `aot` extra) it also adds `paper_rollout_estimate`: the sampler of
configs/qwen3_30b_a3b_to_4b.py compiled for v5p:2x2x2 (no TPU needed) and XLA:TPU's estimate
of one decode step and of the whole rollout (rockjax.dry_run.rollout_cost; --paper-estimate=off skips
it, about a minute of compiling).

`tokens_per_s` counts generated tokens (batch * new_tokens) over the median of --repeats
timed calls. For JAX the first call (trace + XLA compile + one run) is untimed and reported as
`compile_seconds` (first call minus the median call). Shared CPUs are noisy: compare ratios.
"""

import argparse
import json
import os
import statistics
import tempfile
import time


def _make_checkpoint(args, path):
  """A random float32 Qwen3 CausalLM saved by transformers (weights ~N(0, 0.1), norms ~1)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  config = transformers.AutoConfig.for_model(
    "qwen3",
    vocab_size=args.vocab,
    hidden_size=args.hidden,
    intermediate_size=args.mlp,
    num_hidden_layers=args.layers,
    num_attention_heads=args.heads,
    num_key_value_heads=args.kv_heads,
    head_dim=args.hidden // args.heads,
    max_position_embeddings=4 * (args.prompt_len + args.new_tokens),
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
  )
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  return model


def _prompts(args):
  """Random ids [B, P] with row b left-padded by b % (P // 2) tokens (one real token at least)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  ids = rng.integers(3, args.vocab, (args.batch, args.prompt_len)).astype(np.int32)
  mask = np.ones_like(ids)
  for b in range(args.batch):
    mask[b, : b % max(args.prompt_len // 2, 1)] = 0
  return np.where(mask > 0, ids, 0).astype(np.int32), mask


def _time(fn, repeats):
  """Median seconds of `repeats` calls of fn (which must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _run_rockjax(args, path, ids, mask):
  import jax  # pylint: disable=g-import-not-at-top

  import rockjax.models as rm  # pylint: disable=g-import-not-at-top
  from rockjax import sampling  # pylint: disable=g-import-not-at-top

  model = rm.from_pretrained(path)
  keys = iter(jax.random.split(jax.random.key(0), args.repeats + 1))

  def call():
    out = sampling.generate(
      model, ids, mask, key=next(keys), max_new_tokens=args.new_tokens, temperature=1.0
    )
    return jax.block_until_ready(out)

  t0 = time.perf_counter()
  first = call()
  first_s = time.perf_counter() - t0
  seconds = _time(call, args.repeats)
  assert int(first.lengths.min()) == args.new_tokens  # no EOS: every row is full length
  return {
    "seconds": seconds,
    "compile_seconds": max(first_s - seconds, 0.0),
    "tokens_per_s": args.batch * args.new_tokens / seconds,
    "model": model,
  }


def _run_transformers(args, model, ids, mask, threads):
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  ids_t, mask_t = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long)
  torch.manual_seed(0)

  def call():
    with torch.no_grad():
      return model.generate(
        input_ids=ids_t,
        attention_mask=mask_t,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=0,
      )

  first = call()  # warm-up (allocator, kernels)
  assert first.shape == (args.batch, args.prompt_len + args.new_tokens), first.shape
  seconds = _time(call, args.repeats)
  return {
    "seconds": seconds,
    "tokens_per_s": args.batch * args.new_tokens / seconds,
    "torch_threads": threads,
    "attn_implementation": model.config._attn_implementation,
  }  # pylint: disable=protected-access


def _greedy_agreement(args, hf_model, jax_model, ids, mask, steps=16):
  """Share of the first `steps` greedy tokens on which both implementations agree (a sanity
  check that both sides run the same model; float differences may flip rare near-ties)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from rockjax import sampling  # pylint: disable=g-import-not-at-top

  steps = min(steps, args.new_tokens)
  ours = sampling.generate(
    jax_model, ids, mask, key=jax.random.key(0), max_new_tokens=steps, greedy=True
  )
  with torch.no_grad():
    theirs = hf_model.generate(
      input_ids=torch.as_tensor(ids, dtype=torch.long),
      attention_mask=torch.as_tensor(mask, dtype=torch.long),
      do_sample=False,
      max_new_tokens=steps,
      min_new_tokens=steps,
      pad_token_id=0,
    )
  return float(np.mean(np.asarray(ours.tokens)[:, -steps:] == theirs[:, -steps:].numpy()))


def _paper_estimate():
  """The paper config's rollout compiled for v5p:2x2x2: XLA:TPU's estimates (no TPU needed)."""
  import sys  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import qwen3_30b_a3b_to_4b  # pylint: disable=g-import-not-at-top
  from rockjax import sharding as shd  # pylint: disable=g-import-not-at-top
  from rockjax.dry_run import report as dry_run  # pylint: disable=g-import-not-at-top
  from rockjax.dry_run import rollout_cost

  topology = "v5p:2x2x2"
  c = dry_run.for_topology(qwen3_30b_a3b_to_4b.get_config(), topology)
  devices = dry_run.topology_devices(topology)
  mesh = shd.make_mesh(dry_run.declared_mesh_shape(c), devices=list(devices))
  start = time.perf_counter()
  compiled, dmesh = rollout_cost.compile_rollout(c, mesh)
  fig = rollout_cost.rollout_figures(compiled, devices[0].device_kind, c, dmesh)
  fig["peak_gib"] = dry_run.peak_bytes(compiled.memory_analysis()) / 2**30
  keep = ("layout", "decode_mesh", "rows", "max_new_tokens", "peak_gib", "cache_moves")
  keep += ("est_ms_per_decode_step", "est_prefill_ms", "est_rollout_seconds")
  keep += ("loop_collective_bytes_per_step",)
  out = {k: fig.get(k) for k in keep}
  out["large_loop_collectives"] = len(fig["large_loop_collectives"])
  out["topology"], out["compile_seconds"] = topology, round(time.perf_counter() - start, 1)
  return out


def main():
  from rockjax import xla_flags  # pylint: disable=g-import-not-at-top

  xla_flags.apply()  # before JAX starts, as rockjax.main does
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--kv-heads", type=int, default=2)
  parser.add_argument("--mlp", type=int, default=768)
  parser.add_argument("--vocab", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
    "--threads",
    type=int,
    default=0,
    help="torch threads; 0: try 1 and all cores, report the faster (on a "
    "busy machine all-core torch can be >10x slower than one thread)",
  )
  parser.add_argument(
    "--paper-estimate",
    choices=("auto", "on", "off"),
    default="auto",
    help="add the paper config's v5p rollout estimate (auto: when libtpu is installed)",
  )
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  ids, mask = _prompts(args)
  with tempfile.TemporaryDirectory() as path:
    hf_model = _make_checkpoint(args, path)
    jax_result = _run_rockjax(args, path, ids, mask)
  threads = [args.threads] if args.threads else sorted({1, os.cpu_count() or 1})
  hf_runs = [_run_transformers(args, hf_model, ids, mask, t) for t in threads]
  hf_result = max(hf_runs, key=lambda r: r["tokens_per_s"])
  hf_result["tokens_per_s_by_threads"] = {r["torch_threads"]: r["tokens_per_s"] for r in hf_runs}
  agreement = _greedy_agreement(args, hf_model, jax_result.pop("model"), ids, mask)
  import importlib.util  # pylint: disable=g-import-not-at-top

  estimate = None
  if args.paper_estimate == "on" or (
    args.paper_estimate == "auto" and importlib.util.find_spec("libtpu") is not None
  ):
    estimate = _paper_estimate()
  print(
    json.dumps(
      {
        "shapes": {
          k: getattr(args, k)
          for k in (
            "hidden",
            "layers",
            "heads",
            "kv_heads",
            "mlp",
            "vocab",
            "batch",
            "prompt_len",
            "new_tokens",
          )
        },
        "rockjax": jax_result,
        "transformers": hf_result,
        "speedup_rockjax_over_transformers": jax_result["tokens_per_s"] / hf_result["tokens_per_s"],
        "greedy_token_agreement": agreement,
        "paper_rollout_estimate": estimate,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "versions": {
          "jax": jax.__version__,
          "torch": torch.__version__,
          "transformers": transformers.__version__,
        },
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  main()
