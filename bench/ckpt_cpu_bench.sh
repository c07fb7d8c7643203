#!/usr/bin/env bash
# Checkpoint cost on the CPU Fashion-MNIST model (issue 5): training throughput with no
# checkpoint, synchronous saves and asynchronous saves, every 100 and every 10 steps, at N
# ranks on this machine. Modes are interleaved round by round; the median of the rounds'
# samples/s (both epochs' training time, evaluation excluded) is reported, and the overhead
# against no checkpoint in the same run.
#   bash bench/ckpt_cpu_bench.sh [BUILD_DIR] [RANKS] [ROUNDS]
set -euo pipefail
build=${1:-build}
np=${2:-2}
rounds=${3:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
modes=("none" "sync 100" "async 100" "sync 10" "async 10")
declare -A results
for round in $(seq "$rounds"); do
  for mode in "${modes[@]}"; do
    set -- $mode
    args=()
    if [ "$1" != none ]; then
      rm -rf "$work/ckpt"
      args=(--ckpt-dir "$work/ckpt" --ckpt-every "$2")
      [ "$1" = async ] && args+=(--ckpt-async)
    fi
    rate=$(mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" \
      "$build/examples/train_mnist" --epochs 2 ${args[@]+"${args[@]}"} |
      awk '/^epoch/ { for (i = 1; i <= NF; i++) if ($i == "samples/s") s += $(i - 1); n++ }
           END { printf "%.0f", s / n }')
    results["$mode"]+="$rate "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
base=$(echo "${results[none]}" | median)
printf "# Fashion-MNIST 784-512-256-10 (SGD momentum: 4.3 MB of state), %d ranks, median of %d rounds\n" "$np" "$rounds"
printf "%-10s %12s %10s   %s\n" mode samples/s overhead rounds
for mode in "${modes[@]}"; do
  m=$(echo "${results[$mode]}" | median)
  printf "%-10s %12s %9.1f%%   %s\n" "$mode" "$m" "$(echo "$base $m" | awk '{ print 100 * ($1 / $2 - 1) }')" "${results[$mode]}"
done
