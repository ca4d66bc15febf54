#!/usr/bin/env bash
# Submit a rockjax config to a Slurm GPU cluster: one task per node, all local GPUs per task;
# jax.distributed.initialize() reads the Slurm environment.
#
#   launch/gpu_slurm.sh NODES CONFIG WORKDIR [--config.x=y ...]             # sbatch
#   DRY_RUN=1 launch/gpu_slurm.sh NODES CONFIG WORKDIR [...]                # print the script
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NODES CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
nodes=$1 config=$2 workdir=$3
shift 3
extra=""
[ $# -gt 0 ] && extra=$(printf " %q" "$@")
script="#!/usr/bin/env bash
#SBATCH --nodes=${nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --job-name=rockjax
srun python -m rockjax.main --distributed --config=${config} --workdir=${workdir}${extra}"
if [ "${DRY_RUN:-0}" = "1" ]; then
  echo "$script"
  exit 0
fi
echo "$script" | sbatch
