"""Online Rock Token tracking: per-id statistics, Rock Score, selection and token weights.

A Rock Token is a vocabulary id whose total KL mass `R(v) = Freq(v) * mean_kl(v)` is among the
largest (docs/method.md, "Rock Tokens"). `RockStats` keeps the per-id sums in the train state so
rocks are found, and their persistence measured, while training runs, not only afterwards.

Shape letters: B batch, L sequence length, V vocabulary size, N = B*L flattened positions.
Counts are int32 (exact up to 2**31 occurrences of one id); KL sums are float32.

Windows (every statistic is a per-id `(count, kl_sum)` pair, so all windows work everywhere):
  'cumulative'      every update since init.
  'recent'          exponentially decayed: `recent = decay * recent + this_step`.
  'since_snapshot'  updates after the last `snapshot` (equals 'cumulative' before the first).
  'snapshot'        the cumulative sums frozen by the last `snapshot` (zeros before the first).

All functions here are pure and jittable and never loop over the vocabulary in Python; the
static-list helpers re-exported from rockjax.rocks.lists (load_id_list, ids_to_mask) run on host.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from rockjax.rocks.lists import ids_to_mask, load_id_list, paper_rock_ids  # noqa: F401 (re-export)

WINDOWS = ("cumulative", "recent", "since_snapshot", "snapshot")
SELECTORS = ("rock_score", "frequency", "mean_kl")
# Half-life of ~69 updates: long enough to smooth one small batch, short enough to follow
# the drift of the student over a few hundred OPD steps.
DEFAULT_DECAY = 0.99


@flax.struct.dataclass
class RockStats:
  """Per-id token statistics carried in the train state and checkpointed with it."""

  count_V: jax.Array  # int32, cumulative occurrences in response positions
  kl_sum_V: jax.Array  # float32, cumulative KL summed over those occurrences
  recent_count_V: jax.Array  # float32, decayed count (float: decay makes it fractional)
  recent_kl_V: jax.Array  # float32, decayed KL sum
  since_count_V: jax.Array  # int32, occurrences since the last snapshot
  since_kl_V: jax.Array  # float32, KL since the last snapshot
  snap_count_V: jax.Array  # int32, cumulative count frozen at the last snapshot
  snap_kl_sum_V: jax.Array  # float32, cumulative KL frozen at the last snapshot
  num_updates: jax.Array  # int32 scalar, number of `update` calls
  snap_step: jax.Array  # int32 scalar, `num_updates` at the last snapshot; -1 if none

  @classmethod
  def init(cls, vocab_size: int) -> RockStats:
    """All-zero statistics for a vocabulary of `vocab_size` ids."""
    # A fresh array per field: leaves sharing one buffer cannot be donated to a jitted step.
    zi = lambda: jnp.zeros((vocab_size,), jnp.int32)  # noqa: E731
    zf = lambda: jnp.zeros((vocab_size,), jnp.float32)  # noqa: E731
    return cls(
      count_V=zi(),
      kl_sum_V=zf(),
      recent_count_V=zf(),
      recent_kl_V=zf(),
      since_count_V=zi(),
      since_kl_V=zf(),
      snap_count_V=zi(),
      snap_kl_sum_V=zf(),
      num_updates=jnp.zeros((), jnp.int32),
      snap_step=jnp.full((), -1, jnp.int32),
    )

  @property
  def vocab_size(self) -> int:
    """Number of ids V tracked."""
    return self.count_V.shape[0]

  @property
  def has_snapshot(self) -> jax.Array:
    """Bool scalar: whether `snapshot` was ever called."""
    return self.snap_step >= 0


def _valid_BxL(ids_BxL: jax.Array, mask_BxL: jax.Array, vocab_size: int) -> jax.Array:
  """Positions that count: inside the response mask and carrying an id in [0, V)."""
  ids_BxL = jnp.asarray(ids_BxL)
  return (jnp.asarray(mask_BxL) != 0) & (ids_BxL >= 0) & (ids_BxL < vocab_size)


def step_sums(
  ids_BxL: jax.Array, kl_BxL: jax.Array, mask_BxL: jax.Array, vocab_size: int
) -> tuple[jax.Array, jax.Array]:
  """This batch's per-id `(count_V int32, kl_sum_V float32)` over masked, in-range positions."""
  valid_BxL = _valid_BxL(ids_BxL, mask_BxL, vocab_size)
  # Invalid positions scatter zero into id 0 rather than being indexed out of bounds, and
  # `where` (not a product) keeps a NaN/inf KL at a padding position from leaking in.
  ids_N = jnp.where(valid_BxL, ids_BxL, 0).reshape(-1)
  kl_N = jnp.where(valid_BxL, jnp.asarray(kl_BxL).astype(jnp.float32), 0.0).reshape(-1)
  one_N = valid_BxL.reshape(-1).astype(jnp.int32)
  count_V = jnp.zeros((vocab_size,), jnp.int32).at[ids_N].add(one_N)
  kl_V = jnp.zeros((vocab_size,), jnp.float32).at[ids_N].add(kl_N)
  return count_V, kl_V


def update(
  stats: RockStats,
  ids_BxL: jax.Array,
  kl_BxL: jax.Array,
  mask_BxL: jax.Array,
  *,
  decay: float | jax.Array = DEFAULT_DECAY,
) -> RockStats:
  """Adds one batch: per-id counts and KL sums over response positions (mask != 0).

  `kl_BxL` may be any float dtype; sums are float32. Ids outside [0, V) are dropped (they add
  to no id and to no count). The recent window is `recent = decay * recent + this_step`,
  default decay 0.99 (DEFAULT_DECAY).
  """
  count_V, kl_V = step_sums(ids_BxL, kl_BxL, mask_BxL, stats.vocab_size)
  decay = jnp.asarray(decay, jnp.float32)
  return stats.replace(
    count_V=stats.count_V + count_V,
    kl_sum_V=stats.kl_sum_V + kl_V,
    recent_count_V=decay * stats.recent_count_V + count_V.astype(jnp.float32),
    recent_kl_V=decay * stats.recent_kl_V + kl_V,
    since_count_V=stats.since_count_V + count_V,
    since_kl_V=stats.since_kl_V + kl_V,
    num_updates=stats.num_updates + 1,
  )


def snapshot(stats: RockStats) -> RockStats:
  """Freezes the current cumulative per-id count and KL (hence mean KL) for persistence."""
  # Copies, so the state never holds one buffer twice (jit would forward it, and donating
  # the state to the next step would then fail).
  return stats.replace(
    snap_count_V=jnp.copy(stats.count_V),
    snap_kl_sum_V=jnp.copy(stats.kl_sum_V),
    since_count_V=jnp.zeros_like(stats.since_count_V),
    since_kl_V=jnp.zeros_like(stats.since_kl_V),
    snap_step=jnp.copy(stats.num_updates),
  )


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
  """Raises a ValueError naming the bad option and the allowed ones."""
  if value not in allowed:
    raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def window_sums(stats: RockStats, window: str = "cumulative") -> tuple[jax.Array, jax.Array]:
  """The `(count_V, kl_sum_V)` pair of one window (see the module docstring)."""
  _check("window", window, WINDOWS)
  return {
    "cumulative": (stats.count_V, stats.kl_sum_V),
    "recent": (stats.recent_count_V, stats.recent_kl_V),
    "since_snapshot": (stats.since_count_V, stats.since_kl_V),
    "snapshot": (stats.snap_count_V, stats.snap_kl_sum_V),
  }[window]


def frequency(stats: RockStats, *, window: str = "cumulative") -> jax.Array:
  """Per-id occurrence count `[V]` as float32 (fractional for the 'recent' window)."""
  return window_sums(stats, window)[0].astype(jnp.float32)


def mean_kl(stats: RockStats, *, window: str = "cumulative") -> jax.Array:
  """Per-id mean KL `[V]` float32; 0 where the id was not seen in the window."""
  count_V, kl_V = window_sums(stats, window)
  count_V = count_V.astype(jnp.float32)
  seen_V = count_V > 0
  return jnp.where(seen_V, kl_V / jnp.where(seen_V, count_V, 1.0), 0.0)


def rock_score(stats: RockStats, *, window: str = "cumulative") -> jax.Array:
  """Rock Score `R(v) = Freq(v) * mean_kl(v)` `[V]`: the KL sum itself, so sum(R) = total KL."""
  # Returning the stored sum (not count * mean) keeps sum(R) equal to the total KL exactly.
  return window_sums(stats, window)[1]


def _scores(stats: RockStats, selector: str, window: str) -> jax.Array:
  """The ranking key `[V]` for one selector."""
  _check("selector", selector, SELECTORS)
  if selector == "rock_score":
    return rock_score(stats, window=window)
  if selector == "frequency":
    return frequency(stats, window=window)
  return mean_kl(stats, window=window)


@functools.partial(jax.jit, static_argnames=("k", "exclude_top_freq", "selector", "window"))
def select(
  stats: RockStats,
  *,
  k: int,
  min_freq: float = 1,
  exclude_top_freq: int = 0,
  selector: str = "rock_score",
  window: str = "cumulative",
) -> jax.Array:
  """Bool `[V]`: the top-k ids by `selector` among seen ids with count >= min_freq.

  The `exclude_top_freq` most frequent ids are removed first (paper code: k=100, min_freq=2,
  exclude_top_freq=5). Unseen ids are never selected, so fewer than k may be returned. Ties
  (in score, and in frequency for the exclusion) go to the lower id. Ids whose score is NaN
  rank last. Counts and frequencies come from the same `window`.
  """
  _check("window", window, WINDOWS)
  score_V = _scores(stats, selector, window).astype(jnp.float32)
  freq_V = frequency(stats, window=window)
  vocab_size = stats.vocab_size
  eligible_V = (freq_V > 0) & (freq_V >= min_freq)
  if exclude_top_freq > 0:
    # top_k puts the lower index first among equal counts: the documented tie rule.
    _, top_ids = jax.lax.top_k(freq_V, min(exclude_top_freq, vocab_size))
    eligible_V = eligible_V & ~jnp.zeros((vocab_size,), bool).at[top_ids].set(True)
  k = min(k, vocab_size)
  if k <= 0:
    return jnp.zeros((vocab_size,), bool)
  key_V = jnp.where(eligible_V & ~jnp.isnan(score_V), score_V, -jnp.inf)
  _, top_ids = jax.lax.top_k(key_V, k)
  # top_k always returns k ids; when fewer than k are eligible the rest are filler.
  return jnp.zeros((vocab_size,), bool).at[top_ids].set(True) & eligible_V


@dataclasses.dataclass(frozen=True)
class RockSelection:
  """How rocks are picked from the statistics (config group `rock`); validated when built."""

  k: int = 100  # number of rock ids (paper: 100)
  min_freq: float = 2  # ignore ids seen fewer times (authors' code: 2)
  exclude_top_freq: int = 5  # drop the N most frequent ids first (authors' code: 5)
  selector: str = "rock_score"  # one of SELECTORS
  window: str = "cumulative"  # one of WINDOWS

  def __post_init__(self):
    _check("selector", self.selector, SELECTORS)
    _check("window", self.window, WINDOWS)
    if self.k < 1 or self.min_freq < 0 or self.exclude_top_freq < 0:
      raise ValueError(
        f"RockSelection: need k >= 1, min_freq >= 0, exclude_top_freq >= 0; got {self}"
      )

  def select(self, stats: RockStats) -> jax.Array:
    """Bool `[V]`: this selection applied to `stats` (see `select`)."""
    return select(
      stats,
      k=self.k,
      min_freq=self.min_freq,
      exclude_top_freq=self.exclude_top_freq,
      selector=self.selector,
      window=self.window,
    )


@dataclasses.dataclass(frozen=True)
class RockSchedule:
  """When the statistics are reselected and snapshotted during training; validated when built."""

  warmup_steps: int = 0  # first selection after this many steps
  select_every: int = 1  # then every N steps
  snapshot_step: int = 0  # snapshot per-id mean KL after this step (persistence); 0 = never
  decay: float = DEFAULT_DECAY  # per-step decay of the 'recent' window

  def __post_init__(self):
    if self.warmup_steps < 0 or self.select_every < 1 or self.snapshot_step < 0:
      raise ValueError(
        f"RockSchedule: need warmup_steps >= 0, select_every >= 1, snapshot_step >= 0; got {self}"
      )
    if not 0.0 < self.decay <= 1.0:
      raise ValueError(f"RockSchedule: decay must be in (0, 1], got {self.decay}")

  def due(self, step: jax.Array) -> jax.Array:
    """Whether the selection is recomputed after `step` updates."""
    return (step >= self.warmup_steps) & ((step - self.warmup_steps) % self.select_every == 0)


def stagnation(stats: RockStats, *, window: str = "since_snapshot") -> jax.Array:
  """Relative drop `(snap - now) / |snap|` `[V]` of each id's mean KL; NaN where undefined.

  `snap` is the mean KL frozen by `snapshot`, `now` the mean KL over `window` (default: the
  updates after the snapshot, so the two periods are disjoint). Positive means the KL fell;
  rocks stay near 0 while rare high-KL ids drop (docs/method.md, "Rock Tokens"). Undefined
  (NaN, so that `nanmedian` skips it rather than reading it as "did not move"): no snapshot
  taken, id unseen at the snapshot or in `window`, or snapshot mean 0. `|snap|` equals `snap`
  for a true KL and keeps "positive = fell" for signed estimators.
  """
  _check("window", window, WINDOWS)
  snap_V = mean_kl(stats, window="snapshot")
  now_V = mean_kl(stats, window=window)
  defined_V = (
    stats.has_snapshot
    & (stats.snap_count_V > 0)
    & (window_sums(stats, window)[0] > 0)
    & (snap_V != 0)
  )
  return jnp.where(
    defined_V, (snap_V - now_V) / jnp.where(defined_V, jnp.abs(snap_V), 1.0), jnp.nan
  )


def is_rock_BxL(rock_mask_V: jax.Array, ids_BxL: jax.Array) -> jax.Array:
  """Bool `[B, L]`: whether each emitted id is in the rock mask (out-of-range ids are not)."""
  rock_mask_V = jnp.asarray(rock_mask_V, bool)
  vocab_size = rock_mask_V.shape[0]
  ids_BxL = jnp.asarray(ids_BxL)
  in_range_BxL = (ids_BxL >= 0) & (ids_BxL < vocab_size)
  return rock_mask_V[jnp.where(in_range_BxL, ids_BxL, 0)] & in_range_BxL


def token_weights(
  rock_mask_V: jax.Array, ids_BxL: jax.Array, mask_BxL: jax.Array, *, lam: float | jax.Array = 0.0
) -> jax.Array:
  """The masking function: float32 `[B, L]`, lam on rock ids, 1 elsewhere, 0 outside the mask."""
  lam = jnp.asarray(lam, jnp.float32)
  w_BxL = jnp.where(is_rock_BxL(rock_mask_V, ids_BxL), lam, jnp.float32(1.0))
  return jnp.where(jnp.asarray(mask_BxL) != 0, w_BxL, 0.0)


def rock_shares(
  rock_mask_V: jax.Array, ids_BxL: jax.Array, kl_BxL: jax.Array, mask_BxL: jax.Array
) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Metrics as (sum, count): share of response tokens that are rocks, share of KL on them."""
  resp_BxL = jnp.asarray(mask_BxL) != 0
  rock_BxL = is_rock_BxL(rock_mask_V, ids_BxL) & resp_BxL
  kl_BxL = jnp.where(resp_BxL, jnp.asarray(kl_BxL).astype(jnp.float32), 0.0)
  return {
    "rock/share_tokens": (rock_BxL.sum(dtype=jnp.float32), resp_BxL.sum(dtype=jnp.float32)),
    "rock/share_kl": (jnp.where(rock_BxL, kl_BxL, 0.0).sum(), kl_BxL.sum()),
  }


def kl_coverage(
  stats: RockStats, rock_mask_V: jax.Array, *, window: str = "cumulative"
) -> tuple[jax.Array, jax.Array]:
  """(KL on the rock ids, total KL) over a window: the paper's "top-100 covers ~60%"."""
  score_V = rock_score(stats, window=window)
  return jnp.where(jnp.asarray(rock_mask_V, bool), score_V, 0.0).sum(), score_V.sum()


def jaccard(mask_a_V: jax.Array, mask_b_V: jax.Array) -> jax.Array:
  """Jaccard index of two id sets given as bool `[V]` masks; 1 when both are empty."""
  a_V, b_V = jnp.asarray(mask_a_V, bool), jnp.asarray(mask_b_V, bool)
  union = (a_V | b_V).sum()
  return jnp.where(union > 0, (a_V & b_V).sum() / jnp.maximum(union, 1), 1.0)
