"""The detection corpus: student decodes of an evaluation set, scored teacher-forced, on disk.

The paper detects rocks on decodes of a fixed evaluation set at one checkpoint, not on training
rollouts: the student decodes every prompt (greedy by default), then both models score the
decode teacher-forced and each response position becomes one Parquet row

    seq_id int64, position int32, token_id int32, kl float32,
    student_entropy float32, teacher_entropy float32

(`position` counts from 0 at the first response token; `kl` is the configured divergence of
the student from the teacher at that position, float32, at the divergence temperature; the
entropies are of the two models' distributions at the same temperature). One row group is
appended per batch of prompts and nothing else accumulates, so a 500 x 8k-token corpus fits in
bounded memory; the decoding settings go into the file's metadata (key b"rockjax").

Readers stream row groups: `id_sums` (freq_V, kl_sum_V) and `sequence_sums` (per-sequence
per-id sparse sums, for sub-corpora and rock densities). Shape letters: B prompts in a batch,
P prompt length, T new tokens, L = P + T, V vocabulary, S sequences.

Multi-host: every process decodes and scores the whole evaluation set (replicated, no
sharding) and only process 0 writes the file; other processes write nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse
import tqdm
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rockjax import losses, objective, sampling

METADATA_KEY = b"rockjax"
SCHEMA = pa.schema(
  [
    ("seq_id", pa.int64()),
    ("position", pa.int32()),
    ("token_id", pa.int32()),
    ("kl", pa.float32()),
    ("student_entropy", pa.float32()),
    ("teacher_entropy", pa.float32()),
  ]
)


def _entropy(logits_CxV: jax.Array, temperature: float) -> jax.Array:
  """Entropy `[C]` (nats) of softmax(logits / temperature), float32."""
  logp = jax.nn.log_softmax(logits_CxV.astype(jnp.float32) / temperature, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@functools.partial(jax.jit, static_argnames=("s_graphdef", "t_graphdef", "spec"))
def _score(s_graphdef, s_state, t_graphdef, t_state, tokens_BxL, attn_BxL, resp_BxL, spec):
  """(targets, loss mask, kl, student entropy, teacher entropy), all `[B, L]` (column t: id t+1).

  Logits are formed `spec.block_size` positions at a time from the hidden states (a lax.map
  over position blocks), so memory holds `block_size x V` logits per model, never `B x L x V`.
  """
  shifted = objective.shift(
    {"tokens": tokens_BxL, "attention_mask": attn_BxL, "response_mask": resp_BxL}
  )
  student, teacher = nnx.merge(s_graphdef, s_state), nnx.merge(t_graphdef, t_state)
  B, L = tokens_BxL.shape
  N = B * L
  C = min(spec.block_size, N)
  M = -(-N // C)

  def blocks(model):
    """(hidden [M, C, D], head [D, V]) of one model; the tail block is zero-padded."""
    h_NxD = model.hidden_states(shifted.inputs_BxL, shifted.input_mask_BxL).reshape(N, -1)
    h_NxD = jnp.pad(h_NxD, ((0, M * C - N), (0, 0)))
    return h_NxD.reshape(M, C, -1), model.lm_head_weight().astype(model.cfg.dtype)

  (hs_MxCxD, ws_DxV), (ht_MxCxD, wt_DxV) = blocks(student), blocks(teacher)

  def block(h):
    """kl, student entropy, teacher entropy `[C]` of one block of positions (Decoder.logits)."""
    zs_CxV = jnp.einsum("cd,dv->cv", h[0], ws_DxV, preferred_element_type=jnp.float32)
    zt_CxV = jnp.einsum("cd,dv->cv", h[1], wt_DxV, preferred_element_type=jnp.float32)
    kl_C = losses.divergence(zs_CxV, zt_CxV, spec=spec)
    return kl_C, _entropy(zs_CxV, spec.temperature), _entropy(zt_CxV, spec.temperature)

  out = jax.lax.map(block, (hs_MxCxD, ht_MxCxD))
  kl_BxL, ent_s, ent_t = (x.reshape(M * C)[:N].reshape(B, L) for x in out)
  return shifted.targets_BxL, shifted.loss_mask_BxL, kl_BxL, ent_s, ent_t


def score_rollout(
  student: nnx.Module, teacher: nnx.Module, rollout: sampling.Rollout, spec: losses.DivergenceSpec
) -> dict[str, np.ndarray]:
  """Teacher-forced per-position columns of a rollout's responses, host numpy `[B, L]` each."""
  s_graphdef, s_state = nnx.split(student)
  t_graphdef, t_state = nnx.split(teacher)
  out = _score(
    s_graphdef,
    s_state,
    t_graphdef,
    t_state,
    rollout.tokens,
    rollout.attention_mask,
    rollout.response_mask,
    spec,
  )
  names = ("token_id", "mask", "kl", "student_entropy", "teacher_entropy")
  # Gathered the way Experiment.evaluate gathers its decodes (global arrays on a pod).
  return {
    n: np.asarray(multihost_utils.process_allgather(x, tiled=True)) for n, x in zip(names, out)
  }


def _batch_table(cols: dict[str, np.ndarray], seq_ids_B: np.ndarray, prompt_len: int) -> pa.Table:
  """The response rows of one scored batch (padding rows carry seq_id -1 and are dropped)."""
  keep_BxL = (cols["mask"] > 0) & (seq_ids_B[:, None] >= 0)
  # Row-major nonzero: rows come sequence by sequence, positions ascending.
  rows, cols_t = np.nonzero(keep_BxL)
  return pa.table(
    {
      "seq_id": seq_ids_B[rows].astype(np.int64),
      # Column t scores the id emitted at t + 1; responses start at column prompt_len.
      "position": (cols_t + 1 - prompt_len).astype(np.int32),
      "token_id": cols["token_id"][rows, cols_t].astype(np.int32),
      "kl": cols["kl"][rows, cols_t].astype(np.float32),
      "student_entropy": cols["student_entropy"][rows, cols_t].astype(np.float32),
      "teacher_entropy": cols["teacher_entropy"][rows, cols_t].astype(np.float32),
    },
    schema=SCHEMA,
  )


def _divergence_metadata(spec: losses.DivergenceSpec) -> dict[str, Any]:
  """How the file's `kl` column was scored, as recorded in its metadata."""
  return {
    "divergence": spec.kind,
    "divergence_temperature": spec.temperature,
    "jsd_beta": spec.beta,
    "skew_alpha": spec.alpha,
  }


def _scored_batches(
  student: nnx.Module,
  teacher: nnx.Module,
  prompt_ids_SxP: np.ndarray,
  prompt_mask_SxP: np.ndarray,
  *,
  batch_size: int,
  max_new_tokens: int,
  eos_ids: Sequence[int],
  greedy: bool,
  temperature: float,
  seed: int,
  spec: losses.DivergenceSpec,
  mesh: Mesh | None,
  progress: bool,
) -> Iterator[pa.Table]:
  """The corpus rows of each batch of prompts: decoded by the student, scored by both models."""
  num_seqs = prompt_ids_SxP.shape[0]
  key = jax.random.PRNGKey(seed)
  starts = range(0, num_seqs, batch_size)
  for b, start in enumerate(tqdm.tqdm(starts, desc="corpus", disable=not progress)):
    idx_B = np.arange(start, start + batch_size)
    seq_ids_B = np.where(idx_B < num_seqs, idx_B, -1)
    rows_B = np.where(idx_B < num_seqs, idx_B, 0)
    rollout = sampling.generate(
      student,
      jnp.asarray(prompt_ids_SxP[rows_B]),
      jnp.asarray(prompt_mask_SxP[rows_B]),
      key=jax.random.fold_in(key, b),
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      greedy=greedy,
      eos_ids=eos_ids,
      mesh=mesh,
    )
    scored = score_rollout(student, teacher, rollout, spec)
    yield _batch_table(scored, seq_ids_B, rollout.prompt_len)


def build_corpus(
  student: nnx.Module,
  teacher: nnx.Module,
  prompt_ids_SxP: np.ndarray,
  prompt_mask_SxP: np.ndarray,
  path: str,
  *,
  batch_size: int,
  max_new_tokens: int,
  eos_ids: Sequence[int],
  greedy: bool = True,
  temperature: float = 1.0,
  seed: int = 0,
  spec: losses.DivergenceSpec = losses.DivergenceSpec(),
  metadata: dict[str, Any] | None = None,
  mesh: Mesh | None = None,
) -> dict[str, Any]:
  """Decode every prompt with the student, score it with both models, write `path` (Parquet).

  Prompts are left-padded (rockjax.data.records.left_pad). Batches hold `batch_size` prompts; the
  last one is filled with copies of prompt 0 (dropped) so every batch has one shape and the
  sampler and scorer compile once. Sampling (greedy=False) uses fold_in(PRNGKey(seed), batch).
  With `mesh`, prompts are sharded on its 'batch' axes and both programs run under it.
  Returns the settings recorded in the file's metadata plus sequences, tokens and seconds.
  `spec` is the run's divergence: the `kl` column scores it (blocks of spec.block_size).
  """
  num_seqs = prompt_ids_SxP.shape[0]
  if num_seqs == 0 or batch_size < 1:
    raise ValueError(
      f"build_corpus: need prompts and batch_size >= 1, got {num_seqs}, {batch_size}"
    )
  settings = {
    "greedy": bool(greedy),
    "temperature": None if greedy else float(temperature),
    "seed": int(seed),
    "max_new_tokens": int(max_new_tokens),
    "batch_size": int(batch_size),
    "eos_ids": [int(i) for i in eos_ids],
    **_divergence_metadata(spec),
    "num_sequences": int(num_seqs),
    **(metadata or {}),
  }
  schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(settings).encode()})
  t0, tokens = time.perf_counter(), 0
  write = jax.process_index() == 0  # every process decodes (global arrays); one writes
  kw = dict(max_new_tokens=max_new_tokens, eos_ids=eos_ids, greedy=greedy, seed=seed)
  kw.update(temperature=temperature, spec=spec, batch_size=batch_size, progress=write)
  with (
    jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(),
    epath.Path(path).open("wb") if write else _NullFile() as f,
    pq.ParquetWriter(f, schema) if write else _NullFile() as writer,
  ):
    for table in _scored_batches(
      student, teacher, prompt_ids_SxP, prompt_mask_SxP, mesh=mesh, **kw
    ):
      tokens += table.num_rows
      if write:
        writer.write_table(table)
  return {**settings, "num_tokens": tokens, "seconds": time.perf_counter() - t0}


class _NullFile:
  """A do-nothing context manager standing in for the file on processes that do not write."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def read_metadata(path: str) -> dict[str, Any]:
  """The settings `build_corpus` recorded in the file."""
  with epath.Path(path).open("rb") as f:
    meta = pq.ParquetFile(f).schema_arrow.metadata or {}
  return json.loads(meta.get(METADATA_KEY, b"{}"))


def iter_row_groups(path: str, columns: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
  """Numpy columns of one row group at a time (memory: one batch of the corpus)."""
  with epath.Path(path).open("rb") as f:
    pf = pq.ParquetFile(f)
    for i in range(pf.num_row_groups):
      table = pf.read_row_group(i, columns=list(columns))
      yield {c: table.column(c).to_numpy() for c in columns}


def id_sums(path: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(freq_V int64, kl_sum_V float64) over the whole corpus, streamed."""
  # float64 accumulation: 4M float32 rows summed in float32 would lose ~3 digits.
  freq_V = np.zeros(vocab_size, np.int64)
  kl_sum_V = np.zeros(vocab_size, np.float64)
  for g in iter_row_groups(path, ("token_id", "kl")):
    freq_V += np.bincount(g["token_id"], minlength=vocab_size)[:vocab_size]
    kl_sum_V += np.bincount(
      g["token_id"], weights=g["kl"].astype(np.float64), minlength=vocab_size
    )[:vocab_size]
  return freq_V, kl_sum_V


@dataclasses.dataclass(frozen=True)
class SequenceSums:
  """Per-sequence per-id sums as sparse `[S, V]` matrices (rows: `seq_ids`, sorted)."""

  seq_ids: np.ndarray  # int64 [S]
  count_SxV: scipy.sparse.csr_array  # int64 occurrences of each id in each sequence
  kl_SxV: scipy.sparse.csr_array  # float64 KL summed per (sequence, id)

  def subset(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(freq_V, kl_sum_V) of the sub-corpus made of sequences at row indices `rows`."""
    count = np.asarray(self.count_SxV[rows].sum(axis=0)).reshape(-1).astype(np.int64)
    kl = np.asarray(self.kl_SxV[rows].sum(axis=0)).reshape(-1)
    return count, kl

  @property
  def lengths(self) -> np.ndarray:
    """Response tokens per sequence, int64 [S]."""
    return np.asarray(self.count_SxV.sum(axis=1)).reshape(-1).astype(np.int64)


def sequence_sums(path: str, vocab_size: int) -> SequenceSums:
  """Per-sequence per-id counts and KL sums, streamed (memory ~ distinct (sequence, id) pairs)."""
  counts, kls, seq_list = [], [], []
  for g in iter_row_groups(path, ("seq_id", "token_id", "kl")):
    # A row group is one batch: its sequences are complete, so it becomes finished rows.
    seqs, row = np.unique(g["seq_id"], return_inverse=True)
    shape = (len(seqs), vocab_size)
    coo = (row, g["token_id"])
    counts.append(scipy.sparse.csr_array((np.ones(len(row), np.int64), coo), shape=shape))
    kls.append(scipy.sparse.csr_array((g["kl"].astype(np.float64), coo), shape=shape))
    seq_list.append(seqs)
  if not seq_list:
    empty = scipy.sparse.csr_array((0, vocab_size))
    return SequenceSums(np.zeros(0, np.int64), empty.astype(np.int64), empty)
  seq_ids = np.concatenate(seq_list)
  order = np.argsort(seq_ids, kind="stable")
  count = scipy.sparse.vstack(counts, format="csr")[order]
  kl = scipy.sparse.vstack(kls, format="csr")[order]
  return SequenceSums(seq_ids[order], scipy.sparse.csr_array(count), scipy.sparse.csr_array(kl))


def decoded_tokens(
  path: str, prompt_ids_SxP: np.ndarray, *, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """(tokens_SxL, response_mask_SxL) of the corpus decodes, L = P + max_new_tokens: prompt
  `seq_id` followed by its response tokens (pad after them), as the sampler produced them."""
  num_seqs, prompt_len = prompt_ids_SxP.shape
  length = prompt_len + int(read_metadata(path)["max_new_tokens"])
  tokens_SxL = np.full((num_seqs, length), pad_id, np.int32)
  tokens_SxL[:, :prompt_len] = prompt_ids_SxP
  resp_SxL = np.zeros((num_seqs, length), np.int32)
  for g in iter_row_groups(path, ("seq_id", "position", "token_id")):
    cols = prompt_len + g["position"]
    tokens_SxL[g["seq_id"], cols] = g["token_id"]
    resp_SxL[g["seq_id"], cols] = 1
  return tokens_SxL, resp_SxL
