"""rockjax.sampling.rollout_copy: the sampling copy against numpy casts, the compiled decode loop's
collectives (read from the HLO text) and today's path (sampling from the train params)."""

import itertools
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from rockjax import sampling
from rockjax import sharding as shd
from rockjax.sampling import rollout_copy as rp
from tests.fixtures import SAMPLER_CFG, left_padded_batch, random_model, stacked_copy

CFG = SAMPLER_CFG
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
B, P, T = 4, 7, 8
KEY = jax.random.key(0)
# 4 prompts x 3 samples = 12 rows: sharded 4-way over ('data', 'fsdp').
SAMPLING = sampling.SamplingConfig(
  max_new_tokens=T, top_p=0.95, top_k=40, eos_ids=(5, 11, 17), num_samples=3, pad_id=5
)
TEMPERATURE = jnp.float32(0.8)
FIELDS = ("tokens", "response_mask", "attention_mask", "lengths")


@pytest.fixture(scope="module")
def setup(devices8):
  """A scanned (the default) model in the train layout on a 2x2x2 mesh, and its prompts."""
  mesh = shd.make_mesh(MESH)
  graphdef, params = nnx.split(shd.shard_model(stacked_copy(random_model(CFG)), mesh))
  ids, mask = left_padded_batch(CFG.vocab_size, batch=B, length=P)
  put = lambda x: jax.device_put(x, shd.batch_sharding(x.shape, mesh))
  return mesh, graphdef, params, put(ids), put(mask)


def _decode(mesh, graphdef, params, ids, mask) -> tuple[sampling.Rollout, str]:
  """(the rollout as numpy, the compiled decode program's HLO text): one compile for both."""
  with jax.set_mesh(mesh):
    args = (ids, mask, KEY, TEMPERATURE)
    compiled = sampling.decode_jit.lower(graphdef, params, *args, SAMPLING).compile()
    return jax.tree.map(np.asarray, compiled(params, *args)), compiled.as_text()


def _computations(hlo: str) -> dict[str, str]:
  """HLO module text -> {computation name: its instructions}."""
  comps, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head:
      name, comps[head.group(1)] = head.group(1), ""
    elif line.startswith("}"):
      name = None
    elif name:
      comps[name] += line + "\n"
  return comps


def _loop_computations(hlo: str) -> list[str]:
  """Every computation a while-loop body runs (nested loops, fusions and calls included)."""
  comps = _computations(hlo)
  todo = [b for c in comps.values() for b in re.findall(r"while\(.*?body=%?([\w.\-]+)", c)]
  assert todo, "no while loop in the compiled decode program"
  seen = set()
  while todo:
    name = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    body = comps[name]
    todo += re.findall(r"(?:body|condition|calls|to_apply)=%?([\w.\-]+)", body)
    for group in re.findall(r"branch_computations=\{([^}]*)\}", body):
      todo += [s.strip().lstrip("%") for s in group.split(",")]
  return [comps[n] for n in seen]


def _all_gathers(text: str) -> list[tuple[int, ...]]:
  """Result dims of the floating-point all-gathers in `text` (synchronous or async start)."""
  out = []
  for dtype, dims in re.findall(r"= (bf16|f16|f32)\[([\d,]*)\]\S* all-gather(?:-start)?\(", text):
    out.append(tuple(int(d) for d in dims.split(",") if d))
  return out


def _parameter_shapes(params) -> set[tuple[int, ...]]:
  """Every shape a parameter (or one scanned layer's slice of it) has when some of its dims
  are split over up to 8 devices: what gathering a parameter over a mesh axis produces."""
  shapes = set()
  for x in jax.tree.leaves(params):
    for dims in (x.shape, x.shape[1:]):
      splits = [[d // k for k in (1, 2, 4, 8) if d % k == 0] for d in dims]
      shapes.update(itertools.product(*splits))
  return shapes


def _weight_gathers(hlo: str, params) -> tuple[list, list]:
  """(all-gathers of parameter shapes in the decode loop, all-gathers in the loop body)."""
  body = _all_gathers("".join(_loop_computations(hlo)))
  return [s for s in body if s in _parameter_shapes(params)], body


@pytest.fixture(scope="module")
def train_path(setup):
  """Today's path: decoding straight from the FSDP-sharded float32 train params."""
  mesh, graphdef, params, ids, mask = setup
  copier = rp.make_copier(params, mesh, dtype="float32", layout="train")
  assert copier(params) is params  # 'train' makes no copy
  return _decode(mesh, graphdef, params, ids, mask)


def test_train_layout_gathers_weights_in_the_decode_loop(setup, train_path):
  _, _, params, _, _ = setup
  gathered, body = _weight_gathers(train_path[1], params)
  # Every decode step gathers each layer's FSDP-sharded matrices (q/k/v/o, gate/up/down).
  assert len(gathered) >= 7, f"expected weight all-gathers in the decode loop, found {body}"
  assert (64, 48) in gathered  # gate/up [64, 96]: gathered over fsdp, still tensor-split


@pytest.mark.parametrize(
  "layout,dtype",
  [
    ("replicated", "float32"),
    ("tensor", "float32"),
    ("replicated", "bfloat16"),
    ("tensor", "bfloat16"),
  ],
)
def test_copy_decodes_without_weight_gathers(setup, train_path, layout, dtype):
  mesh, graphdef, params, ids, mask = setup
  copy = rp.make_copier(params, mesh, dtype=dtype, layout=layout)(params)
  # The copy lives on the decode mesh (same devices, data x tensor); prompts go there too.
  dmesh = rp.decode_mesh(params, mesh, layout)
  assert list(dmesh.devices.flat) == list(mesh.devices.flat)
  assert dmesh.shape["fsdp"] == dmesh.shape["context"] == 1
  ids, mask = (jax.device_put(x, shd.batch_sharding(x.shape, dmesh)) for x in (ids, mask))
  # Values: exactly numpy's cast of the train params (round to nearest even for bfloat16).
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(copy)):
    assert y.dtype == np_dtype
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x).astype(np_dtype))
  # Layout: whole on every device, or split over 'tensor' only (the embedding on vocab).
  specs = [y.sharding.spec for y in jax.tree.leaves(copy)]
  if layout == "replicated":
    assert all(y.sharding.is_fully_replicated for y in jax.tree.leaves(copy))
  else:
    assert {a for s in specs for a in s if a is not None} == {"tensor"}
    assert copy["embed_tokens"].get_value().sharding.spec == PartitionSpec("tensor", None)
  held = sum(s.data.nbytes for y in jax.tree.leaves(copy) for s in y.addressable_shards[:1])
  assert held == rp.bytes_per_device(params, mesh, dtype=dtype, layout=layout)

  out, hlo = _decode(dmesh, graphdef, copy, ids, mask)
  gathered, body = _weight_gathers(hlo, copy)
  assert not gathered, f"weight all-gathers {gathered} in the decode loop (all: {body})"
  everywhere = [s for s in _all_gathers(hlo) if s in _parameter_shapes(copy)]
  assert not everywhere, f"weight all-gathers {everywhere} outside the loop"
  ref = train_path[0]
  if dtype == "float32":
    # The same key gives today's rollouts: identical tokens and masks, log-probs to rounding
    # (the copy's matmuls split their sums differently from the FSDP layout's).
    for name in FIELDS:
      np.testing.assert_array_equal(getattr(out, name), getattr(ref, name), name)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    np.testing.assert_allclose(out.sample_logprobs, ref.sample_logprobs, atol=1e-5)
  else:
    # bfloat16 weights change the logits, so tokens may differ; the rollout is well formed.
    np.testing.assert_array_equal(out.tokens[:, :P], ref.tokens[:, :P])
    assert ((out.tokens >= 0) & (out.tokens < CFG.vocab_size)).all()
    np.testing.assert_array_equal(out.lengths, out.response_mask.sum(1))
    on = out.response_mask == 1
    assert np.isfinite(out.logprobs).all() and (out.logprobs[on] < 0).all()
    assert not out.logprobs[~on].any()


def test_rows_replicate_when_the_batch_axes_do_not_divide_them(devices8):
  # The paper's shape: 1 prompt x 4 samples on an fsdp=8 mesh -> the 4 rows on every device.
  mesh = shd.make_mesh({"fsdp": 8})
  graphdef, params = nnx.split(shd.shard_model(stacked_copy(random_model(CFG)), mesh))
  ids, mask = (jnp.asarray(x) for x in left_padded_batch(CFG.vocab_size, batch=1, length=P))
  kw = dict(key=KEY, max_new_tokens=T, temperature=0.8, eos_ids=(5,), num_samples=4, mesh=mesh)
  plain = sampling.generate(nnx.merge(graphdef, params), ids, mask, **kw)
  copier = rp.make_copier(params, mesh, dtype="float32", layout="replicated")
  with rp.sampling_model(copier, graphdef, params) as student:
    mine = sampling.generate(student, ids, mask, **kw)
  assert mine.tokens.sharding.is_fully_replicated
  for name in FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(mine, name)), np.asarray(getattr(plain, name)))
  np.testing.assert_allclose(np.asarray(mine.logprobs), np.asarray(plain.logprobs), atol=1e-5)


def test_copy_is_deleted_on_leaving_and_train_params_are_kept(setup):
  mesh, graphdef, params, _, _ = setup
  copier = rp.make_copier(params, mesh, dtype="bfloat16", layout="replicated")
  with rp.sampling_model(copier, graphdef, params) as student:
    copy = jax.tree.leaves(nnx.state(student))
    assert not any(x.is_deleted() for x in copy)
  assert all(x.is_deleted() for x in copy)
  live = {id(x) for x in jax.live_arrays()}
  assert not live & {id(x) for x in copy}
  assert not any(x.is_deleted() for x in jax.tree.leaves(params))
  # Where jit returns a train array itself (same dtype and layout), release keeps it.
  one = shd.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
  local = jax.device_put(params, jax.sharding.NamedSharding(one, PartitionSpec()))
  copy = rp.make_copier(local, one, dtype="float32", layout="replicated")(local)
  rp.release(copy, local)
  for x, y in zip(jax.tree.leaves(local), jax.tree.leaves(copy)):
    assert not x.is_deleted() and (y is x or y.is_deleted())
  np.testing.assert_array_equal(
    np.asarray(jax.tree.leaves(local)[0]), np.asarray(jax.tree.leaves(params)[0])
  )


@pytest.mark.slow
def test_training_frees_the_copy_before_each_update(tmp_path, monkeypatch, devices8):
  """train.run on configs/tiny.py: the rollout's copy is deleted when the train step runs, and
  the evaluation after the last step samples from a copy of its own."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from rockjax.runner import loop as train  # pylint: disable=g-import-not-at-top

  c = tiny.get_config()
  c.update_from_flattened_dict({"steps": 2, "eval.every": 2, "eval.num_prompts": 4})
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.opd.rollout_dtype = "bfloat16"
  copies, seen_at_step = [], []
  build = train.build_experiment

  def instrumented(*args, **kwargs):
    exp = build(*args, **kwargs)
    copier, step = exp.sampling_copy, exp.train_step

    def copy(params):
      made = copier(params)
      copies.append(jax.tree.leaves(made))
      return made

    def train_step(*a):
      seen_at_step.append([x.is_deleted() for leaves in copies for x in leaves])
      return step(*a)

    exp.sampling_copy, exp.train_step = copy, train_step
    return exp

  monkeypatch.setattr(train, "build_experiment", instrumented)
  out = train.run(c, str(tmp_path))
  assert out.completed and len(copies) == 3  # 2 rollouts, then the final evaluation
  n = len(copies[0])
  # At step s the s rollout copies made so far are all deleted already.
  assert [len(s) for s in seen_at_step] == [n, 2 * n] and all(all(s) for s in seen_at_step)
  assert all(x.is_deleted() and x.dtype == jnp.bfloat16 for leaves in copies for x in leaves)
  assert not any(x.is_deleted() for x in jax.tree.leaves(out.state.params))
