"""EOS and length-truncated rollouts: which positions the loss and rock statistics score under
opd.truncated_rollouts 'keep' and 'drop', checked by hand on a rollout with forced EOS steps."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from rockjax import objective, sampling
from rockjax.runner import loop as train
from tests.fixtures import STUDENT, V, build, left_padded_batch, one_device_mesh, random_model

B, N_SAMPLES, P, T = 4, 2, 5, 5  # 8 rows, 5 prompt columns, at most 5 new tokens
EOS = 7
# Row r stops by emitting EOS at step EOS_STEP[r] (-1: never; it hits max_new_tokens). Row 6
# emits its EOS at the last step: full length, but NOT truncated.
EOS_STEP = np.array([0, -1, 1, -1, 2, -1, T - 1, -1])


def force_eos(logits_NxV, step):
  """EOS is the only choice for row r at step EOS_STEP[r] and banned at every other step."""
  at_eos_N = jnp.asarray(EOS_STEP) == step
  eos_only = jnp.where(jnp.arange(V) == EOS, 0.0, -jnp.inf)
  no_eos = logits_NxV.at[:, EOS].set(-jnp.inf)
  return jnp.where(at_eos_N[:, None], eos_only[None, :], no_eos)


@pytest.fixture(scope="module")
def rollout():
  ids, mask = left_padded_batch(V, batch=B, length=P)
  out = sampling.generate(
    random_model(STUDENT, seed=0),
    ids,
    mask,
    key=jax.random.key(0),
    max_new_tokens=T,
    eos_ids=(EOS,),
    num_samples=N_SAMPLES,
    logit_processor=force_eos,
  )
  return jax.tree.map(np.asarray, out)


def hand_lengths():
  """Response length of each row, EOS included: EOS at step s -> s + 1 tokens, else T."""
  return np.where(EOS_STEP >= 0, EOS_STEP + 1, T)


def hand_loss_mask(kept_N):
  """The scored [N, P + T] positions by hand: column t predicts token t + 1, so a response of
  n tokens (EOS included) is scored at columns P - 1 ... P + n - 2; nothing after the EOS."""
  mask = np.zeros((len(kept_N), P + T), np.int32)
  for r, n in enumerate(hand_lengths()):
    if kept_N[r]:
      mask[r, P - 1 : P - 1 + n] = 1
  return mask


def test_rollout_marks_rows_cut_by_the_length_limit(rollout):
  np.testing.assert_array_equal(rollout.lengths, hand_lengths())
  np.testing.assert_array_equal(rollout.truncated, EOS_STEP < 0)  # row 6: full length, has EOS
  for r, s in enumerate(EOS_STEP):
    if s >= 0:  # the EOS is the last response token and is inside the response mask
      assert rollout.tokens[r, P + s] == EOS and rollout.response_mask[r, P + s] == 1
      assert rollout.response_mask[r, P + s + 1 :].sum() == 0


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_scored_positions_and_truncated_count(rollout, policy):
  batch, metrics = sampling.train_batch(rollout, policy)
  truncated, count = (float(x) for x in metrics["rollout/truncated"])
  assert (truncated, count) == (4.0, 8.0)  # rows 1, 3, 5, 7 under either policy
  kept_N = np.ones(8, bool) if policy == "keep" else EOS_STEP >= 0
  loss_mask = np.asarray(objective.shift(batch)[3])
  np.testing.assert_array_equal(loss_mask, hand_loss_mask(kept_N))
  # The tokens and attention are untouched: the batch keeps its shape and rows.
  np.testing.assert_array_equal(batch.tokens_BxL, rollout.tokens)
  np.testing.assert_array_equal(batch.attention_mask_BxL, rollout.attention_mask)


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_step_scores_the_eos_and_drops_truncated_rows(rollout, policy):
  """The train step's rock counts are the emitted ids at the hand-scored positions: the EOS of
  every finished row once, a dropped row's tokens never; opd/response_tokens likewise."""
  batch, _ = sampling.train_batch(rollout, policy)
  mesh = one_device_mesh()
  fn, state, t_params = build(mesh, rock_mode="off")
  with jax.set_mesh(mesh):
    new_state, m = fn(state, t_params, batch)
  kept_N = np.ones(8, bool) if policy == "keep" else EOS_STEP >= 0
  scored = hand_loss_mask(kept_N)[:, :-1] > 0
  emitted = rollout.tokens[:, 1:]
  want_V = np.bincount(emitted[scored], minlength=V)
  np.testing.assert_array_equal(np.asarray(new_state.rock.count_V), want_V)
  assert want_V[EOS] == 4  # rows 0, 2, 4, 6 each emit one scored EOS (it was banned elsewhere)
  assert float(m["opd/response_tokens"][0]) == scored.sum()
  assert scored.sum() == (hand_lengths()[kept_N]).sum()


def test_bad_policy_is_rejected(rollout):
  with pytest.raises(ValueError, match="opd.truncated_rollouts"):
    sampling.train_batch(rollout, "skip")


@pytest.mark.slow
def test_train_loop_logs_truncated_and_drops_their_tokens(tmp_path):
  """One on-policy step of the tiny config under 'keep' and 'drop' (same params and rollout
  key): the same rollout/truncated share, and 'drop' scores max_new_tokens fewer response
  tokens per truncated row (a row cut by the limit has exactly max_new_tokens tokens)."""
  logged = {}
  for policy in ("keep", "drop"):
    c = tiny.get_config()
    c.steps, c.eval.every, c.ckpt.every = 1, 0, 0
    c.opd.truncated_rollouts = policy
    workdir = tmp_path / policy
    train.run(c, str(workdir))
    (line,) = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    logged[policy] = line
  rows = c.data.prompts_per_step * c.opd.samples_per_prompt
  share = logged["keep"]["rollout/truncated"]
  assert share == logged["drop"]["rollout/truncated"] and share > 0
  dropped = round(share * rows) * c.opd.max_new_tokens
  keep_tokens, drop_tokens = (logged[p]["opd/response_tokens"] for p in ("keep", "drop"))
  assert drop_tokens == pytest.approx(keep_tokens - dropped)
