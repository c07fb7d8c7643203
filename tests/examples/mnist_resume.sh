#!/usr/bin/env bash
# Bit-exact restart: 30 steps straight at 2 ranks vs 20 steps at 2 ranks, checkpoint, stop,
# then resume from the checkpoint at 1 rank for the last 10: the final parameters must be
# byte-identical (the global batch and the float64 gradient sums do not depend on the layout).
set -euo pipefail
train=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
run() { local np=$1; shift; mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" "$train" --epochs 2 --max-steps 15 "$@"; }
run 2 --dump-params "$work/straight.bin" >/dev/null
run 2 --ckpt-dir "$work/ckpt" --stop-at-step 20 >/dev/null
test "$(cat "$work/ckpt/latest")" = step-00000020
run 1 --ckpt-dir "$work/ckpt" --resume --dump-params "$work/resumed.bin" | grep "resumed from"
cmp "$work/straight.bin" "$work/resumed.bin"
test "$(cat "$work/ckpt/latest")" = step-00000030
echo "mnist resume: byte-identical parameters after a restart at another rank count"
