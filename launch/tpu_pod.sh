#!/usr/bin/env bash
# Run a rockjax config on every host of a Cloud TPU VM pod slice (or of several slices), one
# process per host; jax.distributed.initialize() finds the coordinator from the TPU metadata.
#
#   launch/tpu_pod.sh CONFIG WORKDIR [--config.field=value ...]
#   launch/tpu_pod.sh --dry-run CONFIG WORKDIR [...]   # or DRY_RUN=1: print every command
#
# WORKDIR must be shared by all hosts (e.g. gs://bucket/run): orbax writes one checkpoint
# there, and a rerun (or a restart after a preemption) resumes from it.
#
# Set in the environment:
#   TPU_NAME          the TPU VM (with NUM_SLICES > 1: the node prefix; slice i is TPU_NAME-i)
#   ZONE              its zone, e.g. us-east5-a
#   PROJECT           gcloud project (default: gcloud's configured one)
#   NUM_WORKERS       hosts per slice, e.g. 8 for v5p-64 (default: read from gcloud describe)
#   NUM_SLICES        TPU slices joined over DCN (default 1); > 1 needs QUEUED=1 and adds
#                     --config.mesh.dcn_data=NUM_SLICES (data parallel across slices)
#   QUEUED=1          create the TPU as a queued resource (named TPU_NAME) when it does not
#                     exist, wait until it is ACTIVE, and re-create it after a preemption
#   SPOT=1            with QUEUED=1: a Spot TPU (cheap, preemptible)
#   ACCELERATOR_TYPE  with QUEUED=1: e.g. v5p-64
#   RUNTIME_VERSION   with QUEUED=1: the TPU VM image, e.g. v2-alpha-tpuv5
#   MAX_RESTARTS      with QUEUED=1: re-creations after preemptions before giving up (default 10)
#   AOT_TOPOLOGY      e.g. v5p:4x4x2 (= v5p-64, 32 chips): first compile the train step here for that topology
#                     (python -m rockjax.main --dry_run --aot_topology=...) and stop on failure
#   PYTHON            python for that local dry run (default python3)
#   ENV_VARS          extra environment for the workers, e.g. "LIBTPU_INIT_ARGS=--xla_foo=1"
#   CACHE_DIR         where every worker keeps the persistent XLA compilation cache (passed as
#                     --config.cache.compilation=CACHE_DIR/jax_compilation; default:
#                     rockjax_cache beside WORKDIR), so a restart does not compile again
#   LOG_DIR           local per-worker logs, worker-N.log (default logs/TPU_NAME-<time>)
#
# What it does: ships the git HEAD (a `git archive` tarball; uncommitted changes are not
# shipped) to every worker, installs it once per code version into ~/rockjax/venv with the
# `tpu` extra (jax's pinned libtpu; a marker file ~/rockjax/<commit>/.installed), kills stale
# processes holding the TPU, then runs `python -m rockjax.main --distributed` on all workers.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_args "$@"
require TPU_NAME ZONE
NUM_SLICES=${NUM_SLICES:-1} QUEUED=${QUEUED:-0} SPOT=${SPOT:-0} MAX_RESTARTS=${MAX_RESTARTS:-10}
[ "$QUEUED" = 1 ] && require ACCELERATOR_TYPE RUNTIME_VERSION
[ "$NUM_SLICES" -gt 1 ] && [ "$QUEUED" != 1 ] && die "NUM_SLICES=$NUM_SLICES needs QUEUED=1"
gflags=(--zone="$ZONE")
[ -n "${PROJECT:-}" ] && gflags+=(--project="$PROJECT")
LOG_DIR=${LOG_DIR:-logs/$TPU_NAME-$(date +%Y%m%d-%H%M%S)}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(git -C "$repo" rev-parse --short=12 HEAD) ||
  die "$repo is not a git checkout (the code shipped is its HEAD)"
[ -z "$(git -C "$repo" status --porcelain)" ] ||
  echo "warning: uncommitted changes are not shipped (only HEAD $version)" >&2
tarball=${TMPDIR:-/tmp}/rockjax-$version.tar.gz

mesh=()
[ "$NUM_SLICES" -gt 1 ] && mesh=(--config.mesh.dcn_data="$NUM_SLICES")
main_args=(--config="$config" --workdir="$workdir" "${cache_args[@]}" "${mesh[@]}" "${overrides[@]}")

node() { # slice index -> TPU VM name
  if [ "$NUM_SLICES" -gt 1 ]; then echo "$TPU_NAME-$1"; else echo "$TPU_NAME"; fi
}

# Sets `state` to the queued resource's state (NONE when there is none). A dry run prints the
# query and answers from DRY_RUN_STATES (space-separated, consumed in order; then ACTIVE).
dry_states=(${DRY_RUN_STATES:-})
query_state() {
  local cmd=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${gflags[@]}"
    --format="value(state.state)")
  if [ "$DRY_RUN" = 1 ]; then
    echo "?$(quote "${cmd[@]}")"
    state=${dry_states[0]:-ACTIVE}
    dry_states=("${dry_states[@]:1}")
  else
    state=$("${cmd[@]}" 2>/dev/null) || state=NONE
  fi
}

ensure_tpu() { # QUEUED=1: (re-)create the queued resource unless it is usable, wait for it
  local create
  query_state
  case "$state" in
    ACTIVE) return 0 ;;
    SUSPENDING | SUSPENDED | FAILED)
      echo "queued resource $TPU_NAME is $state: deleting and re-creating it" >&2
      run gcloud compute tpus queued-resources delete "$TPU_NAME" "${gflags[@]}" --force --quiet
      state=NONE
      ;;
  esac
  if [ "$state" = NONE ]; then
    create=(gcloud compute tpus queued-resources create "$TPU_NAME" "${gflags[@]}"
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION")
    if [ "$NUM_SLICES" -gt 1 ]; then
      create+=(--node-count="$NUM_SLICES" --node-prefix="$TPU_NAME")
    else
      create+=(--node-id="$TPU_NAME")
    fi
    [ "$SPOT" = 1 ] && create+=(--spot)
    run "${create[@]}"
  fi
  query_state
  while [ "$state" != ACTIVE ]; do
    run sleep 60
    query_state
  done
}

workers_per_slice() {
  if [ -n "${NUM_WORKERS:-}" ]; then
    echo "$NUM_WORKERS"
  elif [ "$DRY_RUN" = 1 ]; then
    echo "(dry run: NUM_WORKERS unset, assuming 1)" >&2
    echo 1
  else
    gcloud compute tpus tpu-vm describe "$(node 0)" "${gflags[@]}" \
      --format="value(networkEndpoints.ipAddress)" | tr ';' '\n' | grep -c .
  fi
}

# Runs on each worker: code + pinned install once per version, stale TPU users killed, main.
kill_stale="sudo fuser -k -9 /dev/accel* /dev/vfio/[0-9]* 2>/dev/null || true; \
sudo rm -f /tmp/libtpu_lockfile"
remote="set -euo pipefail
code=\$HOME/rockjax/$version venv=\$HOME/rockjax/venv
if [ ! -f \$code/.installed ]; then
  rm -rf \$code && mkdir -p \$code && tar -xzf \$HOME/rockjax-$version.tar.gz -C \$code
  [ -x \$venv/bin/python ] || python3 -m venv \$venv
  \$venv/bin/pip install -q -e \"\$code[tpu]\"
  touch \$code/.installed
fi
$kill_stale
cd \$code
exec env$(quote ${ENV_VARS:-}) \$venv/bin/python -m rockjax.main --distributed$(quote "${main_args[@]}")"

launch_all() { # ships the code, starts every worker, waits; non-zero if any worker failed
  local s w n=0 rc=0 pids=()
  for ((s = 0; s < NUM_SLICES; s++)); do
    run gcloud compute tpus tpu-vm scp "$tarball" "$(node "$s"):rockjax-$version.tar.gz" \
      "${gflags[@]}" --worker=all
  done
  for ((s = 0; s < NUM_SLICES; s++)); do
    for ((w = 0; w < workers; w++, n++)); do
      # A dry run can simulate worker 0 failing on the attempts in DRY_RUN_FAIL_ATTEMPTS.
      dry_rc=0
      [ "$n" = 0 ] && [[ " ${DRY_RUN_FAIL_ATTEMPTS:-} " == *" $attempt "* ]] && dry_rc=1
      run_logged "$LOG_DIR/worker-$n.log" gcloud compute tpus tpu-vm ssh "$(node "$s")" \
        "${gflags[@]}" --worker="$w" --command="$remote"
      pids+=($!)
    done
  done
  echo "$n workers started; logs in $LOG_DIR/worker-N.log" >&2
  for _ in "${pids[@]}"; do
    if ! wait -n; then
      rc=1
      # One worker failed: the others would wait forever in a collective. Stop them all.
      for ((s = 0; s < NUM_SLICES; s++)); do
        run gcloud compute tpus tpu-vm ssh "$(node "$s")" "${gflags[@]}" --worker=all \
          --command="$kill_stale"
      done
    fi
  done
  return "$rc"
}

aot_check "$config" "${mesh[@]}" "${overrides[@]}"
if [ "$DRY_RUN" = 1 ]; then
  echo "# each worker runs (the --command of the ssh lines below):"
  sed 's/^/|   /' <<<"$remote"
fi
run mkdir -p "$LOG_DIR"
run git -C "$repo" archive --format=tar.gz --output="$tarball" HEAD
attempt=0
while :; do
  attempt=$((attempt + 1))
  echo "attempt $attempt" >&2
  [ "$QUEUED" = 1 ] && ensure_tpu
  workers=$(workers_per_slice)
  if launch_all; then
    echo "done: all workers finished" >&2
    exit 0
  fi
  if [ "$QUEUED" != 1 ]; then
    die "a worker failed; see $LOG_DIR/worker-N.log"
  fi
  query_state
  if [ "$state" = ACTIVE ]; then
    die "a worker failed and the TPU is still ACTIVE (not a preemption); see $LOG_DIR"
  fi
  if [ "$attempt" -gt "$MAX_RESTARTS" ]; then
    die "preempted again ($state) after $MAX_RESTARTS restarts; giving up"
  fi
  echo "preempted (queued resource $state): restarting from the last checkpoint" >&2
done
