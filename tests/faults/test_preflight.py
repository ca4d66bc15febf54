"""rockjax.runner.preflight: tokenizer ids vs embedding rows, teacher/student tokenizer agreement and
teacher determinism, each refused with one line naming both sides."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from rockjax import errors, models
from rockjax.models import loading
from rockjax import sharding as shd
from rockjax.data.tasks import arithmetic
from rockjax.runner import experiment, preflight
from tests.fixtures import forward, make_tokenizer, np_log_softmax

# What the Whitespace pre-tokenizer of fixtures.make_tokenizer splits text into (its regex).
WORDS = re.findall(r"\w+|[^\w\s]+", preflight.PROBE_TEXT)


class FakeTokenizer:
  """Only what the vocabulary check reads: len() and the vocabulary's ids."""

  def __init__(self, length, ids):
    self.length, self.ids = length, ids

  def __len__(self):
    return self.length

  def get_vocab(self):
    return {f"t{i}": i for i in self.ids}


def test_padded_embeddings_pass_and_missing_ids_are_refused(tmp_path):
  tok = models.load_tokenizer(make_tokenizer(tmp_path, [f"w{i}" for i in range(10)]))
  tok.add_tokens(["<extra_a>", "<extra_b>"])  # added tokens count too
  n = 10 + 3 + 2  # words, <unk> </s> <pad>, added
  preflight.check_vocab(tok, "T", n, "M")
  preflight.check_vocab(tok, "T", n + 64, "M")  # padded rows are never produced: fine
  with pytest.raises(errors.ConfigError) as err:
    preflight.check_vocab(tok, "T", n - 1, "M")
  assert str(err.value) == (
    f"tokenizer T has {n} ids but M's vocabulary has {n - 1} rows "
    f"(ids >= {n - 1} would index past the embedding)"
  )


def test_qwen_sizes_and_vocabularies_with_holes():
  qwen = FakeTokenizer(151669, [0, 151643, 151668])  # Qwen3's tokenizer: ids 0..151668
  for rows in (151936, 152064):  # the two padded embeddings Qwen checkpoints ship
    preflight.check_vocab(qwen, "qwen", rows, "M")
  with pytest.raises(errors.ConfigError, match="has 151669 ids but M's vocabulary has 151668"):
    preflight.check_vocab(qwen, "qwen", 151668, "M")
  holes = FakeTokenizer(10, [0, 1, 20])  # len() says 10, but id 20 exists: 21 ids
  with pytest.raises(errors.ConfigError, match="has 21 ids"):
    preflight.check_vocab(holes, "holes", 20, "M")


def test_check_tokenizers_names_the_model_whose_rows_are_short(tmp_path):
  tok = models.load_tokenizer(make_tokenizer(tmp_path, [f"w{i}" for i in range(10)]))  # 13 ids
  c = tiny.get_config()
  preflight.check_tokenizers(c, tok, "tok", {"model": 13, "teacher": 13})
  with pytest.raises(errors.ConfigError, match=r"^tokenizer 'tok' has 13 ids but the teacher "):
    preflight.check_tokenizers(c, tok, "tok", {"model": 13, "teacher": 12})


def test_build_experiment_refuses_a_student_vocabulary_smaller_than_the_tokenizer(tmp_path):
  c = tiny.get_config()
  c.model.arch.vocab_size = c.teacher.arch.vocab_size = 100
  n = len(arithmetic.vocabulary())  # the task tokenizer's ids (no added tokens)
  with pytest.raises(errors.ConfigError) as err:
    experiment.build_experiment(c, str(tmp_path))
  assert f"has {n} ids but the student (model.arch.vocab_size)'s vocabulary has 100" in str(
    err.value
  )
  assert not (tmp_path / "ckpt").exists()


# ------------------------------------------------------------------ tokenizer agreement
def _tok(path, words, **special):
  return models.load_tokenizer(make_tokenizer(path, words, **special))


def test_identical_tokenizers_pass(tmp_path):
  a, b = _tok(tmp_path / "a", WORDS), _tok(tmp_path / "b", WORDS)
  preflight.check_same_tokenizer(a, "A", b, "B")


def test_a_word_with_another_id_is_named_with_its_position(tmp_path):
  words = list(dict.fromkeys(WORDS))
  i, j = words.index("Step"), words.index("multiply")
  swapped = list(words)
  swapped[i], swapped[j] = swapped[j], swapped[i]
  a, b = _tok(tmp_path / "a", words), _tok(tmp_path / "b", swapped)
  first = min(WORDS.index("Step"), WORDS.index("multiply"))  # hand: the first swapped word
  with pytest.raises(errors.ConfigError) as err:
    preflight.check_same_tokenizer(a, "/t/teacher", b, "/t/student")
  message = str(err.value)
  assert message.startswith("tokenizers differ: /t/teacher and /t/student encode the probe text")
  assert f"from position {first}: " in message
  assert f"{i} ('Step') vs {j} ('Step')" in message  # same token, two different ids


TEMPLATE = "{% for m in messages %}{{ m['role'] }} SEP {{ m['content'] }} ;{% endfor %}"


def test_chat_templates_are_compared(tmp_path):
  words = list(dict.fromkeys(WORDS + ["system", "user", "assistant", ":", "|", ";"]))
  a, b = _tok(tmp_path / "a", words), _tok(tmp_path / "b", words)
  a.chat_template = TEMPLATE.replace("SEP", ":")
  with pytest.raises(errors.ConfigError, match="tokenizers differ: A has a chat template and B"):
    preflight.check_same_tokenizer(a, "A", b, "B")
  b.chat_template = TEMPLATE.replace("SEP", "|")
  with pytest.raises(errors.ConfigError) as err:
    preflight.check_same_tokenizer(a, "A", b, "B")
  # Hand: the probe chat renders 'system : ...' vs 'system | ...'; they differ at token 1.
  colon, bar = words.index(":"), words.index("|")
  assert "encode the probe chat template differently from position 1: " in str(err.value)
  assert f"{colon} (':') vs {bar} ('|')" in str(err.value)
  b.chat_template = a.chat_template
  preflight.check_same_tokenizer(a, "A", b, "B")


def test_special_ids_must_agree(tmp_path):
  a = _tok(tmp_path / "a", WORDS)
  b = _tok(tmp_path / "b", WORDS, eos_token="Solve")  # id 0 instead of one after <unk>
  with pytest.raises(errors.ConfigError, match=r"eos_token_id is \d+ in A but \d+ in B"):
    preflight.check_same_tokenizer(a, "A", b, "B")


def test_model_directory_tokenizer_is_compared_unless_disabled(tmp_path):
  data = arithmetic.make_tokenizer(tmp_path / "task")
  own = tmp_path / "student"
  make_tokenizer(own, WORDS)
  c = tiny.get_config()
  c.model.source, c.model.path = "hf", str(own)
  rows = {"model": 128, "teacher": 128}
  with pytest.raises(errors.ConfigError, match=re.escape(f"and model.path={str(own)!r}")):
    preflight.check_tokenizers(c, data, str(tmp_path / "task"), rows)
  c.preflight.enabled = False  # documented: skips the comparison (not the vocabulary check)
  preflight.check_tokenizers(c, data, str(tmp_path / "task"), rows)


# ------------------------------------------------------------------ teacher determinism
@pytest.fixture(scope="module")
def teacher(devices8, tmp_path_factory):
  """configs/tiny.py's teacher on the 8-device mesh, and the task tokenizer."""
  c = tiny.get_config()
  ici, dcn = shd.config_mesh_shapes(c.mesh)
  mesh = shd.make_mesh(ici, dcn=dcn)
  cfg = loading.arch_config(c.teacher)
  graphdef, params = loading.load_params(c.teacher, cfg, mesh, seed=1)
  tok = arithmetic.make_tokenizer(tmp_path_factory.mktemp("task_tokenizer"))
  return graphdef, params, mesh, tok


def test_probe_scores_match_a_float64_reference(teacher):
  graphdef, params, mesh, tok = teacher
  ids, mask = preflight.probe_batch(tok, mesh)
  assert ids.shape == (8, preflight.PROBE_LENGTH)  # data x fsdp rows on 8 devices
  with jax.set_mesh(mesh):
    batch = shd.host_to_global({"i": ids, "m": mask}, mesh, global_rows=8)
    logp, entropy = (np.asarray(x) for x in preflight._scores(graphdef, params, *batch.values()))
  # Reference: the unsharded model's logits, log-softmax and entropy in float64 numpy.
  model = nnx.merge(graphdef, jax.device_get(params))
  logits = np.asarray(forward(model, ids, mask), np.float64)[:, :-1]
  ref_logp = np_log_softmax(logits)
  want = np.take_along_axis(ref_logp, ids[:, 1:, None], axis=-1)[..., 0]
  np.testing.assert_allclose(logp, want, atol=2e-5)
  np.testing.assert_allclose(entropy, -(np.exp(ref_logp) * ref_logp).sum(-1), atol=2e-5)


def test_a_deterministic_teacher_passes(teacher):
  graphdef, params, mesh, tok = teacher
  diff = preflight.check_teacher_determinism(graphdef, params, tok, mesh, tol=1e-3, name="T")
  assert diff == 0.0  # XLA:CPU runs the same program bit for bit


@pytest.fixture
def drifting(monkeypatch):
  """A teacher whose n-th pass adds n * shift to its log-probs (a non-deterministic kernel)."""
  real, calls = preflight._scores, []

  def scores(*args, shift):
    logp, entropy = real(*args)
    calls.append(1)
    return logp + shift * len(calls), entropy

  return lambda shift: monkeypatch.setattr(preflight, "_scores", lambda *a: scores(*a, shift=shift))


def test_a_teacher_whose_passes_differ_is_refused(teacher, drifting):
  graphdef, params, mesh, tok = teacher
  drifting(0.01)  # hand: the two passes differ by exactly 0.01 at every position
  with pytest.raises(errors.ConfigError) as err:
    preflight.check_teacher_determinism(graphdef, params, tok, mesh, tol=1e-3, name="T (dir)")
  message = str(err.value)
  assert message.startswith("teacher T (dir) is not deterministic: ")
  assert "differ by 0.01 nats" in message and "preflight.determinism_tol=0.001" in message
  drifting(0.01)
  diff = preflight.check_teacher_determinism(graphdef, params, tok, mesh, tol=0.1, name="T")
  assert diff == pytest.approx(0.01, rel=1e-3)


def test_a_teacher_with_nan_scores_is_refused(teacher, drifting):
  graphdef, params, mesh, tok = teacher
  drifting(float("nan"))
  with pytest.raises(errors.ConfigError, match="differ by nan nats"):
    preflight.check_teacher_determinism(graphdef, params, tok, mesh, tol=1.0, name="T")


@pytest.mark.parametrize(
  "overrides", [{"preflight.enabled": False}, {"preflight.determinism_tol": 0.0}]
)
def test_the_probe_is_skipped_when_configured(teacher, monkeypatch, overrides):
  graphdef, params, mesh, tok = teacher
  monkeypatch.setattr(preflight, "_scores", lambda *a: pytest.fail("probe ran"))
  c = tiny.get_config()
  c.update_from_flattened_dict(overrides)
  assert preflight.check_teacher(c, (graphdef, params), tok, mesh) is None


def test_probe_batch_fits_context_and_length_multiple(teacher):
  _, _, _, tok = teacher
  mesh = shd.make_mesh({"data": 1, "fsdp": 4, "context": 2, "tensor": 1})
  ids, mask = preflight.probe_batch(tok, mesh, multiple=48)
  assert ids.shape == (4, 96) and mask.shape == (4, 96) and mask.all()  # hand: ceil(64/48)*48
  chat = preflight._probe_ids(tok)["probe chat template"]
  text = preflight._probe_ids(tok)["probe text"]
  np.testing.assert_array_equal(ids[0], np.resize(text + chat, 96))
  for r in range(4):
    np.testing.assert_array_equal(ids[r], np.roll(ids[0], r))
