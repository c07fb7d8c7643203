#!/usr/bin/env bash
# The DSP example (examples/dsp/dsp_video.c) at 1, 2, 3 and 4 ranks (3 leaves the frames and
# space positions uneven): --verify checks each rank's output against the unsharded block bit
# for bit, the gradients within 1e-5 (float32 sums in another order) and, against central differences, within 2 %; five steps'
# losses agree with the single rank's within 1e-6 relative; the elements resharded per block
# equal 2 N C / p each way (even shards), a quarter of Ulysses' 8 N C / p.
#   bash tests/examples/dsp.sh build/examples/dsp_video
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe --bind-to none -x LOOM_TIMEOUT)
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
losses() { sed -n 's/^step \([0-9]*\) loss \(.*\)/\1 \2/p' "$1"; }
for np in 1 2 3 4; do
  "${mpi[@]}" -np $np "$bin" --verify 1 >"$tmp/np$np.log" 2>&1 || { echo "--- np $np:"; tail -5 "$tmp/np$np.log"; }
  check "np $np: every rank verified ($(grep -c ': ok$' "$tmp/np$np.log") of $np)" \
    '[ "$(grep -c "^verify (rank [0-9]*): .*: ok$" "$tmp/np$np.log")" = $np ]'
  check "np $np: five losses within 1e-6 of np 1's" \
    'paste <(losses "$tmp/np1.log") <(losses "$tmp/np$np.log") | awk "NF == 4 { n++; d = \$2 - \$4; if (d < 0) d = -d; if (\$1 != \$3 || d > 1e-6 * \$2) bad = 1 } END { exit bad || n != 5 }"'
done
check "np 4: resharded elements equal 2 N C / p, Ulysses' 4x ($(grep '^dsp:' "$tmp/np4.log"))" \
  'grep -qE "^dsp: 1536 elements resharded per block forward, 1536 backward, on rank 0 \(2 N C / p = 1536 .*, 4.0x DSP" "$tmp/np4.log"'
"${mpi[@]}" -np 1 "$bin" --channels 10 --heads 4 >"$tmp/bad.log" 2>&1
check "heads not dividing the channels refused" 'grep -q "the heads (4) must divide the channels (10)" "$tmp/bad.log"'
[ $fail -eq 0 ] && echo "dsp: all checks passed"
exit $fail
