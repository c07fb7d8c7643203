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
echo "ckpt: ok"
