#!/usr/bin/python3
"""Converts a Hugging Face LongLLaMA / LLaMA checkpoint from pytorch_model.bin to safetensors.

    convert_longllama.py SRC_DIR [OUT_DIR] [--dtype keep|float32|bfloat16|float16] [--force]

SRC_DIR holds pytorch_model.bin, or shards listed in pytorch_model.bin.index.json (as
syzymon/long_llama_3b and long_llama_code_7b ship them), plus config.json and
tokenizer.model. OUT_DIR (default SRC_DIR) gets model.safetensors, or one
model-0000i-of-0000N.safetensors per input shard plus model.safetensors.index.json, in the
form recall's loader reads: tensor names unchanged, dtype kept (bf16 stays bf16 bit for
bit) unless --dtype says otherwise. config.json, tokenizer.model and the small tokenizer /
generation JSON files are copied. Shards are converted one at a time, so memory stays at
about one shard.

Tensors recall cannot use (integer buffers, for example) are left out with a note; float64
is narrowed to float32. Needs torch (any version that reads the checkpoint); safetensors
files are written by hand, so the safetensors package is not needed.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import torch

ST_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
CAST = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COPY = ["config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
        "generation_config.json", "tokenizer.json"]


def tensor_bytes(t):
    """Raw little-endian bytes of a contiguous CPU tensor (numpy has no bfloat16)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)  # same bits
    return t.numpy().tobytes()  # native order; main() refuses big-endian hosts


def write_safetensors(path, tensors):
    """tensors: list of (name, tensor). Header padded with spaces to 8 bytes, data in order."""
    header, off, blobs = {}, 0, []
    for name, t in tensors:
        b = tensor_bytes(t)
        header[name] = {"dtype": ST_NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)  # never leave a half-written file under the real name
    return off


def load_bin(path):
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch older than 1.13
        sd = torch.load(path, map_location="cpu")
    if not isinstance(sd, dict):
        raise SystemExit("convert: %s does not hold a state dict" % path)
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def prepare(sd, dtype, skipped):
    out = []
    for name in sorted(sd):
        t = sd[name]
        if not torch.is_tensor(t):
            skipped.append((name, type(t).__name__))
            continue
        if t.dtype == torch.float64:
            t = t.to(torch.float32)
        if t.dtype not in ST_NAME:
            skipped.append((name, str(t.dtype)))
            continue
        if dtype != "keep":
            t = t.to(CAST[dtype])
        out.append((name, t))
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("out", nargs="?")
    p.add_argument("--dtype", choices=["keep"] + list(CAST), default="keep")
    p.add_argument("--force", action="store_true", help="overwrite existing safetensors")
    a = p.parse_args(argv)
    if sys.byteorder != "little":
        raise SystemExit("convert: safetensors is little-endian; run this on a little-endian host")
    out = a.out or a.src
    os.makedirs(out, exist_ok=True)

    index = os.path.join(a.src, "pytorch_model.bin.index.json")
    single = os.path.join(a.src, "pytorch_model.bin")
    if os.path.exists(index):
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        shards = sorted(set(wm.values()))
    elif os.path.exists(single):
        shards = ["pytorch_model.bin"]
    else:
        raise SystemExit("convert: %s has no pytorch_model.bin or pytorch_model.bin.index.json"
                         % a.src)
    for f in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(out, f)) and not a.force:
            raise SystemExit("convert: %s already exists (use --force to overwrite)"
                             % os.path.join(out, f))

    n = len(shards)
    names = ["model.safetensors"] if n == 1 else \
        ["model-%05d-of-%05d.safetensors" % (i + 1, n) for i in range(n)]
    weight_map, total, skipped, count = {}, 0, [], 0
    for shard, dst in zip(shards, names):
        sd = load_bin(os.path.join(a.src, shard))
        tensors = prepare(sd, a.dtype, skipped)
        del sd
        total += write_safetensors(os.path.join(out, dst), tensors)
        for name, _ in tensors:
            if name in weight_map:
                raise SystemExit("convert: tensor %s appears in two shards" % name)
            weight_map[name] = dst
        count += len(tensors)
        print("convert: %s -> %s (%d tensors)" % (shard, dst, len(tensors)), file=sys.stderr)
        del tensors
    if n > 1:
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            f.write("\n")

    if os.path.abspath(out) != os.path.abspath(a.src):
        for f in COPY:
            if os.path.exists(os.path.join(a.src, f)):
                shutil.copyfile(os.path.join(a.src, f), os.path.join(out, f))
    for name, why in skipped:
        print("convert: left out %s (%s: not a float tensor recall uses)" % (name, why),
              file=sys.stderr)
    if not os.path.exists(os.path.join(out, "tokenizer.model")):
        print("convert: note: no tokenizer.model in %s; recall needs one for text" % a.src,
              file=sys.stderr)
    print("convert: %d tensors, %.1f MB in %d file(s) -> %s" % (count, total / 1e6, n, out))


if __name__ == "__main__":
    main(sys.argv[1:])
