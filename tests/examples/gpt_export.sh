#!/usr/bin/env bash
# loom-ckpt export --gpt2 of a train_gpt checkpoint: the Hugging Face directory gives loom's
# validation loss (check_gpt2_export.py: in gpt_torch, and in transformers where installed);
# a damaged checkpoint is refused and an earlier export is left as it was.
#   bash tests/examples/gpt_export.sh build/examples/train_gpt build/checkpoint/tool/loom-ckpt
set -uo pipefail
bin=$1 tool=$2
here=$(dirname "$0")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
mpirun --oversubscribe -np 2 -x OPENBLAS_NUM_THREADS "$bin" --device cpu --data-dir "${FORTUNES_DIR:-/usr/share/games/fortunes}" --layers 2 --width 32 --heads 4 --context 32 \
  --batch 8 --chunk 2 --eval-batches 3 --steps 8 --eval-every 0 --progress-every 0 \
  --ckpt-dir "$tmp/ck" >"$tmp/train.log" 2>&1 || { cat "$tmp/train.log"; exit 1; }
loss=$(sed -n 's/^final .*val_loss=\([0-9.e+-]*\).*/\1/p' "$tmp/train.log")
check "export --gpt2" '"$tool" export "$tmp/ck" --gpt2 "$tmp/hf" >"$tmp/export.log" 2>&1 && grep -q "^exported GPT-2 L2 d32 H4 V256" "$tmp/export.log"'
"${PYTHON:-/usr/bin/python3}" "$here/check_gpt2_export.py" "$tmp/hf" "$loss" 3 8 "${FORTUNES_DIR:-/usr/share/games/fortunes}" || fail=1
# a flipped byte in a rank file: refused, the earlier export untouched, no temporary left
cp -r "$tmp/ck" "$tmp/bad"
step=$(cat "$tmp/bad/latest")
"${PYTHON:-/usr/bin/python3}" - "$tmp/bad/$step/rank-00000.h5" <<'PY'
import h5py, sys
with h5py.File(sys.argv[1], "r+") as f:
    d = f["wte"]; v = d[()]; v.flat[0] += 1.0; d[...] = v
PY
before=$(md5sum <"$tmp/hf/model.safetensors")
"$tool" export "$tmp/bad" --gpt2 "$tmp/hf" >"$tmp/bad.log" 2>&1
rc=$?
check "damaged checkpoint refused: $(grep -m1 -o 'damaged.*' "$tmp/bad.log")" '[ $rc -eq 1 ] && [ "$(md5sum <"$tmp/hf/model.safetensors")" = "$before" ] && [ ! -e "$tmp/hf/model.safetensors.tmp" ]'
exit $fail
