"""A knockout census on a finished demo run: the student at its last checkpoint, the held-out set.

Prints one JSON object (wall time, sampler compilations, classes, per-candidate Delta and p)
and writes the report section's figure. Candidates: the run's selected rock ids (rocks.json,
by Rock Score), then as a contrast the observed ids of lowest Rock Score, `--candidates` in all.

  python -m rockjax.main --config=configs/demo.py --workdir=/tmp/rockjax_demo   # first
  python benchmarks/knockout_census.py --workdir=/tmp/rockjax_demo
  python benchmarks/knockout_census.py --workdir=/tmp/rockjax_demo --compare_static

--compare_static also times the unbatched way (one `generate(banned_ids=(v,))` per condition,
each a program of its own) on the same candidates and checks it grades every problem alike.
The census's baseline is the stage's own greedy evaluation, so `baseline_accuracy` should equal
the run's final `eval/pass@1` (stage.json).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rockjax import xla_flags  # noqa: E402

xla_flags.apply()  # before JAX starts, as rockjax.main does

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from rockjax import evaluation, sampling  # noqa: E402
from rockjax.analysis import knockout, knockout_report  # noqa: E402
from rockjax.data.paths import task_files  # noqa: E402
from rockjax.runner import experiment, stages  # noqa: E402


def _candidates(workdir: str, count: int) -> list[int]:
  """The selected rock ids, then the observed ids of lowest Rock Score (a contrast), `count` in all."""
  with open(os.path.join(workdir, "rocks.json")) as f:
    table = json.load(f)
  rocks = [r["id"] for r in table["rows"]][:count]
  others = [r["id"] for r in table["ids"][::-1] if r["id"] not in rocks]
  return rocks + others[: count - len(rocks)]


def _static_correct(exp, student, ids, mask, bans) -> np.ndarray:
  """Per-problem correctness with `bans` as the static tuple (a program per distinct tuple)."""
  c = exp.config.eval
  out = sampling.generate(
    student,
    ids,
    mask,
    key=jax.random.key(0),
    max_new_tokens=c.max_new_tokens,
    greedy=True,
    eos_ids=exp.eos_ids,
    banned_ids=bans,
  )
  tokens, resp = np.asarray(out.tokens), np.asarray(out.response_mask) > 0
  texts = [exp.tokenizer.decode(t[r], skip_special_tokens=True) for t, r in zip(tokens, resp)]
  return np.array([evaluation.verify(t, a) for t, a in zip(texts, exp.eval_answers)])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/rockjax_demo")
  parser.add_argument("--config", default="configs/demo.py", help="the run's config file")
  parser.add_argument("--candidates", type=int, default=20)
  parser.add_argument("--batch_rows", type=int, default=256)
  parser.add_argument("--out", default=None, help="figure directory (default WORKDIR/analysis)")
  parser.add_argument("--compare_static", action="store_true")
  args = parser.parse_args()

  import importlib.util

  spec = importlib.util.spec_from_file_location("run_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  main_config = stages.main_stage_config(config, args.workdir, task_files(config, args.workdir))
  exp = experiment.build_experiment(main_config, args.workdir)
  student = nnx.merge(exp.state.graphdef, exp.state.params)
  ids, mask = exp.eval_prompts["ids"], exp.eval_prompts["mask"]
  candidates = _candidates(args.workdir, args.candidates)

  result = knockout.census(
    student,
    ids,
    mask,
    exp.eval_answers,
    candidates,
    grade=evaluation.verify,
    tokenizer=exp.tokenizer,
    max_new_tokens=exp.config.eval.max_new_tokens,
    eos_ids=exp.eos_ids,
    batch_rows=args.batch_rows,
  )
  out_dir = args.out or os.path.join(args.workdir, "analysis")
  os.makedirs(out_dir, exist_ok=True)
  section = knockout_report.section(result, out_dir)
  with open(os.path.join(args.workdir, "stage.json")) as f:
    run_pass1 = json.load(f)["metrics"].get("eval/pass@1")
  report = {
    "workdir": args.workdir,
    "checkpoint_step": exp.start_step,
    "num_problems": result["num_problems"],
    "num_candidates": len(candidates),
    "rows_decoded": result["num_rows"] + result["num_padding_rows"],
    "batch_rows": args.batch_rows,
    "num_batches": result["num_batches"],
    "num_compilations": result["num_compilations"],
    "decode_seconds": round(result["decode_seconds"], 2),
    "wall_seconds": round(result["wall_seconds"], 2),
    "baseline_accuracy": result["baseline_accuracy"],
    "run_eval_pass@1": run_pass1,
    "classes": result["classes"],
    "sign_test": result["sign_test"],
    "significant_bonferroni": result["significant_bonferroni"],
    "significant_bh": result["significant_bh"],
    "candidates": [
      {k: e[k] for k in ("id", "token", "baseline_emitted", "delta", "p_value", "class")}
      for e in result["candidates"]
    ],
    "figure": os.path.join(out_dir, section.figures[0].filename),
  }
  if args.compare_static:
    start, before = time.perf_counter(), sampling.decode_jit._cache_size()
    correct_XxB = np.array(result["correct_XxB"])
    same = all(
      np.array_equal(_static_correct(exp, student, ids, mask, bans), correct_XxB[x])
      for x, bans in enumerate([(), *((v,) for v in candidates)])
    )
    report["static"] = {
      "wall_seconds": round(time.perf_counter() - start, 2),
      "num_compilations": sampling.decode_jit._cache_size() - before,
      "same_correctness": same,
    }
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
