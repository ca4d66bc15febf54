"""The process set-up the entry points make (rockjax.cli.setup_process)."""

import logging

from rockjax import cli


def test_only_the_no_torch_advice_of_transformers_is_filtered():
  cli.setup_process()
  records = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())

  logger = logging.getLogger("transformers")
  handler = Keep()
  logger.addHandler(handler)
  try:
    logger.warning(
      "PyTorch was not found. Models won't be available and only tokenizers, "
      "configuration and file/data utilities can be used."
    )
    logger.warning("some other transformers warning")
  finally:
    logger.removeHandler(handler)
  assert records == ["some other transformers warning"]
