"""The command line's user errors as one line: config overrides checked before absl parses.

absl parses `--config` and its `--config.*` overrides inside app.run, before main runs, and on
a mistake prints a traceback or a usage page; `parse_flags` (app.run's flags_parser) loads the
config file and checks the override names first, so each mistake is one line naming it.
"""

import difflib
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from absl import flags
from absl import logging as absl_logging

from rockjax import errors, xla_flags


class _NoTorchAdvice(logging.Filter):
  """Drops transformers' import-time "PyTorch was not found" advice, and nothing else.

  rockjax uses transformers only for configs and tokenizers, so on the JAX-only install that
  message is noise. transformers logs it once, from its package __init__ on the "transformers"
  logger (`logger.warning_advice`); its own switches (TRANSFORMERS_NO_ADVISORY_WARNINGS,
  TRANSFORMERS_VERBOSITY) would also mute every other advisory or warning, process-wide.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("PyTorch was not found.")


CACHE_ENV = "ROCKJAX_COMPILATION_CACHE"  # a directory, or off/0 (docs/running.md)
_OFF = ("0", "off", "false", "none")


def compilation_cache_dir(environ: dict[str, str] | None = None) -> str | None:
  """The persistent XLA compilation cache directory an entry point turns on; None: off.

  JAX_COMPILATION_CACHE_DIR (the user's own choice) stands; else ROCKJAX_COMPILATION_CACHE
  (a directory, or off/0/false/none); else $XDG_CACHE_HOME/rockjax/jax_compilation
  (~/.cache/...). A later run with the same programs (a resumed or restarted run, another
  workdir with the same models and shapes) reads them from there instead of compiling.
  """
  env = os.environ if environ is None else environ
  if env.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  value = env.get(CACHE_ENV, "")
  if value.lower() in _OFF:
    return None
  base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return value or os.path.join(base, "rockjax", "jax_compilation")


def apply_compilation_cache(value: str) -> None:
  """A config's `cache.compilation` over the process default (compilation_cache_dir): '' keeps
  it, 'off' turns the persistent cache off, a directory (local or gs://) puts it there. Call it
  before the first compile."""
  import jax  # pylint: disable=g-import-not-at-top  (setup_process runs before jax is imported)

  if not value:
    return
  if value.lower() in _OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", value)


def distributed_flags() -> Callable[[], None]:
  """Defines --distributed, --coordinator_address, --num_processes and --process_id (once per
  process) for an entry point that runs on every host; returns the call that joins them
  (jax.distributed.initialize when --distributed was given)."""
  if "distributed" not in flags.FLAGS:
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host pods)")
    flags.DEFINE_string(
      "coordinator_address", None, "with --distributed: host:port of process 0 (auto on TPU/Slurm)"
    )
    flags.DEFINE_integer(
      "num_processes", None, "with --distributed: process count (auto on TPU/Slurm)"
    )
    flags.DEFINE_integer(
      "process_id", None, "with --distributed: this process's index (auto on TPU/Slurm)"
    )

  def initialize() -> None:
    f = flags.FLAGS
    if f.distributed:
      import jax  # pylint: disable=g-import-not-at-top  (after setup_process)

      jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)

  return initialize


def setup_process() -> None:
  """What an entry point sets for its whole process, before any JAX backend starts: rockjax's
  XLA:CPU flags and JAX_PLATFORMS=cpu where libtpu would only print its no-TPU warnings
  (rockjax/xla_flags.py), the persistent compilation cache (compilation_cache_dir) and the
  transformers log filter. Idempotent."""
  xla_flags.apply()
  xla_flags.skip_absent_tpu()
  cache = compilation_cache_dir()
  if cache:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # read when jax is imported (and by children)
    if "jax" in sys.modules:  # imported already: set it on the live config too
      sys.modules["jax"].config.update("jax_compilation_cache_dir", cache)
  log = logging.getLogger("transformers")
  if not any(isinstance(f, _NoTorchAdvice) for f in log.filters):
    log.addFilter(_NoTorchAdvice())


def parse_flags(argv: list[str]) -> list[str]:
  """app.run's flags_parser: load the config file and check override names first, so each
  mistake is one line (absl alone prints a traceback or a usage page)."""
  config = None
  try:
    path = _config_path(argv)
    if path is not None:
      config = _load_config(path)
      _check_overrides(config, argv)
    return flags.FLAGS(argv)
  except errors.UserError as e:
    exit_error(str(e), verbose(argv))
  except flags.Error as e:
    exit_error(_flag_error(str(e), config), verbose(argv))
  except KeyboardInterrupt:
    exit_error("interrupted", verbose(argv))


def _args(argv: list[str]) -> list[str]:
  """The flag arguments (everything after the program name, up to a `--`)."""
  rest = list(argv[1:])
  return rest[: rest.index("--")] if "--" in rest else rest


def _config_path(argv: list[str]) -> str | None:
  """The last --config=PATH (or `--config PATH`) on the command line."""
  path, args = None, _args(argv)
  for i, arg in enumerate(args):
    m = re.fullmatch(r"--?config(?:=(.*))?", arg, re.S)
    if m:
      path = m.group(1) if m.group(1) is not None else (args[i + 1] if i + 1 < len(args) else None)
  return path


def _load_config(path: str):
  """get_config() of a config file (`file.py[:arg]`, as config_flags reads it)."""
  file, _, arg = path.partition(":")
  if not os.path.isfile(file):
    raise errors.ConfigError(f"--config={path}: no such config file")
  try:
    spec = importlib.util.spec_from_file_location("rockjax_cli_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))
  except Exception as e:  # pylint: disable=broad-except  (anything a config file raises)
    raise errors.ConfigError(
      f"--config={path}: failed to load{_where(e, file)}: {type(e).__name__}: {_message(e)}"
    ) from e


def _where(e: BaseException, file: str) -> str:
  """' (FILE:LINE)' of the config file's line that raised, when it shows in the traceback."""
  if isinstance(e, SyntaxError) and e.lineno:
    return f" ({e.filename}:{e.lineno})"
  lines = [
    f.lineno
    for f in traceback.extract_tb(e.__traceback__)
    if os.path.abspath(f.filename) == os.path.abspath(file)
  ]
  return f" ({file}:{lines[-1]})" if lines else ""


def _message(e: BaseException) -> str:
  """An exception's own text, one line (unwrapping ml_collections' AttributeError(KeyError))."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = (
    e.msg
    if isinstance(e, SyntaxError)
    else (e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e))
  )
  return _one_line(re.sub(r'\s*Other fields present: ".*?"(?=\s|$)', "", text, flags=re.S))


def _fields(c, prefix: str = "") -> list[str]:
  """Every dotted field name of a ConfigDict, sub-dicts included."""
  out = []
  for key, value in c.items():
    out.append(prefix + key)
    if hasattr(value, "items"):
      out += _fields(value, prefix + key + ".")
  return out


def _check_overrides(config, argv: list[str]) -> None:
  """A --config.X override must name an existing field (with a did-you-mean when not)."""
  if not hasattr(config, "items"):
    return
  names = _fields(config)
  for arg in _args(argv):
    m = re.match(r"--?(?:no)?config\.([^=]+)", arg)
    if m and m.group(1) not in names:
      raise errors.ConfigError(f"unknown config field {m.group(1)!r}" + _suggest(m.group(1), names))


# Fields that were renamed: an old name gets the new one as its suggestion.
RENAMED = {"opt.grad_accum": "opt.micro_batches"}
# Other trainers' names for a field (the last part of a dotted name), too far apart for difflib.
ALIASES = {
  "learning_rate": "lr",
  "min_lr": "end_lr",
  "final_lr": "end_lr",
  "beta1": "b1",
  "beta2": "b2",
  "grad_clip": "clip",
  "max_grad_norm": "clip",
  "gradient_accumulation_steps": "micro_batches",
  "warmup_ratio": "warmup_frac",
  "max_steps": "steps",
  "num_steps": "steps",
  "total_steps": "steps",
  "lambda": "lam",
}


def _alias(field: str, names: list[str]) -> list[str]:
  """[the field an ALIASES name means]: in the same group first (opt.learning_rate -> opt.lr),
  else any field with that last part; [] when the last part is no alias."""
  group, _, tail = field.rpartition(".")
  if tail not in ALIASES:
    return []
  same = f"{group}.{ALIASES[tail]}" if group else ALIASES[tail]
  if same in names:
    return [same]
  return [n for n in names if n.rsplit(".", 1)[-1] == ALIASES[tail]][:1]


def _suggest(field: str, names: list[str]) -> str:
  close = [RENAMED[field]] if field in RENAMED else _alias(field, names)
  close = close or difflib.get_close_matches(field, names, n=1)
  if not close:  # e.g. `lamda` for `rock.lam`: compare the last parts
    tails: dict[str, str] = {}
    for name in names:
      tails.setdefault(name.rsplit(".", 1)[-1], name)
    close = [tails[t] for t in difflib.get_close_matches(field.rsplit(".", 1)[-1], tails, n=1)]
  return f" (did you mean {close[0]!r}?)" if close else ""


def _flag_error(message: str, config) -> str:
  """absl's flag error as one line that names the flag or config field."""
  m = re.match(r"flag --(\w+)=None: Flag --\1 must have a value other than None", message)
  if m:
    return f"--{m.group(1)} is required (e.g. --config=configs/tiny.py)"
  m = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", message, re.S)
  if m and config is not None:
    field, value, detail = m.groups()
    node = config
    for part in field.split("."):
      node = node[part]
    detail = "true or false" if isinstance(node, bool) else _one_line(detail)
    return f"config field {field!r}: bad value {value!r}, expected {type(node).__name__} ({detail})"
  return _one_line(message)


def verbose(argv: list[str]) -> bool:
  """Whether --verbosity (or -v) >= 1 is on the command line (tracebacks wanted)."""
  level, args = None, _args(argv)
  for i, arg in enumerate(args):
    m = re.fullmatch(r"--?(?:verbosity|v)(?:=(.*))?", arg)
    if m:
      level = m.group(1) if m.group(1) is not None else (args[i + 1] if i + 1 < len(args) else None)
  try:
    return level is not None and int(level) >= 1
  except ValueError:
    return False


def profile_steps(value: str | None) -> tuple[int, int] | None:
  """--profile_steps=a,b as (a, b): two step numbers with 1 <= a <= b (None when not given)."""
  if value is None:
    return None
  m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", value)
  if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
    raise errors.UserError(
      f"--profile_steps={value}: expected two step numbers a,b with 1 <= a <= b (the first "
      f"step is 1, as in metrics.jsonl), e.g. --profile_steps=3,5"
    )
  return int(m.group(1)), int(m.group(2))


def _one_line(message: str) -> str:
  return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def exit_error(message: str, verbose: bool) -> NoReturn:
  """The user-error exit: optional traceback, then one line on stderr, exit status 2."""
  if verbose:
    traceback.print_exc()
  sys.stderr.write(f"rockjax: error: {_one_line(message) or 'failed'}\n")
  sys.stderr.flush()
  sys.exit(2)


def entry_main(body: Callable[[], None]) -> Callable[[list[str]], None]:
  """An entry point's absl main: orbax's per-file INFO logs quiet unless --verbosity was given,
  then `body` with a UserError or Ctrl-C as the one-line exit (run_guarded)."""

  def main(argv: list[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
      absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file at INFO
    run_guarded(body)

  return main


def run_guarded(entry: Callable[[], None]) -> None:
  """Run a command's body; a UserError or Ctrl-C becomes the one-line exit (exit_error)."""
  try:
    entry()
  except errors.UserError as e:
    exit_error(str(e), verbose(sys.argv))
  except KeyboardInterrupt:
    exit_error("interrupted", verbose(sys.argv))
