"""The train step's rock/share_* metrics use the rock mask the loss used in that step.

In mode 'dynamic' the step reselects the rocks after its update; the shares (and
rock/num_selected) must still describe the mask the loss weighted with, i.e. the one in the
state before the step. Reference: float64 numpy from the batch itself (targets and loss mask
shifted left by one by hand), the pre-step mask, and the per-token reverse KL and its logit
gradient norm |p_s * (a - E_ps[a])|, a = log p_s - log p_t, from both models' full logits.
"""

import jax
import numpy as np
import pytest

from tests.fixtures import (
  STUDENT,
  TEACHER,
  V,
  build,
  forward,
  make_batch,
  np_log_softmax,
  one_device_mesh,
  random_model,
)

# The mask in the state before the step: two of make_batch's planted rocks (frequent targets)
# and three ordinary ids. The selection after the step (top-4 ids by KL) is another set.
PRE_IDS = [3, 11, 25, 40, 44]


def np_reference(batch, rock_mask_V):
  """{metric: (sum, count)} of the shares and rock/num_selected, in float64."""
  tokens = np.asarray(batch["tokens"])
  on = (np.asarray(batch["response_mask"]) != 0) & (np.asarray(batch["attention_mask"]) != 0)
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]  # output t predicts token t + 1; the last column scores none
  loss_on = np.zeros_like(on)
  loss_on[:, :-1] = on[:, 1:]
  # The step builds its student and teacher exactly so (fixtures.build: seeds 0 and 1).
  logits = [
    np.asarray(forward(random_model(cfg, seed=seed), tokens, batch["attention_mask"]))
    for cfg, seed in ((STUDENT, 0), (TEACHER, 1))
  ]
  ls, lt = (np_log_softmax(x) for x in logits)
  ps = np.exp(ls)
  a = ls - lt
  kl = np.sum(ps * a, axis=-1)  # KL(p_s || p_t) per position
  gnorm = np.linalg.norm(ps * (a - kl[..., None]), axis=-1)  # E_ps[a] is the KL itself
  rock = np.asarray(rock_mask_V, bool)[targets] & loss_on
  share = lambda x: (np.sum(np.where(rock, x, 0.0)), np.sum(np.where(loss_on, x, 0.0)))
  return {
    "rock/share_tokens": share(np.ones(tokens.shape)),
    "rock/share_kl": share(kl),
    "rock/share_grad_norm": share(gnorm),
    "rock/num_selected": (float(np.sum(rock_mask_V)), 1.0),
  }


@pytest.mark.parametrize("chunked", [True, False])
def test_shares_use_the_mask_the_loss_used_not_the_reselected_one(chunked):
  mesh = one_device_mesh()
  # Dynamic rocks, reselected after every update (warm-up 1, every 1: due after this step).
  fn, state, t_params = build(mesh, rock_mode="dynamic", lam=0.3, chunked=chunked, dynamic_k=4)
  pre = np.zeros(V, bool)
  pre[PRE_IDS] = True
  state = state.replace(rock_mask=jax.device_put(pre, state.rock_mask.sharding))
  batch = make_batch(seed=0)
  with jax.set_mesh(mesh):
    new_state, metrics = fn(state, t_params, batch)
  post = np.asarray(jax.device_get(new_state.rock_mask))
  assert post.sum() == 4 and not np.array_equal(post, pre), (np.flatnonzero(post), PRE_IDS)

  want = np_reference(batch, pre)
  shares = {k for k in metrics if k.startswith("rock/share_")}
  assert shares == {k for k in want if k.startswith("rock/share_")}, shares  # a new share: add it
  for key, (w_sum, w_count) in want.items():
    got_sum, got_count = (float(x) for x in metrics[key])
    np.testing.assert_allclose(got_count, w_count, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(got_sum, w_sum, rtol=1e-5, atol=1e-6, err_msg=key)

  # The case tells the two masks apart: every share (and the count of selected ids) of the
  # reselected mask differs from the pre-step one by far more than the tolerance.
  other = np_reference(batch, post)
  for key in want:
    assert abs(other[key][0] - want[key][0]) > 1e-2 * max(abs(want[key][0]), 1.0), key
