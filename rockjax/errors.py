"""Errors a user can fix (bad config, bad input file, wrong workdir, an interrupt).

`rockjax.main` prints their one-line message and exits 2; anything else is a bug and keeps
its traceback. Raise them with a message that names the culprit (field, file:line, id).
"""


class UserError(Exception):
  """A problem with what the user asked for; the message alone says what and where."""


class ConfigError(UserError, ValueError):
  """A config field is unknown, has a bad value, or contradicts another field."""


class WorkdirError(UserError):
  """The workdir cannot be used as asked (not a directory, or made by another config)."""


class CheckpointMismatch(UserError, ValueError):
  """A readable checkpoint whose structure differs from the state this config builds."""


class Interrupted(UserError):
  """SIGTERM or Ctrl-C: the run saved a checkpoint and stopped; no later stage started."""


class InputError(UserError, ValueError):
  """A data, id-list or checkpoint file has a bad line, field or value (named in the message)."""


class DiskFull(UserError, OSError):
  """A checkpoint or export write hit ENOSPC: the message names the directory; nothing half
  written is ever trusted (the previous checkpoint stays the latest, the export is redone)."""
