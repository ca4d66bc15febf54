"""rockjax.dry_run.hlo_cost: matmul FLOPs per device read from compiled HLO, loops by trip count.

References are hand counts (2 x M x K x N per matmul, times the trips written in the test),
flops.step_model_flops' analytic count for a real step, and XLA's own cost analysis of a
loop-free convolution.
"""

import importlib.util
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs import tiny
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax.config import settings as settings_lib
from rockjax.dry_run import hlo_cost, hlo_text
from rockjax.dry_run import flops
from rockjax.dry_run import report as dry_run

M, K, N = 16, 32, 24
MATMUL = 2 * M * K * N


def hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


def xw():
  return jnp.ones((M, K)), jnp.ones((K, K)), jnp.ones((K, N))


def test_one_matmul():
  x, _, w = xw()
  got = hlo_cost.matmul_flops(hlo(lambda a, b: a @ b, x, w))
  assert got.flops == MATMUL
  assert got.loops == [] and got.unknown_loops == [] and got.unrecognised_custom_calls == []


def test_scan_of_seven_counts_the_body_seven_times():
  """XLA's own cost analysis counts the body once; the counter multiplies by the trips."""
  x, sq, _ = xw()

  def f(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=7)[0]

  text = hlo(f, x, sq)
  got = hlo_cost.matmul_flops(text)
  assert got.flops == 7 * 2 * M * K * K
  assert [(loop.trips, loop.source) for loop in got.loops] == [(7, "known_trip_count")]
  xla = jax.jit(f).lower(x, sq).compile().cost_analysis()["flops"]
  assert xla < 2 * 2 * M * K * K  # XLA: once (plus elementwise)


def without_known_trip_counts(text: str) -> str:
  """The HLO with XLA's recorded trip counts removed (as XLA:TPU prints it)."""
  stripped = re.sub(r',?"known_trip_count":\{"n":"\d+"\}', "", text)
  assert "known_trip_count" not in stripped
  return stripped


@pytest.mark.parametrize(
  "start,stop,step,trips", [(0, 5, 1, 5), (2, 9, 3, 3), (9, 2, -2, 4), (1, 10, 4, 3)]
)
def test_while_loop_trips_from_the_condition(start, stop, step, trips):
  """A while_loop counting from start by step while i < stop (> for a negative step): the trip
  count from the condition's bound, the counter's start and its step, with XLA's recorded
  count removed (XLA:TPU does not record it)."""
  x, sq, _ = xw()

  def f(x, w):
    def cond(c):
      return c[0] < stop if step > 0 else c[0] > stop

    return jax.lax.while_loop(cond, lambda c: (c[0] + step, c[1] @ w), (start, x))[1]

  got = hlo_cost.matmul_flops(without_known_trip_counts(hlo(f, x, sq)))
  assert [(loop.trips, loop.source) for loop in got.loops] == [(trips, "condition")]
  assert got.flops == trips * 2 * M * K * K


def test_fori_loop_and_nested_loops_multiply():
  """fori_loop(0, 5) inside a scan of 3, next to a scan of 4 inside it: 3 x (5 + 4 x 2)."""
  x, sq, _ = xw()

  def f(x, w):
    def outer(c, _):
      c = jax.lax.fori_loop(0, 5, lambda i, c: c @ w, c)
      c = jax.lax.scan(lambda d, _: ((d @ w) @ w, None), c, None, length=4)[0]
      return c, None

    return jax.lax.scan(outer, x, None, length=3)[0]

  text = hlo(f, x, sq)
  want = 3 * (5 + 4 * 2) * 2 * M * K * K
  assert hlo_cost.matmul_flops(text).flops == want
  assert hlo_cost.matmul_flops(without_known_trip_counts(text)).flops == want


def test_conditional_counts_its_most_expensive_branch():
  x, sq, w = xw()

  def f(i, x, s, w):
    branches = [lambda: x @ w, lambda: ((x @ s) @ s) @ w, lambda: (x @ s) @ w]
    return jax.lax.switch(i, branches)

  got = hlo_cost.matmul_flops(hlo(f, 1, x, sq, w))
  assert got.flops == 2 * (2 * M * K * K) + MATMUL


def test_unknown_trip_count_is_named_and_counted_once():
  """A loop whose bound is an argument: counted once, and said so."""
  x, sq, _ = xw()

  def f(n, x, w):
    return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] @ w), (0, x))[1]

  got = hlo_cost.matmul_flops(hlo(f, 5, x, sq))
  assert got.flops == 2 * M * K * K
  assert [loop.trips for loop in got.loops] == [None]
  assert len(got.unknown_loops) == 1 and "counted once" in got.unknown_loops[0]


def test_convolution_counts_valid_positions_like_xla():
  """A padded, dilated 1-D convolution: the valid (output, kernel) pairs, counted by hand
  (and XLA's loop-free cost analysis agrees on the matmul part)."""
  batch, cin, cout, length, width = 2, 3, 5, 10, 3
  x = jnp.ones((batch, cin, length))
  k = jnp.ones((cout, cin, width))

  def f(x, k):
    return jax.lax.conv_general_dilated(x, k, (1,), [(2, 1)], rhs_dilation=(2,))

  out_len = length + 3 - (width - 1) * 2  # 9 outputs
  pairs = sum(0 <= o - 2 + 2 * j < length for o in range(out_len) for j in range(width))
  got = hlo_cost.matmul_flops(hlo(f, x, k))
  assert got.flops == 2 * batch * cin * cout * pairs
  assert got.by_kind == {"convolution": got.flops}


def test_hlo_reader_joins_multi_line_attributes_and_sparse_core_closers():
  """Instructions whose attributes span lines, and a computation closed by
  '}, execution_thread=...', as XLA:TPU prints them."""
  text = """HloModule m

%side (p: f32[4]) -> f32[4] {
  ROOT %p = f32[4]{0} parameter(0)
}, execution_thread="sparsecore"

ENTRY %main (a: f32[4,8], b: f32[8,2]) -> f32[4,2] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  ROOT %d = f32[4,2]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}, frontend_attributes={k={
"meta":"{\\"x\\": 1}"
}}
}
"""
  module = hlo_text.parse_module(text)
  assert set(module.computations) == {"side", "main"} and module.entry == "main"
  assert module.computations["main"].root == "d"
  assert hlo_cost.matmul_flops(text).flops == 2 * 4 * 8 * 2


def test_ragged_dot_in_both_modes():
  """HLO's ragged-dot (as XLA prints it; XLA:CPU lowers jax's ragged_dot to dense dots):
  rows split in 4 groups [64, 32] x [4, 32, 16] is 2 x 64 x 32 x 16; the weight-gradient form
  [32, 64] x [64, 16] -> [4, 32, 16] (ragged contraction) is 2 x 32 x 64 x 16, not 4 times it."""
  text = """HloModule m

ENTRY %main (x: f32[64,32], w: f32[4,32,16], g: s32[4], xt: f32[32,64], dy: f32[64,16]) -> f32[64,16] {
  %x = f32[64,32]{1,0} parameter(0)
  %w = f32[4,32,16]{2,1,0} parameter(1)
  %g = s32[4]{0} parameter(2)
  %xt = f32[32,64]{1,0} parameter(3)
  %dy = f32[64,16]{1,0} parameter(4)
  %dw = f32[4,32,16]{2,1,0} ragged-dot(%xt, %dy, %g), lhs_contracting_dims={1}, rhs_contracting_dims={0}, lhs_ragged_dims={1}
  ROOT %y = f32[64,16]{1,0} ragged-dot(%x, %w, %g), lhs_contracting_dims={1}, rhs_contracting_dims={1}, lhs_ragged_dims={0}, rhs_group_dims={0}
}
"""
  got = hlo_cost.matmul_flops(text)
  assert got.by_kind == {"ragged-dot": 2 * 64 * 32 * 16 * 2}


def test_collectives_are_listed_with_shapes_and_loops(devices8):
  """An all-gather outside any loop and a psum inside a scan of 3 (on 8 devices)."""
  mesh = jax.make_mesh((8,), ("x",), devices=devices8)

  def f(a):
    def local(a):
      full = jax.lax.all_gather(a, "x", tiled=True)
      summed = jax.lax.scan(lambda c, _: (jax.lax.psum(c * 2, "x"), None), a, None, length=3)
      return full[:2] + summed[0]

    spec = PartitionSpec("x")
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(a)

  a = jax.device_put(jnp.ones((16, 4), jnp.float32), NamedSharding(mesh, PartitionSpec("x")))
  found = hlo_cost.collectives(hlo(f, a))
  kinds = {(c.kind, c.in_loop, c.executions) for c in found}
  assert ("all-gather", False, 1) in kinds and ("all-reduce", True, 3) in kinds
  (gather,) = [c for c in found if c.kind == "all-gather"]
  assert [(str(x), x.size) for x in gather.arrays] == [("f32[16,4]", 64)]
  assert hlo_cost.collective_summary(found)["all-gather"] == 1


def test_replicated_work_shows_as_eight_times_the_even_share(devices8):
  """The same batched matmul with rows split over 8 devices vs one row everyone computes:
  per device it is the even share, then the whole (8x the even share)."""
  mesh = jax.make_mesh((8,), ("x",), devices=devices8)
  D = 64
  w = jax.device_put(jnp.ones((D, D)), NamedSharding(mesh, PartitionSpec()))

  def per_device(rows, spec):
    x = jax.device_put(jnp.ones((rows, D)), NamedSharding(mesh, spec))
    fn = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, spec))
    return hlo_cost.matmul_flops(fn.lower(x, w).compile().as_text()).flops

  assert per_device(8, PartitionSpec("x")) == 2 * 1 * D * D  # one row each: the even share
  one_row = per_device(1, PartitionSpec())
  assert one_row / (2 * 1 * D * D / 8) == 8  # each device does the whole row


@pytest.fixture(scope="module")
def tiny_cpu_step(devices8):
  """configs/tiny.py with einsum attention (student and teacher), compiled on 8 CPU devices."""
  c = tiny.get_config()
  c.model.attention = c.teacher.attention = "einsum"
  return c, dry_run.compile_step(c, devices8)


def attention_flops(cfg, tokens: int, length: int) -> float:
  """The analytic (causal) attention term of one forward pass over `tokens`."""
  return tokens * (
    flops.forward_flops_per_token(cfg, length) - flops.forward_flops_per_token(cfg, 0)
  )


def test_tiny_step_per_device_times_8_matches_the_analytic_count(tiny_cpu_step):
  """configs/tiny.py's scanned step on 8 fake CPU devices (16 rows, 2 per device): the count
  per device x 8 against step_model_flops. The one known gap: einsum attention computes the
  full L x L scores where the analytic count takes the causal half, so every pass's
  attention term counts twice. Elementwise work (norms, softmax, optimiser) is in neither."""
  c, compiled = tiny_cpu_step
  got = hlo_cost.matmul_flops(compiled.as_text())
  assert got.unknown_loops == [] and got.unrecognised_custom_calls == []
  assert got.loops and {loop.source for loop in got.loops} == {"known_trip_count"}
  rows, length = settings_lib.batch_shape(c)
  student, teacher = loading.arch_config(c.model), loading.arch_config(c.teacher)
  passes = 3 + (student.remat != "none")
  full_square = passes * attention_flops(student, rows * length, length)
  full_square += attention_flops(teacher, rows * length, length)
  want = flops.step_model_flops(c)["total"] + full_square
  assert got.flops * 8 == pytest.approx(want, rel=0.02)
  # XLA's own figure counts each scanned layer once: well below.
  assert compiled.cost_analysis()["flops"] * 8 < 0.8 * want


def test_batched_dot():
  """A batched einsum: 2 x batch x M x N x contracted."""
  a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))
  text = hlo(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), a, b)
  assert hlo_cost.matmul_flops(text).flops == 2 * 3 * 4 * 6 * 5


# ---- XLA:TPU programs, compiled ahead of time for v5p:2x2x2 (needs libtpu) --------------

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None, reason='needs the aot extra: pip install ".[aot]"'
)
TOPOLOGY = "v5p:2x2x2"


@needs_libtpu
def test_splash_kernels_by_shape_rule():
  """The gradient of splash attention over 8 rows, one per chip: the forward kernel 4, the dq
  kernel 6 and the dkv kernel 8 matmuls of b h L L E (x 1/2, causal), each recognised by name
  in XLA:TPU's HLO; XLA's cost analysis sees next to nothing of them."""
  from rockjax.models import attention  # pylint: disable=g-import-not-at-top

  devices = dry_run.topology_devices(TOPOLOGY)
  mesh = shd.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, devices=list(devices))
  B, L, H, K, E = 8, 1024, 4, 2, 128

  def loss(q, k, v, seg):
    out = attention.attend(q, k, v, seg, implementation="splash", block_size=512)
    return out.astype(jnp.float32).sum()

  rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
  q = jax.ShapeDtypeStruct((B, L, H, E), jnp.bfloat16, sharding=rows)
  kv = jax.ShapeDtypeStruct((B, L, K, E), jnp.bfloat16, sharding=rows)
  seg = jax.ShapeDtypeStruct((B, L), jnp.int32, sharding=rows)
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, seg).compile()
  got = hlo_cost.matmul_flops(compiled.as_text())
  unit = 1 * H * L * L * E / 2  # one row per chip, causal half
  assert got.by_kind == {"splash_fwd": 4 * unit, "splash_dq": 6 * unit, "splash_dkv": 8 * unit}
  assert got.unrecognised_custom_calls == []
  assert compiled.cost_analysis()["flops"] < 0.01 * got.flops


@needs_libtpu
def test_ragged_dot_kernel_uses_its_cost_estimate():
  """jax.lax.ragged_dot on a TPU chip is a Mosaic kernel with a cost estimate: 2 M K N (each
  row meets one group); its group-offset kernel does no matmul."""
  device = jax.sharding.SingleDeviceSharding(dry_run.topology_devices(TOPOLOGY)[0])
  Mr, Kr, Nr, G = 512, 256, 384, 4
  x = jax.ShapeDtypeStruct((Mr, Kr), jnp.bfloat16, sharding=device)
  w = jax.ShapeDtypeStruct((G, Kr, Nr), jnp.bfloat16, sharding=device)
  sizes = jax.ShapeDtypeStruct((G,), jnp.int32, sharding=device)
  got = hlo_cost.matmul_flops(jax.jit(jax.lax.ragged_dot).lower(x, w, sizes).compile().as_text())
  assert got.flops == 2 * Mr * Kr * Nr
  assert got.unrecognised_custom_calls == []


@needs_libtpu
def test_tiny_tpu_step_matches_the_analytic_count():
  """configs/tiny.py (einsum attention) compiled by XLA:TPU: most dots become convolutions
  and the loops carry no recorded trip count (read from their conditions); per chip x 8
  against the analytic count with the full-square attention, as on the CPU."""
  c = dry_run.for_topology(tiny.get_config(), TOPOLOGY)
  c.model.attention = c.teacher.attention = "einsum"
  compiled = dry_run.compile_step(c, dry_run.topology_devices(TOPOLOGY))
  got = hlo_cost.matmul_flops(compiled.as_text())
  assert got.by_kind.get("convolution", 0) > 0.5 * got.flops
  assert got.loops and {loop.source for loop in got.loops} == {"condition"}
  assert got.unknown_loops == [] and got.unrecognised_custom_calls == []
  rows, length = settings_lib.batch_shape(c)
  student, teacher = loading.arch_config(c.model), loading.arch_config(c.teacher)
  passes = 3 + (student.remat != "none")
  full_square = passes * attention_flops(student, rows * length, length)
  full_square += attention_flops(teacher, rows * length, length)
  want = flops.step_model_flops(c)["total"] + full_square
  assert got.flops * 8 == pytest.approx(want, rel=0.02)


def test_loop_bound_carried_in_the_tuple():
  """A bound XLA hoisted into the loop tuple (a constant 6 the body passes on unchanged) and
  a counter starting at 1 stepping by 2: 1, 3, 5 -> 3 trips of an 8 x 8 x 8 dot."""
  text = """HloModule m

%body (p: (s32[], f32[8,8], s32[])) -> (s32[], f32[8,8], s32[]) {
  %p = (s32[], f32[8,8]{1,0}, s32[]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,8]{1,0} get-tuple-element(%p), index=1
  %n = s32[] get-tuple-element(%p), index=2
  %two = s32[] constant(2)
  %next = s32[] add(%i, %two)
  %y = f32[8,8]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[8,8]{1,0}, s32[]) tuple(%next, %y, %n)
}

%cond (q: (s32[], f32[8,8], s32[])) -> pred[] {
  %q = (s32[], f32[8,8]{1,0}, s32[]) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %m = s32[] get-tuple-element(%q), index=2
  ROOT %lt = pred[] compare(%j, %m), direction=LT
}

ENTRY %main (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8]{1,0} parameter(0)
  %one = s32[] constant(1)
  %six = s32[] constant(6)
  %init = (s32[], f32[8,8]{1,0}, s32[]) tuple(%one, %a, %six)
  %w = (s32[], f32[8,8]{1,0}, s32[]) while(%init), condition=%cond, body=%body
  ROOT %out = f32[8,8]{1,0} get-tuple-element(%w), index=1
}
"""
  got = hlo_cost.matmul_flops(text)
  assert [(loop.trips, loop.source) for loop in got.loops] == [(3, "condition")]
  assert got.flops == 3 * 2 * 8 * 8 * 8
