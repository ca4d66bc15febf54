"""Entry point: `python -m rockjax.main --config=configs/demo.py --workdir=DIR [--config.a.b=v]`.

A user error (an unknown flag or config field, a bad value, a config file that does not load,
an unusable --workdir, a config that fails rockjax.config_check, any rockjax.errors.UserError
the run raises, Ctrl-C) prints ONE line `rockjax: error: ...` on stderr and exits 2; the
traceback comes too with --verbosity=1 or higher. Anything else is a bug and keeps its
traceback. The whole config is validated before anything is created on disk.
"""
import difflib
import importlib.util
import os
import re
import sys
import traceback
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from rockjax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (get_config())",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, data")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "call jax.distributed.initialize() (multi-host pods)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "with --distributed: host:port of process 0 (auto on TPU/Slurm)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "with --distributed: process count (auto on TPU/Slurm)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "with --distributed: this process's index (auto on TPU/Slurm)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "build abstractly (no weights) and print per-device memory")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "run in a workdir whose recorded config differs from this one")
flags.mark_flags_as_required(["config"])


def _run(config, workdir: str, allow_config_change: bool) -> dict[str, Any]:
  """The one call site of a run: every stage the config asks for, then the summary."""
  from rockjax import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.run(config, workdir, allow_config_change=allow_config_change)


def main(argv):
  del argv
  try:
    _main()
  except errors.UserError as e:
    _exit(str(e), _verbose(sys.argv))
  except KeyboardInterrupt:
    _exit("interrupted", _verbose(sys.argv))


def _main() -> None:
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  workdir, dry_run = _WORKDIR.value, _DRY_RUN.value
  if not dry_run and not workdir:
    raise errors.WorkdirError("--workdir is required (except with --dry_run)")
  if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir={workdir}: is a file; it must be a directory")
  import jax  # pylint: disable=g-import-not-at-top  (after flags, so XLA_FLAGS may be set)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info("process %d/%d, %d devices", jax.process_index(), jax.process_count(),
               jax.device_count())
  if dry_run:
    from rockjax import config_check, dry_run as dry_run_lib  # pylint: disable=g-import-not-at-top
    config_check.validate(_CONFIG.value, dry_run=True)
    print(dry_run_lib.report_json(_CONFIG.value))
    return
  _run(_CONFIG.value, workdir, _ALLOW_CONFIG_CHANGE.value)  # validates before touching the disk


# --- Command line: absl parses --config and its --config.* overrides before main runs. ---

def _parse_flags(argv: list[str]) -> list[str]:
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
    _exit(str(e), _verbose(argv))
  except flags.Error as e:
    _exit(_flag_error(str(e), config), _verbose(argv))
  except KeyboardInterrupt:
    _exit("interrupted", _verbose(argv))


def _args(argv: list[str]) -> list[str]:
  """The flag arguments (everything after the program name, up to a `--`)."""
  rest = list(argv[1:])
  return rest[:rest.index("--")] if "--" in rest else rest


def _config_path(argv: list[str]) -> str | None:
  """The last --config=PATH (or `--config PATH`) on the command line."""
  path, args = None, _args(argv)
  for i, arg in enumerate(args):
    m = re.fullmatch(r"--?config(?:=(.*))?", arg, re.S)
    if m:
      path = m.group(1) if m.group(1) is not None else (args[i + 1] if i + 1 < len(args)
                                                        else None)
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
    raise errors.ConfigError(f"--config={path}: failed to load{_where(e, file)}: "
                             f"{type(e).__name__}: {_message(e)}") from e


def _where(e: BaseException, file: str) -> str:
  """' (FILE:LINE)' of the config file's line that raised, when it shows in the traceback."""
  if isinstance(e, SyntaxError) and e.lineno:
    return f" ({e.filename}:{e.lineno})"
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
           if os.path.abspath(f.filename) == os.path.abspath(file)]
  return f" ({file}:{lines[-1]})" if lines else ""


def _message(e: BaseException) -> str:
  """An exception's own text, one line (unwrapping ml_collections' AttributeError(KeyError))."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = e.msg if isinstance(e, SyntaxError) else (
      e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e))
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
      raise errors.ConfigError(f"unknown config field {m.group(1)!r}"
                               + _suggest(m.group(1), names))


def _suggest(field: str, names: list[str]) -> str:
  close = difflib.get_close_matches(field, names, n=1)
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
    return (f"config field {field!r}: bad value {value!r}, expected {type(node).__name__} "
            f"({detail})")
  return _one_line(message)


def _verbose(argv: list[str]) -> bool:
  """Whether --verbosity (or -v) >= 1 is on the command line (tracebacks wanted)."""
  level, args = None, _args(argv)
  for i, arg in enumerate(args):
    m = re.fullmatch(r"--?(?:verbosity|v)(?:=(.*))?", arg)
    if m:
      level = m.group(1) if m.group(1) is not None else (args[i + 1] if i + 1 < len(args)
                                                         else None)
  try:
    return level is not None and int(level) >= 1
  except ValueError:
    return False


def _one_line(message: str) -> str:
  return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _exit(message: str, verbose: bool) -> NoReturn:
  """The user-error exit: optional traceback, then one line on stderr, exit status 2."""
  if verbose:
    traceback.print_exc()
  sys.stderr.write(f"rockjax: error: {_one_line(message) or 'failed'}\n")
  sys.stderr.flush()
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
