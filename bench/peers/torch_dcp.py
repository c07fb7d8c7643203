"""torch.distributed.checkpoint (DCP) during DDP training, the peer of loom-gpu-ddp-bench --ckpt.

    torchrun --standalone --nproc_per_node N bench/peers/torch_dcp.py [--dtype bf16|fp32]
        [--steps 300 --every 100 --warmup 5] [--modes none,save,async_save] [--dir /tmp/torch-dcp-bench]
        [--no-fsync] [--cache-staged] [--keep 2] [--layers 8 --width 4096 --batch 8192]

The training step of torch_ddp.py (same model, DDP, fused AdamW). Modes, run in sequence in one
process: none (no checkpoint), save (dcp.save every --every steps, blocking), async_save
(dcp.async_save: the state is staged to CPU memory in the call, written by a background thread;
the previous save's future is waited for before the next one starts, and the last one after the
timed steps, reported as final_wait_ms). State = get_state_dict(model, optimizer): the float32
parameters and AdamW's state, replicated over ranks (DCP writes each tensor once, spread over
ranks). Files are written by FileSystemWriter with its default sync_files=True (fsync of every
file, as loom's checkpoints); --no-fsync turns it off. --cache-staged keeps DCP's pinned staging
copy between async saves (FileSystemWriter(cache_staged_state_dict=True)). DCP's coordination
runs on a gloo group (async_save needs a CPU backend; used by both modes). Rank 0 deletes all
but the last --keep complete checkpoints (loom's bench: keep_last=2) and all of them at the end.
One line per mode, e.g.

    torch gpus=4 dtype=bf16 ckpt=save every=100 steps=300 step_ms=16.2 overhead_pct=78.0
        stall_ms_per_save=1190.0 saves=3 host_ms_per_save=1185.3 ckpt_bytes=1610612736 fsync=1

overhead_pct and stall_ms_per_save = (total - none_step_ms * steps) / saves are against the none
mode of the same run; host_ms_per_save is rank 0's time in checkpoint code per save."""
import argparse
import os
import shutil
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from torch_ddp import add_model_args, build, header, init, slowest, start_clock


def state_dict(ddp, opt):
    try:
        from torch.distributed.checkpoint.state_dict import get_state_dict
        model_sd, optim_sd = get_state_dict(ddp, opt)
    except ImportError:  # older torch: the plain dicts
        model_sd, optim_sd = ddp.module.state_dict(), opt.state_dict()
    return {"model": model_sd, "optim": optim_sd}


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--steps", type=int, default=300, help="timed steps per mode")
    p.add_argument("--every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--modes", default="none,save,async_save", help="none is always run first")
    p.add_argument("--dir", default="/tmp/torch-dcp-bench", help="checkpoint root")
    p.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                   help="FileSystemWriter(sync_files=...), DCP's default on")
    p.add_argument("--cache-staged", action="store_true", help="async: reuse a pinned staging copy")
    p.add_argument("--keep", type=int, default=2, help="complete checkpoints kept while running")
    args = p.parse_args()
    modes = ["none"] + [m for m in args.modes.split(",") if m and m != "none"]
    for m in modes:
        if m not in ("none", "save", "async_save"):
            raise SystemExit(f"torch_dcp.py: unknown mode {m!r} (none, save, async_save)")
    rank, size, local_rank = init()
    ckpt_pg = dist.new_group(backend="gloo")  # DCP's planning collectives, off the NCCL stream
    if rank == 0:
        header(args, size, f"DCP, {args.dtype}, DDP bucket_cap_mb=25")
    ddp, opt, step = build(args, args.dtype, rank, local_rank)
    keep = max(1, args.keep)

    def complete(done, path):  # a save is complete on every rank: keep the last `keep`
        done.append(path)
        while len(done) > keep:
            old = done.pop(0)
            if rank == 0:
                shutil.rmtree(old, ignore_errors=True)

    none_step = None
    for mode in modes:
        # One writer per mode, pointed at each save's directory by checkpoint_id (it is the
        # async stager too, so --cache-staged reuses its pinned copy across saves).
        writer = None if mode == "none" else dcp.FileSystemWriter(
            os.path.join(args.dir, f"{mode}-step-{args.every}"), sync_files=args.fsync,
            cache_staged_state_dict=args.cache_staged)
        done, future, pending, host, saves = [], None, None, 0.0, 0
        for _ in range(args.warmup):
            step()
        start = start_clock(local_rank)
        for s in range(1, args.steps + 1):
            step()
            if mode == "none" or s % args.every:
                continue
            t0 = time.perf_counter()
            if future is not None:  # one async save in flight at a time
                future.result()
                complete(done, pending)
            path = os.path.join(args.dir, f"{mode}-step-{s}")
            sd = state_dict(ddp, opt)
            if mode == "save":
                dcp.save(sd, checkpoint_id=path, storage_writer=writer, process_group=ckpt_pg)
                complete(done, path)
            else:
                ret = dcp.async_save(sd, checkpoint_id=path, storage_writer=writer,
                                     process_group=ckpt_pg)
                if hasattr(ret, "staging_completion"):  # newer API: staging may itself be async
                    ret.staging_completion.result()  # before the optimizer changes the state
                future, pending = getattr(ret, "upload_completion", ret), path
            host += time.perf_counter() - t0
            saves += 1
        torch.cuda.synchronize()  # the clock stops when the last step's kernels have finished
        elapsed = slowest(time.perf_counter() - start)
        t0 = time.perf_counter()
        if future is not None:  # the last async save, outside the timed steps
            future.result()
            complete(done, pending)
        final_wait = slowest(time.perf_counter() - t0)
        dist.barrier(group=ckpt_pg)  # every rank is past its last save
        step_ms = 1e3 * elapsed / args.steps
        if mode == "none":
            none_step = step_ms
        if rank == 0:
            line = f"torch gpus={size} dtype={args.dtype} ckpt={mode} every={args.every} " \
                   f"steps={args.steps} step_ms={step_ms:.3f}"
            if mode != "none":
                stall = (1e3 * elapsed - none_step * args.steps) / max(saves, 1)
                line += f" overhead_pct={100 * (step_ms / none_step - 1):.1f} " \
                        f"stall_ms_per_save={stall:.1f} saves={saves} " \
                        f"host_ms_per_save={1e3 * host / max(saves, 1):.1f}"
                if mode == "async_save":
                    line += f" final_wait_ms={1e3 * final_wait:.1f}"
                line += f" ckpt_bytes={du(done[-1]) if done else 0} fsync={int(args.fsync)}"
                if args.cache_staged and mode == "async_save":
                    line += " cache_staged=1"
            print(line, flush=True)
            for old in done:
                shutil.rmtree(old, ignore_errors=True)
        del writer
    if rank == 0:
        try:
            os.rmdir(args.dir)  # only if this run left it empty
        except OSError:
            pass
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
