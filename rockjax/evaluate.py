"""Benchmark evaluation CLI: the paper's protocol as one command.

  python -m rockjax.evaluate --config=CONFIG --workdir=DIR \\
      --benchmarks=aime24=PATH,aime25=PATH,hmmt25_feb=PATH[,math500=PATH,ifeval=PATH]
  python -m rockjax.evaluate --compare=DIR,DIR,... --out=DIR

The student (WORKDIR's final checkpoint, or --student: a Hugging Face directory or a checkpoint
directory) samples bench.num_samples responses per problem (paper: 5 at temperature 0.6, up to
16,384 new tokens) through rockjax's sharded sampler on the run's mesh; math answers are graded
with math-verify and IFEval with its instruction checkers. --out (default WORKDIR/eval) gets
eval.json, eval.md (pass@1 per benchmark with a 95% interval over problems, the paper's average
of AIME24, AIME25 and HMMT25-Feb) and responses.jsonl. --compare puts several runs' eval
directories side by side with paired tests per benchmark (each against the first). Benchmark
files are read as their datasets publish them (docs/evaluation.md); nothing is downloaded.
User errors are one line `rockjax: error: ...` (exit 2), as in rockjax.main.
"""

from absl import app, flags

from rockjax import cli

cli.setup_process()  # XLA_FLAGS and log filters, before any JAX backend starts or transformers logs

import time  # noqa: E402

import jax  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rockjax import errors, models  # noqa: E402
from rockjax import sharding as shd  # noqa: E402
from rockjax.analysis.context import load_student  # noqa: E402
from rockjax.config import check as config_check  # noqa: E402
from rockjax.data.paths import task_files  # noqa: E402
from rockjax.evals import formats, ifeval, report  # noqa: E402
from rockjax.evals import run as eval_run  # noqa: E402
from rockjax.runner import stages  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "the run's config file (get_config())", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "", "the trained run's directory")
_STUDENT = flags.DEFINE_string(
  "student", "", "a HF directory or checkpoint directory ('' = WORKDIR's final checkpoint)"
)
_BENCHMARKS = flags.DEFINE_string(
  "benchmarks",
  "",
  "NAME=PATH,... (aime24, aime25, hmmt25_feb, math500, ifeval); '' = bench.benchmarks",
)
_OUT = flags.DEFINE_string("out", "", "output directory ('' = WORKDIR/eval)")
_COMPARE = flags.DEFINE_list(
  "compare", [], "eval directories to put side by side (first = reference)"
)
EVAL_DIR = "eval"


def _label(run_dir: str) -> str:
  """A run's column title: its directory's name, the run's when it is WORKDIR/eval."""
  path = epath.Path(run_dir)
  path = path.parent if path.name == report.EVAL_JSON else path
  return path.parent.name if path.name == EVAL_DIR else path.name


def _compare() -> None:
  if not _OUT.value:
    raise errors.ConfigError("--compare needs --out=DIR: where compare.md and compare.json go")
  labels = [_label(d) for d in _COMPARE.value]
  result = report.compare(_COMPARE.value)
  paths = report.write_compare(_OUT.value, result, labels)
  print(f"comparison: {paths[report.COMPARE_MD]}")


def _benchmarks(c) -> tuple[dict[str, list[formats.Problem]], dict[str, str]]:
  """The problems of every named benchmark file (all read before any model loads)."""
  spec = _BENCHMARKS.value or c.bench.benchmarks
  if not spec:
    raise errors.ConfigError(
      "no benchmarks: pass --benchmarks=aime24=PATH,... or set bench.benchmarks (docs/evaluation.md)"
    )
  paths = formats.parse_benchmarks(spec)
  problems = {n: formats.load_benchmark(n, p) for n, p in paths.items()}
  if "ifeval" in problems:
    ifeval.ensure_available()  # the eval extra's error now, not after the math sets decode
  return problems, paths


def _config_and_out(workdir: str):
  """The evaluated run's config (the main stage's, when a workdir is given) and --out."""
  c = _CONFIG.value
  config_check.validate(c)
  if workdir:
    root = epath.Path(workdir)
    if not root.is_dir():
      raise errors.WorkdirError(f"--workdir={workdir}: no such directory (the trained run's)")
    c = stages.with_recorded_reuse(c, workdir)
    c = stages.main_stage_config(c, workdir, task_files(c, workdir))
  elif not _STUDENT.value:
    raise errors.WorkdirError(
      "pass --workdir (the trained run) or --student (HF or checkpoint dir)"
    )
  out = _OUT.value or (str(epath.Path(workdir) / EVAL_DIR) if workdir else "")
  if not out:
    raise errors.ConfigError("--out is required without --workdir")
  return c, out


def _tokenizer(c):
  """The run's tokenizer; with none configured, the --student HF directory's."""
  path = c.data.tokenizer_path or _STUDENT.value
  return models.load_tokenizer(
    path, field="data.tokenizer_path" if c.data.tokenizer_path else "--student"
  )


def _evaluate() -> None:
  t0, workdir = time.perf_counter(), _WORKDIR.value
  c, out = _config_and_out(workdir)
  problems, paths = _benchmarks(c)
  s = eval_run.EvalSettings.from_config(c)
  mesh = shd.decode_mesh(c.mesh)
  tokenizer = _tokenizer(c)
  prompts, width = eval_run.encode_prompts(tokenizer, problems, s)
  student, source = load_student(c, workdir, _STUDENT.value, mesh)
  eos = models.eos_ids(tokenizer)
  results = {
    name: eval_run.run_benchmark(
      student, tokenizer, name, ps, prompts[name], s, index=k, eos_ids=eos, mesh=mesh
    )
    for k, (name, ps) in enumerate(problems.items())
  }
  settings = dict(vars(s), student=source, prompt_width=width, eos_ids=list(eos))
  settings["key"] = "fold_in(fold_in(key(seed), benchmark index), batch index)"
  summary = report.summarise(
    results,
    ids={n: [p.id for p in ps] for n, ps in problems.items()},
    paths=paths,
    settings=settings,
    macro=tuple(x for x in c.bench.macro.split(",") if x),
  )
  if jax.process_index() == 0:
    responses = [r for res in results.values() for r in res["responses"]]
    written = report.write(out, summary, responses)
    for name, b in summary["benchmarks"].items():
      print(f"{name}: pass@1 {100 * b['pass_at_1']:.1f}% over {b['num_problems']} problems")
    if summary["macro"] is not None:
      print(f"average ({', '.join(summary['macro']['benchmarks'])}): "
            f"{100 * summary['macro']['pass_at_1']:.1f}%")  # fmt: skip
    print(f"evaluation: {written[report.EVAL_MD]} ({time.perf_counter() - t0:.0f} s)")


def _main() -> None:
  if _COMPARE.value:
    _compare()
    return
  if _CONFIG.value is None:
    raise errors.ConfigError("--config is required (the evaluated run's config), or --compare")
  _evaluate()


main = cli.entry_main(_main)

if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
