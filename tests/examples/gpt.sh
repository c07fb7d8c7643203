#!/usr/bin/env bash
# train_gpt end to end: np 1 and np 4 (data parallel) give the same losses bit for bit on the
# fortunes; a resumed run continues exactly; llm.c shards train; bad shards and a missing data
# directory fail with one line naming the file (and the byte offset).
#   bash tests/examples/gpt.sh build/examples/train_gpt
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
mpi=(mpirun --oversubscribe -x OPENBLAS_NUM_THREADS -x LOOM_TIMEOUT)
small=(--layers 2 --width 32 --heads 2 --context 32 --batch 8 --chunk 2 --eval-batches 2 --progress-every 0)
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

for np in 1 4; do
  "${mpi[@]}" -np $np "$bin" "${small[@]}" --steps 6 --eval-every 3 >"$tmp/np$np.log" 2>&1 || { cat "$tmp/np$np.log"; fail=1; }
done
grep "final" "$tmp/np1.log"
check "np 1 and np 4 losses bit-identical" '[ -n "$(grep final "$tmp/np1.log")" ] && diff <(grep -E "^step|final" "$tmp/np1.log") <(grep -E "^step|final" "$tmp/np4.log") >/dev/null'

# resume: 3 steps, stop, resume to 6 = 6 straight
"${mpi[@]}" -np 2 "$bin" "${small[@]}" --steps 6 --eval-every 0 --ckpt-dir "$tmp/ck" --stop-at-step 3 >"$tmp/a.log" 2>&1
"${mpi[@]}" -np 2 "$bin" "${small[@]}" --steps 6 --eval-every 0 --ckpt-dir "$tmp/ck" --resume 1 >"$tmp/b.log" 2>&1
"${mpi[@]}" -np 2 "$bin" "${small[@]}" --steps 6 --eval-every 0 >"$tmp/c.log" 2>&1
check "stop at 3 + resume = 6 straight" '[ -n "$(grep final "$tmp/c.log")" ] && [ "$(grep final "$tmp/b.log")" = "$(grep final "$tmp/c.log")" ]'
"${mpi[@]}" -np 1 "$bin" "${small[@]}" --steps 6 --ckpt-dir "$tmp/ck" --resume 1 --sample-only 1 --sample 40 >"$tmp/s.log" 2>&1
check "sample from the checkpoint" 'grep -q "^sample (40 tokens" "$tmp/s.log"'
"${mpi[@]}" -np 1 "$bin" "${small[@]}" --heads 4 --steps 6 --ckpt-dir "$tmp/ck" --resume 1 >"$tmp/h.log" 2>&1
check "resume with other heads refused: $(grep -m1 -o 'LOOM_ERR.*' "$tmp/h.log")" 'grep -q "has 2 heads, --heads says 4" "$tmp/h.log"'

# llm.c shards (vocabulary 50257 ids, a small model)
/usr/bin/python3 - "$tmp" <<'PY'
import struct, sys, random
d = sys.argv[1]
def shard(path, tokens, magic=20240520, version=1, count=None, vocab_bad=False):
    with open(path, "wb") as f:
        h = [magic, version, len(tokens) if count is None else count] + [0] * 253
        f.write(struct.pack("<256i", *h))
        f.write(struct.pack("<%dH" % len(tokens), *tokens))
r = random.Random(5)
toks = [r.randrange(50257) for _ in range(5000)]
shard(d + "/train.bin", toks)
shard(d + "/val.bin", toks[:1000])
shard(d + "/magic.bin", toks, magic=1234)
shard(d + "/version.bin", toks, version=7)
shard(d + "/short.bin", toks[:100], count=200)
shard(d + "/vocab.bin", toks[:10] + [60000] + toks[:10])
PY
"${mpi[@]}" -np 1 "$bin" --layers 1 --width 16 --heads 2 --context 16 --batch 2 --chunk 1 --vocab 50257 \
  --train-shard "$tmp/train.bin" --val-shard "$tmp/val.bin" --steps 2 --eval-batches 1 >"$tmp/shard.log" 2>&1
check "llm.c shards train" 'grep -q "final train_loss" "$tmp/shard.log"'
bad() { # name, shard, expected text
  "${mpi[@]}" -np 1 "$bin" --vocab 50257 --train-shard "$2" --val-shard "$tmp/val.bin" --steps 1 >"$tmp/bad.log" 2>&1
  local rc=$? want=$3
  check "$1 refused: $(grep -m1 train_gpt "$tmp/bad.log")" '[ $rc -ne 0 ] && grep -q "$want" "$tmp/bad.log"'
}
bad "wrong magic" "$tmp/magic.bin" "magic 1234 at offset 0"
bad "wrong version" "$tmp/version.bin" "version 7 at offset 4"
bad "truncated shard" "$tmp/short.bin" "truncated"
bad "token >= vocabulary" "$tmp/vocab.bin" "token 60000 at byte offset 1044"
bad "missing shard" "$tmp/none.bin" "none.bin"
"${mpi[@]}" -np 1 "$bin" --data-dir "$tmp/nothing" --steps 1 >"$tmp/bad.log" 2>&1
rc=$?
check "missing fortunes directory refused: $(grep -m1 train_gpt "$tmp/bad.log")" '[ $rc -ne 0 ] && grep -q "nothing" "$tmp/bad.log"'
"${mpi[@]}" -np 1 "$bin" --context 100000 --steps 1 >"$tmp/bad.log" 2>&1
rc=$?
check "context beyond the limit refused: $(grep -m1 train_gpt "$tmp/bad.log")" '[ $rc -ne 0 ]'
exit $fail
