"""rockjax: on-policy distillation in JAX that finds, measures and bypasses Rock Tokens."""

import logging as _logging


class _NoTorchAdvice(_logging.Filter):
  """Drops transformers' import-time "PyTorch was not found" advice, and nothing else.

  rockjax uses transformers only for configs and tokenizers, so on the JAX-only install that
  message is noise. transformers logs it once, from its package __init__ on the "transformers"
  logger (`logger.warning_advice`); its own switches (TRANSFORMERS_NO_ADVISORY_WARNINGS,
  TRANSFORMERS_VERBOSITY) would also mute every other advisory or warning, process-wide.
  Installed here, before any rockjax module imports transformers (they all import it lazily).
  """

  def filter(self, record: _logging.LogRecord) -> bool:
    return not str(record.msg).startswith("PyTorch was not found.")


_logging.getLogger("transformers").addFilter(_NoTorchAdvice())

from rockjax import xla_flags as _xla_flags

_xla_flags.apply()  # XLA:CPU kernel choices, before JAX starts a backend (rockjax/xla_flags.py)

__version__ = "0.1.0"
