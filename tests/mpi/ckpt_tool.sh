#!/usr/bin/env bash
# loom-ckpt on checkpoints test_ckpt saves at 4 ranks (dp 4, ep 2): ls names every tensor with
# the dtype, shape, pieces and bytes h5py sees; verify passes an intact checkpoint and fails
# (exit 1) a flipped value, a deleted, truncated or emptied rank file, a damaged index and a
# directory that is no checkpoint; a bad command line exits 2; diff tells identical from
# changed, missing and reshaped tensors; export writes a safetensors file equal, tensor by
# tensor, to h5py's reading of index.h5. Usage: ckpt_tool.sh <test_ckpt> <loom-ckpt>
set -euo pipefail
prog=$1
tool=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=/usr/bin/python3 # Debian's python3-h5py
save() { # root, extra test_ckpt flags...
  local root=$1; shift
  mpirun --oversubscribe --bind-to none --mca btl self,vader -np 4 "$prog" --ckpt-dir "$root" \
    --ckpt-mode save --ep 2 "$@" > "$work/save.log" 2>&1 || { cat "$work/save.log"; exit 1; }
}
# expect CODE PATTERN COMMAND...: COMMAND must exit CODE and print a line matching the
# extended regex PATTERN ('' = anything); its output stays in $work/out.
expect() {
  local want=$1 pattern=$2 got=0
  shift 2
  "$@" > "$work/out" 2>&1 || got=$?
  if [ "$got" != "$want" ] || { [ -n "$pattern" ] && ! grep -Eq -- "$pattern" "$work/out"; }; then
    echo "FAIL: '$*' exited $got (expected $want), output (expected /$pattern/):"
    cat "$work/out"
    exit 1
  fi
  echo "ok: exit $got: $*"
}
# A copy of the checkpoint directory to damage.
copy() { rm -rf "$work/$1"; cp -r "$ckpt" "$work/$1"; echo "$work/$1"; }

root=$work/root
save "$root"
ckpt=$root/$(cat "$root/latest")

echo "== ls"
expect 0 '^step +42$' "$tool" ls "$root"
cp "$work/out" "$work/ls.txt"
cat "$work/ls.txt"
grep -Eq '^mesh +pp 1 dp 4 sp 1 ep 2$' "$work/ls.txt" || { echo "FAIL: ls mesh line"; exit 1; }
grep -Eq '^version +loom 0\.1\.0$' "$work/ls.txt" || { echo "FAIL: ls version line"; exit 1; }
# Every tensor's line against the shapes test_ckpt registers and against h5py's view.
"$py" - "$ckpt" "$work/ls.txt" <<'PY'
import re, sys, h5py
index = h5py.File(sys.argv[1] + "/index.h5", "r")
expected = {"A": ("float32", "[13, 7]"), "blocks/B": ("float64", "[5]"),
            "C": ("bfloat16", "[6, 10]"), "step": ("int64", "[]"), "E": ("float32", "[4, 9]")}
rows = {}
for line in open(sys.argv[2]):
    m = re.match(r"^(\S+)\s+(\S+)\s+(\[[0-9, ]*\])\s+(\d+)\s+(\d+)$", line.rstrip("\n"))
    if m:
        rows[m.group(1)] = m.groups()[1:]
assert set(rows) == set(expected), (sorted(rows), sorted(expected))
item = {"float32": 4, "float64": 8, "bfloat16": 2, "int64": 8}
for name, (dtype, shape) in expected.items():
    got_dtype, got_shape, pieces, nbytes = rows[name]
    assert (got_dtype, got_shape) == (dtype, shape), (name, rows[name])
    data = index[name]
    assert data.attrs["loom_dtype"] == dtype, name
    assert int(pieces) == len(data.virtual_sources()), (name, pieces)
    assert int(nbytes) == data.size * item[dtype], (name, nbytes)
print("ls: 5 tensors, dtypes, shapes, pieces and bytes agree with h5py")
PY
expect 0 '^step +42$' "$tool" ls "$ckpt"

echo "== verify"
expect 0 ' 0 problems: OK$' "$tool" verify "$root"
expect 0 ' 0 problems: OK$' "$tool" verify "$ckpt"
# (a) one value changed in one rank file's piece of A, its crc32 left as it was. Which rank
# files hold which pieces is the writer's choice: h5py asks the index's virtual mapping.
flip=$(copy flip)
"$py" - "$flip" "$work/flip.file" > "$work/flip.expect" <<'PY'
import sys, h5py, numpy as np
source = h5py.File(sys.argv[1] + "/index.h5", "r")["A"].virtual_sources()[-1]
open(sys.argv[2], "w").write(source.file_name)
with h5py.File(sys.argv[1] + "/" + source.file_name, "r+") as f:
    piece = f[source.dset_name]
    before = float(piece[0, 0])
    piece[0, 0] = np.float32(0.5) if before != 0.5 else np.float32(-0.5)
    # the line diff must print: float32 values subtract exactly in double
    print("A: max |a-b| = %.9g (1 of 91 elements differ)" % abs(float(piece[0, 0]) - before))
PY
expect 1 "$(cat "$work/flip.file"): tensor 'A' fails its checksum" "$tool" verify "$flip"
grep -q ' 1 problem: DAMAGED$' "$work/out" || { echo "FAIL: one problem expected"; exit 1; }
# (b) a rank file deleted.
gone=$(copy gone)
rm "$gone/rank-00002.h5"
expect 1 'rank-00002\.h5 is missing' "$tool" verify "$gone"
# (c) a rank file truncated to half, and one emptied.
cut=$(copy cut)
truncate -s $(( $(stat -c %s "$cut/rank-00003.h5") / 2 )) "$cut/rank-00003.h5"
expect 1 'rank-00003\.h5.*(truncated|cannot be read)' "$tool" verify "$cut"
grep -q ' 1 problem: DAMAGED$' "$work/out" || { echo "FAIL: one line for one damaged file"; exit 1; }
: > "$cut/rank-00000.h5"
expect 1 'rank-00000\.h5 is truncated' "$tool" verify "$cut"
grep -q ' 2 problems: DAMAGED$' "$work/out" || { echo "FAIL: two damaged files"; exit 1; }
# (d) no checkpoint: an empty directory, a missing path, a bad `latest`, a text index.h5.
mkdir "$work/empty"
expect 1 'no checkpoint at' "$tool" verify "$work/empty"
expect 1 'no checkpoint at' "$tool" verify "$work/does-not-exist"
mkdir "$work/badlatest" && echo "../../etc" > "$work/badlatest/latest"
expect 1 'does not name a checkpoint' "$tool" verify "$work/badlatest"
mkdir "$work/text" && echo "not hdf5" > "$work/text/index.h5"
expect 1 'index\.h5 cannot be opened as HDF5' "$tool" verify "$work/text"
echo "step-00000099" > "$work/empty/latest"
expect 1 'step-00000099/index\.h5 is missing' "$tool" verify "$work/empty"
# (e) a piece's dataset removed from its rank file; a truncated index.
lack=$(copy lack)
holder=$("$py" - "$lack" <<'PY'
import sys, h5py
source = h5py.File(sys.argv[1] + "/index.h5", "r")["blocks/B"].virtual_sources()[0]
with h5py.File(sys.argv[1] + "/" + source.file_name, "r+") as f:
    del f[source.dset_name]
print(source.file_name)
PY
)
expect 1 "$holder lacks tensor 'blocks/B'" "$tool" verify "$lack"
truncate -s 2000 "$lack/index.h5"
expect 1 'index\.h5' "$tool" verify "$lack"
# (f) index attributes that disagree: no loom_dtype on A; 3 checksums for 4 writers on E.
attrs=$(copy attrs)
"$py" - "$attrs/index.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    del f["A"].attrs["loom_dtype"]
PY
expect 1 "tensor 'A' has no valid loom_dtype" "$tool" verify "$attrs"
attrs=$(copy attrs)
"$py" - "$attrs/index.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    f["E"].attrs["shard_crc32"] = np.zeros(3, dtype=np.uint32)
PY
expect 1 "tensor 'E' has 3 shard checksums" "$tool" verify "$attrs"

echo "== command line"
expect 2 'usage' "$tool"
expect 0 'usage' "$tool" --help
expect 2 "unknown command 'bogus'" "$tool" bogus "$root"
expect 2 'wrong arguments' "$tool" verify
expect 2 'wrong arguments' "$tool" verify "$root" "$root"
expect 2 'wrong arguments' "$tool" ls --frobnicate "$root"
expect 2 'wrong arguments' "$tool" diff "$root"
expect 2 'needs ROOT and one of --safetensors FILE, --gpt2 DIR' "$tool" export "$root"
expect 2 'needs ROOT and one of' "$tool" export "$root" --safetensors "$work/x" --gpt2 "$work/y"
expect 2 "unexpected argument '--csv'" "$tool" export "$root" --csv "$work/x"

echo "== diff"
expect 0 ' 0 differ, 0 only in A, 0 only in B: identical$' "$tool" diff "$root" "$root"
# A second save at step 50: test_ckpt's values do not depend on the step, so the tensors
# are identical; the copy with one value of A changed differs by exactly that value.
save "$work/root50" --ckpt-step 50
expect 0 'identical$' "$tool" diff "$root" "$work/root50"
grep -q '(step 50)' "$work/out" || { echo "FAIL: diff does not name step 50"; exit 1; }
expect 1 '^A: max \|a-b\|' "$tool" diff "$root" "$flip"
grep -Fxq "$(cat "$work/flip.expect")" "$work/out" || { echo "FAIL: expected '$(cat "$work/flip.expect")'"; exit 1; }
grep -q ' 1 differ, 0 only in A, 0 only in B: different$' "$work/out" || { echo "FAIL: diff summary"; exit 1; }
# A tensor removed from the index and another replaced by one of another shape.
changed=$(copy changed)
"$py" - "$changed/index.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    del f["E"]
    del f["blocks/B"]
    b = f.create_dataset("blocks/B", data=np.arange(1, 7, dtype=np.float64))
    b.attrs.create("loom_dtype", "float64", dtype=h5py.string_dtype())
    b.attrs["loom_ndims"] = np.int32(1)
    b.attrs["shard_crc32"] = np.zeros(4, dtype=np.uint32)
PY
expect 1 '^only in A: E$' "$tool" diff "$root" "$changed"
grep -Fq 'blocks/B: float64 [5] in A, float64 [6] in B' "$work/out" || { echo "FAIL: shape change"; cat "$work/out"; exit 1; }
expect 1 '^only in B: E$' "$tool" diff "$changed" "$root"
expect 2 'no checkpoint at' "$tool" diff "$root" "$work/does-not-exist"
expect 2 'rank-00002\.h5.*missing' "$tool" diff "$root" "$gone"

echo "== export"
out=$work/model.safetensors
expect 0 '^exported 5 tensors' "$tool" export "$root" --safetensors "$out"
[ ! -e "$out.tmp" ] || { echo "FAIL: $out.tmp left behind"; exit 1; }
"$py" - "$ckpt" "$out" <<'PY'
import json, struct, sys, h5py, numpy as np
index = h5py.File(sys.argv[1] + "/index.h5", "r")
blob = open(sys.argv[2], "rb").read()
(n,) = struct.unpack("<Q", blob[:8])
assert n % 8 == 0, n
header = json.loads(blob[8:8 + n].decode("utf-8"))
data = blob[8 + n:]
meta = header.pop("__metadata__")
assert meta["step"] == "42" and meta["loom_version"] == "0.1.0", meta
types = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "U8": "u1", "BF16": "<u2", "F16": "<u2"}
loom = {"float32": "F32", "float64": "F64", "int32": "I32", "int64": "I64", "uint8": "U8",
        "bfloat16": "BF16", "float16": "F16"}
names = []
index.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
assert sorted(header) == sorted(names), (sorted(header), sorted(names))
spans = sorted(tuple(e["data_offsets"]) for e in header.values())
assert spans[0][0] == 0 and spans[-1][1] == len(data), (spans, len(data))
assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans  # packed, no gaps
for name in names:
    entry, ref = header[name], index[name]
    assert entry["dtype"] == loom[ref.attrs["loom_dtype"]], (name, entry)
    scalar = int(ref.attrs["loom_ndims"]) == 0
    assert entry["shape"] == ([] if scalar else list(ref.shape)), (name, entry)
    begin, end = entry["data_offsets"]
    got = np.frombuffer(data[begin:end], dtype=types[entry["dtype"]]).reshape(entry["shape"])
    want = ref[...].reshape(entry["shape"])
    assert got.dtype.itemsize == want.dtype.itemsize and np.array_equal(got, want.astype(got.dtype)), name
    assert np.count_nonzero(want) > 0 or name == "step", name  # a check that can fail
print("export: %d tensors equal to h5py's reading of index.h5" % len(names))
PY
expect 0 '^exported 5 tensors' "$tool" export "--safetensors=$work/step.safetensors" "$ckpt"
cmp "$out" "$work/step.safetensors" || { echo "FAIL: the two exports differ"; exit 1; }
# A damaged checkpoint is refused and leaves no file (nor a temporary one).
expect 1 "fails its checksum" "$tool" export "$flip" --safetensors "$work/bad.safetensors"
[ ! -e "$work/bad.safetensors" ] && [ ! -e "$work/bad.safetensors.tmp" ] || { echo "FAIL: file left"; exit 1; }
expect 1 'creating .*no-such-dir' "$tool" export "$root" --safetensors "$work/no-such-dir/x.safetensors"
# --gpt2 wants a GPT checkpoint (train_gpt's gpt.shape); this one is not, and nothing is written.
expect 1 "has no tensor 'gpt.shape'" "$tool" export "$root" --gpt2 "$work/hf"
[ ! -e "$work/hf/model.safetensors" ] || { echo "FAIL: --gpt2 wrote a file"; exit 1; }
echo "ckpt-tool: ok"
