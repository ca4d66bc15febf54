"""Dry runs: a config's per-device memory and cost without weights or data.

`report.py` builds the report (`--dry_run`, optionally compiled for a TPU topology with
`--aot_topology`); `rollout_cost.py` compiles the sampler for it; `hlo_text.py`,
`hlo_loops.py`, `hlo_cost.py` and `hlo_cycles.py` read the compiled HLO (FLOPs, collectives,
loop trip counts, XLA:TPU's estimated cycles).
"""

# The report module's `report` function is not re-exported: the name would hide the module
# (`from rockjax.dry_run import report` must give the module).
from rockjax.dry_run.report import check_fits, for_topology, print_report

__all__ = ["check_fits", "for_topology", "print_report"]
