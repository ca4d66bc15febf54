"""Decode and grade benchmark problems: N sampled responses per problem through rockjax's sampler.

    settings = EvalSettings.from_config(c)   # c.bench: template, samples, temperature, top_p, ...
    result = run_benchmark(model, tokenizer, 'aime24', problems, settings, mesh=mesh, ...)
    result['correct_PxN'], result['responses']

Prompts: 'paper' formats a math problem with the authors' template ("Question: {problem}\nAnswer:",
plain text after BOS, no chat template) and gives IFEval's prompt as it is; 'chat' puts the
problem (or the IFEval prompt) in the tokenizer's chat template as the user's message; any
other template is a format string with `{problem}`. Every benchmark's prompts are left-padded
to one length (its longest prompt rounded up to 64), so one sampler program serves all of
them. Batch b of benchmark k samples with fold_in(fold_in(key(seed), k), b): the seed and the
batch size fix every response. Math answers are graded with rockjax.evaluation.verify
(math-verify); IFEval responses with lm-eval's instruction checkers (rockjax.evals.ifeval),
pass@1 counting a response correct when it follows every instruction (prompt-level strict).
Letters: P problems, N samples, R rows of one decode (prompts x N), L the decode length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from rockjax import errors, evaluation, sampling
from rockjax.data import records
from rockjax.evals import formats, ifeval

PAPER_TEMPLATE = "Question: {problem}\nAnswer:"
TEMPLATES = ("paper", "chat")  # or a format string with {problem}
_PAD_PROMPTS_TO = 64  # prompt columns rounded up to this: few distinct programs


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How responses are sampled and prompts formatted (the config's `bench` group)."""

  prompt_template: str = "paper"
  num_samples: int = 5
  temperature: float = 0.6
  top_p: float = 1.0
  max_new_tokens: int = 16384
  max_prompt_len: int = 2048
  batch_size: int = 8
  seed: int = 0
  system_prompt: str = ""
  enable_thinking: bool = False

  @classmethod
  def from_config(cls, c: Any) -> "EvalSettings":
    """The settings of a config's `bench` group (and its data group's chat options)."""
    b = c.bench
    return cls(
      prompt_template=b.prompt_template,
      num_samples=b.num_samples,
      temperature=b.temperature,
      top_p=b.top_p,
      max_new_tokens=b.max_new_tokens,
      max_prompt_len=b.max_prompt_len,
      batch_size=b.batch_size,
      seed=b.seed,
      system_prompt=c.data.system_prompt,
      enable_thinking=c.data.enable_thinking,
    )


def prompt_text(name: str, problem: formats.Problem, template: str) -> str:
  """The text the model is given for one problem (the chat template, if any, comes after)."""
  if name == "ifeval" or template == "chat":
    return problem.problem
  return (PAPER_TEMPLATE if template == "paper" else template).format(problem=problem.problem)


def prompt_ids(tokenizer: Any, name: str, problem: formats.Problem, s: EvalSettings) -> list[int]:
  """One problem's prompt ids under the settings' template."""
  chat = s.prompt_template == "chat"
  if chat and not getattr(tokenizer, "chat_template", None):
    raise errors.ConfigError("bench.prompt_template='chat': the tokenizer has no chat template")
  return records.format_prompt(
    tokenizer,
    prompt_text(name, problem, s.prompt_template),
    use_chat_template=chat,
    system_prompt=s.system_prompt if chat else "",
    enable_thinking=s.enable_thinking if chat else False,
  )


def encode_prompts(
  tokenizer: Any, benchmarks: dict[str, list[formats.Problem]], s: EvalSettings
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
  """({name: (ids_PxC, mask_PxC)} left-padded to one width C, C); a prompt longer than
  bench.max_prompt_len is a one-line ConfigError naming the benchmark and problem."""
  encoded = {n: [prompt_ids(tokenizer, n, p, s) for p in ps] for n, ps in benchmarks.items()}
  longest = max(len(ids) for per in encoded.values() for ids in per)
  for name, per in encoded.items():
    for problem, ids in zip(benchmarks[name], per):
      if len(ids) > s.max_prompt_len:
        raise errors.ConfigError(
          f"bench.max_prompt_len={s.max_prompt_len}: {name} problem {problem.id!r} is "
          f"{len(ids)} prompt tokens; raise bench.max_prompt_len"
        )
  width = min(s.max_prompt_len, math.ceil(longest / _PAD_PROMPTS_TO) * _PAD_PROMPTS_TO)
  pad = records.pad_id(tokenizer)
  out = {}
  for name, per in encoded.items():
    rows = [records.left_pad(ids, width, pad) for ids in per]
    out[name] = (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
  return out, width


def _batch_rows(batch_size: int, num_problems: int, mesh: jax.sharding.Mesh | None) -> int:
  """Prompts per decode: batch_size (at most the problems), rounded up to the mesh's row shards."""
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  return -(-min(batch_size, num_problems) // shards) * shards


def _to_host(x: jax.Array) -> np.ndarray:
  """A decode output as one host array (gathered from every process on pods)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def _decode(
  model: nnx.Module,
  ids_PxC: np.ndarray,
  mask_PxC: np.ndarray,
  s: EvalSettings,
  *,
  key: jax.Array,
  eos_ids: Sequence[int],
  mesh: jax.sharding.Mesh | None,
  desc: str,
  progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens_RxL, response_mask_RxL, truncated_R) for all P x N rows, prompt-major."""
  P, rows = len(ids_PxC), _batch_rows(s.batch_size, len(ids_PxC), mesh)
  tokens, resp, truncated = [], [], []
  starts = range(0, P, rows)
  for b, start in enumerate(tqdm(starts, desc=desc, unit="batch", disable=not progress)):
    take = np.arange(start, start + rows)
    real = take < P
    take[~real] = 0  # the last batch is padded with problem 0; those rows are dropped
    out = sampling.generate(
      model,
      ids_PxC[take],
      mask_PxC[take],
      key=jax.random.fold_in(key, b),
      max_new_tokens=s.max_new_tokens,
      temperature=max(s.temperature, 1e-6),
      greedy=s.temperature == 0,
      top_p=s.top_p,
      eos_ids=eos_ids,
      num_samples=s.num_samples,
      mesh=mesh,
    )
    keep = np.repeat(real, s.num_samples)  # rows are prompt-major: n rows per prompt
    tokens.append(_to_host(out.tokens)[keep])
    resp.append(_to_host(out.response_mask)[keep] > 0)
    truncated.append(_to_host(out.truncated)[keep])
  return np.concatenate(tokens), np.concatenate(resp), np.concatenate(truncated)


def _grade(name: str, problem: formats.Problem, text: str) -> tuple[bool, dict[str, Any] | None]:
  """(correct, IFEval's details or None) of one response."""
  if name == "ifeval":
    graded = ifeval.grade(problem, text)
    return bool(graded["prompt_strict"]), graded
  return bool(evaluation.verify(text, problem.answer)), None


def run_benchmark(
  model: nnx.Module,
  tokenizer: Any,
  name: str,
  problems: list[formats.Problem],
  prompts: tuple[np.ndarray, np.ndarray],
  s: EvalSettings,
  *,
  index: int,
  eos_ids: Sequence[int],
  mesh: jax.sharding.Mesh | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Samples and grades one benchmark: {'correct_PxN', 'responses', 'ifeval', ...}.

  `index` is the benchmark's place in the run (its key is fold_in(key(seed), index)).
  responses: one dict per response (problem id, sample, text, correct, truncated, tokens)."""
  key = jax.random.fold_in(jax.random.key(s.seed), index)
  tokens_RxL, resp_RxL, truncated_R = _decode(
    model, *prompts, s, key=key, eos_ids=eos_ids, mesh=mesh, desc=name, progress=progress
  )
  n, correct, responses, details = s.num_samples, [], [], []
  for r in range(len(tokens_RxL)):
    problem = problems[r // n]  # prompt-major: row r is sample r % n of problem r // n
    text = tokenizer.decode(tokens_RxL[r][resp_RxL[r]], skip_special_tokens=True)
    ok, graded = _grade(name, problem, text)
    correct.append(ok)
    details += [graded] if graded is not None else []
    responses.append(
      dict(
        benchmark=name,
        id=problem.id,
        sample=r % n,
        correct=ok,
        truncated=bool(truncated_R[r]),
        tokens=int(resp_RxL[r].sum()),
        text=text,
      )
    )
  return dict(
    correct_PxN=np.array(correct, bool).reshape(len(problems), n),
    responses=responses,
    ifeval=ifeval.aggregate(details) if details else None,
    num_truncated=int(truncated_R.sum()),
    mean_response_tokens=float(resp_RxL.sum(axis=1).mean()),
  )
