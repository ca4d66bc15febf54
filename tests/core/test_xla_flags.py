"""rockjax/xla_flags.py: which XLA_FLAGS the entry points add, that XLA:CPU obeys them, and that
no libtpu warning is printed on a machine without a TPU (skip_absent_tpu)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from rockjax import cli, xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_added_to_empty_and_to_existing_flags():
  env = {}
  assert xla_flags.apply(env, jaxlib=(0, 10)) == [FLAG]
  assert env["XLA_FLAGS"] == FLAG
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_flags.apply(env, jaxlib=(0, 11))
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"


def test_applying_twice_adds_nothing_more():
  env = {}
  xla_flags.apply(env, jaxlib=(0, 10))
  assert xla_flags.apply(env, jaxlib=(0, 10)) == []
  assert env["XLA_FLAGS"] == FLAG


@pytest.mark.parametrize(
  "own",
  ["--xla_cpu_experimental_ynn_fusion_type=", "xla_cpu_experimental_ynn_fusion_type=dot,reduce"],
)
def test_the_users_own_value_wins(own):
  env = {"XLA_FLAGS": own}
  assert xla_flags.apply(env, jaxlib=(0, 10)) == []
  assert env["XLA_FLAGS"] == own


@pytest.mark.parametrize("jaxlib", [(0, 9), (0, 12), (1, 0), None])
def test_unchecked_jaxlib_or_opt_out_gets_nothing(jaxlib):
  env = {"XLA_FLAGS": "--a=1"}
  if jaxlib is None:  # the opt-out, on a checked version
    env[xla_flags.OPT_OUT] = "0"
    jaxlib = (0, 10)
  assert xla_flags.apply(env, jaxlib=jaxlib) == []
  assert env["XLA_FLAGS"] == "--a=1"


_PROBE = """
from rockjax import cli
cli.setup_process()
import jax, jax.numpy as jnp, re
f = jax.jit(lambda h, w: jax.nn.log_softmax(h @ w, axis=-1))
text = f.lower(jnp.ones((64, 32)), jnp.ones((32, 512))).compile().as_text()
comps = dict(re.findall(r"^%(\\S+) \\(.*?\\{\\n(.*?)^\\}", text, re.M | re.S))
ynn = re.findall(r'calls=%(\\S+?),.*"kind":"__ynn_fusion"', text)
print(sum("reduce(" in comps[c] for c in ynn), len(ynn))
"""


def _ynn_fusions(opt_out: str) -> tuple[int, int]:
  """(YNNPACK fusions that hold a reduction, all YNNPACK fusions) of h @ w then log_softmax,
  compiled by a fresh process that sets rockjax's process state first (cli.setup_process)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", ROCKJAX_XLA_FLAGS=opt_out)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  with_reduce, total = map(int, out.stdout.split()[-2:])
  return with_reduce, total


def test_xla_cpu_no_longer_fuses_the_head_matmul_with_its_reduction():
  if not xla_flags.checked(xla_flags._jaxlib_minor()):
    pytest.fail(f"jaxlib {xla_flags._jaxlib_minor()} is outside the checked versions: recheck")
  with_reduce, total = _ynn_fusions("1")
  assert with_reduce == 0 and total >= 1  # YNNPACK still runs the matmul, alone
  # Without the flag jaxlib's default fuses the matmul with the max over V (what it fixes).
  assert _ynn_fusions("0")[0] >= 1


def test_importing_rockjax_changes_nothing_process_wide():
  """`import rockjax` (and its subpackages) leaves XLA_FLAGS and the logging set-up alone."""
  probe = (
    "import logging, os\n"
    "before = (os.environ.get('XLA_FLAGS'), logging.getLogger('transformers').filters[:])\n"
    "import rockjax, rockjax.losses, rockjax.models, rockjax.runner.pipeline, rockjax.analysis.run\n"
    "after = (os.environ.get('XLA_FLAGS'), logging.getLogger('transformers').filters[:])\n"
    "print(before == after, repr(after[0]))\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", "None"], out.stdout


LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.skipif(not LIBTPU, reason="libtpu (the aot extra) is not installed")
def test_cpu_is_chosen_only_where_no_tpu_and_no_other_plugin_and_no_user_choice():
  env = {}
  assert xla_flags.skip_absent_tpu(env, tpu=False, plugins=False)
  assert env == {"JAX_PLATFORMS": "cpu"}
  for tpu, plugins in [(True, False), (False, True)]:  # a TPU VM; a GPU (jax-cuda12-plugin)
    env = {}
    assert not xla_flags.skip_absent_tpu(env, tpu=tpu, plugins=plugins) and env == {}
  for name in xla_flags.USER_PLATFORM_VARS:  # the user's own choice, even JAX_PLATFORMS=''
    env = {name: ""}
    assert not xla_flags.skip_absent_tpu(env, tpu=False, plugins=False)
    assert env == {name: ""}


@pytest.mark.skipif(not LIBTPU, reason="libtpu (the aot extra) is not installed")
def test_an_entry_point_on_a_cpu_machine_prints_nothing_from_libtpu(tmp_path):
  if xla_flags.tpu_attached():
    pytest.skip("a TPU is attached: libtpu starts for real here")
  env = {k: v for k, v in os.environ.items() if k not in xla_flags.USER_PLATFORM_VARS}
  # Another process's libtpu lockfile would quiet libtpu here (it stops before its warnings).
  env.update(ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_LOG_DIR=str(tmp_path))
  code = "import rockjax.cli as c; c.setup_process(); import jax; print(jax.devices()[0].platform)"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.split()[-1] == "cpu", out.stderr[-2000:]
  assert "libtpu" not in out.stderr and "TPU" not in out.stderr, out.stderr[-2000:]


def test_compilation_cache_dir_follows_the_users_choice_then_ours_then_the_xdg_default():
  home = {"XDG_CACHE_HOME": "/xdg"}
  assert cli.compilation_cache_dir(home) == "/xdg/rockjax/jax_compilation"
  assert cli.compilation_cache_dir({**home, cli.CACHE_ENV: "/mine"}) == "/mine"
  for off in ("off", "0", "false", "None"):
    assert cli.compilation_cache_dir({**home, cli.CACHE_ENV: off}) is None
  # JAX's own variable wins: setup_process leaves it as the user set it.
  assert cli.compilation_cache_dir({**home, "JAX_COMPILATION_CACHE_DIR": "/theirs"}) is None


def test_an_entry_point_writes_its_compiled_programs_to_the_cache_and_reads_them_back(tmp_path):
  """Two fresh processes compile the same program: the first writes a cache entry, the second
  finds it (jax's persistent-cache hit counter) and writes nothing new."""
  cache = tmp_path / "cache"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update({cli.CACHE_ENV: str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  code = (
    "import rockjax.cli as c; c.setup_process(); import jax, jax.numpy as jnp\n"
    "from jax._src import monitoring\n"
    "hits = []\n"
    "monitoring.register_event_listener(lambda e, **k: hits.append(e))\n"
    "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n"
    "print(sum('cache_hits' in e for e in hits))"
  )

  def run():
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])

  assert run() == 0  # a cold cache: no hit
  entries = sorted(p.name for p in cache.iterdir())
  assert entries, "no cache entry written"
  assert run() >= 1  # the second process read the first one's programs
  assert sorted(p.name for p in cache.iterdir()) == entries  # and compiled nothing new


@pytest.mark.parametrize("setting", ["dir", "off"])
def test_the_configs_cache_compilation_overrides_the_process_default(tmp_path, setting):
  """cache.compilation=DIR moves the cache there; 'off' writes no entry even where the process
  default (ROCKJAX_COMPILATION_CACHE) names a directory."""
  default, chosen = tmp_path / "default", tmp_path / "chosen"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update({cli.CACHE_ENV: str(default), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  value = str(chosen) if setting == "dir" else "off"
  code = (
    "import rockjax.cli as c; c.setup_process(); import jax, jax.numpy as jnp\n"
    f"c.apply_compilation_cache({value!r})\n"
    "jax.jit(lambda x: jnp.cos(x) @ x.T)(jnp.ones((32, 32))).block_until_ready()\n"
  )
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  written = lambda d: sorted(p.name for p in d.iterdir()) if d.exists() else []
  assert written(default) == []
  assert bool(written(chosen)) == (setting == "dir")
