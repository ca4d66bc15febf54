"""What a restart costs, and what a checkpoint costs the loop: `python -m rockjax.main` runs timed.

Prints one JSON object. Every run is a `python -m rockjax.main --config=configs/tiny.py` child
process on a fake 8-device CPU mesh (XLA_FLAGS=--xla_force_host_platform_device_count=8,
JAX_PLATFORMS=cpu; mesh default: fsdp -1 = 8), each in a fresh workdir, log_every 1, eval,
analysis and the HF export off.

  python benchmarks/restart.py              # ~12-15 min on 2 cores: 265 MB teacher, 2 rounds
  python benchmarks/restart.py --quick      # ~5 min: 50 MB teacher, 1 round, 6-step runs
  python benchmarks/restart.py --skip save  # part 1 only (--skip start: part 2 only)

1. `start`: seconds from the child's start (Popen) to step 1 being done, i.e. to the first
   line of WORKDIR/metrics.jsonl appearing (polled every 20 ms; with steps=1 that line is
   written right after the step, before the final checkpoint). Teacher and student are random
   Qwen3 decoders written once as Hugging Face directories (rockjax.models.save_pretrained;
   vocabulary 128 = the synthetic task's tokenizer, which the run uses: the directories hold
   no tokenizer) and loaded with source 'hf'. Conditions:
   - `cold`: ROCKJAX_COMPILATION_CACHE=off, cache.weights='' (safetensors read, all compiled);
   - `compile_warm`: ROCKJAX_COMPILATION_CACHE=DIR filled by an earlier run, cache.weights='';
   - `weights_warm`: compilation cache off, cache.weights=DIR2 filled by an earlier run;
   - `warm`: both.
   Rounds alternate the four (cold, compile_warm, weights_warm, warm, cold, ...); medians and
   ratios to `cold`. Before the rounds, the runs that fill the caches: `build_weights`
   (compilation cache off, cache.weights=DIR2 empty: reads the safetensors and writes the
   orbax copy) and `build_compile` (DIR empty, cache.weights=''); with --quick one
   `build_both` run fills both. Their times over the median cold run are the cost of making a
   cache. Each run is also split at the loop's start: `before_loop_s` (imports, data, weights,
   pre-flight checks) and step 1's time/rollout_s and time/train_s (compilation included).
2. `save`: runs of --save_steps on-policy steps, a random student of --save_dim x
   --save_layers (params and AdamW moments are what a checkpoint writes), four ways:
   `end_only` (ckpt.every=0: one save after the last step), `async` (ckpt.every=1,
   ckpt.async_save=True), `sync` (ckpt.every=1, ckpt.async_save=False) and `async_every2`
   (ckpt.every=2, async: the in-run control, steps with the last step's save in flight vs
   steps without, in one process), alternating over --save_repeats rounds. Per-step figures
   from metrics.jsonl (one line per step): time/rollout_s + time/train_s (the step itself; with
   `async` the previous save's file writes run during it), perf/seconds_per_step (the loop's
   wall per step, the save's hold included) and time/checkpoint_s (how long a save held the
   loop; on line k for the save after step k-1). Lines 1 (compilation) and 2 (the first save's
   one-time set-up) are skipped, for perf/seconds_per_step also the last line (written straight
   after the one before it when the only save is at the end); each run's first save is
   reported apart (checkpoint_s_first). Medians over lines and rounds. `async_every2` writes
   its lines in pairs (a two-step interval, then ~0 s), so its wall per step is lines 5..N's
   sum over N-4 steps (from before its second save). `load1`: the machine's 1-minute load
   average as each run started.

The machine is shared and timings are noisy: compare the ratios of runs made side by side.
The safetensors are in the OS page cache after the first read (no cache is dropped here), so
`cold` reads them from memory as a restart on the same host would. JAX keeps in its persistent
compilation cache only programs that took >= 1 s to compile (its default); smaller programs are
compiled again on a warm start (compilation_cache_files counts what it holds).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measure this checkout's rockjax, not whichever copy the environment has installed.
sys.path.insert(0, REPO)
from rockjax import xla_flags  # noqa: E402  pylint: disable=g-import-not-at-top

xla_flags.apply()  # before JAX starts, as rockjax.main does (the children apply it themselves)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

DEVICES = 8
CONFIG = "configs/tiny.py"
# Both HF models: Qwen3 family, the synthetic task's vocabulary (the task tokenizer has < 128 ids).
COMMON = dict(vocab_size=128, tie_word_embeddings=True, num_heads=8, num_kv_heads=4, head_dim=64)
SIZES = {
  # name: (teacher, student) fields for part 1; the part 2 student is --save_dim wide
  "full": (
    dict(hidden_size=1024, intermediate_size=3072, num_layers=6),
    dict(hidden_size=256, intermediate_size=768, num_layers=2),
  ),
  "quick": (
    dict(hidden_size=512, intermediate_size=1536, num_layers=4),
    dict(hidden_size=256, intermediate_size=768, num_layers=2),
  ),
}
START_CONDITIONS = ("cold", "compile_warm", "weights_warm", "warm")


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="smaller models, 1 repeat, shorter runs")
  p.add_argument("--repeats", type=int, default=None, help="rounds of the 4 start conditions")
  p.add_argument("--save_steps", type=int, default=None, help="steps of each part-2 run")
  p.add_argument("--save_repeats", type=int, default=None, help="rounds of the 4 save modes")
  p.add_argument("--save_dim", type=int, default=None, help="part-2 student hidden size")
  p.add_argument("--save_layers", type=int, default=None, help="part-2 student layers")
  p.add_argument("--skip", default="", help="comma list of parts to skip: start,save")
  p.add_argument("--tmpdir", default=None, help="where the models, caches and workdirs go")
  p.add_argument("--keep", action="store_true", help="keep the temporary directory")
  p.add_argument("--timeout", type=float, default=600, help="seconds per child run")
  args = p.parse_args()
  quick = args.quick
  defaults = dict(
    repeats=1 if quick else 2,
    save_steps=6 if quick else 8,
    save_repeats=1 if quick else 2,
    save_dim=512,
    save_layers=4 if quick else 6,
  )
  for k, v in defaults.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  return args


# ------------------------------------------------------------------ models
def _write_hf(path: str, fields: dict, seed: int) -> dict:
  """A random Qwen3 Decoder (numpy-filled: no per-shape init kernels) as an HF directory."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  import rockjax.models as rm

  cfg = rm.ModelConfig.for_family("qwen3", **COMMON, **fields, scan_layers=False)
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: rm.Decoder(cfg, rngs=nnx.Rngs(0))))

  def fill(x):
    base = 1.0 if len(x.shape) == 1 else 0.0  # norms ~1
    scale = 1.0 / np.sqrt(x.shape[0]) if len(x.shape) > 1 else 0.02
    return jnp.asarray(base + scale * rng.standard_normal(x.shape, np.float32), x.dtype)

  model = nnx.merge(graphdef, jax.tree.map(fill, state))
  rm.save_pretrained(model, path)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if "safetensors" in f)
  return {"params": params, "safetensors_mb": round(size / 1e6, 1), **fields, **COMMON}


# ------------------------------------------------------------------ child runs
def _env(compilation_cache: str) -> dict:
  env = dict(os.environ)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would win over ROCKJAX_COMPILATION_CACHE
  env["JAX_PLATFORMS"] = "cpu"
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={DEVICES}"])
  env["ROCKJAX_COMPILATION_CACHE"] = compilation_cache or "off"
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _run(workdir: str, overrides: dict, compilation_cache: str, timeout: float) -> dict:
  """Runs rockjax.main in `workdir`; {first_step_s, total_s, metrics lines, load_s}."""
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  cmd = [sys.executable, "-m", "rockjax.main", f"--config={CONFIG}", f"--workdir={workdir}", *args]
  metrics = os.path.join(workdir, "metrics.jsonl")
  log_path = workdir.rstrip("/") + ".log"
  first, load1 = None, round(os.getloadavg()[0], 2)
  with open(log_path, "w", encoding="utf-8") as log:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
      cmd, cwd=REPO, env=_env(compilation_cache), stdout=log, stderr=subprocess.STDOUT
    )
    while proc.poll() is None:
      if first is None and os.path.exists(metrics):
        with open(metrics, encoding="utf-8") as f:
          if f.readline().endswith("\n"):
            first = time.perf_counter() - t0
      if time.perf_counter() - t0 > timeout:
        proc.kill()
        proc.wait()
        break
      time.sleep(0.02)
    total = time.perf_counter() - t0
  text = open(log_path, encoding="utf-8").read()
  if proc.returncode != 0:
    raise RuntimeError(
      f"run failed (exit {proc.returncode}): {' '.join(cmd)}\n--- {log_path} (tail)\n{text[-4000:]}"
    )
  lines = [json.loads(l) for l in open(metrics, encoding="utf-8") if l.strip()]
  if first is None:  # written and the process gone between two polls
    first = total
  row = lines[0]
  return {
    "first_step_s": round(first, 2),
    "total_s": round(total, 2),
    # the loop's clock starts after the run is built (data, weights, pre-flight checks)
    "before_loop_s": round(first - row["perf/seconds_per_step"], 2),
    "step1_rollout_s": round(row["time/rollout_s"], 2),
    "step1_train_s": round(row["time/train_s"], 2),
    "lines": lines,
    "load1": load1,  # the machine's 1-minute load average when the run started
  }


def _med(xs):
  xs = [x for x in xs if x is not None]
  return round(statistics.median(xs), 3) if xs else None


def _round(x):
  return round(x, 3) if isinstance(x, float) else x


def _ratio(a, b):
  return round(a / b, 3) if a is not None and b else None


def _dir_mb(path: str) -> float:
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
  return round(total / 1e6, 1)


def _last_checkpoint_mb(workdir: str) -> float:
  ckpt = os.path.join(workdir, "ckpt")
  steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  return _dir_mb(os.path.join(ckpt, str(max(steps)))) if steps else 0.0


def _cache_files(path: str) -> int:
  return sum(len(files) for _, _, files in os.walk(path)) if os.path.isdir(path) else 0


# ------------------------------------------------------------------ part 1: start
def start_part(args, tmp: str) -> dict:
  teacher_fields, student_fields = SIZES["quick" if args.quick else "full"]
  teacher_dir, student_dir = os.path.join(tmp, "hf_teacher"), os.path.join(tmp, "hf_student")
  t0 = time.perf_counter()
  models = {
    "teacher": _write_hf(teacher_dir, teacher_fields, seed=1),
    "student": _write_hf(student_dir, student_fields, seed=0),
  }
  write_s = time.perf_counter() - t0
  comp_dir, weights_dir = os.path.join(tmp, "xla_cache"), os.path.join(tmp, "weights_cache")
  base = {
    "steps": 1,
    "log_every": 1,
    "eval.every": 0,
    "analysis.enabled": False,
    "ckpt.export_hf": False,
    "model.source": "hf",
    "model.path": student_dir,
    "teacher.source": "hf",
    "teacher.path": teacher_dir,
  }
  caches = {  # condition: (compilation cache dir or '' = off, cache.weights)
    "cold": ("", ""),
    "compile_warm": (comp_dir, ""),
    "weights_warm": ("", weights_dir),
    "warm": (comp_dir, weights_dir),
    "build_weights": ("", weights_dir),  # fills cache.weights
    "build_compile": (comp_dir, ""),  # fills the compilation cache
    "build_both": (comp_dir, weights_dir),  # --quick: fills both in one run
  }
  keys = ("first_step_s", "total_s", "before_loop_s", "step1_rollout_s", "step1_train_s")
  runs: dict[str, list[dict]] = {}
  n = 0

  def once(cond):
    nonlocal n
    n += 1
    comp, weights = caches[cond]
    workdir = os.path.join(tmp, f"start{n:02d}_{cond}")
    r = _run(workdir, {**base, "cache.weights": weights}, comp, args.timeout)
    runs.setdefault(cond, []).append({**{k: r[k] for k in keys}, "load1": r["load1"]})
    shutil.rmtree(workdir, ignore_errors=True)
    print(
      f"[restart] {cond}: step 1 done at {r['first_step_s']:.1f} s (loop started at "
      f"{r['before_loop_s']:.1f} s), process {r['total_s']:.1f} s",
      file=sys.stderr,
      flush=True,
    )

  builds = ("build_both",) if args.quick else ("build_weights", "build_compile")
  for cond in builds:
    once(cond)
  compile_entries = _cache_files(comp_dir)
  for _ in range(args.repeats):
    for cond in START_CONDITIONS:
      once(cond)
  med = {c: {k: _med([r[k] for r in rs]) for k in keys} for c, rs in runs.items()}
  first = {c: m["first_step_s"] for c, m in med.items()}
  out = {
    "models": models,
    "hf_write_s": round(write_s, 1),
    "teacher_safetensors_mb": models["teacher"]["safetensors_mb"],
    "measured": "first_step_s: seconds from the child's Popen to the first line of "
    "WORKDIR/metrics.jsonl (step 1 done; steps=1, log_every=1), polled every 20 ms; "
    "before_loop_s: first_step_s - that line's perf/seconds_per_step (imports, data, weights, "
    "pre-flight checks); step1_*: the line's time/rollout_s, time/train_s (compilation "
    "included); total_s: the whole process (final checkpoint, rock table, summary)",
    "repeats": args.repeats,
    "median": med,
    "ratio_to_cold": {c: _ratio(first[c], first["cold"]) for c in START_CONDITIONS[1:]},
    "before_loop_ratio_to_cold": {
      c: _ratio(med[c]["before_loop_s"], med["cold"]["before_loop_s"]) for c in START_CONDITIONS[1:]
    },
    "saved_s_vs_cold": {c: round(first["cold"] - first[c], 2) for c in START_CONDITIONS[1:]},
    "build_cost": {
      **{f"{b}_over_cold": _ratio(first[b], first["cold"]) for b in builds},
      **{f"{b}_extra_s": round(first[b] - first["cold"], 2) for b in builds},
    },
    "compilation_cache_files": {"after_build": compile_entries, "at_end": _cache_files(comp_dir)},
    "weights_cache_mb": _dir_mb(weights_dir),
    "runs": runs,
  }
  return out


# ------------------------------------------------------------------ part 2: saves
SAVE_MODES = {
  "end_only": {"ckpt.every": 0, "ckpt.async_save": True},
  "async": {"ckpt.every": 1, "ckpt.async_save": True},
  "sync": {"ckpt.every": 1, "ckpt.async_save": False},
  # the in-run control: steps with the previous step's save in flight (odd lines) vs without
  # (even lines), in one process
  "async_every2": {"ckpt.every": 2, "ckpt.async_save": True},
}


LINE_KEYS = ("step", "time/rollout_s", "time/train_s", "time/checkpoint_s", "perf/seconds_per_step")


def _student_params(dim: int, layers: int) -> int:
  h, kv, hd, v = COMMON["num_heads"], COMMON["num_kv_heads"], COMMON["head_dim"], 128
  per_layer = dim * hd * (2 * h + 2 * kv) + 3 * dim * 3 * dim + 2 * dim + 2 * hd
  return layers * per_layer + v * dim + dim


def save_figures(lines: dict[str, list[list[dict]]]) -> dict:
  """Medians and ratios of part 2 from each mode's runs' metrics lines (see the docstring)."""

  def per_step(mode, key, drop_last=False):
    """Lines 3.. of every run (1: compilation; 2: the first save's one-time set-up)."""
    vals = []
    for run in lines[mode]:
      rows = run[2:-1] if drop_last else run[2:]
      vals += [row[key] for row in rows if row.get(key) is not None]
    return vals

  med = {}
  for mode in lines:
    rollout, train = per_step(mode, "time/rollout_s"), per_step(mode, "time/train_s")
    # each run's first save (orbax's one-time set-up) apart: line 2, or 3 with ckpt.every=2
    ckpt, first = [], []
    for run in lines[mode]:
      saves = [(i, row.get("time/checkpoint_s")) for i, row in enumerate(run)]
      saves = [(i, v) for i, v in saves if v is not None]
      first += [v for _, v in saves[:1]]
      ckpt += [v for i, v in saves[1:] if i >= 2]
    med[mode] = {
      "rollout_s": _med(rollout),
      "train_s": _med(train),
      "step_s": _med([a + b for a, b in zip(rollout, train, strict=True)]),
      "seconds_per_step": _med(per_step(mode, "perf/seconds_per_step", drop_last=True)),
      "checkpoint_s_mean": round(statistics.mean(ckpt), 3) if ckpt else None,
      "checkpoint_s_median": _med(ckpt),
      "checkpoint_s_first": _med(first),
      "saves_counted": len(ckpt),
    }
  # async_every2: line k >= 3 odd follows a save (after step k-1), even follows none
  in_flight, idle = [], []
  for run in lines["async_every2"]:
    for row in run[2:]:
      (in_flight if row["step"] % 2 else idle).append(row["time/rollout_s"] + row["time/train_s"])
  # its lines alternate a two-step interval and ~0 s (a line is written when the next step's
  # metrics arrive or before a save): the wall per step is lines 5..N's sum over N-4 steps
  # (line 5's interval starts before the save after step 4; line 3's would hold the first save)
  walls = [
    sum(row["perf/seconds_per_step"] for row in run[4:]) / len(run[4:])
    for run in lines["async_every2"]
    if len(run) > 4
  ]
  med["async_every2"].update(
    step_s_save_in_flight=_med(in_flight),
    step_s_no_save=_med(idle),
    steps_each=len(in_flight),
    seconds_per_step=_med(walls),
  )
  a = med["end_only"]
  ratios = {
    "step_s_async_over_end_only": _ratio(med["async"]["step_s"], a["step_s"]),
    "step_s_in_flight_over_not_same_run": _ratio(
      med["async_every2"]["step_s_save_in_flight"], med["async_every2"]["step_s_no_save"]
    ),
    "step_s_sync_over_end_only": _ratio(med["sync"]["step_s"], a["step_s"]),
    "seconds_per_step_async_over_end_only": _ratio(
      med["async"]["seconds_per_step"], a["seconds_per_step"]
    ),
    "seconds_per_step_sync_over_end_only": _ratio(
      med["sync"]["seconds_per_step"], a["seconds_per_step"]
    ),
    "seconds_per_step_async_every2_over_end_only": _ratio(
      med["async_every2"]["seconds_per_step"], a["seconds_per_step"]
    ),
  }
  return {"median": med, "ratios": ratios}


def save_part(args, tmp: str) -> dict:
  dim, layers = args.save_dim, args.save_layers
  arch = {"hidden_size": dim, "intermediate_size": 3 * dim, "num_layers": layers, **COMMON}
  base = {
    "steps": args.save_steps,
    "log_every": 1,
    "eval.every": 0,
    "analysis.enabled": False,
    "ckpt.export_hf": False,
    "ckpt.keep": 2,
    "model.source": "random",
    **{f"model.arch.{k}": v for k, v in arch.items()},
  }
  comp_dir = os.path.join(tmp, "xla_cache_save")  # shared: only the first run compiles much
  lines: dict[str, list[list[dict]]] = {m: [] for m in SAVE_MODES}
  ckpt_mb, loads = [], {m: [] for m in SAVE_MODES}
  n = 0
  for _ in range(args.save_repeats):
    for mode, fields in SAVE_MODES.items():
      n += 1
      workdir = os.path.join(tmp, f"save{n:02d}_{mode}")
      r = _run(workdir, {**base, **fields}, comp_dir, args.timeout)
      lines[mode].append(r["lines"])
      loads[mode].append(r["load1"])
      ckpt_mb.append(_last_checkpoint_mb(workdir))
      print(f"[restart] save {mode}: process {r['total_s']:.1f} s", file=sys.stderr, flush=True)
      shutil.rmtree(workdir, ignore_errors=True)  # checkpoints: hundreds of MB each

  out = {
    "modes": SAVE_MODES,
    "steps": args.save_steps,
    "repeats": args.save_repeats,
    "measured": "medians over metrics lines 3..N of every run (line k = step k; line 1 holds "
    "the compilation, line 2 the first save's one-time set-up), perf/seconds_per_step over "
    "lines 3..N-1 (line N is written straight after N-1 when the only save is at the end); "
    "step_s = time/rollout_s + time/train_s of a line; time/checkpoint_s on line k is the "
    "save after step k-1 (how long it held the loop); checkpoint_s_first: each run's first "
    "save (orbax's one-time set-up), not in the checkpoint_s mean and median",
    "load1_at_start": loads,
    # the lines the figures come from, kept whole (rounded) in the output
    "per_step_lines": {
      mode: [[{k: _round(row.get(k)) for k in LINE_KEYS} for row in run] for run in runs]
      for mode, runs in lines.items()
    },
  }
  try:
    out.update(save_figures(lines))
  except Exception as e:  # pylint: disable=broad-except  (the raw lines still come out)
    out["error"] = f"{type(e).__name__}: {e}"
  params = _student_params(dim, layers)
  out["student"] = {
    **arch,
    "params": params,
    "params_mb_f32": round(4 * params / 1e6, 1),
    "state_mb_f32": round(12 * params / 1e6, 1),  # params + AdamW mu, nu
  }
  out["checkpoint_mb"] = max(ckpt_mb)  # the last step's directory on disk
  return out


def main():
  args = _parse()
  skip = set(filter(None, args.skip.split(",")))
  tmp = tempfile.mkdtemp(prefix="rockjax-restart-", dir=args.tmpdir)
  out = {
    "args": vars(args),
    "devices": DEVICES,
    "platform": "cpu (fake devices: --xla_force_host_platform_device_count)",
    "cpu_count": os.cpu_count(),
    "config": CONFIG,
  }
  t0 = time.perf_counter()
  try:
    if "start" not in skip:
      out["start"] = start_part(args, tmp)
    if "save" not in skip:
      out["save"] = save_part(args, tmp)
  finally:
    if not args.keep:
      shutil.rmtree(tmp, ignore_errors=True)
  out["wall_s"] = round(time.perf_counter() - t0, 1)
  out["notes"] = _notes(out)
  print(json.dumps(out, indent=1))


def _notes(out) -> str:
  notes = []
  s = out.get("start")
  if s:
    r, m = s["ratio_to_cold"], s["median"]
    notes.append(
      f"start to step 1 (teacher {s['teacher_safetensors_mb']} MB of safetensors): cold "
      f"{m['cold']['first_step_s']} s, warm {m['warm']['first_step_s']} s (x{r['warm']}); "
      f"compilation cache alone x{r['compile_warm']}, weights cache alone x{r['weights_warm']}"
    )
  v = out.get("save")
  if v and "ratios" in v:
    r, m = v["ratios"], v["median"]
    notes.append(
      f"step (rollout+train) with an async save in flight / without: "
      f"{r['step_s_async_over_end_only']} across runs, "
      f"{r['step_s_in_flight_over_not_same_run']} within one run (ckpt.every=2); "
      f"wall per step async "
      f"{r['seconds_per_step_async_over_end_only']}, sync "
      f"{r['seconds_per_step_sync_over_end_only']} x end-only; a save holds the loop "
      f"{m['async']['checkpoint_s_mean']} s async, {m['sync']['checkpoint_s_mean']} s sync "
      f"({v['checkpoint_mb']} MB checkpoint)"
    )
  notes.append("2-core shared CPU, fake 8-device mesh: noisy, read the ratios")
  return "; ".join(notes)


if __name__ == "__main__":
  main()
