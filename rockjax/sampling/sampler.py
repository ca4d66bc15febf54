"""Jitted KV-cache sampler: temperature / top-k / top-p / greedy, EOS, banned ids, n samples.

    rollout = generate(model, prompt_ids_BxP, prompt_mask_BxP, key=key, max_new_tokens=256,
                       temperature=1.0, eos_ids=(tok.eos_token_id,), num_samples=4)
    rollout.tokens_NxL, rollout.response_mask ...   # N = B * num_samples, L = P + max_new_tokens

Shape letters: B prompts, n samples per prompt, N = B * n rows, P prompt length (prompts are
left-padded), T = max_new_tokens, L = P + T, V vocabulary, S cache slots.

One program: a prefill over the B prompts, the cache repeated n times (prompt-major rows:
sample j of prompt i is row i*n + j), then a `lax.while_loop` that decodes one token per step
for all rows and stops as soon as every row has emitted an EOS (or after T tokens).

Per-step logit pipeline (all in float32):
  raw logits --logit_processor(logits, step)--> --banned ids (static, then per prompt): -inf-->
  greedy: argmax (exact, no noise) | else: /temperature -> top-k -> top-p -> inverse-CDF draw.
Randomness: row r at step t uses fold_in(fold_in(key, r), t), so the output depends only on
the key and the row index, never on how the batch is sharded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh

from rockjax import sharding as shd
from rockjax.sampling import choose as choose_lib
from rockjax.sampling.options import LogitProcessor, SamplingConfig, sampling_config

LOOP_SCOPE = "decode_loop"  # the decode while_loop's name scope (its op_name in compiled HLO)


def vocab_blocks(vocab_size: int) -> int:
  """Over how many devices the decode logits' vocabulary is split under the current mesh
  (jax.set_mesh; 1 without one): the shards `Decoder.logits` constrains them to."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  spec = shd.logical_to_spec(("act_vocab",), (vocab_size,), mesh)[0]
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return math.prod(sizes[a] for a in shd.spec_axes(spec))


@struct.dataclass
class Rollout:
  """The result of `generate`; every array has N = B * num_samples rows (prompt-major).

  tokens [N, L] int32: left-padded prompt, then the response; after a row's first EOS (and on
    the never-generated tail when the loop stops early) the id is `pad_id`.
  response_mask [N, L] int32: 1 exactly on generated tokens up to and including the first EOS.
  attention_mask [N, L] int32: prompt mask + response mask (what a training forward needs).
  lengths [N] int32: response lengths, EOS included.
  truncated [N] bool: the row hit max_new_tokens without emitting an EOS (cut by the length
    limit; every row when eos_ids is empty).
  logprobs [N, L] float32: log-prob of each generated token under the model's *unprocessed*
    softmax (temperature 1, no top-k/p, no bans, no processor): what a teacher-forced forward
    of `tokens` gives, i.e. what OPD's importance weights and analyses use. 0 off the mask.
  sample_logprobs [N, L] float32: log-prob under the distribution actually sampled from
    (processor, bans, temperature, top-k, top-p); 0 off the mask and for greedy decoding.
  prompt_len: P, the column where responses start (static).
  """

  tokens: jax.Array
  response_mask: jax.Array
  attention_mask: jax.Array
  lengths: jax.Array
  truncated: jax.Array
  logprobs: jax.Array
  sample_logprobs: jax.Array
  prompt_len: int = struct.field(pytree_node=False, default=0)


def _batch(x: jax.Array) -> jax.Array:
  """x constrained to rows on the 'batch' logical axis (non-strict: any mesh, or none)."""
  return shd.constrain(x, ("batch",) + (None,) * (x.ndim - 1), strict=False)


def _repeat_rows(x: jax.Array, n: int) -> jax.Array:
  """x's rows repeated n times prompt-major (row i*n + j <- row i)."""
  return jnp.repeat(x, n, axis=0) if n > 1 else x


@struct.dataclass
class Decoding:
  """A decode between two segments: everything the loop carries and every per-row input it reads.

  step: the next token position to choose (1 after the prefill; T when all are done).
  prev_N: the tokens chosen at step - 1 (fed to the model next). cache: the KV cache.
  out: the `choose.emit` carry (tokens_NxT, mask_NxT, logp_NxT, slogp_NxT, done_N).
  row_keys_N, temperature, eos_E, banned_NxK: the draw's inputs, fixed for the whole decode.
  """

  step: jax.Array
  prev_N: jax.Array
  cache: Any
  out: tuple
  row_keys_N: jax.Array
  temperature: jax.Array
  eos_E: jax.Array
  banned_NxK: jax.Array | None


def _emitter(d: Decoding, cfg: SamplingConfig, blocks: int) -> Callable:
  return functools.partial(
    choose_lib.emit,
    row_keys_N=d.row_keys_N,
    temperature=d.temperature,
    eos_E=d.eos_E,
    cfg=cfg,
    banned_NxK=d.banned_NxK,
    blocks=blocks,
  )


def _finished(d: Decoding, cfg: SamplingConfig) -> jax.Array:
  """Whether the decode is over: T positions chosen, or every row has emitted an EOS."""
  return (d.step >= cfg.max_new_tokens) | jnp.all(d.out[-1])


def _advance(model: nnx.Module, d: Decoding, cfg: SamplingConfig, until: jax.Array) -> Decoding:
  """Decode one token per step in a `lax.while_loop` until position `until` (or the end)."""
  N = d.prev_N.shape[0]
  emit = _emitter(d, cfg, vocab_blocks(model.cfg.vocab_size))

  def cond(loop):
    step, _, _, out = loop
    return (step < jnp.minimum(until, cfg.max_new_tokens)) & ~jnp.all(out[-1])

  def body(loop):
    """Feed the previous token (cache slot P+step-1) and choose token `step`."""
    step, prev_N, cache, out = loop
    logits_Nx1xV, cache = model(prev_N[:, None], jnp.ones((N, 1), jnp.int32), cache=cache)
    out, tokens_N = emit(out, logits_Nx1xV[:, 0], step)
    return step + 1, tokens_N, cache, out

  # Named so the dry run finds this loop in the compiled program (rockjax.dry_run.hlo_cycles).
  with jax.named_scope(LOOP_SCOPE):
    step, prev_N, cache, out = jax.lax.while_loop(cond, body, (d.step, d.prev_N, d.cache, d.out))
  return d.replace(step=step, prev_N=prev_N, cache=cache, out=out)


def _rollout(out: tuple, prompt_ids_BxP: jax.Array, prompt_mask_BxP: jax.Array, n: int) -> Rollout:
  """The Rollout of the decode loop's buffers behind the prompts (each repeated n times)."""
  gen_NxT, gen_mask_NxT, logp_NxT, slogp_NxT, done_N = out
  N, P = gen_NxT.shape[0], prompt_ids_BxP.shape[1]
  prompt_ids_NxP = _repeat_rows(prompt_ids_BxP.astype(jnp.int32), n)
  prompt_mask_NxP = _repeat_rows(prompt_mask_BxP, n)
  zeros_NxP = jnp.zeros((N, P), jnp.int32)
  cat = lambda a, b: _batch(jnp.concatenate([a, b], axis=1))
  return Rollout(
    tokens=cat(prompt_ids_NxP, gen_NxT),
    response_mask=cat(zeros_NxP, gen_mask_NxT),
    attention_mask=cat(prompt_mask_NxP, gen_mask_NxT),
    lengths=_batch(jnp.sum(gen_mask_NxT, axis=1)),
    truncated=_batch(~done_N),
    logprobs=cat(zeros_NxP.astype(jnp.float32), logp_NxT),
    sample_logprobs=cat(zeros_NxP.astype(jnp.float32), slogp_NxT),
    prompt_len=P,
  )


def _start(
  model: nnx.Module,
  prompt_ids_BxP: jax.Array,
  prompt_mask_BxP: jax.Array,
  key: jax.Array,
  temperature: jax.Array | float,
  cfg: SamplingConfig,
  banned_ids_BxK: jax.Array | None,
) -> Decoding:
  """Prefill the prompts and choose token 0 from the prefill's logits: a Decoding at step 1."""
  B, P = prompt_ids_BxP.shape
  n, T = cfg.num_samples, cfg.max_new_tokens
  N, S = B * n, P + T - 1  # the last token is never fed back
  prompt_mask_BxP = prompt_mask_BxP.astype(jnp.int32)

  # Prefill the B distinct prompts once; only the last position's logits are needed.
  cache = model.init_cache(B, S, cfg.cache_dtype)
  hidden_BxPxD, cache = model(prompt_ids_BxP, prompt_mask_BxP, cache=cache, return_hidden=True)
  first_logits_BxV = model.logits(hidden_BxPxD[:, -1:], strict=False)[:, 0]

  # n samples per prompt: repeat rows prompt-major (row i*n + j <- prompt i).
  banned_NxK = None  # per-prompt bans are data: repeated with their prompt (sample j of i)
  if banned_ids_BxK is not None:
    banned_NxK = _batch(_repeat_rows(banned_ids_BxK.astype(jnp.int32), n))
  d = Decoding(
    step=jnp.int32(0),
    prev_N=jnp.zeros((N,), jnp.int32),
    cache=cache.repeat_rows(n),
    out=(
      _batch(jnp.full((N, T), cfg.pad_id, jnp.int32)),
      _batch(jnp.zeros((N, T), jnp.int32)),
      _batch(jnp.zeros((N, T), jnp.float32)),
      _batch(jnp.zeros((N, T), jnp.float32)),
      _batch(jnp.zeros((N,), bool)),
    ),
    row_keys_N=_batch(jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(N))),
    temperature=jnp.asarray(temperature, jnp.float32),
    eos_E=jnp.asarray(cfg.eos_ids, jnp.int32),
    banned_NxK=banned_NxK,
  )
  # Token 0 comes from the prefill's logits, outside the loop (no per-step branch on step 0).
  emit = _emitter(d, cfg, vocab_blocks(model.cfg.vocab_size))
  out, first_N = emit(d.out, _repeat_rows(first_logits_BxV, n), jnp.int32(0))
  return d.replace(step=jnp.int32(1), prev_N=first_N, out=out)


def decode(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  prompt_ids_BxP: jax.Array,
  prompt_mask_BxP: jax.Array,
  key: jax.Array,
  temperature: jax.Array | float,
  cfg: SamplingConfig,
  banned_ids_BxK: jax.Array | None = None,
) -> Rollout:
  """The pure sampler in one program (traceable; `decode_jit` is its jitted form); see `generate`."""
  model = nnx.merge(graphdef, state)
  d = _start(model, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned_ids_BxK)
  d = _advance(model, d, cfg, jnp.int32(cfg.max_new_tokens))
  return _rollout(d.out, prompt_ids_BxP, prompt_mask_BxP, cfg.num_samples)


def _start_pure(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned):
  model = nnx.merge(graphdef, state)
  return _start(model, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned)


def _segment_pure(graphdef, state, d: Decoding, cfg: SamplingConfig, steps: int):
  """`steps` more positions of a decode, and whether it is over (one scalar for the host)."""
  d = _advance(nnx.merge(graphdef, state), d, cfg, d.step + steps)
  return d, _finished(d, cfg)


def _finish_pure(d: Decoding, prompt_ids_BxP, prompt_mask_BxP, cfg: SamplingConfig) -> Rollout:
  return _rollout(d.out, prompt_ids_BxP, prompt_mask_BxP, cfg.num_samples)


# The one place the sampler is jitted: the model structure and settings are static; params,
# prompts (sharded on 'batch' by the caller or by `generate(mesh=...)`), key and temperature
# are traced. Nothing is donated: the params are the live student's.
decode_jit = jax.jit(decode, static_argnames=("graphdef", "cfg"))
# The same decode in segments (generate's segment_steps): the prefill, then one program per
# segment of `steps` positions that takes the previous segment's Decoding (donated: the cache is
# updated in place) and returns the next, then the Rollout. Each segment's while_loop runs the
# same body as decode_jit's, so the tokens drawn do not depend on the segment length.
_start_jit = jax.jit(_start_pure, static_argnames=("graphdef", "cfg"))
_segment_jit = jax.jit(
  _segment_pure, static_argnames=("graphdef", "cfg", "steps"), donate_argnums=2
)
_finish_jit = jax.jit(_finish_pure, static_argnames=("cfg",))


class RolloutStopped(Exception):
  """generate's `should_stop` asked to stop between two decode segments; nothing was returned."""

  def __init__(self, step: int):
    super().__init__(f"decode abandoned after {step} positions")
    self.step = step  # positions chosen when it stopped


def generate(
  model: nnx.Module,
  prompt_ids_BxP: jax.Array,
  prompt_mask_BxP: jax.Array,
  *,
  key: jax.Array,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_p: float = 1.0,
  top_k: int = 0,
  greedy: bool = False,
  eos_ids: Sequence[int] = (),
  banned_ids: Sequence[int] = (),
  banned_ids_BxK: Any = None,
  num_samples: int = 1,
  pad_id: int | None = None,
  logit_processor: LogitProcessor | None = None,
  mesh: Mesh | None = None,
  cache_dtype: Any = None,
  segment_steps: int = 0,
  should_stop: Callable[[], bool] | None = None,
) -> Rollout:
  """Samples `num_samples` responses per left-padded prompt; returns a `Rollout` (see its
  docstring, notably which distribution `logprobs` is under).

  key: a jax.random key (same key -> same output). temperature (traced; > 0 unless greedy),
  top_p (1: off), top_k (0: off) shape the sampled distribution; greedy=True is exact argmax
  and ignores them. eos_ids: any of them ends a row (kept, masked 1). banned_ids: -inf at every
  step (compile-time constants). banned_ids_BxK: optional int [B, K], prompt i's own banned ids
  (-1 pads), passed as data so one program serves any ids; all samples of prompt i keep them
  (the knockout census batches candidates this way). pad_id: id written after EOS (default:
  the first eos id, else 0). logit_processor: optional `f(logits_NxV, step) -> logits_NxV`,
  applied before bans (hashed by identity: pass the same function object to avoid recompiling).
  mesh: if given, prompts are placed on ('data', 'fsdp') and the program runs under it (its
  logical rules lay out the cache, the activations and the logits); default: the mesh the
  model's parameters are placed on when it has more than one device, else none (inputs'
  shardings are followed). segment_steps=K > 0: the decode loop runs K positions per program
  (0: all in one), the same tokens; should_stop is asked between segments, True raises
  RolloutStopped (a preempted trainer abandons the rollout instead of finishing it)."""
  cfg, banned_ids_BxK = sampling_config(
    model.cfg.vocab_size,
    prompt_ids_BxP.shape[0],
    banned_ids_BxK,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_p=top_p,
    top_k=top_k,
    greedy=greedy,
    eos_ids=eos_ids,
    banned_ids=banned_ids,
    num_samples=num_samples,
    pad_id=pad_id,
    logit_processor=logit_processor,
    cache_dtype=cache_dtype,
  )
  graphdef, state = nnx.split(model)
  temperature = jnp.float32(1.0 if greedy else temperature)
  args = (graphdef, state, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned_ids_BxK)
  return _decode_placed(_runner(cfg, segment_steps, should_stop), mesh, *args)


def _runner(
  cfg: SamplingConfig, segment_steps: int, should_stop: Callable[[], bool] | None
) -> Callable[..., Rollout]:
  """One program (_decode_all), or segments when they split the loop (T - 1 positions)."""
  if segment_steps < 0:
    raise ValueError(f"segment_steps={segment_steps}: expected 0 (one program) or > 0")
  if segment_steps and segment_steps < cfg.max_new_tokens - 1:
    return functools.partial(_decode_segments, steps=segment_steps, should_stop=should_stop)
  return _decode_all


def _decode_all(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned):
  """The whole decode as one program (decode_jit)."""
  return decode_jit(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned)


def _decode_segments(
  graphdef,
  state,
  prompt_ids_BxP,
  prompt_mask_BxP,
  key,
  temperature,
  cfg,
  banned,
  *,
  steps: int,
  should_stop: Callable[[], bool] | None,
) -> Rollout:
  """The decode in segments of `steps` positions; RolloutStopped when should_stop() says so."""
  d = _start_jit(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned)
  finished = _finished(d, cfg)
  while not bool(finished):  # one scalar to the host per segment
    if should_stop is not None and should_stop():
      raise RolloutStopped(int(d.step))
    d, finished = _segment_jit(graphdef, state, d, cfg, steps)
  return _finish_jit(d, prompt_ids_BxP, prompt_mask_BxP, cfg)


def _decode_placed(
  run: Callable[..., Rollout],
  mesh: Mesh | None,
  graphdef: nnx.GraphDef,
  state: nnx.State,
  prompt_ids_BxP: jax.Array,
  prompt_mask_BxP: jax.Array,
  key: jax.Array,
  temperature: jax.Array,
  cfg: SamplingConfig,
  banned_ids_BxK: Any,
) -> Rollout:
  """`run` (_decode_all or _decode_segments) under `mesh` (default: the parameters'), per-prompt
  inputs on its batch axes."""
  if mesh is None:
    # A model placed on a mesh (e.g. the sampling copy on its decode mesh) decodes under it.
    mesh = _placed_mesh(state)
  if mesh is None:
    return run(
      graphdef, state, prompt_ids_BxP, prompt_mask_BxP, key, temperature, cfg, banned_ids_BxK
    )
  put = lambda x: x if x is None else jax.device_put(x, shd.batch_sharding(x.shape, mesh))
  # The key and temperature may live on another mesh of the same devices (the train state's
  # rng, when decoding on the decode mesh): replicate them onto this one.
  whole = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P()))
  with jax.set_mesh(mesh):
    return run(
      graphdef,
      state,
      put(prompt_ids_BxP),
      put(prompt_mask_BxP),
      whole(key),
      whole(temperature),
      cfg,
      put(banned_ids_BxK),
    )


def _placed_mesh(state: nnx.State) -> Mesh | None:
  """The mesh of the parameters' NamedShardings when it spans several devices, else None."""
  for x in jax.tree.leaves(state):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
      return sharding.mesh
  return None
