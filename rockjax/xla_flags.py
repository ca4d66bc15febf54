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

`skip_absent_tpu`: with libtpu installed (the `aot` extra) JAX starts it on every machine, and
where no TPU is attached libtpu prints start-up warnings (TPU_ACCELERATOR_TYPE,
TPU_WORKER_HOSTNAMES, "Failed to find host bounds") before JAX falls back to the CPU. Where no
TPU is attached (none of the PCI, /dev/accel or /dev/vfio devices JAX and libtpu look for) and
no other PJRT plugin (GPU) is installed, it sets JAX_PLATFORMS=cpu: the backend JAX would end
up with anyway. Any JAX_PLATFORMS of the user's (even '') or TPU setting is left alone; the
AOT dry run still loads libtpu to compile for a topology (jax.experimental.topologies).
"""

import glob
import importlib.metadata
import importlib.util
import os
import pathlib
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


# Settings that say the user chose the platform or asked for a TPU: skip_absent_tpu leaves
# the process alone when any is set.
USER_PLATFORM_VARS = (
  "JAX_PLATFORMS",
  "JAX_FORCE_TPU_INIT",
  "PJRT_NAMES_AND_LIBRARY_PATHS",
  "TPU_LIBRARY_PATH",
  "TPU_ACCELERATOR_TYPE",
  "TPU_WORKER_HOSTNAMES",
)
GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips' PCI vendor id (what jax._src.hardware_utils reads)


def tpu_attached() -> bool:
  """Whether this machine shows a TPU: a Google PCI device, /dev/accel*, or a VFIO group."""
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if pathlib.Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR:
        return True
    except OSError:
      continue
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def other_pjrt_plugins() -> bool:
  """Whether a PJRT plugin besides libtpu (e.g. jax-cuda12-plugin) is installed."""
  return bool(importlib.metadata.entry_points(group="jax_plugins")) or (
    importlib.util.find_spec("jax_plugins") is not None
  )


def skip_absent_tpu(
  environ: MutableMapping[str, str] = os.environ,
  *,
  tpu: bool | None = None,
  plugins: bool | None = None,
) -> bool:
  """Sets JAX_PLATFORMS=cpu where libtpu is installed but no TPU is attached and no other
  plugin is (JAX would start libtpu only to fall back to the CPU); whether it did.
  tpu / plugins: the probes' answers (None: tpu_attached(), other_pjrt_plugins())."""
  if any(name in environ for name in USER_PLATFORM_VARS):
    return False
  if importlib.util.find_spec("libtpu") is None:  # JAX has no TPU to try: nothing printed
    return False
  if (tpu_attached() if tpu is None else tpu) or (
    other_pjrt_plugins() if plugins is None else plugins
  ):
    return False
  environ["JAX_PLATFORMS"] = "cpu"
  return True
