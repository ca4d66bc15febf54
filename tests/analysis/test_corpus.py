"""The detection corpus written by build_corpus, checked against float64 numpy scoring, and the
`python -m rockjax.analyze` command end to end on the tiny config."""

import json
import os

import numpy as np
import pytest

from rockjax import losses, sampling
from rockjax.analysis import corpus
from rockjax.rocks import lists as rock_lists
from tests.fixtures import (
  STUDENT,
  TEACHER,
  assert_one_line_error,
  cli,
  forward,
  np_log_softmax,
  random_model,
)

EOS = 5
PROMPT_LENS = (3, 5, 2, 6, 4)  # five prompts, batch 2: the last batch is padded
P, T = 6, 7


def _prompts(vocab):
  rng = np.random.default_rng(0)
  ids, mask = np.zeros((len(PROMPT_LENS), P), np.int32), np.zeros((len(PROMPT_LENS), P), np.int32)
  for r, n in enumerate(PROMPT_LENS):
    ids[r, P - n :] = rng.integers(6, vocab, n)  # no EOS inside a prompt
    mask[r, P - n :] = 1
  return ids, mask


def test_corpus_rows_are_the_greedy_decode_scored_in_float64(tmp_path):
  student, teacher = random_model(STUDENT, seed=1), random_model(TEACHER, seed=2)
  ids, mask = _prompts(STUDENT.vocab_size)
  path = str(tmp_path / "corpus.parquet")
  compiled = sampling.decode_jit._cache_size(), corpus._score._cache_size()
  built = corpus.build_corpus(
    student,
    teacher,
    ids,
    mask,
    path,
    batch_size=2,
    max_new_tokens=T,
    eos_ids=(EOS,),
    spec=losses.DivergenceSpec(block_size=5),  # blocks straddle rows; the last one is padded
  )
  # Three batches (the last padded with a filler row): one sampler and one scorer program.
  assert sampling.decode_jit._cache_size() - compiled[0] == 1
  assert corpus._score._cache_size() - compiled[1] == 1
  meta = corpus.read_metadata(path)
  assert meta["greedy"] is True and meta["divergence"] == "reverse_kl"
  assert meta["num_sequences"] == 5 and built["num_tokens"] > 0
  rows = {c: [] for c in corpus.SCHEMA.names}
  for g in corpus.iter_row_groups(path, corpus.SCHEMA.names):
    for c in rows:
      rows[c].append(g[c])
  rows = {c: np.concatenate(v) for c, v in rows.items()}
  assert sorted(set(rows["seq_id"].tolist())) == list(range(5))  # the filler row is dropped
  for s in range(5):
    mine = rows["seq_id"] == s
    pos, tok = rows["position"][mine], rows["token_id"][mine]
    np.testing.assert_array_equal(pos, np.arange(len(pos)))
    # Greedy decoding stops at the first EOS (kept) or after T tokens.
    assert len(tok) == T or (tok[-1] == EOS and EOS not in tok[:-1])
    seq = np.concatenate([ids[s][mask[s] > 0], tok])[None]
    ones = np.ones_like(seq)
    ls = np_log_softmax(np.asarray(forward(student, seq, ones))[0])
    lt = np_log_softmax(np.asarray(forward(teacher, seq, ones))[0])
    at = np.arange(len(tok)) + PROMPT_LENS[s] - 1  # the logits that predict each response id
    kl = np.sum(np.exp(ls[at]) * (ls[at] - lt[at]), axis=-1)
    ent_s = -np.sum(np.exp(ls[at]) * ls[at], axis=-1)
    ent_t = -np.sum(np.exp(lt[at]) * lt[at], axis=-1)
    np.testing.assert_array_equal(tok, np.argmax(ls[at], axis=-1))
    np.testing.assert_allclose(rows["kl"][mine], kl, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(rows["student_entropy"][mine], ent_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows["teacher_entropy"][mine], ent_t, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_analyze_command_writes_the_report_and_a_rock_list_for_static_mode(tmp_path):
  """Trains the tiny config 2 steps (analysis off), then runs the analyze command on it."""
  work, cfg = str(tmp_path / "w"), "configs/tiny.py"
  small = [
    "--config.analysis.num_prompts=12",
    "--config.analysis.batch_size=4",
    "--config.analysis.max_new_tokens=10",
    "--config.analysis.k_grid=2,5",
    "--config.analysis.subcorpus_sizes=3,6",
  ]
  train = cli(f"--config={cfg}", f"--workdir={work}", "--config.steps=2", *small,
              "--config.analysis.enabled=False", timeout=300)  # fmt: skip
  assert train.returncode == 0, train.stderr[-3000:]
  assert not os.path.exists(os.path.join(work, "analysis"))
  code = "import sys; from absl import app; from rockjax import analyze, cli; " + (
    "sys.argv[0] = 'analyze'; app.run(analyze.main, flags_parser=cli.parse_flags)"
  )
  proc = cli(f"--config={cfg}", f"--workdir={work}", *small, code=code, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = os.path.join(work, "analysis")
  assert "report.md" in proc.stdout
  data = json.load(open(os.path.join(out, "report.json")))
  assert data["rocks"]["num_sequences"] == 12
  assert "step 2" in data["meta"]["student"]
  # The exported list is the numpy top-5 of the corpus, and static mode can read it.
  freq, kl_sum = corpus.id_sums(os.path.join(out, "corpus.parquet"), 128)
  seen = [i for i in range(128) if freq[i] >= 1]  # tiny config: min_freq 1, no exclusion
  ref = sorted(seen, key=lambda i: (-kl_sum[i], i))[:5]
  ids = rock_lists.load_id_list(os.path.join(out, "rock_ids.txt"), vocab_size=128)
  assert ids.tolist() == ref
  dry = cli(f"--config={cfg}", "--dry_run", "--config.rock.mode=static",
            f"--config.rock.list_path={out}/rock_ids.txt")  # fmt: skip
  assert dry.returncode == 0, dry.stderr[-2000:]


def test_analyze_command_without_a_checkpoint_is_one_line(tmp_path):
  code = "import sys; from absl import app; from rockjax import analyze, cli; " + (
    "sys.argv[0] = 'analyze'; app.run(analyze.main, flags_parser=cli.parse_flags)"
  )
  proc = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", code=code, timeout=200)
  assert_one_line_error(proc, "no checkpoint in", "--student")
