"""GPT-2 in PyTorch with loom's tensor names, the model loom's GPT example is checked and
benchmarked against (tests/examples/test_gpt_torch.py, bench/peers/torch_gpt.py).

The architecture of examples/gpt/gpt_layout.h: token and position embeddings, pre-LayerNorm
blocks (eps 1e-5), causal attention with biases, MLP 4d with tanh GELU, final LayerNorm, logits
tied to wte. state_dict() names are loom's with ".weight" on the embeddings ("wte.weight";
loom says "wte"); Linear weights are (out, in) as in loom. Works with Debian 12's torch 1.13
(attention written out) and uses scaled_dot_product_attention where torch has it.
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def loom_name(torch_name):
    """loom's name of a state_dict() entry: the embeddings lose ".weight"."""
    return torch_name[: -len(".weight")] if torch_name in ("wte.weight", "wpe.weight") else torch_name


def tile_starts(tokens, T, first, count):
    """Starts of validation sequences first .. first + count - 1 in data of `tokens` tokens, as
    train_gpt reads them (gpt_data_tiles: sequence g is the window at g T mod (tokens - T))."""
    return [g * T % (tokens - T) for g in range(first, first + count)]


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(width, 3 * width)
        self.attn.c_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(width, 4 * width)
        self.mlp.c_proj = nn.Linear(4 * width, width)

    def attention(self, x):
        B, T, d = x.shape
        q, k, v = self.attn.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = s.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        return self.attn.c_proj(y.transpose(1, 2).reshape(B, T, d))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, width, heads, vocab, context):
        super().__init__()
        self.shape = dict(layers=layers, width=width, heads=heads, vocab=vocab, context=context)
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, eps=1e-5)
        self.init_gpt2()

    def init_gpt2(self, seed=0):
        """GPT-2's initialisation: normal(0, 0.02), c_proj weights / sqrt(2 L), zero biases."""
        g = torch.Generator().manual_seed(seed)
        scale = 1.0 / math.sqrt(2 * len(self.h))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("ln") or ".ln_" in name:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    std = 0.02 * (scale if name.endswith("c_proj.weight") else 1.0)
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def forward(self, tokens, targets=None):
        """tokens (B, T) int64 -> logits (B, T, V), and the mean cross-entropy with targets."""
        T = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(T, device=tokens.device))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def load_loom(self, tensors):
        """tensors: {loom name: array} (params/<name> of a dump, or a checkpoint's tensors)."""
        state = {}
        for name in self.state_dict():
            value = np.array(tensors[loom_name(name)], dtype=np.float32)  # a writable copy
            state[name] = torch.from_numpy(value).reshape(self.state_dict()[name].shape)
        self.load_state_dict(state)

    def param_groups(self, weight_decay):
        """AdamW groups as loom's example: decay on matrices only (not biases, norms, embeddings)."""
        decay = [p for n, p in self.named_parameters() if p.dim() == 2 and not n.startswith("w")]
        rest = [p for n, p in self.named_parameters() if not (p.dim() == 2 and not n.startswith("w"))]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def fortunes(directory="/usr/share/games/fortunes"):
    """The byte-level split of examples/gpt/gpt_data.c: regular files (no .dat, no links) in
    name order, cut into fortunes at "%" lines, every tenth fortune (9, 19, ...) validation.
    Returns (train bytes, validation bytes)."""
    train, val = bytearray(), bytearray()
    index = 0
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(".") or name.endswith(".dat") or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            lines = f.read().splitlines(keepends=True)
        fortune = bytearray()
        for i, line in enumerate(lines):
            fortune += line
            if (line == b"%\n" or i == len(lines) - 1) and fortune:
                (val if index % 10 == 9 else train).extend(fortune)
                index += 1
                fortune = bytearray()
    return bytes(train), bytes(val)
