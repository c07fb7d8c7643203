"""loom's float32 CPU GPT-2 against PyTorch, a model no one here wrote the arithmetic of.

    /usr/bin/python3 tests/examples/test_gpt_torch.py build/tests/examples/gpt_dump

For a few shapes, gpt_dump (tests/examples/gpt_dump.c) writes random weights (from a fresh seed,
printed; LOOM_SEED=<n> replays it), a batch, loom's loss, logits and every gradient to HDF5;
this script loads the weights through h5py into examples/gpt/gpt_torch.py's GPT, runs the same
batch in float32 and compares. Tolerance 1e-5 relative for the loss, and for the logits and each
gradient tensor max |loom - torch| / max |torch|: both sides round in float32 (6e-8 per
operation) along different summation orders, which leaves differences near 1e-6, while a wrong
formula is off by 1e-2 or more.
"""
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../examples/gpt"))
import gpt_torch  # noqa: E402

TOLERANCE = 1e-5
failures = 0
checks = 0


def expect(ok, what, value):
    global failures, checks
    checks += 1
    if not ok:
        failures += 1
        print(f"FAIL {what}: {value:.3e} (limit {TOLERANCE:.0e})")


def relative(a, b):
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / (scale if scale > 0 else 1.0)


def check(dump, seed, layers, width, heads, vocab, B, T):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dump.h5")
        args = [dump, path, str(seed), str(layers), str(width), str(heads), str(vocab), str(B), str(T)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        with h5py.File(path, "r") as f:
            params = {n: f["params"][n][()] for n in f["params"]}
            grads = {n: f["grads"][n][()] for n in f["grads"]}
            tokens, targets = f["tokens"][()], f["targets"][()]
            logits_loom, loss_loom = f["logits"][()], float(f.attrs["loss"])
    model = gpt_torch.GPT(layers, width, heads, vocab, T)
    model.load_loom(params)
    logits, loss = model(torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(targets, dtype=torch.long))
    loss.backward()
    name = f"L{layers} d{width} H{heads} V{vocab} B{B} T{T}"
    rel = abs(loss.item() - loss_loom) / abs(loss.item())
    expect(rel <= TOLERANCE, f"{name} loss loom {loss_loom:.9f} torch {loss.item():.9f}", rel)
    err = relative(logits_loom, logits.detach().reshape(B * T, vocab).numpy())
    expect(err <= TOLERANCE, f"{name} logits", err)
    worst, worst_name = 0.0, ""
    torch_grads = {n: p.grad for n, p in model.named_parameters()}
    for torch_name, g in torch_grads.items():
        loom_name = gpt_torch.loom_name(torch_name)
        e = relative(grads[loom_name].reshape(g.shape), g.numpy())
        expect(e <= TOLERANCE, f"{name} gradient {loom_name}", e)
        if e >= worst:
            worst, worst_name = e, loom_name
    print(f"{name}: loss {loss_loom:.9f} (torch {loss.item():.9f}, {rel:.1e} relative), logits {err:.1e}, "
          f"worst gradient {worst_name} {worst:.1e}")


def main():
    dump = sys.argv[1]
    seed = int(os.environ.get("LOOM_SEED", time.time_ns() % (1 << 31)))
    print(f"test_gpt_torch: seed {seed} (LOOM_SEED={seed} replays it), torch {torch.__version__}")
    torch.set_num_threads(1)
    check(dump, seed, 2, 32, 4, 61, 4, 16)
    check(dump, seed + 1, 1, 48, 3, 256, 3, 21)
    check(dump, seed + 2, 3, 16, 1, 7, 2, 8)
    print(f"test_gpt_torch: {checks} checks, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
