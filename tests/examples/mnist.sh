#!/usr/bin/env bash
# The Fashion-MNIST example end to end.
#   full : 5 epochs at 1 and 4 ranks; test accuracy >= 0.88 at 4 ranks and final training loss
#          of the two runs within 1e-4 relative (same global batch and seed); metrics file.
#   short: a few steps at 1 and 2 ranks, identical loss (for the sanitizer build).
# Both: a missing and a truncated data file fail with the path and the Debian package named.
set -euo pipefail
train=$1
mode=${2:-full}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
run() { # ranks, args...
  local np=$1; shift
  mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" "$train" "$@"
}
final() { sed -n 's/^final train_loss=\([^ ]*\) test_accuracy=\(.*\)$/\1 \2/p' "$1"; }

if [ "$mode" = full ]; then
  run 1 --metrics "$work/m1.jsonl" | tee "$work/np1.log"
  run 4 --metrics "$work/m4.jsonl" | tee "$work/np4.log"
else
  run 1 --epochs 1 --max-steps 15 | tee "$work/np1.log"
  run 2 --epochs 1 --max-steps 15 | tee "$work/np4.log"
fi
read -r loss1 acc1 <<<"$(final "$work/np1.log")"
read -r loss4 acc4 <<<"$(final "$work/np4.log")"
python3 - "$mode" "$loss1" "$loss4" "$acc4" <<'PY'
import sys
mode, l1, l4, a4 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rel = abs(l1 - l4) / abs(l1)
print(f"loss 1 rank {l1:.10g}, N ranks {l4:.10g}, relative difference {rel:.3g}; accuracy {a4:.4f}")
assert rel <= 1e-4, f"final losses differ by {rel:.3g} > 1e-4"
if mode == "full":
    assert a4 >= 0.88, f"test accuracy {a4:.4f} < 0.88 after 5 epochs"
PY
if [ "$mode" = full ]; then
  lines=$(wc -l <"$work/m4.jsonl")
  [ "$lines" -eq 5 ] || { echo "metrics file has $lines lines, expected 5"; exit 1; }
  python3 -c "import json,sys; [json.loads(l) for l in open(sys.argv[1])]" "$work/m4.jsonl"
fi

# Bad data: a missing directory, then a truncated image file.
if run 1 --data-dir "$work/none" --epochs 1 --max-steps 1 >"$work/bad.log" 2>&1; then
  echo "a missing data directory was accepted"; exit 1
fi
grep -q "none/train-images-idx3-ubyte.gz" "$work/bad.log" && grep -q "dataset-fashion-mnist" "$work/bad.log" \
  || { echo "missing data: unclear message:"; cat "$work/bad.log"; exit 1; }
mkdir -p "$work/truncated"
src=/usr/share/datasets/fashion-mnist
cp "$src"/*.gz "$work/truncated/"
gzip -dc "$src/train-images-idx3-ubyte.gz" >"$work/raw"
head -c 1000000 "$work/raw" | gzip -c >"$work/truncated/train-images-idx3-ubyte.gz"
if run 1 --data-dir "$work/truncated" --epochs 1 --max-steps 1 >"$work/bad.log" 2>&1; then
  echo "a truncated data file was accepted"; exit 1
fi
grep -q "truncated" "$work/bad.log" || { echo "truncated data: unclear message:"; cat "$work/bad.log"; exit 1; }
echo "mnist $mode: ok"
