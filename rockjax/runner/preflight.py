"""Checks run once before step 1 of every stage, each failing with one line naming both sides.

- Files (`check_files`, before the workdir is touched): every Hugging Face model and tokenizer
  directory the config names loads without remote code or pickles (rockjax.models.hf_dirs).
- Vocabulary (`check_vocab`): every id a tokenizer can produce indexes a row of each model's
  embedding; padded embeddings (Qwen3: 151,936 rows for 151,669 ids) are fine.
- Tokenizers (`check_same_tokenizer`): the data tokenizer and every model directory's own
  tokenizer encode a probe text and a probe chat identically.
- Teacher determinism (`check_teacher_determinism`): two teacher passes over the same probe
  batch give the same next-token log-probs and entropies within `preflight.determinism_tol`.

Every process runs the same checks on the same inputs (the teacher probe is one global
program), so on a pod all processes raise together. Shapes: R probe rows, L probe tokens per
row, V vocabulary.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rockjax import batch as batch_lib
from rockjax import errors
from rockjax import sharding as shd
from rockjax.models import hf_dirs
from rockjax.models import tokenizer as tokenizer_lib

_log = logging.getLogger(__name__)

# Mixed prose, digits, LaTeX, whitespace runs and non-ASCII: where tokenizers tend to differ.
PROBE_TEXT = (
  "Solve $\\frac{3}{4}x^2 - 12.5 = \\sqrt{49}$ for x.\n\n  Step 1:\tmultiply by 4 "
  "(then 3x^2 = 78, x = \u00b1\u221a26 \u2248 5.099); caf\u00e9 na\u00efve \u00d7 \u03c0 "
  "\u4f60\u597d 2024-05-17."
)
PROBE_CHAT = [
  {"role": "system", "content": "You are a careful math tutor."},
  {"role": "user", "content": PROBE_TEXT},
  {"role": "assistant", "content": "x = \\pm\\sqrt{26}. \\boxed{5.099}"},
  {"role": "user", "content": "Check it: 3 * 26 = 78?"},
]
PROBE_LENGTH = 64  # teacher probe tokens per row (rounded up to the mesh's length multiple)
_SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id")


def check_files(c: ml_collections.ConfigDict) -> None:
  """The model and tokenizer directories the config names (not the ones stages produce)."""
  for g in ("model", "teacher"):
    if c[g].source == "hf":
      hf_dirs.check_model_dir(c[g].path, field=f"{g}.path")
  if c.data.tokenizer_path:
    hf_dirs.check_tokenizer_dir(c.data.tokenizer_path, field="data.tokenizer_path")


def token_count(tokenizer: Any) -> int:
  """How many ids the tokenizer can produce: len() (added and special tokens included), or
  one past its largest id when its vocabulary has holes."""
  return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def check_vocab(tokenizer: Any, tokenizer_name: str, rows: int, model_name: str) -> None:
  """One line unless every id of `tokenizer` is below the model's `rows` embedding rows."""
  n = token_count(tokenizer)
  if n > rows:
    raise errors.ConfigError(
      f"tokenizer {tokenizer_name} has {n} ids but {model_name}'s vocabulary has "
      f"{rows} rows (ids >= {rows} would index past the embedding)"
    )


def _probe_ids(tokenizer: Any) -> dict[str, list[int]]:
  """The probe encodings: plain text, and the chat template when the tokenizer has one."""
  out = {"probe text": list(tokenizer.encode(PROBE_TEXT, add_special_tokens=False))}
  if getattr(tokenizer, "chat_template", None):
    # Rendered then encoded without extra specials, as rockjax.data.records.format_prompt does.
    rendered = tokenizer.apply_chat_template(PROBE_CHAT, tokenize=False, add_generation_prompt=True)
    out["probe chat template"] = list(tokenizer.encode(rendered, add_special_tokens=False))
  return out


def _token(tokenizer: Any, ids: list[int], i: int) -> str:
  """'id (token)' at position i, or 'end of sequence' past the end."""
  return f"{ids[i]} ({tokenizer.convert_ids_to_tokens(ids[i])!r})" if i < len(ids) else "its end"


def check_same_tokenizer(a: Any, a_name: str, b: Any, b_name: str) -> None:
  """One line unless tokenizers `a` and `b` encode the probes alike and share special ids."""
  pa, pb = _probe_ids(a), _probe_ids(b)
  for what in ("probe text", "probe chat template"):
    if what not in pa and what not in pb:
      continue
    if what not in pa or what not in pb:
      has, lacks = (a_name, b_name) if what in pa else (b_name, a_name)
      raise errors.ConfigError(
        f"tokenizers differ: {has} has a chat template and {lacks} has none (the teacher "
        "would score text the student never saw)"
      )
    ia, ib = pa[what], pb[what]
    if ia != ib:
      i = next((k for k, (x, y) in enumerate(zip(ia, ib)) if x != y), min(len(ia), len(ib)))
      raise errors.ConfigError(
        f"tokenizers differ: {a_name} and {b_name} encode the {what} differently from "
        f"position {i}: {_token(a, ia, i)} vs {_token(b, ib, i)}"
      )
  for key in _SPECIAL:
    x, y = getattr(a, key, None), getattr(b, key, None)
    if x is not None and y is not None and x != y:
      raise errors.ConfigError(f"tokenizers differ: {key} is {x} in {a_name} but {y} in {b_name}")


def probe_batch(tokenizer: Any, mesh: Any, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) `[R, L]` of the teacher probe: the probe text's and chat's ids repeated to L
  tokens, row r rotated by r; R fills the mesh's batch axes, L divides its context axis."""
  ids = [i for v in _probe_ids(tokenizer).values() for i in v] or [0]
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  length = batch_lib.padded_length(PROBE_LENGTH, math.lcm(multiple, mesh.shape["context"]))
  row_L = np.resize(np.asarray(ids, np.int32), length)
  ids_RxL = np.stack([np.roll(row_L, r) for r in range(rows)])
  return ids_RxL, np.ones_like(ids_RxL)


@jax.jit
def _scores(graphdef: nnx.GraphDef, params: nnx.State, ids_RxL: jax.Array, mask_RxL: jax.Array):
  """(log-prob of each next probe token, entropy) `[R, L-1]` of one teacher pass."""
  teacher = nnx.merge(graphdef, params)
  logp_RxLxV = jax.nn.log_softmax(teacher(ids_RxL, mask_RxL)[:, :-1], axis=-1)
  logp_RxL = jnp.take_along_axis(logp_RxLxV, ids_RxL[:, 1:, None], axis=-1)[..., 0]
  entropy_RxL = -jnp.sum(jnp.exp(logp_RxLxV) * logp_RxLxV, axis=-1)
  return logp_RxL, entropy_RxL


def teacher_score_difference(
  graphdef: nnx.GraphDef, params: nnx.State, ids_RxL: np.ndarray, mask_RxL: np.ndarray, mesh: Any
) -> float:
  """Max |difference| (nats) of next-token log-probs and entropies between two teacher passes
  over the same probe batch (the same compiled program, run twice)."""
  with jax.set_mesh(mesh):
    batch = shd.host_to_global(
      {"ids": ids_RxL, "mask": mask_RxL}, mesh, global_rows=ids_RxL.shape[0]
    )
    runs = [_scores(graphdef, params, batch["ids"], batch["mask"]) for _ in range(2)]
  host = [[np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in r] for r in runs]
  return float(max(np.max(np.abs(x - y)) for x, y in zip(*host)))


def check_teacher_determinism(
  graphdef: nnx.GraphDef,
  params: nnx.State,
  tokenizer: Any,
  mesh: Any,
  *,
  tol: float,
  name: str,
  multiple: int = 1,
) -> float:
  """The max difference of two teacher passes over the probe; one line when it exceeds tol."""
  ids_RxL, mask_RxL = probe_batch(tokenizer, mesh, multiple)
  t0 = time.perf_counter()
  diff = teacher_score_difference(graphdef, params, ids_RxL, mask_RxL, mesh)
  _log.info(
    "pre-flight: teacher probe %s x %s tokens twice in %.2fs, max |difference| %.3g nats",
    *ids_RxL.shape,
    time.perf_counter() - t0,
    diff,
  )
  if not diff <= tol:  # also catches NaN
    raise errors.ConfigError(
      f"teacher {name} is not deterministic: two passes over the same probe batch differ by "
      f"{diff:.3g} nats (log-prob or entropy), more than preflight.determinism_tol={tol:g}; "
      "its scores would be noise (check the attention kernel and dtype, or raise the tolerance)"
    )
  return diff


def _model_name(c: ml_collections.ConfigDict, g: str) -> str:
  """How an error names config group `g`'s model: its directory, or its arch field."""
  role = "the student" if g == "model" else "the teacher"
  where = f"{g}.path={c[g].path!r}" if c[g].source == "hf" else f"{g}.arch.vocab_size"
  return f"{role} ({where})"


def check_tokenizers(
  c: ml_collections.ConfigDict, tokenizer: Any, tokenizer_path: str, rows: dict[str, int]
) -> None:
  """The data tokenizer against each model's embedding `rows` ('model', 'teacher' when there
  is one), then against each model directory's own tokenizer (unless preflight.enabled=False).
  Reads no weights: rockjax.runner.experiment.build_experiment calls it before loading any."""
  data_name = repr(tokenizer_path)
  for g, n in rows.items():
    check_vocab(tokenizer, data_name, n, _model_name(c, g))
  if not c.preflight.enabled:
    return
  for g, n in rows.items():
    m = c[g]
    if m.source != "hf" or m.path == tokenizer_path or not hf_dirs.has_tokenizer(m.path):
      continue
    own = tokenizer_lib.load_tokenizer(m.path, field=f"{g}.path")
    check_vocab(own, f"{g}.path={m.path!r}", n, _model_name(c, g))
    check_same_tokenizer(tokenizer, f"data tokenizer {data_name}", own, f"{g}.path={m.path!r}")


def check_teacher(
  c: ml_collections.ConfigDict, teacher: tuple[nnx.GraphDef, nnx.State], tokenizer: Any, mesh: Any
) -> float | None:
  """The teacher probe (check_teacher_determinism) when preflight.enabled and
  preflight.determinism_tol > 0; the measured difference (nats), else None."""
  if not c.preflight.enabled or c.preflight.determinism_tol <= 0:
    return None
  return check_teacher_determinism(
    *teacher,
    tokenizer,
    mesh,
    tol=c.preflight.determinism_tol,
    name=_model_name(c, "teacher"),
    # The train batches' length multiple; explicit splash attention also needs whole blocks.
    multiple=math.lcm(
      c.data.pad_to_multiple, c.teacher.attention_block if c.teacher.attention == "splash" else 1
    ),
  )
