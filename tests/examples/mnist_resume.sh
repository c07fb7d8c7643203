#!/usr/bin/env bash
# Bit-exact restart: 30 steps straight at 2 ranks vs 20 steps at 2 ranks, checkpoint, stop,
# then resume from the checkpoint at 1 rank for the last 10: the final parameters must be
# byte-identical (the global batch and the float64 gradient sums do not depend on the layout).
# Usage: mnist_resume.sh TRAIN_MNIST [RESUME_RANKS [EXTRA TRAIN ARGS...]]; the GPU script runs it
# with `2 --device cuda --data-dir DIR` (same layout: GPU reductions are exact only there).
set -euo pipefail
train=$1
resume_np=${2:-1}
shift $(( $# >= 2 ? 2 : $# ))
extra=("$@")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
run() { local np=$1; shift; mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" "$train" --epochs 2 --max-steps 15 ${extra[@]+"${extra[@]}"} "$@"; }
run 2 --dump-params "$work/straight.bin" >/dev/null
run 2 --ckpt-dir "$work/ckpt" --stop-at-step 20 >/dev/null
test "$(cat "$work/ckpt/latest")" = step-00000020
run "$resume_np" --ckpt-dir "$work/ckpt" --resume --dump-params "$work/resumed.bin" | grep "resumed from"
cmp "$work/straight.bin" "$work/resumed.bin"
test "$(cat "$work/ckpt/latest")" = step-00000030
# The same with asynchronous saves every 4 steps (background writer, fence before each update).
rm -rf "$work/ckpt"
run 2 --ckpt-dir "$work/ckpt" --ckpt-async --ckpt-every 4 --stop-at-step 20 >/dev/null
test "$(cat "$work/ckpt/latest")" = step-00000020
run "$resume_np" --ckpt-dir "$work/ckpt" --ckpt-async --resume --dump-params "$work/resumed-async.bin" | grep "resumed from"
cmp "$work/straight.bin" "$work/resumed-async.bin"
echo "mnist resume: byte-identical parameters after a restart at another rank count (sync and async saves)"
