#!/usr/bin/env bash
# GPT-2 124M on one GPU, same run: loom's train_gpt (bf16, float32 masters, AdamW) against
# PyTorch eager and torch.compile (bench/peers/torch_gpt.py: the same model, optimizer,
# clipping and schedule, bf16 autocast, fused AdamW, scaled_dot_product_attention). Shape:
# 12 layers, d 768, 12 heads, vocabulary 50257, context 1024, batch 16; random tokens (the
# step time does not depend on them). Prints ms/step, tokens/s and device memory.
#   bash bench/gpt_gpu_bench.sh build-gpu [steps=40] [python=python3]
set -uo pipefail
build=${1:-build-gpu} steps=${2:-40} python=${3:-python3}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$python" - "$tmp" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(1)
for name, n in (("train", 1 << 22), ("val", 1 << 18)):
    header = np.zeros(256, dtype=np.int32); header[:3] = (20240520, 1, n)
    with open(f"{sys.argv[1]}/{name}.bin", "wb") as f:
        f.write(header.tobytes()); f.write(rng.integers(0, 50257, n, dtype=np.uint16).tobytes())
PY
shape=(--layers 12 --width 768 --heads 12 --vocab 50257 --context 1024 --batch 16)
printf "%-34s %10s %12s %10s %8s\n" peer "ms/step" "tokens/s" "memory" "MFU"
for attention in flash batched; do
  timeout 300 "$build/examples/train_gpt" --device cuda "${shape[@]}" --chunk 16 --steps "$steps" \
    --attention $attention --progress-every 10 --eval-every 0 --eval-batches 1 \
    --train-shard "$tmp/train.bin" --val-shard "$tmp/val.bin" >"$tmp/loom.log" 2>&1 || { tail -20 "$tmp/loom.log"; continue; }
  rate=$(awk '/^step [0-9]+\/[0-9]+ /{print $5}' "$tmp/loom.log" | tail -n +2 | sort -n | awk '{r[NR]=$1} END{print r[int((NR+1)/2)]}')
  mfu=$(awk '/^step [0-9]+\/[0-9]+ /{print $NF}' "$tmp/loom.log" | tail -1)
  mem=$(sed -n 's/^device memory: \([0-9.]*\) GiB.*/\1/p' "$tmp/loom.log")
  printf "%-34s %10.1f %12.0f %9s %8s\n" "loom, $attention attention" "$(awk -v x="$rate" 'BEGIN{print 16*1024*1000/x}')" "$rate" "${mem}G" "$mfu"
  grep -E "^final" "$tmp/loom.log"
done
for mode in "" "--compile"; do
  timeout 400 "$python" "$here/peers/torch_gpt.py" --device cuda --bf16 $mode "${shape[@]}" \
    --steps "$steps" --synthetic --eval-batches 1 >"$tmp/torch.log" 2>&1 || { tail -5 "$tmp/torch.log"; continue; }
  line=$(tail -1 "$tmp/torch.log")
  ms=$(echo "$line" | sed -n 's/.*: \([0-9.]*\) ms\/step.*/\1/p')
  mem=$(echo "$line" | sed -n 's/.*peak memory \([0-9.]*\) GiB.*/\1/p')
  version=$(echo "$line" | sed -n 's/^torch \([^ ]*\) .*/\1/p')
  label=eager; [ -n "$mode" ] && label=compile
  printf "%-34s %10.1f %12.0f %9s %8s\n" "torch $version $label" "$ms" "$(awk -v x="$ms" 'BEGIN{print 16*1024*1000/x}')" "${mem}G" ""
done
