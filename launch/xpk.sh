#!/usr/bin/env bash
# Run a rockjax config on TPU slices of a GKE cluster through xpk (`xpk workload create`), one
# process per TPU host; jax.distributed.initialize() finds its peers from the GKE environment.
#
#   launch/xpk.sh CONFIG WORKDIR [--config.field=value ...]
#   launch/xpk.sh --dry-run CONFIG WORKDIR [...]   # or DRY_RUN=1: print every command
#
# WORKDIR must be a shared bucket (gs://bucket/run): a restarted workload resumes from it.
#
# Set in the environment:
#   CLUSTER           the xpk GKE cluster (made with `xpk cluster create`; --spot there for
#                     Spot capacity)
#   TPU_TYPE          e.g. v5p-64 (per slice)
#   NUM_SLICES        slices (default 1); > 1 adds --config.mesh.dcn_data=NUM_SLICES
#   WORKLOAD          workload name (default rockjax-<time>)
#   PROJECT, ZONE     gcloud project / zone (default: gcloud's configured ones)
#   MAX_RESTARTS      JobSet restarts after a failure or preemption (default 10); each restart
#                     resumes from the last checkpoint in WORKDIR
#   GRACE_SECONDS     time between SIGTERM and kill on preemption (default 300): rockjax saves
#                     a checkpoint in it
#   BASE_IMAGE        image the code is added to (default python:3.11); the container installs
#                     the code with the pinned `tpu` extra before it runs
#   DOCKER_IMAGE      instead: a ready image holding the code and its dependencies in its
#                     working directory (nothing is installed at start)
#   AOT_TOPOLOGY      e.g. v5p:4x4x2 (= v5p-64, 32 chips): first compile the train step here for that topology
#                     (python -m rockjax.main --dry_run --aot_topology=...) and stop on failure
#   PYTHON            python for that local dry run (default python3)
#   ENV_VARS          extra container environment, e.g. "LIBTPU_INIT_ARGS=--xla_foo=1"
#   CACHE_DIR         where every worker keeps the persistent XLA compilation cache (passed as
#                     --config.cache.compilation=CACHE_DIR/jax_compilation; default:
#                     rockjax_cache beside WORKDIR), so a restart does not compile again
#
# The code shipped is the git HEAD (`git archive`; uncommitted changes are not shipped).
# Follow the run with `xpk workload list --cluster CLUSTER` and the GKE logs of its pods.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_args "$@"
require CLUSTER TPU_TYPE
NUM_SLICES=${NUM_SLICES:-1}
WORKLOAD=${WORKLOAD:-rockjax-$(date +%m%d-%H%M%S)}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(git -C "$repo" rev-parse --short=12 HEAD) ||
  die "$repo is not a git checkout (the code shipped is its HEAD)"
[ -z "$(git -C "$repo" status --porcelain)" ] ||
  echo "warning: uncommitted changes are not shipped (only HEAD $version)" >&2

mesh=()
[ "$NUM_SLICES" -gt 1 ] && mesh=(--config.mesh.dcn_data="$NUM_SLICES")
main="python -m rockjax.main --distributed$(quote --config="$config" --workdir="$workdir" \
  "${cache_args[@]}" "${mesh[@]}" "${overrides[@]}")"
create=(xpk workload create --cluster="$CLUSTER" --workload="$WORKLOAD" --tpu-type="$TPU_TYPE"
  --num-slices="$NUM_SLICES" --max-restarts="${MAX_RESTARTS:-10}"
  --termination-grace-period-seconds="${GRACE_SECONDS:-300}")
[ -n "${PROJECT:-}" ] && create+=(--project="$PROJECT")
[ -n "${ZONE:-}" ] && create+=(--zone="$ZONE")
for kv in ${ENV_VARS:-}; do
  create+=(--env="$kv")
done

aot_check "$config" "${mesh[@]}" "${overrides[@]}"
if [ -n "${DOCKER_IMAGE:-}" ]; then
  create+=(--docker-image="$DOCKER_IMAGE" --command="$main")
else
  code=${TMPDIR:-/tmp}/rockjax-$version
  run rm -rf "$code"
  run mkdir -p "$code"
  run git -C "$repo" archive --format=tar --output="$code.tar" HEAD
  run tar -xf "$code.tar" -C "$code"
  create+=(--base-docker-image="${BASE_IMAGE:-python:3.11}" --script-dir="$code"
    --command="pip install -q -e '.[tpu]' && $main")
fi
run "${create[@]}"
