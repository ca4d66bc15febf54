"""Data: files -> records -> fitted prompts -> resumable grain pipelines, one shard per host.

`rockjax.data.PromptPipeline` (prompts for on-policy rollouts) and `CompletionPipeline`
(prompt + completion for the off-policy stages) are the public pipelines; `host_share` is the
multi-host rule deciding which rows of a global batch each host reads.
"""

from rockjax.data.hosts import (
  FILLER_INDEX,
  HostShare,
  host_indices,
  host_share,
  resolve_process_count,
)
from rockjax.data.pipelines import BatchIterator, CompletionPipeline, PromptPipeline, build_dataset

__all__ = [
  "FILLER_INDEX",
  "HostShare",
  "host_indices",
  "host_share",
  "resolve_process_count",
  "BatchIterator",
  "CompletionPipeline",
  "PromptPipeline",
  "build_dataset",
]
