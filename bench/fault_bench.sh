#!/usr/bin/env bash
# Fault-tolerance costs on the CPU Fashion-MNIST model (issue 6), 4 ranks as 4 simulated nodes
# (erasure groups of 2 data + 1 parity):
#   1. training throughput with no snapshot, a snapshot every step and every 10 steps (median
#      of interleaved rounds; the overhead is against no snapshot in the same run);
#   2. time from a lost node (its rank killed and its segment removed, LOOM_FAULT=node) to
#      training again, under loom-run with no back-off: failure noticed by loom-run, job
#      relaunched, state restored (rebuilt from parity).
#   bash bench/fault_bench.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
mpi=(mpirun --oversubscribe --bind-to none --mca btl self,vader -np 4 -x LOOM_RANKS_PER_NODE=1)
train=("$build/examples/train_mnist" --epochs 2 --max-steps 150)
declare -A rates
for round in $(seq "$rounds"); do
  for every in 0 1 10; do
    job="bench-$$-$round-$every"
    rate=$(LOOM_JOB_ID=$job "${mpi[@]}" "${train[@]}" --snapshot-every "$every" |
      awk '/^epoch/ { for (i = 1; i <= NF; i++) if ($i == "samples/s") s += $(i - 1); n++ } END { printf "%.0f", s / n }')
    rm -f /dev/shm/loom-"$job"-*
    rates[$every]+="$rate "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
base=$(echo "${rates[0]}" | median)
echo "# Fashion-MNIST (4.3 MB of state, replicated; a share of 1.1 MB a rank), 4 ranks as 4 nodes, parity 1, median of $rounds"
printf "%-22s %10s %9s   %s\n" snapshots samples/s overhead rounds
for every in 0 1 10; do
  m=$(echo "${rates[$every]}" | median)
  label=$([ "$every" = 0 ] && echo none || echo "every $every step(s)")
  printf "%-22s %10s %8.1f%%   %s\n" "$label" "$m" "$(echo "$base $m" | awk '{ print 100 * ($1 / $2 - 1) }')" "${rates[$every]}"
done

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
log=$(mktemp)
LOOM_FAULT=node:1:60 "$build/checkpoint/tool/loom-run" --retries 1 --backoff 0 --job-id "bench-node-$$" -- \
  "${mpi[@]}" "${train[@]}" --snapshot-every 1 2>&1 | stamp >"$log"
at() { grep -m1 -- "$1" "$log" | cut -d' ' -f1; }
lost=$(at "node 1 lost") noticed=$(at "attempt 1 failed") restored=$(at "restored step") trained=$(at "resumed from the in-memory")
echo "# lost node (rank 1 and its segment) at step 60, loom-run --backoff 0"
echo "$lost $noticed $restored $trained" | awk '{ printf "failure -> loom-run notices: %.2f s\nrelaunch -> state restored (rebuilt from parity): %.2f s\nfailure -> training again: %.2f s\n", $2 - $1, $3 - $2, $4 - $1 }'
grep -m1 "rebuilt from parity" "$log" | cut -d' ' -f2-
rm -f "$log"
