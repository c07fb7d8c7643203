#!/usr/bin/env bash
# Save at 4 ranks (dp 4, ep 2), load at 1, 2, 3 and 4 ranks and on other meshes (sp 2; ep 1),
# then a foreign model and a damaged shard must be refused. Usage: ckpt.sh <test_ckpt> <mpirun>
set -euo pipefail
prog=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() { local np=$1; shift; mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" "$prog" --ckpt-dir "$dir" "$@"; }
run 4 --ckpt-mode save --ep 2
test -f "$dir/latest" && test -f "$dir/$(cat "$dir/latest")/index.h5"
# Consumers outside loom see whole tensors: h5py (Debian's python3-h5py) reads index.h5.
/usr/bin/python3 - "$dir/$(cat "$dir/latest")" <<'PY'
import sys, h5py, numpy as np
index = h5py.File(sys.argv[1] + "/index.h5", "r")
assert index.attrs["step"] == 42, index.attrs["step"]
mesh = index.attrs["mesh_axes"]
mesh = mesh.decode() if isinstance(mesh, bytes) else mesh
assert mesh == "pp=1 dp=4 sp=1 ep=2", mesh
shapes = {"A": (13, 7), "blocks/B": (5,), "C": (6, 10), "step": (1,), "E": (4, 9)}
for name, shape in shapes.items():
    data = index[name][...]
    assert data.shape == shape, (name, data.shape)
    # every element mapped: the generated values are never exactly 0
    assert np.count_nonzero(data) == data.size or name == "step", (name, data)
    assert index[name].attrs["loom_dtype"] in ("float32", "float64", "bfloat16", "int64")
# the virtual tensor equals its pieces: rank 1's rows of A (DP split: rows 4..7)
rank1 = h5py.File(sys.argv[1] + "/rank-00001.h5", "r")
assert np.array_equal(index["A"][4:8, :], rank1["A"][...])
# One writer per distinct slice: a tensor is stored in exactly the rank files its virtual
# dataset maps (replicas of a slice do not write it again), and a replicated tensor in one.
import glob, os
files = sorted(glob.glob(sys.argv[1] + "/rank-*.h5"))
for name in shapes:
    mapped = {os.path.basename(s.file_name) for s in index[name].virtual_sources()}
    holding = {os.path.basename(f) for f in files if name in h5py.File(f, "r")}
    assert holding == mapped, (name, sorted(holding), sorted(mapped))
assert len({os.path.basename(s.file_name) for s in index["step"].virtual_sources()}) == 1
print("h5py: whole tensors, shard mapping and one writer per slice ok")
PY
# A checkpoint written before the named-axes attribute (mesh_pp_dp_sp_ep) still loads; one
# with an axis this loom does not know is refused, naming it.
old=$dir.old && rm -rf "$old" && cp -r "$dir" "$old"
/usr/bin/python3 - "$old/$(cat "$dir/latest")/index.h5" <<'PY'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r+")
del f.attrs["mesh_axes"]
f.attrs["mesh_pp_dp_sp_ep"] = np.array([1, 4, 1, 2], dtype=np.int32)
PY
mpirun --oversubscribe --bind-to none --mca btl self,vader -np 2 "$prog" --ckpt-dir "$old" --ckpt-mode load
/usr/bin/python3 -c "
import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); del f.attrs['mesh_pp_dp_sp_ep']
f.attrs['mesh_axes'] = 'pp=1 dp=4 sp=1 ep=2 tp=2'" "$old/$(cat "$dir/latest")/index.h5"
log=$(mpirun --oversubscribe --bind-to none --mca btl self,vader -np 2 "$prog" --ckpt-dir "$old" --ckpt-mode load-arg 2>&1) || { echo "$log"; echo "FAIL: an unknown axis was not refused with LOOM_ERR_ARG"; exit 1; }
grep -q "tp" <<<"$log" || { echo "$log"; exit 1; }
echo "refused: $(grep -m1 "tp" <<<"$log")"
rm -rf "$old"
for layout in "1" "2" "3" "4" "4 --sp 2" "4 --ep 2" "4 --ep 4" "2 --ep 2"; do
  set -- $layout
  np=$1; shift
  echo "load at $np ranks $*"
  run "$np" --ckpt-mode load "$@"
done
run 2 --ckpt-mode load-extra
run 1 --ckpt-mode corrupt
run 3 --ckpt-mode load-corrupt
# Damage of other kinds: each load fails on every rank with LOOM_ERR_CORRUPT (or ERR_ARG for a
# path that is not a checkpoint) and a message naming the file; nothing is half loaded.
expect_failure() { # mode, text the messages must contain, then the damage as a command
  local mode=$1 text=$2; shift 2
  rm -rf "$dir.damaged" && cp -r "$dir" "$dir.damaged"
  (cd "$dir.damaged/$(cat "$dir/latest")" && "$@")
  local log
  log=$(mpirun --oversubscribe --bind-to none --mca btl self,vader -np 2 "$prog" --ckpt-dir "$dir.damaged" --ckpt-mode $mode 2>&1) || { echo "$log"; exit 1; }
  grep -q -- "$text" <<<"$log" || { echo "expected '$text' in:"; echo "$log"; exit 1; }
  echo "refused: $(grep -m1 -- "$text" <<<"$log")"
}
run 4 --ckpt-mode save --ep 2 # an intact checkpoint again (corrupt damaged rank 1's file)
expect_failure load-corrupt "rank-00002.h5" rm rank-00002.h5
expect_failure load-corrupt "rank-00001.h5" bash -c 'truncate -s $(( $(stat -c %s rank-00001.h5) / 2 )) rank-00001.h5'
expect_failure load-corrupt "index.h5" /usr/bin/python3 -c "
import h5py; f = h5py.File('index.h5', 'r+'); f['A'].attrs['loom_dtype'] = 'float64'"
expect_failure load-corrupt "index.h5" bash -c 'truncate -s $(( $(stat -c %s index.h5) / 2 )) index.h5'
rm -rf "$dir.damaged"
mkdir -p "$dir/not_a_checkpoint"
log=$(mpirun --oversubscribe --bind-to none --mca btl self,vader -np 2 "$prog" --ckpt-dir "$dir/not_a_checkpoint" --ckpt-mode load-arg 2>&1) || { echo "$log"; exit 1; }
grep -q "not_a_checkpoint" <<<"$log" || { echo "$log"; exit 1; }
rmdir "$dir/not_a_checkpoint"
# Retention and cleanup: a stale temporary directory goes, only the newest 2 of 3 new saves
# stay (compressed), and the newest loads.
mkdir -p "$dir/.step-00000007.tmp" && touch "$dir/.step-00000007.tmp/rank-00000.h5"
for step in 50 60 70; do run 2 --ckpt-mode save --ckpt-step $step --ckpt-keep 2 --ckpt-deflate 6; done
kept=$(cd "$dir" && { ls -d step-* .step-* 2>/dev/null || true; } | tr '\n' ' ')
[ "$kept" = "step-00000060 step-00000070 " ] || { echo "after keep 2: '$kept'"; exit 1; }
[ "$(cat "$dir/latest")" = step-00000070 ] || { echo "latest is $(cat "$dir/latest")"; exit 1; }
run 3 --ckpt-mode load --ckpt-step 70
# Asynchronous saves: the saved values are those at the call, though the tensors change right
# after the fence; the busy policy is decided alike on every rank (skip and wait).
for busy in skip wait; do
  rm -rf "$dir"/*
  run 4 --ckpt-mode save-async --ckpt-step 80 --ckpt-busy $busy --ep 2
  run 3 --ckpt-mode load --ckpt-step 80 --ckpt-dir "$dir/step-00000080"
done
# Per-stage tensors: 4 stages saved at pp 2 (each stage's ranks register only their own), loaded
# at pp 4, pp 1 (one rank holds all) and pp 2 with another dp.
rm -rf "$dir"/*
run 4 --ckpt-mode save-stages --pp 2 --ckpt-step 90
run 4 --ckpt-mode load-stages --pp 4 --ckpt-step 90
run 1 --ckpt-mode load-stages --ckpt-step 90
run 2 --ckpt-mode load-stages --pp 2 --ckpt-step 90
run 6 --ckpt-mode load-stages --pp 2 --ckpt-step 90
echo "ckpt: ok"
