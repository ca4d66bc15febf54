#!/usr/bin/env bash
# Run a rockjax config on every worker of a Cloud TPU pod slice (one process per host;
# jax.distributed.initialize() finds the coordinator from the TPU metadata).
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]    # run
#   DRY_RUN=1 launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [...]       # print, do nothing
#
# WORKDIR must be shared by all hosts (e.g. gs://bucket/run): orbax writes one checkpoint.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
extra=""
[ $# -gt 0 ] && extra=$(printf " %q" "$@")
remote="cd ~/rockjax && pip install -q -e '.' 'jax[tpu]' && python -m rockjax.main --distributed --config=${config} --workdir=${workdir}${extra}"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
"${cmd[@]}"
