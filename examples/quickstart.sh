#!/usr/bin/env bash
# The README's first command: install what is missing (Debian 12, as root or with sudo),
# build loom, and train the Fashion-MNIST MLP on 4 ranks under mpirun (CPU, MPI).
# Extra arguments go to train_mnist (--help lists them); RANKS overrides the rank count.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
meson compile -C build >/dev/null
[ "$(id -u)" -ne 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1 # one BLAS thread per rank: ranks already fill the cores
exec mpirun --oversubscribe --bind-to none -np "${RANKS:-4}" build/examples/train_mnist \
  --metrics build/mnist-metrics.jsonl "$@"
