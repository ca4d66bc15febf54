"""The studies' choices, on stand-in contexts: which list the Random control is matched to (and
kept apart from), which ids the knockout census bans and with which settings, and which early
checkpoint persistence reads. Expected ids are worked out by hand or with numpy."""

import types

import numpy as np
import pytest

from configs import tiny
from rockjax import errors, rocks
from rockjax.analysis import context, corpus, knockout, knockout_report, studies
from rockjax.rocks import lists as rock_lists

V = 40
LISTED, ROCKS, UNSEEN = [1, 2, 3], [4, 5, 6], 39  # the frozen list; the analysis's own rocks


class _Tokenizer:
  def convert_ids_to_tokens(self, i):
    return f"t{i}"


def _freq():
  """Listed ids 1-3 and rocks 4-6 at 100 / 50 / 10; candidates 7-11 near or far from them."""
  freq = np.zeros(V)
  freq[[1, 2, 3]] = freq[[4, 5, 6]] = [100.0, 50.0, 10.0]
  freq[[7, 8, 9, 10, 11]] = [90.0, 55.0, 11.0, 400.0, 3.0]
  return freq


def _ctx(tmp_path, freq, rock_ids, **analysis):
  c = tiny.get_config()
  c.rock.mode = "off"
  c.update_from_flattened_dict({f"analysis.{k}": v for k, v in analysis.items()})
  sel = rocks.RockSelection(k=max(1, len(rock_ids)), min_freq=1, exclude_top_freq=0)
  return types.SimpleNamespace(
    config=c,
    selection={"selection": sel, "freq_V": freq, "kl_sum_V": freq * 0.1, "rock_ids": rock_ids},
    student=types.SimpleNamespace(cfg=types.SimpleNamespace(vocab_size=V)),
    rock_ids_path=str(tmp_path / "rock_ids.txt"),
    tokenizer=_Tokenizer(),
    out_dir=str(tmp_path),
    mesh=None,
    extras={},
  )


@pytest.fixture
def frozen_list(tmp_path):
  path = tmp_path / "frozen.txt"
  rock_lists.save_id_list(path, LISTED + [UNSEEN], header="the list Rock-Freeze freezes")
  return str(path)


def test_the_control_matches_the_frozen_list_and_avoids_both_lists(tmp_path, frozen_list, saved):
  ctx = _ctx(tmp_path, _freq(), np.array(ROCKS), control_match_list=frozen_list)
  (sec,) = studies._controls(ctx)
  # By hand: the rocks 4-6 equal the listed ids' frequencies exactly but are excluded, so the
  # nearest free ids on |log freq| are 7 (90 vs 100), 8 (55 vs 50) and 9 (11 vs 10). Id 39
  # never occurs in the corpus: no log frequency, no partner.
  assert ctx.extras["control_ids"].tolist() == [7, 8, 9]
  assert ctx.extras["control_list_ids"].tolist() == LISTED
  assert sec.numbers["matched_to"] == frozen_list and sec.numbers["num_unseen"] == 1
  assert any("1 id(s) of the matched list never occur" in w for w in sec.warnings)
  written = (tmp_path / "random_control_ids.txt").read_text()
  assert frozen_list in written and "disjoint" in written
  assert rock_lists.load_id_list(tmp_path / "random_control_ids.txt").tolist() == [7, 8, 9]
  sec.text.format(**sec.numbers)  # every placeholder has a number


def test_the_runs_static_list_is_the_default_match_and_the_own_rocks_the_last_resort(
  tmp_path, frozen_list, saved
):
  ctx = _ctx(tmp_path, _freq(), np.array(ROCKS))
  ctx.config.rock.mode, ctx.config.rock.list_path = "static", frozen_list
  studies._controls(ctx)
  assert ctx.extras["control_ids"].tolist() == [7, 8, 9]
  # Nothing frozen and no list named: matched to the analysis's rocks 4-6, whose exact equals
  # are the (not excluded) ids 1-3.
  ctx = _ctx(tmp_path, _freq(), np.array(ROCKS))
  (sec,) = studies._controls(ctx)
  assert ctx.extras["control_ids"].tolist() == [1, 2, 3]
  assert sec.numbers["matched_to"].endswith("(this analysis's top 3)")


def test_a_list_outside_the_vocabulary_is_a_note_not_a_crash(tmp_path, saved):
  path = tmp_path / "big.txt"
  rock_lists.save_id_list(path, [1, 151_000])
  (sec,) = studies._controls(_ctx(tmp_path, _freq(), np.array(ROCKS), control_match_list=str(path)))
  assert "out of range for vocab_size 40" in sec.numbers["skipped"]


def _ranked_by_hand(freq, kl_sum, n, min_freq, exclude_top_freq):
  """Top n ids by Rock Score (= KL sum) among ids seen >= min_freq times, the exclude_top_freq
  most frequent (lower id first on ties) removed; ties in score to the lower id."""
  top = set(sorted(range(len(freq)), key=lambda i: (-freq[i], i))[:exclude_top_freq])
  ok = [i for i in range(len(freq)) if freq[i] > 0 and freq[i] >= min_freq and i not in top]
  return sorted(ok, key=lambda i: (-kl_sum[i], i))[:n]


def test_the_knockout_pool_is_the_top_ids_by_rock_score(tmp_path):
  rng = np.random.default_rng(0)
  freq = rng.integers(0, 30, V).astype(float)
  kl_sum = np.round(rng.uniform(0, 5, V), 3) * (freq > 0)
  ctx = _ctx(tmp_path, freq, np.array([]), knockout_candidates=12)
  ctx.selection["kl_sum_V"] = kl_sum
  ctx.selection["selection"] = rocks.RockSelection(k=5, min_freq=2, exclude_top_freq=3)
  want = _ranked_by_hand(freq, kl_sum, 12, 2, 3)
  ctx.selection["rock_ids"] = np.array(want[:5])  # the rock set heads the same ranking
  assert studies._knockout_pool(ctx) == (want, 5)
  # Rocks ranked another way (e.g. rock.selector='frequency'): only the common head counts.
  ctx.selection["rock_ids"] = np.array(want[:2] + [want[7], want[3]])
  assert studies._knockout_pool(ctx) == (want, 2)


def test_the_rocks_and_controls_pool_pairs_the_matched_list_with_its_controls(tmp_path):
  ctx = _ctx(tmp_path, _freq(), np.array(ROCKS), knockout_pool="rocks_and_controls")
  ctx.extras.update(control_list_ids=np.array(LISTED), control_ids=np.array([7, 8, 9]))
  ctx.config.analysis.knockout_candidates = 4
  assert studies._knockout_pool(ctx) == ([1, 2, 7, 8], 2)


@pytest.mark.parametrize("length, test", [(4096, "bootstrap"), (0, "permutation")])
def test_the_census_gets_the_pool_its_length_and_its_test(tmp_path, monkeypatch, length, test):
  calls = {}

  def census(*args, **kw):
    calls.update(kw, candidates=args[4])
    return {"fake": True}

  monkeypatch.setattr(knockout, "census", census)
  monkeypatch.setattr(knockout_report, "section", lambda result, out: result)
  freq = _freq()
  ctx = _ctx(
    tmp_path, freq, np.array([10, 1, 4]), knockout_candidates=3, knockout_test=test,
    knockout_max_new_tokens=length, knockout_batch_rows=6,
  )  # fmt: skip
  # Rock Score = frequency here: 10 (400), then 1 and 4 (100 each: the lower id first).
  ctx.selection["kl_sum_V"] = freq
  vars(ctx).update(corpus_kwargs={"max_new_tokens": 256}, student=None, prompt_ids_SxP=None,
             prompt_mask_SxP=None, answers=[], eos_ids=(0,))  # fmt: skip
  (result,) = studies._knockout(ctx)
  assert calls["candidates"] == [10, 1, 4] and calls["test"] == test
  assert calls["max_new_tokens"] == (length or 256)  # 0: the analysis's own decode length
  assert calls["batch_rows"] == 6  # analysis.knockout_batch_rows (no mesh: no rounding)
  assert result == {"fake": True, "pool": "rock_score", "num_rocks": 3}


def _persistence_ctx(tmp_path, **analysis):
  ctx = _ctx(tmp_path, _freq(), np.array(ROCKS), **analysis)
  vars(ctx).update(
    workdir=str(tmp_path), student_source=f"checkpoint {tmp_path}/ckpt step 6",
    student_path=str(tmp_path / "ckpt"),
  )  # fmt: skip
  return ctx


def test_the_early_checkpoint_is_the_named_one_else_the_early_step_else_the_start(tmp_path):
  ckpt = str(tmp_path / "ckpt")
  assert studies._early_point(_persistence_ctx(tmp_path, early_step=2)) == (ckpt, 2)
  named = _persistence_ctx(tmp_path, early_step=2, early_checkpoint="/elsewhere")
  assert studies._early_point(named) == ("/elsewhere", None)
  start = _persistence_ctx(tmp_path)
  start.config.model.source, start.config.model.path = "hf", "/stage1/hf"
  assert studies._early_point(start) == ("/stage1/hf", None)
  assert studies._early_point(_persistence_ctx(tmp_path)) == ("", None)


def test_the_early_step_is_decoded_again_and_a_missing_one_is_a_note(tmp_path, monkeypatch):
  ctx = _persistence_ctx(tmp_path, early_step=2)
  loaded, built = [], []

  def load(c, workdir, step, mesh):
    loaded.append((workdir, step))
    return "early model", f"checkpoint {workdir}/ckpt step {step}"

  monkeypatch.setattr(studies, "load_checkpoint_step", load)
  monkeypatch.setattr(corpus, "build_corpus", lambda *a, **k: built.append(a[0]))
  monkeypatch.setattr(corpus, "id_sums", lambda path, vocab: (np.ones(V), np.ones(V)))
  vars(ctx).update(
    teacher=None, prompt_ids_SxP=None, prompt_mask_SxP=None, corpus_kwargs={}, mesh=None
  )
  model, source, _, _ = studies._early_sums(ctx, *studies._early_point(ctx))
  assert (model, loaded, built) == ("early model", [(str(tmp_path), 2)], ["early model"])

  def missing(c, workdir, step, mesh):
    raise errors.WorkdirError(f"analysis.early_step={step}: no checkpoint of step {step}")

  monkeypatch.setattr(studies, "load_checkpoint_step", missing)
  (sec,) = studies._persistence(ctx)
  assert sec.numbers["skipped"].startswith("analysis.early_step=2: no checkpoint")


def test_restoring_a_step_that_was_not_saved_names_the_field(tmp_path):
  checkpointer = types.SimpleNamespace(steps=lambda: [4, 8], directory="/w/ckpt")
  with pytest.raises(errors.WorkdirError, match=r"^analysis.early_step=2: .*saved: \[4, 8\]"):
    context._restore_step(checkpointer, None, None, 2)
