"""XLA:CPU options rockjax sets in XLA_FLAGS when it is imported, before JAX starts a backend.

`--xla_cpu_experimental_ynn_fusion_type=dot`: XLA:CPU (jaxlib 0.10-0.11) by default lets
YNNPACK fuse a matmul with the reductions after it; on the LM heads (`h @ W` followed by a
log-softmax's max over V) that fused kernel ran ~1.5x slower than the plain matmul plus XLA's
own reduction (benchmarks/RESULTS.md). With 'dot' YNNPACK still runs the matmuls, alone.
The flags only change XLA:CPU's choice of kernels (results agree to float32 rounding), and
TPU/GPU compilers ignore them.

Rules: a flag the user already has in XLA_FLAGS is left as it is; ROCKJAX_XLA_FLAGS=0 turns
this off; a jaxlib outside the versions the flags were checked on gets none (XLA aborts on a
flag it does not know). XLA reads XLA_FLAGS once, when the first backend starts: a process
that ran JAX before `import rockjax` keeps what it had.
"""

import importlib.metadata
import os
from collections.abc import MutableMapping

CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "dot"}
JAXLIB_VERSIONS = ((0, 10), (0, 12))  # [first, past-last) (major, minor) the flags were checked on
OPT_OUT = "ROCKJAX_XLA_FLAGS"


def _jaxlib_minor() -> tuple[int, int] | None:
  """(major, minor) of the installed jaxlib, None when it is not installed."""
  try:
    parts = importlib.metadata.version("jaxlib").split(".")
    return int(parts[0]), int(parts[1])
  except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
    return None


def checked(version: tuple[int, int] | None) -> bool:
  """Whether jaxlib `version` (major, minor) is one the flags were checked on."""
  return version is not None and JAXLIB_VERSIONS[0] <= version < JAXLIB_VERSIONS[1]


def apply(
  environ: MutableMapping[str, str] = os.environ, jaxlib: tuple[int, int] | None = None
) -> list[str]:
  """Appends each of CPU_FLAGS that XLA_FLAGS lacks; returns the flags it added."""
  version = _jaxlib_minor() if jaxlib is None else jaxlib
  if environ.get(OPT_OUT, "1") == "0" or not checked(version):
    return []
  current = environ.get("XLA_FLAGS", "")
  names = {f.lstrip("-").split("=", 1)[0] for f in current.split()}
  added = [f"--{k}={v}" for k, v in CPU_FLAGS.items() if k not in names]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
