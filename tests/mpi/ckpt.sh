#!/usr/bin/env bash
# Save at 4 ranks (dp 4, ep 2), load at 1, 2, 3 and 4 ranks and on other meshes (sp 2; ep 1),
# then a foreign model and a damaged shard must be refused. Usage: ckpt.sh <test_ckpt> <mpirun>
set -euo pipefail
prog=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() { local np=$1; shift; mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" "$prog" --ckpt-dir "$dir" "$@"; }
run 4 --ckpt-mode save --ep 2
test -f "$dir/latest" && test -f "$dir/$(cat "$dir/latest")/index.h5"
for layout in "1" "2" "3" "4" "4 --sp 2" "4 --ep 2" "4 --ep 4" "2 --ep 2"; do
  set -- $layout
  np=$1; shift
  echo "load at $np ranks $*"
  run "$np" --ckpt-mode load "$@"
done
run 2 --ckpt-mode load-extra
run 1 --ckpt-mode corrupt
run 3 --ckpt-mode load-corrupt
# Retention and cleanup: a stale temporary directory goes, only the newest 2 of 3 new saves
# stay (compressed), and the newest loads.
mkdir -p "$dir/.step-00000007.tmp" && touch "$dir/.step-00000007.tmp/rank-00000.h5"
for step in 50 60 70; do run 2 --ckpt-mode save --ckpt-step $step --ckpt-keep 2 --ckpt-deflate 6; done
kept=$(cd "$dir" && { ls -d step-* .step-* 2>/dev/null || true; } | tr '\n' ' ')
[ "$kept" = "step-00000060 step-00000070 " ] || { echo "after keep 2: '$kept'"; exit 1; }
[ "$(cat "$dir/latest")" = step-00000070 ] || { echo "latest is $(cat "$dir/latest")"; exit 1; }
run 3 --ckpt-mode load --ckpt-step 70
echo "ckpt: ok"
