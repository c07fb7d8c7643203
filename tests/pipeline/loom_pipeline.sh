#!/usr/bin/env bash
# loom-pipeline as a user runs it: `show` prints one row per rank and the bubble against
# theory, `table` agrees with theory for every schedule with m >= pp, and bad input exits 1
# (refused schedule, with the rule) or 2 (usage) with a message.
#   bash tests/pipeline/loom_pipeline.sh build/parallel/pipeline/tool/loom-pipeline
set -euo pipefail
tool=$1
fail() { echo "FAIL: $*"; exit 1; }

out=$("$tool" show --schedule zbv --pp 4 --microbatches 8)
[ "$(grep -c '^rank ' <<<"$out")" -eq 4 ] || fail "show: not 4 rank rows: $out"
grep -q 'bubble 0.0625 (theory 0.0625)' <<<"$out" || fail "show zbv: bubble line: $out"
grep -q 'peak activations 4.00 micro-batches (theory 4.00)' <<<"$out" || fail "show zbv: peak: $out"
# rank 0 starts with forwards of micro-batches 0, 1, 2 (chunk 0), rank 3 idles 3 cells first
grep -q '^rank 0   F0 F1 F2 ' <<<"$out" || fail "show zbv: rank 0 row: $out"
grep -q '^rank 3   \.\. \.\. \.\. F0 f0 ' <<<"$out" || fail "show zbv: rank 3 row: $out"

out=$("$tool" show --schedule 1f1b --pp 2 --microbatches 2 --backward-input 2 --backward-weight 0)
grep -q '^rank 0   F0 F1 \.\. \.\. B0 == \.\. B1 ==' <<<"$out" || fail "show 1f1b with B = 2F: $out"

"$tool" table >/tmp/loom-pipeline-table.$$ || fail "table exited non-zero"
awk '$2 ~ /^[0-9]+$/ && $3 >= $2 && $4 != "-" {
       rows++
       if ($5 - $6 > 1e-4 || $6 - $5 > 1e-4) { print "bubble off theory:", $0; bad = 1 }
       if ($7 - $8 > 1e-2 || $8 - $7 > 1e-2) { print "peak off theory:", $0; bad = 1 }
     }
     END { if (rows < 35) { print "only", rows, "rows"; bad = 1 }; exit bad }' /tmp/loom-pipeline-table.$$ \
  || { rm -f /tmp/loom-pipeline-table.$$; fail "table against theory"; }
rm -f /tmp/loom-pipeline-table.$$

set +e
msg=$("$tool" show --schedule zbv --pp 4 --microbatches 3 2>&1); rc=$?
[ $rc -eq 1 ] && grep -q 'micro-batches=3 is fewer than pp=4' <<<"$msg" || fail "zbv m < pp: rc $rc: $msg"
msg=$("$tool" show --schedule zb --pp 4 --microbatches 8 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "'zb' is not one of gpipe" <<<"$msg" || fail "unknown schedule: rc $rc: $msg"
msg=$("$tool" show --schedule 1f1b --pp 2.5 --microbatches 8 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q 'pp 2.5: expected a whole number' <<<"$msg" || fail "fractional pp: rc $rc: $msg"
msg=$("$tool" show --schedule 1f1b --microbatches 8 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q 'are required' <<<"$msg" || fail "missing --pp: rc $rc: $msg"
msg=$("$tool" show --schedule gpipe --pp 2 --microbatches 4 --forward -1 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q 'expected a time >= 0' <<<"$msg" || fail "negative cost: rc $rc: $msg"
set -e
echo "loom-pipeline: show, table and refusals ok"
