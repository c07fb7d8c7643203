#!/usr/bin/env bash
# train_gpt pipelined on the CPU: step time and the activations rank 0 holds in flight, at
# pp 1, 2, 4 for every schedule, against the formulas (micro-batches in flight: m for GPipe,
# p for 1F1B, ZB-H1 and ZB-V, p + (p - 1) / v interleaved; the step's ideal time on p cores:
# pp 1's / p x (1 + bubble)). Model: 8 blocks (so pp 4 x 2 chunks has one block per stage),
# d 128, 4 heads, context 128, batch 16 in 8 micro-batches of 2, one BLAS thread per rank.
# This machine has 2 cores: pp 4 runs 4 ranks on them, so its times say little.
#   bash bench/gpt_pipeline_bench.sh build [steps=12]
set -euo pipefail
build=${1:-build} steps=${2:-12}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
shape=(--layers 8 --width 128 --heads 4 --context 128 --batch 16 --microbatches 8 --steps "$steps"
       --eval-every 0 --eval-batches 1 --progress-every 4 --clip 1)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cores=$(nproc)
ms_of() { # median ms/step over the progress windows after the first
  awk '/^step [0-9]+\/[0-9]+ /{print $5}' "$1" | tail -n +2 | sort -n |
    awk -v tokens=$((16 * 128)) '{r[NR]=$1} END{print tokens * 1000 / r[int((NR+1)/2)]}'
}
printf "%-12s %3s %6s %10s %12s %14s %10s %12s %12s\n" schedule pp chunks "ms/step" "ideal ms" \
  "activations MB" "in flight" "theory" "bubble"
mpirun --oversubscribe --bind-to none -np 1 -x OPENBLAS_NUM_THREADS "$build/examples/train_gpt" "${shape[@]}" >"$log" 2>&1 || { cat "$log"; exit 1; }
t1=$(ms_of "$log")
printf "%-12s %3d %6d %10.1f %12s %14s %10s %12s %12s\n" "(plain)" 1 1 "$t1" "-" "-" 1 1 0
for pp in 2 4; do
  for schedule in gpipe 1f1b interleaved zbh1 zbv; do
    mpirun --oversubscribe --bind-to none -np $pp -x OPENBLAS_NUM_THREADS "$build/examples/train_gpt" \
      "${shape[@]}" --pp $pp --schedule $schedule >"$log" 2>&1 || { cat "$log"; exit 1; }
    line=$(grep '^pipeline:' "$log")
    mb=$(sed -n 's/.* \([0-9.]*\) MB of activations.*/\1/p' <<<"$line")
    flight=$(sed -n 's/.*(\([0-9.]*\) micro-batches of its stages).*/\1/p' <<<"$line")
    chunks=$(sed -n 's/.*stages (\([0-9]*\) per rank).*/\1/p' <<<"$line")
    read -r bubble theory < <("$build/parallel/pipeline/tool/loom-pipeline" show --schedule $schedule --pp $pp \
      --microbatches 8 | awk '/^step time/{b=$8} /^peak activations/{t=$6; gsub(/[();]/, "", t)} END{print b, t}')
    ms=$(ms_of "$log")
    ideal=$(awk -v t="$t1" -v p=$pp -v c="$cores" -v b="$bubble" 'BEGIN{q = p < c ? p : c; print t / q * (1 + b)}')
    printf "%-12s %3d %6d %10.1f %12.1f %14s %10s %12s %12s\n" $schedule $pp "$chunks" "$ms" "$ideal" "$mb" "$flight" "$theory" "$bubble"
  done
done
