"""torch.distributed (NCCL backend) collectives, the peer of loom-nccl-bench.

    torchrun --standalone --nproc_per_node N bench/peers/torch_collectives.py [max_bytes]

Same sizes, same convention (bytes per allreduce buffer; whole buffer for allgather and
reduce_scatter), same busbw factors; time per op = back-to-back ops then one
torch.cuda.synchronize, median of 7 rounds, slowest rank. Also host-timed latency of a single
all_reduce call (Python included) at small sizes."""
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def timed(fn, iters):
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main():
    max_bytes = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30
    dist.init_process_group("nccl")
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    buf = torch.zeros(max_bytes // 4, dtype=torch.float32, device="cuda")
    if rank == 0:
        print(f"# torch {torch.__version__} NCCL {torch.cuda.nccl.version()}: {size} ranks, "
              f"{torch.cuda.get_device_name()}")
    for kind in ("allreduce", "allgather", "reduce_scatter"):
        factor = 2 * (size - 1) / size if kind == "allreduce" else (size - 1) / size
        if rank == 0:
            print(f"\n# {kind}\n{'bytes':>12} {'iters':>6} | {'torch us':>10} {'busbw':>9}")
        nbytes = 8
        while nbytes <= max_bytes:
            whole = nbytes // 4
            count = whole if kind == "allreduce" else whole // size
            if count == 0:
                nbytes *= 4
                continue
            iters = 50 if nbytes <= 1 << 20 else 20 if nbytes <= 64 << 20 else 5
            part = buf[rank * count:(rank + 1) * count]
            full = buf[:count * (1 if kind == "allreduce" else size)]
            if kind == "allreduce":
                fn = lambda: dist.all_reduce(full)
            elif kind == "allgather":
                fn = lambda: dist.all_gather_into_tensor(full, part)
            else:
                fn = lambda: dist.reduce_scatter_tensor(part, full)
            timed(fn, 2)
            rounds = []
            for _ in range(7):
                dist.barrier()
                t = torch.tensor([timed(fn, iters)], device="cuda")
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                rounds.append(t.item())
            t = statistics.median(rounds)
            measured = count * 4 * (1 if kind == "allreduce" else size)
            if rank == 0:
                print(f"{measured:>12} {iters:>6} | {t * 1e6:>10.2f} {measured / t * factor / 1e9:>9.2f}")
            nbytes *= 4
    # Host-timed single calls (what a Python training loop pays per small all_reduce).
    if rank == 0:
        print("\n# host-timed single all_reduce (enqueue + synchronize), median of 200")
    for nbytes in (8, 1024, 65536):
        t_list = []
        for _ in range(200):
            torch.cuda.synchronize()
            start = time.perf_counter()
            dist.all_reduce(buf[: nbytes // 4])
            torch.cuda.synchronize()
            t_list.append(time.perf_counter() - start)
        if rank == 0:
            print(f"{nbytes:>12} B: {statistics.median(t_list) * 1e6:.2f} us")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
