"""Gradient geometry: per-id mean logit-space gradients of the three id groups.

docs/method.md, "Gradient geometry". Per response position, `g = d KL / d student logits`
(rockjax.losses.logit_gradient: `p_s (A - E_ps[A])`, `A = log p_s - log p_t + 1`). Per id v,
`gbar_v` is the mean of g over the positions that emit v; the paper compares |gbar_v|, its
cosine with `G_balanced = sum_v gbar_v` (each group id counted once) and the contribution
`n_v |gbar_v| cos` across rocks, high-KL ids and random ids.

Only the G group ids get an accumulator row: a jitted segment sum adds each batch's g into
`[G, V]` (positions of other ids go to one extra dump row), so memory is G x V, not
positions x V. Batches of one shape compile once.

Shape letters: B batch, L sequence length, V vocabulary size, G group ids, S = G + 1 segments.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from rockjax import losses, objective
from rockjax import sharding as shd
from rockjax.analysis import degenerate, plotting, report
from rockjax.analysis import groups as groups_lib
from rockjax.analysis.paper_reference import GEOMETRY_MEDIANS
from rockjax.metrics import host_value

FIGURE = "geometry_boxplots.png"


@flax.struct.dataclass
class GradientSums:
  """Running per-segment sums; segment s < G is group id s, segment G every other position."""

  g_sum_SxV: jax.Array  # float32, summed logit gradients per segment
  count_S: jax.Array  # int32, response positions per segment
  norm_sum_S: jax.Array  # float32, summed per-position |g| per segment

  @classmethod
  def init(cls, num_ids: int, vocab_size: int) -> GradientSums:
    """Zero sums for `num_ids` group ids (plus the dump segment) over V logits."""
    return cls(
      g_sum_SxV=jnp.zeros((num_ids + 1, vocab_size), jnp.float32),
      count_S=jnp.zeros((num_ids + 1,), jnp.int32),
      norm_sum_S=jnp.zeros((num_ids + 1,), jnp.float32),
    )


def segment_map(group_ids: dict[str, np.ndarray], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(all group ids int64 `[G]` in GROUPS order, segment of each id int32 `[V]`, G elsewhere)."""
  ids_G = np.concatenate([np.asarray(group_ids[n], np.int64) for n in groups_lib.GROUPS])
  if np.unique(ids_G).size != ids_G.size:
    raise ValueError("the id groups overlap: an id can belong to one group only")
  segment_V = np.full((vocab_size,), ids_G.size, np.int32)
  segment_V[ids_G] = np.arange(ids_G.size, dtype=np.int32)
  return ids_G, segment_V


def add_logits(
  sums: GradientSums,
  student_logits_BxLxV: jax.Array,
  teacher_logits_BxLxV: jax.Array,
  targets_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  segment_V: jax.Array,
  *,
  spec: losses.DivergenceSpec = losses.DivergenceSpec(),
) -> GradientSums:
  """Adds one batch: logits at position t, emitted id `targets[t]`, counted where mask != 0.

  `spec` is the run's divergence (kind, temperature, jsd beta, skew alpha): g is its gradient.
  """
  g_BxLxV = losses.logit_gradient(student_logits_BxLxV, teacher_logits_BxLxV, spec=spec)
  g_BxLxV = g_BxLxV.astype(jnp.float32)
  num_segments = sums.count_S.shape[0]
  valid_BxL = jnp.asarray(loss_mask_BxL) != 0
  # Off-response positions add zeros to the dump segment (`where`, so a NaN cannot leak in).
  seg_N = jnp.where(valid_BxL, segment_V[targets_BxL], num_segments - 1).reshape(-1)
  g_NxV = jnp.where(valid_BxL[..., None], g_BxLxV, 0.0).reshape(-1, g_BxLxV.shape[-1])
  norm_N = jnp.sqrt(jnp.sum(jnp.square(g_NxV), axis=-1))
  seg_sum = functools.partial(jax.ops.segment_sum, segment_ids=seg_N, num_segments=num_segments)
  return GradientSums(
    g_sum_SxV=sums.g_sum_SxV + seg_sum(g_NxV),
    count_S=sums.count_S + seg_sum(valid_BxL.reshape(-1).astype(jnp.int32)),
    norm_sum_S=sums.norm_sum_S + seg_sum(norm_N),
  )


# The sums are donated: each batch updates the [S, V] accumulator in place.
add_logits_jit = jax.jit(add_logits, static_argnames=("spec",), donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("s_graph", "t_graph", "spec"), donate_argnums=0)
def _add_batch(
  sums: GradientSums,
  s_graph: nnx.GraphDef,
  s_state: nnx.State,
  t_graph: nnx.GraphDef,
  t_state: nnx.State,
  batch: dict[str, jax.Array],
  segment_V: jax.Array,
  *,
  spec: losses.DivergenceSpec,
) -> GradientSums:
  """Both forwards on one token batch, then `add_logits` (one compile per batch shape)."""
  shifted = objective.shift(batch)
  student, teacher = nnx.merge(s_graph, s_state), nnx.merge(t_graph, t_state)
  s_logits = student(shifted.inputs_BxL, shifted.input_mask_BxL)
  t_logits = teacher(shifted.inputs_BxL, shifted.input_mask_BxL)
  return add_logits(
    sums,
    s_logits,
    t_logits,
    shifted.targets_BxL,
    shifted.loss_mask_BxL,
    segment_V,
    spec=spec,
  )


def gradient_sums(
  student: nnx.Module,
  teacher: nnx.Module,
  batches: Iterable[dict[str, Any]],
  group_ids: dict[str, np.ndarray],
  *,
  vocab_size: int,
  spec: losses.DivergenceSpec = losses.DivergenceSpec(),
  mesh: jax.sharding.Mesh | None = None,
) -> GradientSums:
  """Sums over token batches ({'tokens', 'attention_mask', 'response_mask'} `[B, L]`, one shape).

  Both models see every token; position t's logits are scored against the emitted id t + 1
  on response positions (rockjax.objective.shift, as in training). With a `mesh` (models
  placed by rockjax.sharding.shard_model) batch rows are split over it and the sums replicated.
  """
  ids_G, segment_V = segment_map(group_ids, vocab_size)
  s_graph, s_state = nnx.split(student)
  t_graph, t_state = nnx.split(teacher)
  sums = GradientSums.init(ids_G.size, vocab_size)
  segment_V = jnp.asarray(segment_V)
  put = lambda x: jnp.asarray(x)  # noqa: E731
  if mesh is not None:
    put = lambda x: jax.device_put(x, shd.batch_sharding(np.shape(x), mesh))  # noqa: E731
    sums = jax.device_put(sums, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
    for batch in tqdm.tqdm(batches, desc="gradient geometry", disable=None, leave=False):
      batch = {k: put(batch[k]) for k in ("tokens", "attention_mask", "response_mask")}
      sums = _add_batch(
        sums,
        s_graph,
        s_state,
        t_graph,
        t_state,
        batch,
        segment_V,
        spec=spec,
      )
  return sums


@jax.jit
def _directions(g_sum_SxV: jax.Array, count_S: jax.Array) -> tuple[jax.Array, ...]:
  """Per group id: |gbar|, cosine with G_balanced (ids with no position left out), |G_bal|."""
  g_sum_GxV, count_G = g_sum_SxV[:-1], count_S[:-1]
  seen_G = count_G > 0
  gbar_GxV = g_sum_GxV / jnp.maximum(count_G, 1)[:, None].astype(jnp.float32)
  norm_G = jnp.linalg.norm(gbar_GxV, axis=-1)
  balanced_V = jnp.sum(jnp.where(seen_G[:, None], gbar_GxV, 0.0), axis=0)
  balanced_norm = jnp.linalg.norm(balanced_V)
  cos_G = (gbar_GxV @ balanced_V) / jnp.maximum(norm_G * balanced_norm, 1e-30)
  return norm_G, cos_G, balanced_norm


def geometry(sums: GradientSums, group_ids: dict[str, np.ndarray]) -> dict[str, Any]:
  """Per-id norm, cosine and contribution; group medians; Mann-Whitney U between groups.

  Ids never emitted in the batches have no mean gradient: they are left out (`unseen`).
  `rock_grad_norm_share` is the share of the summed per-position |g| on rock positions.
  """
  sizes = [len(group_ids[n]) for n in groups_lib.GROUPS]
  norm_G, cos_G, balanced_norm = (
    np.asarray(host_value(x), np.float64) for x in _directions(sums.g_sum_SxV, sums.count_S)
  )
  count_S = np.asarray(host_value(sums.count_S), np.int64)
  norm_sum_S = np.asarray(host_value(sums.norm_sum_S), np.float64)
  starts = np.cumsum([0] + sizes)
  result: dict[str, Any] = {"groups": {}, "tests": {}, "balanced_norm": float(balanced_norm)}
  for name, a, b in zip(groups_lib.GROUPS, starts[:-1], starts[1:]):
    n_N, seen = count_S[a:b], count_S[a:b] > 0
    norm_N, cos_N = norm_G[a:b][seen], cos_G[a:b][seen]
    contrib_N = n_N[seen] * norm_N * cos_N
    med = lambda x: float(np.median(x)) if x.size else float("nan")  # noqa: E731
    result["groups"][name] = {
      "ids": np.asarray(group_ids[name], np.int64)[seen],
      "count": n_N[seen],
      "norm": norm_N,
      "cos": cos_N,
      "contribution": contrib_N,
      "n": int(seen.sum()),
      "unseen": int((~seen).sum()),
      "median_norm": med(norm_N),
      "median_cos": med(cos_N),
      "median_contribution": med(contrib_N),
      "total_contribution": float(contrib_N.sum()),
      "grad_norm_sum": float(norm_sum_S[a:b].sum()),
    }
  total = float(norm_sum_S.sum())
  rock_norm = result["groups"]["rocks"]["grad_norm_sum"]
  result["rock_grad_norm_share"] = rock_norm / total if total > 0 else float("nan")
  result["rock_token_share"] = float(count_S[: sizes[0]].sum() / max(count_S.sum(), 1))
  g = result["groups"]
  for a, b in (("rocks", "high_kl"), ("rocks", "random"), ("high_kl", "random")):
    for field in ("norm", "cos"):
      u, p = groups_lib.mann_whitney(g[a][field], g[b][field])
      result["tests"][f"{field}_{a}_vs_{b}"] = {"mannwhitney_u": u, "mannwhitney_p": p}
  return result


def boxplot_figure(result: dict[str, Any]):
  """Two panels: |gbar_v| (log axis) and cosine with G_balanced, one box per group, each id a
  dot (small groups are visible as dots) and the paper's group medians as stars."""
  fig, axes = plotting.new_figure("Gradient geometry of the id groups", (11, 4.6), ncols=2)
  names = [n for n in groups_lib.GROUPS if result["groups"][n]["n"]]
  labels = [f"{groups_lib.GROUP_TITLES[n]}\n(n={result['groups'][n]['n']})" for n in names]
  panels = (
    (
      axes[0],
      "norm",
      "|gbar_v| (nats per unit logit, log scale)",
      "Norm of each id's mean gradient",
    ),
    (axes[1], "cos", "cosine with G_balanced (unitless)", "Alignment with the balanced direction"),
  )
  for ax, field, ylabel, title in panels:
    values = [result["groups"][n][field] for n in names]
    box = ax.boxplot(values, patch_artist=True, showfliers=False) if names else None
    for i, (n, v) in enumerate(zip(names, values)):
      box["boxes"][i].set_facecolor(groups_lib.GROUP_COLORS[n])
      box["boxes"][i].set_alpha(0.4)
      jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(v))
      ax.scatter(i + 1 + jitter, v, s=9, color=groups_lib.GROUP_COLORS[n], zorder=3)
      if n in GEOMETRY_MEDIANS[field]:
        ax.plot(i + 1.3, GEOMETRY_MEDIANS[field][n], "*", ms=11, color="tab:orange",
                markeredgecolor="black", label="paper median" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(1, len(names) + 1), labels)
    ax.set_xlabel("id group")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
  axes[0].set_yscale("log")
  axes[1].axhline(0.0, color="black", linewidth=0.6)
  return fig


def section_warnings(result: dict[str, Any]) -> tuple[str, ...]:
  """Groups smaller than asked or than the minimum (rockjax.analysis.degenerate)."""
  sizes = {name: result["groups"][name]["n"] for name in groups_lib.GROUPS}
  requested = result.get("requested", {})
  return tuple(degenerate.group_warnings(sizes, requested, result.get("eligible")))


def section(result: dict[str, Any], out_dir: str) -> report.Section:
  """The report section; saves the box plots."""
  r = groups_lib.rounded
  numbers = {
    "rock_grad_norm_share": r(result["rock_grad_norm_share"]),
    "rock_token_share": r(result["rock_token_share"]),
  }
  fields = ("median_norm", "median_cos", "median_contribution", "total_contribution")
  table, rows = groups_lib.group_table(result, fields)
  numbers.update(table)
  numbers |= {f"{n}_requested": v for n, v in result.get("requested", {}).items()}
  report.save_figure(boxplot_figure(result), out_dir, FIGURE)
  text = (
    "Per id v, gbar_v is the mean over v's positions of the reverse-KL gradient with respect "
    "to the student logits; G_balanced sums gbar_v over the ids of all three groups (each "
    "once); contribution = n_v |gbar_v| cos.\n\n"
    "| group | ids | median norm | median cosine | median contribution | total contribution |\n"
    "|---|---|---|---|---|---|\n"
    f"{rows}\n\n"
    "Rock positions are {rock_token_share:.1%} of response tokens and carry "
    "{rock_grad_norm_share:.1%} "
    "of the summed per-token gradient norm. Mann-Whitney U, norms: rocks vs high-KL ids "
    "p = {norm_rocks_vs_high_kl_mannwhitney_p}, rocks vs random ids "
    "p = {norm_rocks_vs_random_mannwhitney_p}; cosines: rocks vs high-KL ids "
    "p = {cos_rocks_vs_high_kl_mannwhitney_p}, rocks vs random ids "
    "p = {cos_rocks_vs_random_mannwhitney_p}."
  )
  caption = (
    "Left: norm of each id's mean logit gradient (log axis); right: its cosine with the "
    "balanced direction G_balanced. One box per group (rocks, high-KL ids, random ids), each id "
    "a dot; orange stars: the paper's group medians."
  )
  return report.Section(
    title="Gradient geometry",
    key="geometry",
    numbers=numbers,
    figures=(report.Figure(FIGURE, caption),),
    text=text,
    warnings=section_warnings(result),
  )
