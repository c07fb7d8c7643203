#!/usr/bin/env bash
# train_gpt with Ulysses sequence parallelism on the CPU: tokens/s and the elements each rank
# puts through the all-to-alls per layer and micro-batch, against the formula 4 N d / sp, at
# sp 1, 2, 4 on the small model (4 blocks, d 128, 4 heads, context 128, batch 16 in
# micro-batches of 4), with the activations each rank keeps per micro-batch; then a 16 K-byte
# context at sp 4 (1 block, d 32, 4 heads, no validation), which holds one head's
# whole-sequence attention probabilities per rank (1 GiB) instead of four (4 GiB).
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
printf "%-4s %12s %16s %16s %16s %16s\n" sp "tokens/s" "a2a fwd/layer" "a2a bwd/layer" "formula" "activations MB"
for sp in 1 2 4; do
  "${mpi[@]}" -np $sp "$build/examples/train_gpt" "${small[@]}" --sp $sp >"$log" 2>&1 || { cat "$log"; exit 1; }
  line=$(grep '^ulysses:' "$log" || true)
  fwd=$(sed -n 's/^ulysses: \([0-9]*\) elements.*/\1/p' <<<"$line"); fwd=${fwd:--}
  bwd=$(sed -n 's/.*forward, \([0-9]*\) backward.*/\1/p' <<<"$line"); bwd=${bwd:--}
  formula=$(awk -v sp=$sp 'BEGIN{print 4 * 4 * 128 * 128 / sp}')
  mb=$(sed -n 's/^activations: \([0-9.]*\) MB.*/\1/p' "$log"); mb=${mb:--}
  printf "%-4s %12s %16s %16s %16s %16s\n" $sp "$(rate "$log")" "$fwd" "$bwd" "$formula" "$mb"
done
echo "long context: 16384 bytes per sequence at sp 4 (2 steps)"
long=(--layers 1 --width 32 --heads 4 --context 16384 --batch 1 --chunk 1 --steps 2 --eval-every 0
      --eval-batches 0 --progress-every 1 --warmup-steps 0)
start=$(date +%s)
"${mpi[@]}" -np 4 "$build/examples/train_gpt" "${long[@]}" --sp 4 >"$log" 2>&1 || { cat "$log"; exit 1; }
grep -E '^step 2/|^final|^ulysses|^activations' "$log"
echo "wall $(( $(date +%s) - start )) s"
