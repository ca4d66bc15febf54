"""Package-level set-up in rockjax/__init__.py."""

import logging

import rockjax  # noqa: F401  (installs the filter)


def test_only_the_no_torch_advice_of_transformers_is_filtered():
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
