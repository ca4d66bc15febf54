"""Rematerialisation policies for the decoder stack: what the backward pass keeps vs recomputes.

Each decoder layer's forward is wrapped in `jax.checkpoint` (nnx.remat) with one of these
policies (`ModelConfig.remat`):

  none           no remat: every intermediate of every layer is kept for the backward pass.
  full           keep only each layer's input; recompute the whole layer in the backward pass.
  dots_saveable  keep matmul outputs without batch dims (the projections), recompute the rest
                 (norms, RoPE, softmax, the attention score/value matmuls, SwiGLU).
  save_names     keep only the activations named below (attention output, MLP input).
  offload        like save_names, but those activations are moved to host memory
                 ('pinned_host') in the forward pass and brought back for the backward pass.

Legacy booleans (older configs): True means 'full', False means 'none'.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

# Activations DecoderLayer names with `checkpoint_name` (used by 'save_names' and 'offload').
ATTN_OUT = "attn_out"  # the attention block's output (after o_proj), before the residual add
MLP_IN = "mlp_in"  # the normed input of the MLP / MoE block
SAVED_NAMES = (ATTN_OUT, MLP_IN)

POLICIES = ("none", "full", "dots_saveable", "save_names", "offload")
# Old boolean spellings (a Python bool, or the string a command-line override gives).
ALIASES = {True: "full", False: "none", "True": "full", "False": "none"}
ALIASES.update({"true": "full", "false": "none"})


def canonical(value: Any) -> Any:
  """A legacy boolean spelling mapped to its policy name; any other value unchanged."""
  return ALIASES[value] if isinstance(value, (bool, str)) and value in ALIASES else value


def policy_name(value: Any) -> str:
  """The canonical policy name of a config value (legacy booleans mapped); ValueError if unknown."""
  value = canonical(value)
  if value not in POLICIES:
    raise ValueError(f"remat={value!r}: expected one of {', '.join(map(repr, POLICIES))}")
  return value


def checkpoint_policy(name: str) -> Callable[..., bool] | None:
  """The jax.checkpoint policy for a policy name ('full' -> None: save nothing but inputs)."""
  cp = jax.checkpoint_policies
  if name == "dots_saveable":
    return cp.dots_with_no_batch_dims_saveable
  if name == "save_names":
    return cp.save_only_these_names(*SAVED_NAMES)
  if name == "offload":
    return cp.save_and_offload_only_these_names(
      names_which_can_be_saved=(),
      names_which_can_be_offloaded=SAVED_NAMES,
      offload_src="device",
      offload_dst="pinned_host",
    )
  return None
