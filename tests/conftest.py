"""Shared test set-up: fake an 8-device CPU mesh before jax is imported anywhere."""

import os

# Must run before the first `import jax` of the test session: the device count is read once.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
# Every test compiles afresh, in this process and the entry points it starts (no compilation
# cache in the user's home); tests/core/test_xla_flags.py turns it on where it tests it.
os.environ.setdefault("ROCKJAX_COMPILATION_CACHE", "off")

from rockjax import cli  # noqa: E402

cli.setup_process()  # XLA:CPU flags and log filters, as rockjax.main sets them for a user's run
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices8():
  """The 8 fake CPU devices; fails loudly if the flag did not take effect."""
  devs = jax.devices()
  assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}: XLA_FLAGS set too late?"
  return devs


@pytest.fixture
def rng():
  """A seeded numpy generator so every failure is reproducible."""
  return np.random.default_rng(0)
