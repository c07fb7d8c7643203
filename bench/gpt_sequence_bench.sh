#!/usr/bin/env bash
# train_gpt with sequence parallelism on the CPU, every mode: tokens/s, the elements each rank
# moves per layer and micro-batch against the formulas (Ulysses: 4 N d / sp through the
# all-to-alls each way; ring: (3 r - 2) 2 N d / sp sent, forward and backward), and the
# activations each rank keeps per micro-batch, at sp 1, 2, 4 (hybrid: sp 4 = ring 2 x Ulysses
# 2) on the small model (4 blocks, d 128, 4 heads, context 128, batch 16 in micro-batches of
# 4); then a 16 K-byte context at sp 4 (1 block, d 32, 4 heads, no validation) with Ulysses,
# which holds one head's whole-sequence attention probabilities per rank (1 GiB) instead of
# four (4 GiB), and with the ring, which holds no T x T matrix at all.
# One BLAS thread per rank; the machine has 2 cores, so sp 4 runs 4 ranks on them.
#   bash bench/gpt_sequence_bench.sh build [steps=12]
set -euo pipefail
build=${1:-build} steps=${2:-12}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
mpi=(mpirun --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS)
small=(--layers 4 --width 128 --heads 4 --context 128 --batch 16 --chunk 4 --steps "$steps"
       --eval-every 0 --eval-batches 1 --progress-every 4)
rate() { awk '/^step [0-9]+\/[0-9]+ /{print $5}' "$1" | tail -n +2 | sort -n | awk '{r[NR]=$1} END{print r[int((NR+1)/2)]}'; }
printf "%-8s %-4s %10s %12s %12s %12s %12s %14s\n" mode sp "tokens/s" "a2a fwd" "a2a formula" "ring sent" "ring formula" "activations MB"
for cfg in "ulysses 1" "ulysses 2" "ulysses 4" "ring 2" "ring 4" "hybrid 4"; do
  set -- $cfg
  mode=$1 sp=$2
  "${mpi[@]}" -np $sp "$build/examples/train_gpt" "${small[@]}" --sp $sp --sp-mode $mode --sp-ring 2 >"$log" 2>&1 || { cat "$log"; exit 1; }
  fwd=$(sed -n 's/^sequence: \([0-9]*\) elements through the all-to-alls.*/\1/p' "$log"); fwd=${fwd:--}
  sent=$(sed -n 's/^sequence: ring sent \([0-9]*\) elements.*/\1/p' "$log"); sent=${sent:--}
  a2a=$(awk -v m=$mode -v sp=$sp 'BEGIN{u = m == "ring" ? 1 : m == "hybrid" ? sp / 2 : sp; print (u > 1 ? 4 * 4 * 128 * 128 / sp : "-")}')
  ring=$(awk -v m=$mode -v sp=$sp 'BEGIN{r = m == "ring" ? sp : m == "hybrid" ? 2 : 1; print (r > 1 ? (3 * r - 2) * 2 * 4 * 128 * 128 / sp : "-")}')
  mb=$(sed -n 's/^activations: \([0-9.]*\) MB.*/\1/p' "$log"); mb=${mb:--}
  printf "%-8s %-4s %10s %12s %12s %12s %12s %14s\n" $mode $sp "$(rate "$log")" "$fwd" "$a2a" "$sent" "$ring" "$mb"
done
long=(--layers 1 --width 32 --heads 4 --context 16384 --batch 1 --chunk 1 --steps 2 --eval-every 0
      --eval-batches 0 --progress-every 1 --warmup-steps 0)
for mode in ulysses ring; do
  echo "long context: 16384 bytes per sequence at sp 4, $mode (2 steps)"
  start=$(date +%s)
  "${mpi[@]}" -np 4 "$build/examples/train_gpt" "${long[@]}" --sp 4 --sp-mode $mode >"$log" 2>&1 || { cat "$log"; exit 1; }
  grep -E '^step 2/|^final|^sequence|^activations' "$log"
  echo "wall $(( $(date +%s) - start )) s"
done
