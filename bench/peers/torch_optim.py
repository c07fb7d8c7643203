"""PyTorch AdamW on one GPU, the peer of loom-optim-bench: the same tensors (float32 parameters
and gradients), lr 1e-4, weight decay 0.01, timed with CUDA events over --steps steps after
--warmup steps. Modes: fused (torch.optim.AdamW(fused=True), one kernel over many tensors)
and foreach (the multi-tensor path of torch._foreach ops).

    python3 bench/peers/torch_optim.py --shapes gpt2|wide [--steps 50 --warmup 10]

One line per mode, in loom-optim-bench's format:
    torch optim=adamw shapes=gpt2 tensors=148 elements=124439808 mode=fused step_ms=0.9 GB/s=3800"""
import argparse

import torch


def model_shapes(name):
    if name == "gpt2":
        d, vocab, context = 768, 50257, 1024
        sizes = [vocab * d, context * d]
        for _ in range(12):
            sizes += [d, d, d * 3 * d, 3 * d, d * d, d, d, d, d * 4 * d, 4 * d, 4 * d * d, d]
        return sizes + [d, d]
    if name == "wide":
        return [s for _ in range(8) for s in (4096 * 4096, 4096)]
    raise SystemExit(f"--shapes {name}: gpt2 or wide")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="gpt2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    a = p.parse_args()
    sizes = model_shapes(a.shapes)
    total = sum(sizes)
    for mode in ("fused", "foreach"):
        params = [torch.zeros(n, device="cuda", requires_grad=True) for n in sizes]
        for t in params:
            t.grad = torch.zeros_like(t)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **{mode: True})
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for s in range(a.warmup + a.steps):
            if s == a.warmup:
                start.record()
            opt.step()
        stop.record()
        stop.synchronize()
        step_ms = start.elapsed_time(stop) / a.steps
        gbs = 28.0 * total / (step_ms * 1e-3) / 1e9
        print(f"torch optim=adamw shapes={a.shapes} tensors={len(sizes)} elements={total} "
              f"mode={mode} step_ms={step_ms:.4f} GB/s={gbs:.0f}")
        del opt, params
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
