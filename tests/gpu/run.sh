#!/usr/bin/env bash
# On the GPU machine, in one call: build loom with CUDA and NCCL, run the GPU tests at 1, 2
# and 4 GPUs (as many as the machine has), then the device benchmarks (loom vs raw NCCL vs
# torch.distributed). Logs go to $OUT (or /tmp/loom-gpu); a short summary is printed last.
#   bash tests/gpu/run.sh [tests|bench|all|ddp|ckpt|coll|snapshot|profile|gpt|gpt-torch|gpt-profile|pipeline]   (bench = ddp + ckpt + coll + snapshot + gpt bench)
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
out=${OUT:-/tmp/loom-gpu}
mkdir -p "$out"
# CUnit (and ISA-L) are not installed there: unpack the Debian packages carried along.
if [ -d .device-debs ]; then
  mkdir -p /opt/deps && for f in .device-debs/*.deb; do dpkg -x "$f" /opt/deps; done
  sed -i 's|^prefix=/usr|prefix=/opt/deps/usr|' /opt/deps/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
  export PKG_CONFIG_PATH=/opt/deps/usr/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

export PATH=/usr/local/cuda/bin:$PATH # nvcc for the kernels
if ! meson setup build-gpu -Dcuda=enabled -Dnccl=enabled -Dexamples=auto >"$out/setup.log" 2>&1; then
  tail -40 "$out/setup.log"; exit 1
fi
if ! ninja -C build-gpu >"$out/build.log" 2>&1; then
  grep -E "error|Error" -A3 "$out/build.log" | head -60; exit 1
fi
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
note "GPUs: $gpus ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)); $(date -u +%F)"
mpi=(mpirun --bind-to none --mca btl self,vader)
# A hang becomes an error with a message: loom's own timeout first, then a hard stop.
limit=(timeout 150)
gpu_env=(-x LOOM_DEVICE=cuda -x LOOM_TIMEOUT=30)
failures=0
check() { # name, command...
  local name=$1; shift
  if "$@" >"$out/$name.log" 2>&1; then note "PASS $name: $(tail -1 "$out/$name.log")"
  else failures=$((failures + 1)); note "FAIL $name (exit $?)"; tail -15 "$out/$name.log"; fi
}

if [ "$what" = tests ] || [ "$what" = all ]; then
  for np in 1 2 4; do
    [ "$np" -le "$gpus" ] || continue
    check "collectives-gpu-np$np" "${limit[@]}" "${mpi[@]}" -np $np "${gpu_env[@]}" build-gpu/tests/mpi/test_collectives
    check "sparse-gpu-np$np" "${limit[@]}" "${mpi[@]}" -np $np "${gpu_env[@]}" build-gpu/tests/mpi/test_sparse
    check "ddp-gpu-np$np" "${limit[@]}" "${mpi[@]}" -np $np "${gpu_env[@]}" build-gpu/tests/mpi/test_ddp
    check "progress-gpu-np$np" "${limit[@]}" "${mpi[@]}" -np $np "${gpu_env[@]}" build-gpu/tests/mpi/test_progress
  done
  # Ranks sharing a GPU (--share-gpus 1): device traffic on the staged path (pinned host
  # buffers over MPI), so every multi-rank device test also runs on a one-GPU machine. On
  # several GPUs --device-comm staged forces the same path.
  staged_env=("${gpu_env[@]}" -x LOOM_SHARE_GPUS=1 -x LOOM_DEVICE_COMM=staged)
  for np in 2 4; do
    for t in collectives sparse ddp progress; do
      check "$t-gpu-staged-np$np" "${limit[@]}" "${mpi[@]}" -np $np "${staged_env[@]}" build-gpu/tests/mpi/test_$t
    done
  done
  check "collectives-gpu-staged-np4-hier" "${limit[@]}" "${mpi[@]}" -np 4 "${staged_env[@]}" -x LOOM_RANKS_PER_NODE=2 build-gpu/tests/mpi/test_collectives
  check "timeout-gpu-staged-np2" "${limit[@]}" "${mpi[@]}" -np 2 "${staged_env[@]}" -x LOOM_TIMEOUT=3 build-gpu/tests/mpi/test_timeout
  if [ "$gpus" -ge 4 ]; then
    check "collectives-gpu-np4-hier" "${limit[@]}" "${mpi[@]}" -np 4 "${gpu_env[@]}" -x LOOM_RANKS_PER_NODE=2 build-gpu/tests/mpi/test_collectives
  fi
  if [ "$gpus" -ge 4 ]; then # device collectives on the compute stream itself (--nccl-stream compute)
    check "collectives-gpu-np4-compute-stream" "${limit[@]}" "${mpi[@]}" -np 4 "${gpu_env[@]}" -x LOOM_NCCL_STREAM=compute build-gpu/tests/mpi/test_collectives
    check "ddp-gpu-np4-compute-stream" "${limit[@]}" "${mpi[@]}" -np 4 "${gpu_env[@]}" -x LOOM_NCCL_STREAM=compute build-gpu/tests/mpi/test_ddp
  fi
  check "kernels-gpu" "${limit[@]}" build-gpu/tests/gpu/test_kernels
  # Fashion-MNIST on GPUs: the Debian data package is absent there, so the files travel in
  # .device-data (copied from /usr/share/datasets/fashion-mnist); >= 88% test accuracy.
  if [ -d .device-data ]; then
    for np in 1 4; do
      [ "$np" -le "$gpus" ] || continue
      check "mnist-gpu-np$np" bash -c "${limit[*]} ${mpi[*]} -np $np -x LOOM_DEVICE=cuda \
        build-gpu/examples/train_mnist --data-dir .device-data | tee $out/mnist-np$np.txt | tail -2 && \
        awk -F'test_accuracy=' '/^final/ { exit !(\$2 >= 0.88) }' $out/mnist-np$np.txt"
    done
  fi
  # Bit-exact restart on GPUs: device parameters and optimizer state saved (sync and async),
  # new processes resume on the same layout, final parameters byte-identical.
  if [ -d .device-data ] && [ "$gpus" -ge 2 ]; then
    check "mnist-resume-gpu-np2" "${limit[@]}" bash tests/examples/mnist_resume.sh build-gpu/examples/train_mnist 2 \
      --device cuda --data-dir .device-data
  fi
  # Snapshots of device tensors over several layouts: the GPU checksums the device image and
  # the host verifies it at restore, shares gathered and uploaded (ranks may share a GPU).
  check "snapshot-layouts-gpu" env LOOM_DEVICE=cuda LOOM_SHARE_GPUS=1 "${limit[@]}" bash tests/mpi/snapshot.sh build-gpu/tests/mpi/test_snapshot
  # Fault tolerance with device state: asynchronous snapshots (side-stream copies) and a lost
  # node rebuilt from parity, restored by upload; parameters byte-identical (4 GPUs).
  if [ -d .device-data ] && [ "$gpus" -ge 4 ]; then
    for c in async node; do
      check "fault-$c-gpu" env LOOM_DEVICE=cuda FASHION_MNIST_DIR="$PWD/.device-data" "${limit[@]}" \
        bash tests/fault/fault.sh $c build-gpu/examples/train_mnist build-gpu/checkpoint/tool/loom-run
    done
  fi
  [ "$gpus" -ge 2 ] && check "timeout-gpu-np2" "${limit[@]}" "${mpi[@]}" -np 2 "${gpu_env[@]}" -x LOOM_TIMEOUT=3 build-gpu/tests/mpi/test_timeout
fi

if [ "$what" = gpt ] || [ "$what" = tests ] || [ "$what" = all ]; then
  # GPT-2: the bfloat16 CUDA model against the double reference; training on the fortunes
  # (carried in .device-fortunes) on the GPU reaches the CPU's validation loss within 3%; the
  # export of a checkpoint loads in transformers with loom's validation loss.
  check "gpt-cuda" "${limit[@]}" build-gpu/tests/gpu/test_gpt_cuda
fi
if [ "$what" = gpt ] || [ "$what" = gpt-torch ] || [ "$what" = tests ] || [ "$what" = all ]; then
  # loom's float32 GPT against the machine's own PyTorch (weights, batch, loss, logits and
  # every gradient through HDF5), as the CI test does with Debian's.
  check "gpt-torch" "${limit[@]}" python3 tests/examples/test_gpt_torch.py build-gpu/tests/examples/gpt_dump
fi
if [ "$what" = gpt ] || [ "$what" = tests ] || [ "$what" = all ]; then
  if [ -d .device-fortunes ]; then
    gpt_small=(--data-dir .device-fortunes --steps 200 --eval-every 100 --progress-every 50)
    check "gpt-train-gpu" bash -c "${limit[*]} build-gpu/examples/train_gpt --device cuda ${gpt_small[*]} --sample 300 \
      | tee $out/gpt-train-gpu.txt | tail -3"
    check "gpt-train-cpu" bash -c "${limit[*]} build-gpu/examples/train_gpt --device cpu ${gpt_small[*]} \
      | tee $out/gpt-train-cpu.txt | tail -1"
    val_loss() { sed -n 's/^final .*val_loss=//p' "$1"; }
    check "gpt-gpu-vs-cpu-val-loss" awk -v g="$(val_loss $out/gpt-train-gpu.txt)" -v c="$(val_loss $out/gpt-train-cpu.txt)" \
      'BEGIN { r = g / c; print "validation loss GPU", g, "CPU", c, "ratio", r; exit !(r > 0.97 && r < 1.03) }'
    check "gpt-export-transformers" env FORTUNES_DIR=.device-fortunes PYTHON=python3 \
      bash tests/examples/gpt_export.sh build-gpu/examples/train_gpt build-gpu/checkpoint/tool/loom-ckpt
  fi
fi
if [ "$what" = gpt ] || [ "$what" = bench ] || [ "$what" = all ]; then
  bash bench/gpt_gpu_bench.sh build-gpu 40 python3 2>&1 | tee "$out/gpt-bench.txt"
fi

if [ "$what" = pipeline ] || [ "$what" = tests ] || [ "$what" = all ]; then
  # Activation offload in a pipeline of ranks sharing the GPU (staged path): small shapes for
  # correctness at pp 2, then the measurement at pp 4 (gradients compared bit for bit in both).
  pipe_env=("${gpu_env[@]}" -x LOOM_SHARE_GPUS=1 -x LOOM_DEVICE_COMM=staged -x LOOM_TIMEOUT=60)
  check "pipeline-offload-small-np2" "${limit[@]}" "${mpi[@]}" -np 2 "${pipe_env[@]}" \
    build-gpu/bench/loom-pipeline-offload-bench --rows 64 --width 256 --layers 2 --microbatches 4 --steps 1
  check "pipeline-offload-small-half-np2" "${limit[@]}" "${mpi[@]}" -np 2 "${pipe_env[@]}" \
    build-gpu/bench/loom-pipeline-offload-bench --rows 64 --width 256 --layers 2 --microbatches 4 --steps 1 --ratio 0.5 --slots 4
  for np in 2 4; do
    check "pipeline-offload-np$np" bash -c "${limit[*]} ${mpi[*]} -np $np ${pipe_env[*]} build-gpu/bench/loom-pipeline-offload-bench | tee $out/offload-np$np.txt"
    cat "$out/offload-np$np.txt"
  done

fi

if [ "$what" = gpt-profile ]; then
  # Where a GPT-2 124M step goes: Nsight Compute's duration of every kernel of steps 2 and 3
  # (step 1 plans the GEMMs), grouped by kernel, for flash and batched attention.
  python3 - /tmp/gpt-prof <<'PY'
import sys, os, numpy as np
os.makedirs(sys.argv[1], exist_ok=True)
for name, n in (("train", 1 << 22), ("val", 1 << 18)):
    h = np.zeros(256, dtype=np.int32); h[:3] = (20240520, 1, n)
    with open(f"{sys.argv[1]}/{name}.bin", "wb") as f:
        f.write(h.tobytes()); f.write(np.random.default_rng(1).integers(0, 50257, n, dtype=np.uint16).tobytes())
PY
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  for attention in flash batched; do
    timeout 280 $ncu --metrics gpu__time_duration.sum --csv --launch-skip 600 --launch-count 1200 \
      build-gpu/examples/train_gpt --device cuda --layers 12 --width 768 --heads 12 --vocab 50257 \
      --context 1024 --batch 16 --chunk 16 --steps 4 --eval-every 0 --eval-batches 1 --progress-every 0 \
      --attention $attention --train-shard /tmp/gpt-prof/train.bin --val-shard /tmp/gpt-prof/val.bin \
      >"$out/ncu-$attention.csv" 2>"$out/ncu-$attention.err"
    python3 - "$out/ncu-$attention.csv" "$attention" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; ki = head.index("Kernel Name"); vi = head.index("Metric Value"); ii = head.index("ID")
total = collections.defaultdict(float); calls = collections.Counter()
for r in rows[1:]:
    v = float(r[vi].replace(",", "")) / 1e6  # ns -> ms
    name = r[ki].split("(")[0][:70]
    total[name] += v; calls[name] += 1
s = sum(total.values())
print(f"{sys.argv[2]}: {len(rows) - 1} kernels, {s:.1f} ms of kernel time")
for name, v in sorted(total.items(), key=lambda x: -x[1])[:14]:
    print(f"  {v:8.2f} ms {100 * v / s:5.1f}%  {calls[name]:4d} x  {name}")
PY
  done
fi

ddp_bench=build-gpu/bench/loom-gpu-ddp-bench
if [ "$what" = bench ] || [ "$what" = all ] || [ "$what" = ddp ]; then
  # DDP on the wide MLP: loom (overlap / after) and PyTorch DDP, 1, 2 and 4 GPUs, same call.
  for np in 1 2 4; do
    [ "$np" -le "$gpus" ] || continue
    for dtype in bf16 fp32; do
      steps=30; [ $dtype = fp32 ] && steps=10
      timeout 200 "${mpi[@]}" -np $np -x LOOM_TIMEOUT=60 $ddp_bench --dtype $dtype --modes overlap,after \
        --steps $steps 2>&1 | tee -a "$out/ddp-bench.txt" | grep -v "^\[loom"
    done
    timeout 200 torchrun --standalone --nproc_per_node $np bench/peers/torch_ddp.py --steps 30 --dtype bf16 \
      2>"$out/torch-ddp-np$np.err" | tee -a "$out/ddp-bench.txt"
    timeout 200 torchrun --standalone --nproc_per_node $np bench/peers/torch_ddp.py --steps 10 --dtype fp32 \
      2>>"$out/torch-ddp-np$np.err" | tee -a "$out/ddp-bench.txt"
  done
fi
if [ "$what" = bench ] || [ "$what" = all ] || [ "$what" = ckpt ]; then
  # Checkpoints of the bf16 model with AdamW (1.6 GB of state) at 4 GPUs: none / sync / async
  # every 100 and every 10 steps; PyTorch DCP save / async_save; a plain write of the same bytes.
  np=$(( gpus >= 4 ? 4 : gpus ))
  ck=/tmp/loom-ckpt-bench
  for args in "--ckpt none" "--ckpt sync --ckpt-every 100" "--ckpt async --ckpt-every 100" \
              "--ckpt async --ckpt-every 100 --ckpt-busy-wait" "--ckpt async --ckpt-every 10" \
              "--ckpt sync --ckpt-every 10 --steps 50"; do
    rm -rf $ck
    timeout 300 "${mpi[@]}" -np $np -x LOOM_TIMEOUT=120 -x LOOM_JOB_ID=gpubench $ddp_bench --dtype bf16 \
      --modes overlap --steps 300 --ckpt-dir $ck $args 2>&1 | tee -a "$out/ckpt-bench.txt" | grep -v "^\[loom"
  done
  grep -h "skipped\|background" "$out/ckpt-bench.txt" | tail -3
  python3 bench/plain_write.py 1611005952 /tmp/loom-plain-write $np | tee -a "$out/ckpt-bench.txt"
  rm -rf $ck /tmp/torch-dcp-bench
  timeout 400 torchrun --standalone --nproc_per_node $np bench/peers/torch_dcp.py --steps 300 --every 100 \
    2>"$out/torch-dcp.err" | tee -a "$out/ckpt-bench.txt"
  tail -3 "$out/torch-dcp.err"
fi
if [ "$what" = bench ] || [ "$what" = all ] || [ "$what" = snapshot ]; then
  # In-memory snapshots of the bf16 model (1.6 GB of state replicated over 4 GPUs; each rank
  # keeps a quarter). The raw device-to-host copy rate first (the copy's peer). Then, at batch
  # 8192 and 16384, with the host running ahead of the GPU and with a host wait every step (a
  # loop that reads its loss): none, asynchronous every step; at 8192 also every 3 steps,
  # every step over 4 simulated nodes with erasure groups of 2 data + 1 parity, and
  # synchronous every step.
  np=$(( gpus >= 4 ? 4 : gpus ))
  timeout 120 "${mpi[@]}" -np $np build-gpu/bench/loom-host-copy-bench --mb 400 2>&1 | tee -a "$out/snapshot-bench.txt"
  while read -r batch args; do
    extra=(); [[ $args == *RPN1* ]] && extra=(-x LOOM_RANKS_PER_NODE=1) && args=${args/RPN1/}
    timeout 300 "${mpi[@]}" -np $np -x LOOM_TIMEOUT=120 -x LOOM_JOB_ID=gpusnap "${extra[@]}" $ddp_bench \
      --dtype bf16 --modes overlap --steps 200 --batch $batch $args </dev/null 2>&1 | tee -a "$out/snapshot-bench.txt" | grep -v "^[#[]"
    rm -f /dev/shm/loom-gpusnap-*
  done <<'RUNS'
8192
8192 --snapshot-every 1 --snapshot-async
8192 --snapshot-every 3 --snapshot-async
8192 --host-sync
8192 --host-sync --snapshot-every 1 --snapshot-async
8192 --snapshot-every 1 --snapshot-async RPN1
8192 --snapshot-every 1 --steps 30
16384 --steps 100
16384 --steps 100 --snapshot-every 1 --snapshot-async
16384 --steps 100 --host-sync
16384 --steps 100 --host-sync --snapshot-every 1 --snapshot-async
RUNS
fi
if [ "$what" = profile ]; then
  # Where the bf16 DDP step goes at 1 and 4 GPUs: Nsight Systems kernel summaries of rank 0
  # (GEMMs, NCCL, element-wise, optimizer), 20 steps after 5 of warm-up.
  nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  for np in 1 4; do
    [ "$np" -le "$gpus" ] || continue
    timeout 200 "${mpi[@]}" -np $np -x LOOM_TIMEOUT=60 bash -c "if [ \$OMPI_COMM_WORLD_RANK = 0 ]; then \
      exec $nsys profile -t cuda -o $out/ddp-np$np -f true $ddp_bench --dtype bf16 --modes overlap --steps 20; \
      else exec $ddp_bench --dtype bf16 --modes overlap --steps 20; fi" 2>&1 | grep "^loom"
    $nsys stats -q --report cuda_gpu_kern_sum --format csv $out/ddp-np$np.nsys-rep 2>/dev/null \
      | python3 -c "
import csv, sys
rows = [r for r in csv.reader(sys.stdin) if len(r) > 8 and r[0][:1].isdigit()]
groups = {}
for r in rows:
    name = r[-1]; total = float(r[1]) / 1e6
    key = 'nccl' if 'nccl' in name.lower() else 'gemm' if ('gemm' in name.lower() or 'sm90' in name or 'cutlass' in name.lower()) else 'adamw' if 'adamw' in name else 'other'
    groups[key] = groups.get(key, 0) + total
print('np=$np kernel ms over 25 steps: ' + ' '.join(f'{k}={v:.1f}' for k, v in sorted(groups.items())))
for r in rows[:6]: print('   ', round(float(r[1]) / 1e6, 1), 'ms', r[2], 'calls', r[-1][:90])
"
  done
fi
if [ "$what" = bench ] || [ "$what" = all ] || [ "$what" = coll ]; then
  for np in 2 4; do
    [ "$np" -le "$gpus" ] || continue
    "${limit[@]}" "${mpi[@]}" -np $np -x LOOM_TIMEOUT=60 build-gpu/bench/loom-nccl-bench --max-bytes 1G >"$out/nccl-bench-np$np.txt" 2>&1
    cat "$out/nccl-bench-np$np.txt"
    if python3 -c "import torch" 2>/dev/null; then
      timeout 300 torchrun --standalone --nproc_per_node $np bench/peers/torch_collectives.py $((1 << 30)) \
        >"$out/torch-np$np.txt" 2>"$out/torch-np$np.err"
      cat "$out/torch-np$np.txt"
    fi
  done
fi
note "failures: $failures"
exit $((failures > 0))
