#!/usr/bin/env bash
# Builds loom-coll-bench if needed and runs it on RANKS (default 4) ranks of this machine,
# oversubscribed, printing its table; arguments go to the benchmark (--help lists them).
# Variables here avoid the LOOM_ prefix: the benchmark warns about unknown LOOM_* variables.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}
ranks=${RANKS:-4}

if [ ! -f "$build_dir/build.ninja" ]; then
  meson setup "$build_dir" "$root"
fi
ninja -C "$build_dir" bench/loom-coll-bench >&2

if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exec mpirun --oversubscribe -np "$ranks" "$build_dir/bench/loom-coll-bench" "$@"
