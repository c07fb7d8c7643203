"""Checks a `loom-ckpt export --gpt2 DIR` directory: its model gives loom's validation loss.

    /usr/bin/python3 tests/examples/check_gpt2_export.py DIR VAL_LOSS BATCHES BATCH [FORTUNES_DIR]

Reads DIR/model.safetensors (parsed here: 8-byte header length, JSON header, packed data) and
DIR/config.json, rebuilds examples/gpt/gpt_torch.py's GPT from it (GPT-2's Conv1D weights
transposed back) and computes the mean cross-entropy over the validation tiles train_gpt
evaluates (gpt_data_tiles: sequence g is the window at g T mod (tokens - T) of the fortunes'
validation bytes, BATCHES x BATCH sequences). Where transformers is installed (the GPU
machine), GPT2LMHeadModel.from_pretrained(DIR) is checked the same way, with no missing or
unexpected weights. Both within 1e-5 relative of loom's VAL_LOSS (float32 everywhere).
"""
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../examples/gpt"))
import gpt_torch  # noqa: E402

TOLERANCE = 1e-5
DTYPES = {"F32": np.float32, "F64": np.float64, "BF16": np.uint16, "I32": np.int32}
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def read_safetensors(path):
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(length))
        data = f.read()
    header.pop("__metadata__", None)
    return {name: np.frombuffer(data[e["data_offsets"][0]:e["data_offsets"][1]],
                                dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
            for name, e in header.items()}


def mean_loss(logits_of, val, T, sequences):
    total = 0.0
    with torch.no_grad():
        for start in gpt_torch.tile_starts(len(val), T, 0, sequences):
            window = torch.tensor(list(val[start:start + T + 1]), dtype=torch.long)
            logits = logits_of(window[:-1].unsqueeze(0))
            total += F.cross_entropy(logits.reshape(T, -1).float(), window[1:], reduction="sum").item()
    return total / (sequences * T)


def main():
    directory, loom_loss, batches, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    fortunes = sys.argv[5] if len(sys.argv) > 5 else "/usr/share/games/fortunes"
    config = json.load(open(os.path.join(directory, "config.json")))
    tensors = read_safetensors(os.path.join(directory, "model.safetensors"))
    loom_names = {}
    for name, value in tensors.items():
        short = name[len("transformer."):]
        short = gpt_torch.loom_name(short)
        loom_names[short] = value.T if short.endswith(CONV1D) else value
    T = config["n_positions"]
    model = gpt_torch.GPT(config["n_layer"], config["n_embd"], config["n_head"], config["vocab_size"], T)
    model.load_loom(loom_names)
    _, val = gpt_torch.fortunes(fortunes)
    failures = 0
    torch_loss = mean_loss(lambda x: model(x)[0], val, T, batches * batch)
    rel = abs(torch_loss - loom_loss) / abs(loom_loss)
    ok = rel <= TOLERANCE
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} export in gpt_torch: validation loss {torch_loss:.9f}, loom {loom_loss:.9f} ({rel:.1e} relative)")
    try:
        import transformers
    except ImportError:
        print("transformers not installed: GPT2LMHeadModel check skipped (runs on the GPU machine)")
        return 1 if failures else 0
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(directory, output_loading_info=True,
                                                             torch_dtype=torch.float32)
    hf.eval()
    missing = [k for k in info["missing_keys"] if not k.endswith(("attn.bias", "attn.masked_bias"))]
    unexpected = info["unexpected_keys"]
    hf_loss = mean_loss(lambda x: hf(x).logits, val, T, batches * batch)
    rel = abs(hf_loss - loom_loss) / abs(loom_loss)
    ok = rel <= TOLERANCE and not missing and not unexpected
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} transformers {transformers.__version__} GPT2LMHeadModel: validation loss "
          f"{hf_loss:.9f}, loom {loom_loss:.9f} ({rel:.1e} relative); missing {missing}, unexpected {unexpected}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
