"""rockjax.rocks and rockjax.rocks.lists against float64 numpy loops and hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rockjax import rocks
from rockjax.rocks import lists as rock_lists

V = 13  # small vocab: ids are drawn from [-2, V + 2) so out-of-range ids occur


def ref_stats(batches, vocab_size, decay):
  """Float64 loop over positions: the reference for `update` over several steps."""
  count = np.zeros(vocab_size, np.int64)
  kl_sum = np.zeros(vocab_size)
  recent_count = np.zeros(vocab_size)
  recent_kl = np.zeros(vocab_size)
  for ids, kl, mask in batches:
    step_count = np.zeros(vocab_size)
    step_kl = np.zeros(vocab_size)
    for b in range(ids.shape[0]):
      for t in range(ids.shape[1]):
        v = int(ids[b, t])
        if mask[b, t] and 0 <= v < vocab_size:
          step_count[v] += 1
          step_kl[v] += float(kl[b, t])
    count += step_count.astype(np.int64)
    kl_sum += step_kl
    recent_count = decay * recent_count + step_count
    recent_kl = decay * recent_kl + step_kl
  return count, kl_sum, recent_count, recent_kl


def random_batch(rng, b=4, l=9, dtype=jnp.float32, nan_in_padding=True):
  """ids in [-2, V+2), kl >= 0 in `dtype`, a random 0/1 mask; padding KL may be NaN."""
  ids = rng.integers(-2, V + 2, size=(b, l)).astype(np.int32)
  mask = rng.random((b, l)) < 0.7
  kl = rng.gamma(1.0, 0.5, size=(b, l)).astype(np.float32)
  if nan_in_padding:
    kl = np.where(mask, kl, np.nan)  # padding garbage must not reach the stats
  kl = np.asarray(jnp.asarray(kl, dtype))  # the reference sees the same rounded values
  return ids, kl, mask


def make_stats(count, kl_sum, recent_count=None, recent_kl=None):
  """RockStats with hand-set cumulative (and optionally recent) sums."""
  s = rocks.RockStats.init(len(count))
  s = s.replace(count_V=jnp.asarray(count, jnp.int32), kl_sum_V=jnp.asarray(kl_sum, jnp.float32))
  if recent_count is not None:
    s = s.replace(
      recent_count_V=jnp.asarray(recent_count, jnp.float32),
      recent_kl_V=jnp.asarray(recent_kl, jnp.float32),
    )
  return s


def ids_of(mask):
  """Sorted selected ids of a bool mask, as a Python list."""
  return np.flatnonzero(np.asarray(mask)).tolist()


# ---------------------------------------------------------------------------------- update


@pytest.mark.parametrize(
  "dtype,decay", [(jnp.float32, 0.99), (jnp.bfloat16, 0.5), (jnp.float16, 1.0)]
)
def test_update_matches_numpy_loop_over_steps(rng, dtype, decay):
  batches = [random_batch(rng, dtype=dtype) for _ in range(4)]
  stats = rocks.RockStats.init(V)
  for ids, kl, mask in batches:
    stats = rocks.update(stats, ids, jnp.asarray(kl, dtype), mask, decay=decay)
  count, kl_sum, recent_count, recent_kl = ref_stats(batches, V, decay)
  assert stats.count_V.dtype == jnp.int32 and stats.kl_sum_V.dtype == jnp.float32
  np.testing.assert_array_equal(stats.count_V, count)
  np.testing.assert_allclose(stats.kl_sum_V, kl_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.recent_count_V, recent_count, rtol=1e-6)
  np.testing.assert_allclose(stats.recent_kl_V, recent_kl, rtol=1e-5, atol=1e-6)
  assert int(stats.num_updates) == 4 and not bool(stats.has_snapshot)
  # Before any snapshot, 'since_snapshot' is the whole history.
  np.testing.assert_array_equal(stats.since_count_V, count)


def test_update_default_decay_is_documented_value(rng):
  ids, kl, mask = random_batch(rng)
  s = rocks.update(rocks.update(rocks.RockStats.init(V), ids, kl, mask), ids, kl, mask)
  _, _, recent_count, _ = ref_stats([(ids, kl, mask)] * 2, V, 0.99)
  np.testing.assert_allclose(s.recent_count_V, recent_count, rtol=1e-6)


def test_update_hand_case_drops_out_of_range_and_masked():
  ids = np.array([[1, 1, 2, 5], [-1, 4, 1, 3]])
  kl = np.array([[0.5, 1.5, 2.0, 9.0], [9.0, 7.0, 1.0, np.inf]], np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])  # id 5 and -1 are out of range for V=4
  s = rocks.update(rocks.RockStats.init(4), ids, kl, mask)
  np.testing.assert_array_equal(s.count_V, [0, 3, 1, 0])
  np.testing.assert_allclose(s.kl_sum_V, [0.0, 3.0, 2.0, 0.0])
  np.testing.assert_allclose(rocks.mean_kl(s), [0.0, 1.0, 2.0, 0.0])


def test_rock_score_sums_to_total_masked_kl(rng):
  stats = rocks.RockStats.init(V)
  total = 0.0
  for _ in range(3):
    ids, kl, mask = random_batch(rng)
    stats = rocks.update(stats, ids, kl, mask)
    total += np.where(mask & (ids >= 0) & (ids < V), kl.astype(np.float64), 0.0).sum()
  for window in ("cumulative", "since_snapshot"):
    score = rocks.rock_score(stats, window=window)
    np.testing.assert_allclose(np.asarray(score, np.float64).sum(), total, rtol=1e-5)
    # R(v) = Freq(v) * mean_kl(v) for every id.
    np.testing.assert_allclose(
      score,
      rocks.frequency(stats, window=window) * rocks.mean_kl(stats, window=window),
      rtol=1e-5,
      atol=1e-6,
    )


def test_update_jits_and_sharded_batch_equals_unsharded(rng, devices8):
  ids, kl, mask = random_batch(rng, b=16, l=6)
  stats = rocks.update(rocks.RockStats.init(V), *random_batch(rng, b=16, l=6))
  eager = rocks.update(stats, ids, kl, mask, decay=0.9)
  jitted = jax.jit(rocks.update)(stats, ids, kl, mask, decay=0.9)
  mesh = Mesh(np.array(devices8), ("data",))
  batch = NamedSharding(mesh, P("data", None))
  ids_s, kl_s, mask_s = (jax.device_put(x, batch) for x in (ids, kl, mask))
  assert len(ids_s.sharding.device_set) == 8
  sharded = jax.jit(rocks.update)(stats, ids_s, kl_s, mask_s, decay=0.9)
  for other in (jitted, sharded):
    np.testing.assert_array_equal(other.count_V, eager.count_V)
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(eager)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_state_can_be_donated_after_init_and_snapshot(rng):
  # Leaves sharing one buffer (e.g. snapshot aliasing the live counts) break donation.
  step = jax.jit(rocks.update, donate_argnums=0)
  s = step(rocks.RockStats.init(V), *random_batch(rng))
  s = step(rocks.snapshot(s), *random_batch(rng))
  s = step(jax.jit(rocks.snapshot)(s), *random_batch(rng))
  assert int(s.num_updates) == 3 and int(s.snap_step) == 2


# ---------------------------------------------------------------------------------- select

# Hand-made stats, V = 8:   id:    0    1    2    3    4    5    6    7
HAND_COUNT = np.array([50, 1, 4, 4, 10, 0, 2, 40])
HAND_KL = np.array([5.0, 3.0, 8.0, 8.0, 2.0, 0.0, 6.0, 1.0])
# mean KL:             0.1  3.0  2.0  2.0  0.2   -   3.0  0.025


@pytest.mark.parametrize(
  "kwargs,expected",
  [
    (dict(k=2), [2, 3]),  # ranks 2,3 (8.0 tie) > 6 (6.0)
    (dict(k=3), [2, 3, 6]),
    (dict(k=1), [2]),  # tie 2 vs 3: lower id wins
    (dict(k=4, exclude_top_freq=1), [1, 2, 3, 6]),  # drops id 0 (count 50)
    (dict(k=3, min_freq=3), [0, 2, 3]),  # drops ids 1 (count 1), 6 (count 2)
    (dict(k=3, min_freq=2, exclude_top_freq=2), [2, 3, 6]),
    (dict(k=100), [0, 1, 2, 3, 4, 6, 7]),  # fewer eligible than k; 5 unseen
    (dict(k=100, min_freq=0), [0, 1, 2, 3, 4, 6, 7]),  # unseen still never selected
    (dict(k=0), []),
    (dict(k=2, selector="frequency"), [0, 7]),
    (dict(k=3, selector="frequency", exclude_top_freq=1), [2, 4, 7]),  # 4 vs 4: id 2 wins
    (dict(k=2, selector="mean_kl"), [1, 6]),  # 3.0 tie
    (dict(k=2, selector="mean_kl", min_freq=2), [2, 6]),  # 6 (3.0), then 2 beats 3 (2.0 tie)
  ],
)
def test_select_hand_cases(kwargs, expected):
  sel = rocks.select(make_stats(HAND_COUNT, HAND_KL), **kwargs)
  assert sel.dtype == jnp.bool_ and sel.shape == (8,)
  assert ids_of(sel) == expected


def test_select_exclude_top_freq_ties_go_to_lower_id():
  count = np.array([5, 9, 9, 1, 1])
  kl = np.array([1.0, 9.0, 8.0, 2.0, 3.0])
  # ids 1 and 2 tie at the top frequency: excluding one removes id 1 (lower id), keeps 2.
  assert ids_of(rocks.select(make_stats(count, kl), k=1, exclude_top_freq=1)) == [2]


def test_select_recent_window_uses_recent_counts():
  count, kl = np.array([10, 10, 10]), np.array([9.0, 1.0, 1.0])
  s = make_stats(count, kl, recent_count=[0.0, 1.5, 0.5], recent_kl=[0.0, 0.3, 0.9])
  assert ids_of(rocks.select(s, k=1)) == [0]
  assert ids_of(rocks.select(s, k=1, window="recent", min_freq=0)) == [2]  # 0.9 > 0.3
  assert ids_of(rocks.select(s, k=3, window="recent", min_freq=1)) == [1]  # id 2: 0.5 < 1


def test_select_full_random_matches_numpy_argsort(rng):
  count = rng.integers(0, 6, size=300)
  kl = np.round(rng.random(300) * 4, 1) * (count > 0)  # rounding forces many ties
  sel = rocks.select(make_stats(count, kl), k=40, min_freq=2, exclude_top_freq=5)
  order_freq = sorted(range(300), key=lambda v: (-count[v], v))
  excluded = set(order_freq[:5])
  eligible = [v for v in range(300) if count[v] >= 2 and v not in excluded]
  ref = sorted(sorted(eligible, key=lambda v: (-np.float32(kl[v]), v))[:40])
  assert ids_of(sel) == ref


def test_select_unknown_names_raise():
  s = make_stats(HAND_COUNT, HAND_KL)
  with pytest.raises(ValueError, match="selector 'grad_norm'"):
    rocks.select(s, k=2, selector="grad_norm")
  with pytest.raises(ValueError, match="window 'weekly'"):
    rocks.select(s, k=2, window="weekly")
  with pytest.raises(ValueError, match="window 'weekly'"):
    rocks.rock_score(s, window="weekly")


def test_select_under_outer_jit_and_static_list_share_a_path():
  s = make_stats(HAND_COUNT, HAND_KL)
  sel = jax.jit(lambda st: rocks.select(st, k=2, min_freq=2))(s)
  assert ids_of(sel) == [2, 3]
  union = sel | rocks.ids_to_mask([7], 8)
  assert ids_of(union) == [2, 3, 7]


# --------------------------------------------------------------- snapshot and stagnation


def test_snapshot_and_stagnation_hand_case():
  s = rocks.RockStats.init(5)
  assert np.isnan(np.asarray(rocks.stagnation(s))).all()  # no snapshot yet: all undefined
  # Early period: id 0 a rock (mean 0.2), id 1 rare high-KL (mean 2.0), id 3 only early.
  s = rocks.update(s, np.array([[0, 0, 1, 3]]), np.array([[0.1, 0.3, 2.0, 1.0]]), np.ones((1, 4)))
  s = rocks.snapshot(s)
  assert int(s.snap_step) == 1 and bool(s.has_snapshot)
  np.testing.assert_allclose(rocks.mean_kl(s, window="snapshot"), [0.2, 2.0, 0, 1.0, 0])
  # Late period: rock mean 0.19, rare id 0.85; id 2 new; id 3 gone; id 4 masked out.
  s = rocks.update(
    s,
    np.array([[0, 0, 1, 2, 4]]),
    np.array([[0.18, 0.2, 0.85, 5.0, 7.0]]),
    np.array([[1, 1, 1, 1, 0]]),
  )
  np.testing.assert_array_equal(s.since_count_V, [2, 1, 1, 0, 0])
  np.testing.assert_array_equal(s.count_V, [4, 2, 1, 1, 0])
  stag = np.asarray(rocks.stagnation(s))
  np.testing.assert_allclose(stag[:2], [(0.2 - 0.19) / 0.2, (2.0 - 0.85) / 2.0], rtol=1e-5)
  assert np.isnan(stag[2:]).all()  # 2: unseen at snapshot; 3: unseen since; 4: never seen
  # Against the cumulative window the "now" mean mixes both periods: (0.1+0.3+0.18+0.2)/4.
  np.testing.assert_allclose(
    rocks.stagnation(s, window="cumulative")[0], (0.2 - 0.195) / 0.2, rtol=1e-5
  )


def test_stagnation_signed_estimator_and_zero_snapshot():
  s = rocks.update(
    rocks.RockStats.init(3), np.array([[0, 1]]), np.array([[-0.5, 0.0]]), np.ones((1, 2))
  )
  s = rocks.update(rocks.snapshot(s), np.array([[0, 1]]), np.array([[-1.0, 0.3]]), np.ones((1, 2)))
  stag = np.asarray(rocks.stagnation(s))
  assert stag[0] == pytest.approx(1.0)  # -0.5 -> -1.0 fell: (-0.5 - -1.0) / |-0.5|
  assert np.isnan(stag[1:]).all()  # snapshot mean 0 -> undefined


# ------------------------------------------------------------------ token weights, shares

ROCK_MASK = np.array([False, True, False, True, False])
W_IDS = np.array([[1, 2, 3, -1], [4, 1, 7, 0]])  # -1 and 7 are out of range: never rocks
W_MASK = np.array([[1, 1, 1, 1], [1, 0, 1, 1]])


@pytest.mark.parametrize(
  "lam,expected",
  [
    (0.0, [[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]]),
    (0.5, [[0.5, 1.0, 0.5, 1.0], [1.0, 0.0, 1.0, 1.0]]),
    (1.0, [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]]),
  ],
)
def test_token_weights_hand_case(lam, expected):
  w = rocks.token_weights(ROCK_MASK, W_IDS, W_MASK, lam=lam)
  assert w.dtype == jnp.float32 and w.shape == (2, 4)
  np.testing.assert_array_equal(w, expected)
  np.testing.assert_array_equal(
    jax.jit(rocks.token_weights)(ROCK_MASK, W_IDS, W_MASK, lam=lam), expected
  )


def test_rock_shares_hand_case():
  kl = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 100.0, 6.0, 7.0]])
  shares = rocks.rock_shares(ROCK_MASK, W_IDS, kl, W_MASK)
  # Response positions: 7 (the masked 100.0 is ignored); rocks among them: ids 1, 3 on row 0.
  assert [float(x) for x in shares["rock/share_tokens"]] == [2.0, 7.0]
  assert [float(x) for x in shares["rock/share_kl"]] == [4.0, 28.0]


def test_kl_coverage_and_jaccard_hand_case():
  s = make_stats(HAND_COUNT, HAND_KL)
  covered, total = rocks.kl_coverage(s, rocks.ids_to_mask([2, 3], 8))
  assert (float(covered), float(total)) == (16.0, 33.0)
  a, b = rocks.ids_to_mask([1, 2, 3], 8), rocks.ids_to_mask([2, 3, 4, 5], 8)
  assert float(rocks.jaccard(a, b)) == pytest.approx(2 / 5)
  assert float(rocks.jaccard(np.zeros(8, bool), np.zeros(8, bool))) == 1.0


# ---------------------------------------------------------------------------- static lists


def test_load_id_list_reads_comments_and_keeps_order(tmp_path):
  p = tmp_path / "ids.txt"
  p.write_text("# header\n5 3  # trailing comment\n\n  0\t7\n12\n")
  ids = rock_lists.load_id_list(p, vocab_size=13)
  assert ids.dtype == np.int32 and ids.tolist() == [5, 3, 0, 7, 12]
  np.testing.assert_array_equal(
    rocks.ids_to_mask(ids, 13), [i in (0, 3, 5, 7, 12) for i in range(13)]
  )


@pytest.mark.parametrize(
  "text,line,token,why",
  [
    ("1 2\n3\n4 x5\n", 3, "x5", "not an integer"),
    ("1\n2.0\n", 2, "2.0", "not an integer"),
    ("# c\n1 -4\n", 2, "-4", "negative"),
    ("1\n2\n\n13\n", 4, "13", "out of range for vocab_size 13"),
    ("7 1\n# c\n2 7\n", 3, "7", "duplicate (first on line 1)"),
  ],
)
def test_load_id_list_errors_name_file_line_and_token(tmp_path, text, line, token, why):
  p = tmp_path / "bad.txt"
  p.write_text(text)
  with pytest.raises(ValueError) as err:
    rock_lists.load_id_list(p, vocab_size=13)
  msg = str(err.value)
  assert "\n" not in msg and f"{p}:{line}:" in msg and repr(token) in msg and why in msg


def test_save_id_list_round_trips(tmp_path):
  p = tmp_path / "out.txt"
  rock_lists.save_id_list(p, np.array([9, 2, 4]), header="made by a test\nsecond line")
  assert p.read_text().startswith("# made by a test\n# second line\n")
  assert rock_lists.load_id_list(p).tolist() == [9, 2, 4]


def test_ids_to_mask_rejects_out_of_range():
  with pytest.raises(ValueError, match="vocab_size 4"):
    rocks.ids_to_mask([1, 4], 4)


def test_paper_freeze_list_is_100_distinct_qwen3_ids():
  # Parsed here independently of load_id_list: strip comments, split, count.
  text = rock_lists.PAPER_QWEN3_ROCKS_PATH.read_text()
  assert "arXiv 2605.09253" in text
  values = [int(t) for line in text.splitlines() for t in line.split("#", 1)[0].split()]
  assert len(values) == 100 and len(set(values)) == 100
  assert all(0 <= v < 151936 for v in values)
  assert values[:3] == [3070, 279, 400] and values[-1] == 50  # rank order kept
  assert rocks.paper_rock_ids().tolist() == values
