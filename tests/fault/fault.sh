#!/usr/bin/env bash
# Fault-tolerance tests on one host with simulated nodes (LOOM_RANKS_PER_NODE=1: 4 nodes of one
# rank, erasure groups of 2 data + 1 parity). Each case trains Fashion-MNIST for 30 steps at
# 4 ranks under loom-run with an injected fault (LOOM_FAULT), and the final parameters must be
# byte-identical to a fault-free run: nothing is lost but the steps since the last snapshot,
# and those are recomputed exactly.
#   kill     kill -9 of a random rank at a random step; restart from the in-memory snapshots
#   node     a whole node lost (its rank and its snapshot segment); rebuilt from parity
#   ckpt     a rank dies while an HDF5 checkpoint is written; the previous checkpoint loads
#   corrupt  a snapshot silently damaged, then a crash; the checksum catches it, parity rebuilds
#   hang     a rank hangs; the watchdog aborts after LOOM_TIMEOUT; restart from the snapshots
#   async    kill -9 of a random rank with asynchronous snapshots (some requests skipped while
#            one is in flight); restart from the newest published one
#   delay    a rank stalls 3 s (a straggler, under LOOM_TIMEOUT=8): no abort, no restart
# Usage: fault.sh CASE TRAIN_MNIST LOOM_RUN
set -euo pipefail
case=$1 train=$2 loom_run=$3
work=$(mktemp -d)
job="test-$case-$$"
trap 'rm -rf "$work"; rm -f /dev/shm/loom-$job-*' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
mpi=(mpirun --oversubscribe --bind-to none --mca btl self,vader -np 4 -x LOOM_RANKS_PER_NODE=1)
train_args=(--epochs 2 --max-steps 15 --data-dir "${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}")
"${mpi[@]}" "$train" "${train_args[@]}" --dump-params "$work/straight.bin" >/dev/null

run_with_fault() { # fault spec, then extra train arguments
  local fault=$1; shift
  LOOM_FAULT=$fault "$loom_run" --retries 2 --backoff 0.2 --job-id "$job" -- \
    "${mpi[@]}" "$train" "${train_args[@]}" --dump-params "$work/faulted.bin" "$@" >"$work/log" 2>&1 ||
    { cat "$work/log"; echo "FAIL: the job did not recover from $fault"; exit 1; }
}
expect_log() { grep -q -- "$1" "$work/log" || { cat "$work/log"; echo "FAIL: log lacks '$1'"; exit 1; }; }

case $case in
  kill)
    rank=$((RANDOM % 4)) step=$((2 + RANDOM % 27))
    echo "kill -9 of rank $rank at step $step"
    run_with_fault "kill:$rank:$step" --snapshot-every 1
    expect_log "rank $rank killed at step $step"
    expect_log "resumed from the in-memory snapshot at step $step" ;;
  async)
    rank=$((RANDOM % 4)) step=$((5 + RANDOM % 24))
    echo "kill -9 of rank $rank at step $step, asynchronous snapshots"
    run_with_fault "kill:$rank:$step" --snapshot-every 1 --snapshot-async
    expect_log "rank $rank killed at step $step"
    expect_log "resumed from the in-memory snapshot at step" ;;
  node)
    run_with_fault "node:1:17" --snapshot-every 1
    expect_log "node 1 lost at step 17"
    expect_log "rebuilt from parity" ;;
  ckpt)
    run_with_fault "ckpt-kill:1:20" --ckpt-dir "$work/ckpt" --ckpt-every 10 --resume
    expect_log "dies while writing checkpoint step 20"
    expect_log "resumed from $work/ckpt at step 10"
    [ "$(cat "$work/ckpt/latest")" = step-00000030 ] && [ ! -e "$work/ckpt/.step-00000020.tmp" ] ;;
  corrupt)
    run_with_fault "corrupt:1:14,kill:3:14" --snapshot-every 1
    expect_log "snapshot of step 14 corrupted on rank 1"
    expect_log "restored step 14 .*rebuilt from parity" ;;
  hang)
    export LOOM_TIMEOUT=8
    run_with_fault "hang:2:17" --snapshot-every 1
    expect_log "watchdog: loom_allreduce on group GRAD has not completed"
    expect_log "resumed from the in-memory snapshot at step 17" ;;
  delay)
    export LOOM_TIMEOUT=8
    start=$(date +%s)
    run_with_fault "delay:1:12:3" --snapshot-every 1
    [ $(( $(date +%s) - start )) -ge 3 ] || { cat "$work/log"; echo "FAIL: no delay"; exit 1; }
    grep -q "attempt 1 failed\|watchdog" "$work/log" && { cat "$work/log"; echo "FAIL: a straggler was treated as a failure"; exit 1; }
    expect_log "succeeded on attempt 1" ;;
  *) echo "unknown case $case"; exit 2 ;;
esac
cmp "$work/straight.bin" "$work/faulted.bin" || { cat "$work/log"; echo "FAIL: parameters differ"; exit 1; }
ls /dev/shm | grep -q "loom-$job-" && { echo "FAIL: segments left after success"; exit 1; }
echo "fault $case: recovered, parameters byte-identical to the fault-free run"
