"""The rollout's cost in the dry run: XLA:TPU estimated cycles summed by hand-checked rules
(rockjax.dry_run.hlo_cycles), and the decode-loop checks (rockjax.dry_run.rollout_cost) against a program that
moves its cache and gathers its head (the sampler before the decode layout) and, with libtpu,
against today's sampler compiled for v5p:2x2x2."""

import gzip
import importlib.util
import os

import pytest

from rockjax.dry_run import hlo_cycles, rollout_cost
from rockjax.dry_run.hlo_text import parse_module

HERE = os.path.dirname(os.path.abspath(__file__))
needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None, reason='needs the aot extra: pip install ".[aot]"'
)

# A decode loop (op_name carries the scope) of unknown trip count holding a layer loop of 3
# trips; cycles on the fusions as XLA:TPU writes them.
HLO = """HloModule m

%fused (x: f32[8]) -> f32[8] {
  ROOT %x = f32[8]{0} parameter(0)
}

%layer_body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %y = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused, backend_config={"window_config":{"estimated_cycles":"100"}}
  ROOT %t = (s32[], f32[8]{0}) tuple(%next, %y)
}

%layer_cond (q: (s32[], f32[8])) -> pred[] {
  %q = (s32[], f32[8]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %three = s32[] constant(3)
  ROOT %lt = pred[] compare(%j, %three), direction=LT
}

%step_body (sp: (s32[], f32[8])) -> (s32[], f32[8]) {
  %sp = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%sp), index=1
  %lzero = s32[] constant(0)
  %linit = (s32[], f32[8]{0}) tuple(%lzero, %x)
  %lw = (s32[], f32[8]{0}) while(%linit), condition=%layer_cond, body=%layer_body
  %h = f32[8]{0} get-tuple-element(%lw), index=1
  %z = f32[8]{0} fusion(%h), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"7"}
  %s = s32[] get-tuple-element(%sp), index=0
  ROOT %st = (s32[], f32[8]{0}) tuple(%s, %z)
}

%step_cond (sq: (s32[], f32[8])) -> pred[] {
  %sq = (s32[], f32[8]{0}) parameter(0)
  %cx = f32[8]{0} get-tuple-element(%sq), index=1
  %cy = f32[8]{0} fusion(%cx), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"2"}
  %cs = s32[] get-tuple-element(%sq), index=0
  %k = s32[] constant(5)
  ROOT %ne = pred[] compare(%cs, %k), direction=NE
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %pre = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"1000"}
  %ezero = s32[] constant(0)
  %init = (s32[], f32[8]{0}) tuple(%ezero, %pre)
  %w = (s32[], f32[8]{0}) while(%init), condition=%step_cond, body=%step_body, metadata={op_name="jit(decode)/decode_loop/while"}
  ROOT %out = f32[8]{0} get-tuple-element(%w), index=1
}
"""


def test_cycles_of_one_decode_step_by_hand():
  """One step = condition (2) + the layer loop's 3 trips x 100 + 7 = 309 cycles; the whole
  program counts the data-dependent decode loop once: 1000 + 309."""
  step, body, trips = hlo_cycles.loop_iteration(HLO, "decode_loop")
  assert step.cycles == 2 + 3 * 100 + 7 and body == "step_body" and trips is None
  module = parse_module(HLO)
  whole = hlo_cycles.cycles(module, module.entry)
  assert whole.cycles == 1000 + 309 and whole.unknown_loops == ["w"]
  with pytest.raises(ValueError, match="no while loop with 'prefill'"):
    hlo_cycles.loop_iteration(HLO, "prefill")


def _before() -> str:
  """The sampler as compiled before the decode layout (bf16 'replicated' copy of the paper's
  Qwen3-4B, 2 prompts x 4 samples, 800 + 8000 tokens, v5p:2x2x2), its decode loop's op_name
  given the scope today's sampler puts there."""
  with gzip.open(os.path.join(HERE, "decode_before.hlo.txt.gz"), "rt") as f:
    return f.read()


def test_checks_catch_the_cache_round_trip_and_the_head_gather():
  text = _before()
  layer_cache = 2 * 8 * 8799 * 128 * 2  # one layer's K on a chip: 2 rows, 8 heads, bf16
  moves = rollout_cost.loop_moves(text, layer_cache)
  # Each layer's K and V sliced out of the stacked cache and written back, every step.
  assert any("dynamic-slice" in m and "bf16[2,8,8799,128]" in m for m in moves), moves
  assert any("dynamic-update-slice" in m and "34.4 MiB" in m for m in moves), moves
  big = [
    c
    for c in rollout_cost.loop_collectives(text)
    if c["bytes"] >= rollout_cost.COLLECTIVE_LIMIT_BYTES
  ]
  # The tied embedding gathered for the LM head inside the loop: 151936 x 2560 bf16.
  assert [(c["kind"], c["shapes"], c["bytes"]) for c in big] == [
    ("all-gather", ["bf16[151936,2560]"], 151936 * 2560 * 2)
  ]


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tensor", "replicated"])
def test_decode_loop_moves_no_weight_and_no_cache_on_v5p(layout):
  """The paper's tied Qwen3-4B student (4 of its 36 layers, 800 + 1024 tokens) compiled for
  v5p:2x2x2: no collective of 1 MiB or more and nothing of one layer's cache size (3.6 MiB a
  chip) written inside the decode loop. Fails on the sampler before the decode layout (the
  test above reads that program). Shorter caches are not a test of this: XLA then moves a
  cache this small whole into on-chip memory, and the per-step logits outgrow a layer's cache."""
  from configs import qwen3_30b_a3b_to_4b
  from rockjax import sharding as shd
  from rockjax.dry_run import report as dry_run

  c = qwen3_30b_a3b_to_4b.get_config()
  assert c.model.arch.tie_word_embeddings
  c.model.arch.num_layers = 4
  c.data.max_prompt_len, c.opd.max_new_tokens = 800, 1024
  c.opd.rollout_sharding = layout
  c = dry_run.for_topology(c, "v5p:2x2x2")
  devices = dry_run.topology_devices("v5p:2x2x2")
  mesh = shd.make_mesh(dry_run.declared_mesh_shape(c), devices=list(devices))
  compiled, dmesh = rollout_cost.compile_rollout(c, mesh)
  text = compiled.as_text()
  big = [
    c
    for c in rollout_cost.loop_collectives(text)
    if c["bytes"] >= rollout_cost.COLLECTIVE_LIMIT_BYTES
  ]
  assert not big, big
  assert not rollout_cost.loop_moves(text, rollout_cost.layer_cache_bytes(c, dmesh))
  step, _, _ = hlo_cycles.loop_iteration(text, "decode_loop")
  assert step.cycles > 0 and not step.unknown_loops
