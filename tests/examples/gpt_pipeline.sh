#!/usr/bin/env bash
# train_gpt with pipeline parallelism on the CPU against the plain run, bit for bit: every
# schedule (GPipe, 1F1B, interleaved with 2 chunks, ZB-H1, ZB-V) at pp 2 and pp 4 ends with a
# checkpoint identical to pp 1's (parameters, AdamW moments, step, data position: loom-ckpt
# diff over the consolidated tensors), and so do pp 2 x dp 2 (every schedule) and pp 4 x dp 2
# (interleaved) against dp 2.
# Bit for bit because each stage adds its micro-batches' float32 gradients into float64 in
# the same order as the plain run, wte's two parts apart (gpt_stages.h), with --clip 0; with
# clipping the global norm's sum is associated per stage, so the losses agree to 1e-9
# relative instead. A checkpoint saved at pp 4 resumes at pp 2 and at pp 1 (universal) to
# the uninterrupted run's checkpoint. Bad layouts fail with the numbers and the rule.
# Under the sanitizers (mode "short") pp 4 runs ZB-V only and pp 2 x dp 2 runs 1F1B only.
#   bash tests/examples/gpt_pipeline.sh build/examples/train_gpt build/checkpoint/tool/loom-ckpt [full|short]
set -uo pipefail
bin=$1
ckpt=$2
mode=${3:-full}
all_schedules="gpipe 1f1b interleaved zbh1 zbv"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
mpi=(mpirun --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS -x LOOM_TIMEOUT)
# 8 blocks: pp 4 x 2 chunks still has one block per stage
small=(--layers 8 --width 32 --heads 2 --context 16 --batch 16 --microbatches 4 --eval-every 0
       --eval-batches 1 --progress-every 1 --lr 1e-2 --warmup-steps 1)
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
run() { # name, np, args...
  local name=$1 np=$2; shift 2
  "${mpi[@]}" -np "$np" "$bin" "${small[@]}" "$@" >"$tmp/$name.log" 2>&1 || { echo "--- $name:"; tail -5 "$tmp/$name.log"; }
}
same() { # name, reference root, root
  "$ckpt" diff "$2" "$3" >"$tmp/$1.diff" 2>&1
}
losses() { grep -E '^step [0-9]+/' "$1" | sed 's/ *[0-9]* tokens\/s.*//'; }

run ref1 1 --steps 3 --clip 0 --ckpt-dir "$tmp/ref1"
run ref2 2 --steps 3 --clip 0 --ckpt-dir "$tmp/ref2"
check "pp 1 reference ran" '[ -f "$tmp/ref1/latest" ] && [ -f "$tmp/ref2/latest" ]'
for pp in 2 4; do
  schedules=$all_schedules
  [ "$mode" = short ] && [ $pp = 4 ] && schedules=zbv
  for schedule in $schedules; do
    name=pp$pp-$schedule
    run "$name" $pp --pp $pp --schedule $schedule --steps 3 --clip 0 --ckpt-dir "$tmp/$name"
    check "$name: checkpoint identical to pp 1's" 'same "$name" "$tmp/ref1" "$tmp/$name"'
    check "$name: losses identical to pp 1's" 'diff <(losses "$tmp/ref1.log") <(losses "$tmp/$name.log") >/dev/null'
  done
done
for schedule in $([ "$mode" = short ] && echo 1f1b || echo $all_schedules); do
  name=pp2-dp2-$schedule
  run "$name" 4 --pp 2 --schedule $schedule --steps 3 --clip 0 --ckpt-dir "$tmp/$name"
  check "$name: checkpoint identical to dp 2's" 'same "$name" "$tmp/ref2" "$tmp/$name"'
done
run pp4-dp2-interleaved 8 --pp 4 --schedule interleaved --steps 3 --clip 0 --ckpt-dir "$tmp/pp4-dp2"
check "pp4-dp2-interleaved: checkpoint identical to dp 2's" 'same pp4-dp2 "$tmp/ref2" "$tmp/pp4-dp2"'

# clipping across stages: the norm over every stage's tensors, within rounding of pp 1's
run clip1 1 --steps 3 --clip 0.5
run clip2 2 --pp 2 --schedule zbh1 --steps 3 --clip 0.5
final() { sed -n 's/^final train_loss=\([^ ]*\).*/\1/p' "$1"; }
check "clipped pp 2 within 1e-9 of pp 1 ($(final "$tmp/clip1.log") / $(final "$tmp/clip2.log"))" \
  'awk -v a="$(final "$tmp/clip1.log")" -v b="$(final "$tmp/clip2.log")" "BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != \"\" && d <= 1e-9 * a) }"'

# universal resume: 2 steps at pp 4, then to step 4 at pp 2 and at pp 1, against 4 straight
run straight 1 --steps 4 --clip 0 --ckpt-dir "$tmp/straight"
run save4 4 --pp 4 --schedule zbv --steps 4 --clip 0 --ckpt-dir "$tmp/from4" --stop-at-step 2
cp -r "$tmp/from4" "$tmp/from4b"
run resume2 2 --pp 2 --schedule 1f1b --steps 4 --clip 0 --ckpt-dir "$tmp/from4" --resume 1
run resume1 1 --steps 4 --clip 0 --ckpt-dir "$tmp/from4b" --resume 1
check "saved at pp 4, resumed at pp 2: identical to 4 straight steps" 'same r2 "$tmp/straight" "$tmp/from4"'
check "saved at pp 4, resumed at pp 1: identical to 4 straight steps" 'same r1 "$tmp/straight" "$tmp/from4b"'

# bad layouts: one line with the numbers and the rule
run stages 4 --pp 4 --schedule interleaved --chunks 4 --steps 1
check "more stages than blocks refused" 'grep -q "16 stages (pp=4 x chunks=4) but the model has 8 blocks" "$tmp/stages.log"'
run few 4 --pp 4 --schedule zbv --microbatches 2 --steps 1
check "zbv with micro-batches < pp refused" 'grep -q "micro-batches=2 is fewer than pp=4" "$tmp/few.log"'
run ranks 3 --pp 2 --steps 1
check "pp not dividing the ranks refused: $(grep -m1 -o 'LOOM_ERR[^;]*' "$tmp/ranks.log")" 'grep -q "pp" "$tmp/ranks.log" && grep -q LOOM_ERR_ARG "$tmp/ranks.log"'
run split 2 --pp 2 --microbatches 3 --steps 1
check "micro-batches not dividing the batch refused" 'grep -q "into dp=1 replicas of --microbatches 3 equal micro-batches" "$tmp/split.log"'
[ $fail -eq 0 ] && echo "gpt-pipeline: all checks passed"
exit $fail
