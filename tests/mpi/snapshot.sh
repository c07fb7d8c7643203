#!/usr/bin/env bash
# In-memory snapshots over several layouts (test_snapshot.c): save, then a restart restores
# every placement exactly from the ranks' shares; after a lost node (its segments removed) the
# shares are rebuilt from parity; with more losses than parity nothing is restored and the
# tensors are left alone. Usage: snapshot.sh <test_snapshot>
set -euo pipefail
prog=$1
job="test-snapshot-$$"
trap 'rm -f /dev/shm/loom-$job-*' EXIT
run() { # np, ranks per node (0 = one node), then arguments
  local np=$1 per_node=$2; shift 2
  local env=(-x LOOM_JOB_ID="$job")
  [ "$per_node" -gt 0 ] && env+=(-x LOOM_RANKS_PER_NODE="$per_node")
  [ -n "${LOOM_DEVICE:-}" ] && env+=(-x LOOM_DEVICE)
  mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" "${env[@]}" "$prog" "$@"
}
lose() { for r in "$@"; do rm -f "/dev/shm/loom-$job-$r"; done; }
case_() { echo "== $*"; }

case_ "4 nodes of 1 rank (dp 4; groups of 2 data + 1 parity): restart, then node 2 lost"
run 4 1 --snap-mode save
run 4 1 --snap-mode restore
lose 2
run 4 1 --snap-mode restore
case_ "4 nodes of 1 rank: two members of one group lost is more than parity 1: nothing restored"
run 4 1 --snap-mode save
lose 0 1
run 4 1 --snap-mode restore --expect-step -1
rm -f /dev/shm/loom-$job-*

case_ "2 nodes of 2 ranks, pipeline 2 (per-stage tensors): node 1 lost"
run 4 2 --snap-mode save --pp 2
lose 2 3
run 4 2 --snap-mode restore --pp 2
rm -f /dev/shm/loom-$job-*

case_ "4 nodes of 1 rank, ep 2 (EP/EDP-split tensor), 2 parity: nodes 1 and 3 lost"
run 4 1 --snap-mode save --ep 2 --snap-parity 2
lose 1 3
run 4 1 --snap-mode restore --ep 2 --snap-parity 2
rm -f /dev/shm/loom-$job-*

case_ "3 ranks on one node (no erasure coding): a crashed process keeps its segment"
run 3 0 --snap-mode save --snap-parity 0
run 3 0 --snap-mode restore --snap-parity 0
rm -f /dev/shm/loom-$job-*

case_ "1 rank"
run 1 0 --snap-mode save
run 1 0 --snap-mode restore
echo "snapshot layouts: ok"
