"""PyTorch DistributedDataParallel on the wide MLP, the peer of loom-gpu-ddp-bench.

    torchrun --standalone --nproc_per_node N bench/peers/torch_ddp.py [--dtype bf16|fp32|both]
        [--layers 8 --width 4096 --batch 8192 --steps 20 --warmup 5] [--hook none|bf16]

The model of bench/wide_mlp.h: L x (Linear(W, W) + ReLU), B synthetic rows per GPU (uniform
[-1, 1), a different seed per rank), loss = sum(y^2) / (2 B); fused AdamW (lr 1e-4, weight
decay 0.01). bf16 = float32 parameters under torch.autocast(bfloat16) (standard AMP: float32
master weights, float32 gradients); fp32 = float32 throughout, TF32 off. DDP with its default
gradient reduction (25 MB buckets, overlapped with backward); --hook bf16 adds DDP's
bf16_compress_hook (bfloat16 all-reduce, as loom reduces bfloat16 gradients). Step time = mean
over --steps steps after --warmup steps, slowest rank. One line per dtype, e.g.

    torch gpus=4 dtype=bf16 mode=ddp step_ms=12.345"""
import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

SEED = 1234  # loom's bench seed: the same weights on every rank, the input seeded per rank


def add_model_args(p):
    p.add_argument("--layers", type=int, default=8, help="Linear + ReLU layers")
    p.add_argument("--width", type=int, default=4096, help="features per layer")
    p.add_argument("--batch", type=int, default=8192, help="rows per GPU")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each timed run")


def init():
    """One GPU per process from torchrun's LOCAL_RANK, NCCL process group."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl")
    return dist.get_rank(), dist.get_world_size(), local_rank


def build(args, dtype, rank, local_rank, hook="none"):
    """The wide MLP wrapped in DDP, its fused AdamW, and a function running one training step."""
    bf16 = dtype == "bf16"
    if not bf16:  # true float32 GEMMs, as loom's fp32 mode (CUBLAS_COMPUTE_32F, no TF32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # nn.Linear's default init is uniform +-1/sqrt(fan_in) for weight and bias, as loom's.
    torch.manual_seed(SEED)
    blocks = []
    for _ in range(args.layers):
        blocks += [nn.Linear(args.width, args.width, device="cuda"), nn.ReLU()]
    model = nn.Sequential(*blocks)
    ddp = DDP(model, device_ids=[local_rank], bucket_cap_mb=25)
    if hook == "bf16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(SEED * 7919 + rank + 1)
    x = torch.rand(args.batch, args.width, device="cuda", generator=gen) * 2 - 1
    if bf16:
        x = x.to(torch.bfloat16)  # loom keeps its input in the compute dtype

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = ddp(x)
            loss = out.float().pow(2).sum() / (2 * args.batch)
        loss.backward()
        opt.step()

    return ddp, opt, step


def start_clock(local_rank):
    """All GPU work done and all ranks here, then the host clock."""
    torch.cuda.synchronize()
    dist.barrier(device_ids=[local_rank])
    return time.perf_counter()


def slowest(seconds):
    """The largest value over ranks (a host float)."""
    t = torch.tensor([seconds], dtype=torch.float64, device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def header(args, size, what):
    params = args.layers * (args.width * args.width + args.width)
    print(f"# torch {torch.__version__} cuda {torch.version.cuda} nccl {torch.cuda.nccl.version()} "
          f"{torch.cuda.get_device_name()}: {what}, {args.layers} x Linear({args.width}) + ReLU, "
          f"batch {args.batch} per GPU, {params} parameters, {size} GPUs", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per dtype")
    p.add_argument("--dtype", choices=["bf16", "fp32", "both"], default="both")
    p.add_argument("--hook", choices=["none", "bf16"], default="none",
                   help="DDP comm hook (none: the default float32 all-reduce of AMP gradients)")
    args = p.parse_args()
    rank, size, local_rank = init()
    if rank == 0:
        header(args, size, "DDP bucket_cap_mb=25")
    mode = "ddp" if args.hook == "none" else "ddp-bf16hook"
    for dtype in (["bf16", "fp32"] if args.dtype == "both" else [args.dtype]):
        ddp, opt, step = build(args, dtype, rank, local_rank, args.hook)
        for _ in range(args.warmup):
            step()
        start = start_clock(local_rank)
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()  # the clock stops when the last step's kernels have finished
        elapsed = slowest(time.perf_counter() - start)
        if rank == 0:
            print(f"torch gpus={size} dtype={dtype} mode={mode} step_ms={1e3 * elapsed / args.steps:.3f}",
                  flush=True)
        del ddp, opt, step
        torch.cuda.empty_cache()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
