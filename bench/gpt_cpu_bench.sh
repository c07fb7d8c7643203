#!/usr/bin/env bash
# loom's GPT example against PyTorch (Debian's python3-torch) on the CPU, same run: the issue's
# small model (4 layers, d 128, 4 heads, context 128, batch 16, fortunes bytes), same
# optimizer, schedule and steps; step time on the same threads and validation loss after the
# last step (both on train_gpt's validation tiles).
#   bash bench/gpt_cpu_bench.sh build [steps=200] [threads="1 2"]
set -euo pipefail
build=${1:-build} steps=${2:-200} threads=${3:-"1 2"}
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
shape=(--layers 4 --width 128 --heads 4 --context 128 --batch 16 --steps "$steps" --eval-batches 8)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
printf "%-8s %-30s %10s %12s %10s\n" threads peer "ms/step" "tokens/s" "val loss"
for t in $threads; do
  OPENBLAS_NUM_THREADS=$t "$build/examples/train_gpt" "${shape[@]}" --chunk 16 --eval-every 0 \
    --progress-every 20 >"$log" 2>&1 || { cat "$log"; exit 1; }
  # median over the progress windows after the first (warm-up)
  rates=$(awk '/^step [0-9]+\/[0-9]+ /{print $5}' "$log" | tail -n +2 | sort -n)
  [ -n "$rates" ] || rates=$(awk '/^step [0-9]+\/[0-9]+ /{print $5}' "$log")
  rate=$(echo "$rates" | awk '{r[NR]=$1} END{print r[int((NR+1)/2)]}')
  val=$(sed -n 's/^final .*val_loss=\([0-9.]*\).*/\1/p' "$log")
  printf "%-8s %-30s %10.1f %12.0f %10.4f\n" "$t" "loom (OpenBLAS sgemm)" "$(awk -v x="$rate" 'BEGIN{print 16*128*1000/x}')" "$rate" "$val"
  /usr/bin/python3 "$here/peers/torch_gpt.py" "${shape[@]}" --threads "$t" >"$log" 2>&1 || { cat "$log"; exit 1; }
  ms=$(sed -n 's/.*: \([0-9.]*\) ms\/step.*/\1/p' "$log")
  val=$(sed -n 's/.*val loss \([0-9.]*\) after.*/\1/p' "$log")
  version=$(sed -n 's/^torch \([^ ]*\) .*/\1/p' "$log")
  printf "%-8s %-30s %10.1f %12.0f %10.4f\n" "$t" "torch $version eager" "$ms" "$(awk -v x="$ms" 'BEGIN{print 16*128*1000/x}')" "$val"
done
