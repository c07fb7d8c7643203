"""PyTorch peer of loom's GPT example (examples/gpt/train_gpt): the same model
(examples/gpt/gpt_torch.py), data, optimizer and schedule, timed per step.

    /usr/bin/python3 bench/peers/torch_gpt.py --threads 2 --steps 200            # CPU, fortunes
    python3 bench/peers/torch_gpt.py --device cuda --bf16 --compile --layers 12 --width 768 \
        --heads 12 --vocab 50257 --context 1024 --batch 16 --steps 30 --synthetic

Training as train_gpt: AdamW (betas 0.9/0.95, eps 1e-8, weight decay on the matrices only),
linear warm-up then cosine to lr/10, global-norm clipping at 1, batches of random windows of
the fortunes' training bytes; validation on the same tiles as train_gpt (gpt_data_tiles:
sequence g is the window at g T mod (tokens - T)). --synthetic trains on random tokens (for
the GPU shape, whose vocabulary is not bytes). Prints one line: median step time, tokens/s,
final validation loss, peak GPU memory.
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../examples/gpt"))
import gpt_torch  # noqa: E402


def lr_at(step, peak, warmup, total):
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return peak / 10
    progress = (step - warmup) / (total - warmup)
    return peak / 10 + 0.5 * (peak - peak / 10) * (1 + math.cos(math.pi * progress))


def main():
    p = argparse.ArgumentParser()
    for name, default in [("layers", 4), ("width", 128), ("heads", 4), ("vocab", 256), ("context", 128),
                          ("batch", 16), ("steps", 200), ("warmup-steps", 40), ("eval-batches", 8),
                          ("threads", 0), ("seed", 1)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="autocast matrix products to bfloat16")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--synthetic", action="store_true", help="random tokens instead of the fortunes")
    p.add_argument("--data-dir", default="/usr/share/games/fortunes")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    T, B = a.context, a.batch
    if a.synthetic:
        train = torch.randint(0, a.vocab, (1 << 22,), dtype=torch.long)
        val = torch.randint(0, a.vocab, (1 << 20,), dtype=torch.long)
    else:
        t, v = gpt_torch.fortunes(a.data_dir)
        train = torch.frombuffer(bytearray(t), dtype=torch.uint8).long()
        val = torch.frombuffer(bytearray(v), dtype=torch.uint8).long()
    model = gpt_torch.GPT(a.layers, a.width, a.heads, a.vocab, T).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.param_groups(a.weight_decay), lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **fused)
    step_fn = torch.compile(model) if a.compile else model
    offsets = torch.arange(T + 1)

    def batch(data, starts):
        w = data[starts.unsqueeze(1) + offsets]
        return w[:, :-1].to(device, non_blocking=True), w[:, 1:].to(device, non_blocking=True)

    def run(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
            return step_fn(x, y)[1]

    if a.steps <= a.warmup_steps:  # as train_gpt: a run shorter than its warm-up warms up a tenth
        a.warmup_steps = a.steps // 10
    gen = torch.Generator().manual_seed(a.seed)
    times, loss = [], None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(a.steps):
        x, y = batch(train, torch.randint(0, len(train) - T, (B,), generator=gen))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.lr, a.warmup_steps, a.steps)
        loss = run(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for b in range(a.eval_batches):
            x, y = batch(val, torch.tensor(gpt_torch.tile_starts(len(val), T, b * B, B)))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
                logits = model(x)[0]
            total += torch.nn.functional.cross_entropy(logits.float().reshape(B * T, -1), y.reshape(-1),
                                                       reduction="sum").item()
    val_loss = total / (a.eval_batches * B * T)
    skip = min(len(times) // 5, 10)  # warm-up (and compilation) steps left out of the median
    ms = 1e3 * statistics.median(times[skip:])
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    kind = ("compile" if a.compile else "eager") + (" bf16" if a.bf16 else " fp32")
    print(f"torch {torch.__version__} {kind} {device.type} threads {torch.get_num_threads()}: "
          f"L{a.layers} d{a.width} H{a.heads} V{a.vocab} T{T} B{B}: {ms:.1f} ms/step, "
          f"{B * T / ms * 1e3:.0f} tokens/s, final train loss {loss.item():.4f}, "
          f"val loss {val_loss:.4f} after {a.steps} steps, peak memory {mem:.2f} GiB")


if __name__ == "__main__":
    main()
