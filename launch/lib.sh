# Helpers shared by the launch scripts (sourced, not run).
#
# Every script takes DRY_RUN=1 in the environment, or --dry-run as its first argument: then
# each command that would change anything (gcloud, ssh, sbatch, srun, pip, ...) is printed,
# one line starting with "+ ", instead of run. Read-only queries are printed with "? ".

DRY_RUN=${DRY_RUN:-0}

# parse_args "$@": the scripts' command line, [--dry-run] CONFIG WORKDIR [--config.x=y ...];
# sets DRY_RUN, config, workdir and the array overrides.
parse_args() {
  if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
  fi
  if [ $# -lt 2 ]; then
    echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.field=value ...]" >&2
    exit 2
  fi
  config=$1 workdir=$2
  overrides=("${@:3}")
  # The persistent compilation cache every worker reads and fills: a restart (a preempted VM
  # comes back empty) reads the compiled train step and sampler instead of compiling them.
  # CACHE_DIR (default: rockjax_cache beside WORKDIR, e.g. gs://bucket/rockjax_cache);
  # a later --config.cache.compilation=... on the command line wins.
  cache_dir=${CACHE_DIR:-$(dirname "$workdir")/rockjax_cache}
  cache_args=(--config.cache.compilation="$cache_dir/jax_compilation")
}

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# require VAR...: every named variable must be set (non-empty).
require() {
  local v
  for v in "$@"; do
    [ -n "${!v:-}" ] || die "set $v (see the header of $0)"
  done
}

# quote ARG...: the arguments as one shell-quoted string, each preceded by a space.
quote() {
  [ $# -gt 0 ] && printf ' %q' "$@"
  return 0
}

# run CMD...: run it, or print it in a dry run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "+$(quote "$@")"
  else
    "$@"
  fi
}

# run_logged LOG CMD...: run it in the background with stdout+stderr appended to LOG (the
# caller waits on $!); printed in a dry run, where $! is a no-op exiting with $dry_rc (0).
run_logged() {
  local log=$1
  shift
  if [ "$DRY_RUN" = 1 ]; then
    echo "+$(quote "$@") >> $(printf %q "$log") 2>&1 &"
    (exit "${dry_rc:-0}") &
  else
    "$@" >>"$log" 2>&1 &
  fi
}

# run_bg CMD...: run it in the background (the caller waits on $!); printed in a dry run,
# where $! is a no-op exiting with $dry_rc (0).
run_bg() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "+$(quote "$@") &"
    (exit "${dry_rc:-0}") &
  else
    "$@" &
  fi
}

# setenv NAME VALUE: export it (also in a dry run, which prints it as well).
setenv() {
  export "$1=$2"
  [ "$DRY_RUN" = 1 ] && echo "+ export $1=$(printf %q "$2")"
  return 0
}

# aot_check CONFIG [ARG...]: with AOT_TOPOLOGY set, compile the train step on this machine for
# that TPU topology first (rockjax.main --dry_run --aot_topology); a config that does not fit
# stops the launch here, before any TPU is used.
aot_check() {
  [ -n "${AOT_TOPOLOGY:-}" ] || return 0
  local config=$1
  shift
  run "${PYTHON:-python3}" -m rockjax.main --dry_run --aot_topology="$AOT_TOPOLOGY" \
    --config="$config" "$@"
}
