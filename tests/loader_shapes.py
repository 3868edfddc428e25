#!/usr/bin/python3
"""Checkpoints for test_loader: broken ones, odd-but-valid ones, and real-shape ones.

    loader_shapes.py variants SRC OUT     # SRC: a tiny fp32 checkpoint (tiny-llama)
    loader_shapes.py real OUT KIND TOKENIZER   # KIND: longllama-3b | code-7b | llama2-7b
    loader_shapes.py torchbin SRC OUT SHARDS   # SRC as pytorch_model.bin, for the converter

`variants` writes one directory per case under OUT (names are what test_loader expects);
each is SRC with one thing changed. `real` writes a 2-layer bf16 checkpoint with the exact
widths of a released model, via tools/make_test_model.py.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MAKER = os.path.join(HERE, "..", "tools", "make_test_model.py")


def read_st(path):
    """-> (header dict without __metadata__, data bytes), entries in file order."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    hdr.pop("__metadata__", None)
    return hdr, raw[8 + n:]


def tensors(path):
    """-> list of [name, dtype, shape, bytes] in data order."""
    hdr, data = read_st(path)
    items = sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return [[k, v["dtype"], list(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]]]
            for k, v in items]


def write_st(path, ts, header_edit=None, raw_header=None):
    """Writes tensors back to back; header_edit(hdr) may corrupt the header afterwards."""
    hdr, off, blobs = {}, 0, []
    for name, dtype, shape, b in ts:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    if header_edit:
        header_edit(hdr)
    h = raw_header if raw_header is not None else json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def clone(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_config(d, **kw):
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    with open(p, "w") as f:
        json.dump(c, f)


def variants(src, out):
    st = os.path.join(src, "model.safetensors")
    base = tensors(st)
    os.makedirs(out, exist_ok=True)

    def case(name, ts=None, **kw):
        d = clone(src, os.path.join(out, name))
        if ts is not None:
            write_st(os.path.join(d, "model.safetensors"), ts, **kw)
        return d

    def without(name):
        return [t for t in base if t[0] != name]

    def changed(name, **kw):
        res = []
        for t in base:
            t = list(t)
            if t[0] == name:
                if "dtype" in kw:
                    t[1] = kw["dtype"]
                if "shape" in kw:
                    t[2] = kw["shape"]
                if "nbytes" in kw:
                    t[3] = (t[3] * (kw["nbytes"] // len(t[3]) + 1))[:kw["nbytes"]]
            res.append(t)
        return res

    case("missing_tensor", without("model.layers.1.mlp.up_proj.weight"))
    case("misshaped", changed("model.layers.0.self_attn.k_proj.weight", shape=[32, 128]))
    case("rank3", changed("model.norm.weight", shape=[1, 1, 64]))
    case("dtype_i8", changed("model.norm.weight", dtype="I8", nbytes=64))
    case("dtype_f64", changed("model.norm.weight", dtype="F64", nbytes=64 * 8))

    def shift(name, by):
        def f(h):
            h[name]["data_offsets"] = [x + by for x in h[name]["data_offsets"]]
        return f

    case("offsets_out_of_range", base, header_edit=shift("lm_head.weight", 4096))
    case("size_mismatch", base,
         header_edit=lambda h: h["model.norm.weight"].__setitem__("shape", [65]))

    def overlap(h):
        h["model.layers.0.input_layernorm.weight"]["data_offsets"] = \
            list(h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"])
    case("overlap", base, header_edit=overlap)
    case("bad_json", base, raw_header=b"{\"model.norm.weight\": {\"dtype\": ")
    dup = json.dumps({t[0]: {"dtype": t[1], "shape": t[2], "data_offsets": [0, len(t[3])]}
                      for t in base[:1]})
    case("duplicate_name", base, raw_header=(dup[:-1] + ", " + dup[1:]).encode())

    d = case("truncated")
    p = os.path.join(d, "model.safetensors")
    with open(p, "rb") as f:
        raw = f.read()
    with open(p, "wb") as f:
        f.write(raw[: len(raw) // 2])
    d = case("truncated_header")
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(raw[:6])
    d = case("header_len_too_big")
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(raw) + 100) + raw[8:])

    edit_config(case("config_more_layers"), num_hidden_layers=3)
    edit_config(case("config_fewer_layers"), num_hidden_layers=1)
    edit_config(case("config_ffn"), intermediate_size=128)
    edit_config(case("config_kv_heads"), num_key_value_heads=2)
    edit_config(case("config_vocab"), vocab_size=1024)
    edit_config(case("config_vocab_small"), vocab_size=256)
    edit_config(case("config_mem_positionals"), model_type="longllama", mem_positionals=False)
    edit_config(case("config_mem_layer_range"), model_type="longllama", mem_layers=[0, 2])
    os.remove(os.path.join(case("no_config"), "config.json"))
    os.remove(os.path.join(case("no_tokenizer"), "tokenizer.model"))
    d = case("bad_tokenizer")
    shutil.copyfile(os.path.join(d, "config.json"), os.path.join(d, "tokenizer.model"))
    d = case("no_weights")
    os.rename(os.path.join(d, "model.safetensors"), os.path.join(d, "pytorch_model.bin"))
    case("no_lm_head", without("lm_head.weight"))
    edit_config(case("tied", without("lm_head.weight")), tie_word_embeddings=True)
    case("no_prefix", [[t[0][len("model."):] if t[0].startswith("model.") else t[0]] + t[1:]
                       for t in base])
    # A 2-byte tensor first: every F32 tensor after it is misaligned and must be copied.
    case("unaligned", [["extra.scale", "F16", [1], b"\x00\x3c"]] + base)

    # Tokenizer with more pieces (512) than the config's vocabulary (400).
    tok = os.path.join(src, "tokenizer.model")
    subprocess.run([sys.executable, MAKER, "--out", os.path.join(out, "tokenizer_too_big"),
                    "--kind", "llama", "--layers", "1", "--hidden", "64", "--heads", "4",
                    "--ffn", "176", "--vocab", "400", "--max-pos", "64", "--tokenizer", tok],
                   check=True, stdout=subprocess.DEVNULL)

    # Maker options: GQA, tied head, f16 in 3 shards vs the same seed in f32; no tokenizer.
    common = ["--kind", "longllama", "--layers", "3", "--hidden", "64", "--heads", "4",
              "--kv-heads", "2", "--ffn", "96", "--vocab", "512", "--max-pos", "64",
              "--mem-layers", "0,2", "--seed", "5", "--tie", "--gain", "0.5", "--qk-gain", "2",
              "--rope-theta", "500000", "--tokenizer", tok]
    for name, extra in (("maker_f16", ["--dtype", "float16", "--shards", "3"]),
                        ("maker_f32", ["--dtype", "float32"])):
        subprocess.run([sys.executable, MAKER, "--out", os.path.join(out, name)] + common + extra,
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, MAKER, "--out", os.path.join(out, "maker_no_tok"),
                    "--kind", "llama", "--layers", "1", "--no-tokenizer"],
                   check=True, stdout=subprocess.DEVNULL)

    # Shards: a good one, one whose index names a missing file, one mapping a tensor wrongly.
    names = [t[0] for t in base]
    half = len(base) // 2
    d = case("sharded")
    os.remove(os.path.join(d, "model.safetensors"))
    write_st(os.path.join(d, "model-00001-of-00002.safetensors"), base[:half])
    write_st(os.path.join(d, "model-00002-of-00002.safetensors"), base[half:])
    wm = {n: "model-0000%d-of-00002.safetensors" % (1 if i < half else 2)
          for i, n in enumerate(names)}

    def index(dd, weight_map):
        with open(os.path.join(dd, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    index(d, wm)
    for name, edit in (("sharded_missing_file", ("model.norm.weight", "model-00003-of-00003.safetensors")),
                       ("sharded_wrong_map", ("model.norm.weight", "model-00001-of-00002.safetensors")),
                       ("sharded_bad_name", ("model.norm.weight", "../tiny-llama/model.safetensors"))):
        dd = clone(d, os.path.join(out, name))
        index(dd, dict(wm, **{edit[0]: edit[1]}))


REAL = {
    # name: make_test_model flags (2 layers, bf16; vocab/width exactly as released)
    "longllama-3b": ["--kind", "longllama", "--hidden", "3200", "--heads", "32", "--ffn", "8640",
                     "--vocab", "32000", "--max-pos", "2048", "--mem-layers", "1",
                     "--last-context", "1024", "--mem-dtype", "bfloat16"],
    "code-7b": ["--kind", "longllama", "--hidden", "4096", "--heads", "32", "--ffn", "11008",
                "--vocab", "32016", "--max-pos", "4096", "--mem-layers", "1",
                "--last-context", "3072", "--rope-theta", "1000000", "--mem-dtype", "bfloat16"],
    "llama2-7b": ["--kind", "llama", "--hidden", "4096", "--heads", "32", "--ffn", "11008",
                  "--vocab", "32000", "--max-pos", "4096"],
}


def real(out, kind, tok):
    subprocess.run([sys.executable, MAKER, "--out", out, "--layers", "2", "--dtype", "bfloat16",
                    "--seed", "7", "--tokenizer", tok] + REAL[kind], check=True)


def torchbin(src, out, shards):
    """SRC's safetensors as pytorch_model.bin (or `shards` bins plus the index), with an
    fp32 rotary buffer (kept) and an int64 one (left out by the converter), as old HF
    checkpoints have. For testing tools/convert_longllama.py."""
    import numpy as np
    import torch

    os.makedirs(out, exist_ok=True)
    for f in ("config.json", "tokenizer.model"):
        shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
    np_type = {"F32": np.float32, "F16": np.float16, "BF16": np.int16}
    sd = {}
    for name, dtype, shape, b in tensors(os.path.join(src, "model.safetensors")):
        t = torch.from_numpy(np.frombuffer(b, dtype=np_type[dtype]).copy()).reshape(shape)
        sd[name] = t.view(torch.bfloat16) if dtype == "BF16" else t
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8, dtype=torch.float32)
    sd["model.step_counter"] = torch.zeros(1, dtype=torch.int64)
    names = sorted(sd)
    if shards <= 1:
        torch.save(sd, os.path.join(out, "pytorch_model.bin"))
        return
    wm = {}
    for i in range(shards):
        part = names[i::shards]
        fname = "pytorch_model-%05d-of-%05d.bin" % (i + 1, shards)
        torch.save({n: sd[n] for n in part}, os.path.join(out, fname))
        wm.update({n: fname for n in part})
    with open(os.path.join(out, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)


def main(argv):
    if len(argv) == 3 and argv[0] == "variants":
        variants(argv[1], argv[2])
    elif len(argv) == 4 and argv[0] == "torchbin":
        torchbin(argv[1], argv[2], int(argv[3]))
    elif len(argv) == 4 and argv[0] == "real" and argv[2] in REAL:
        real(argv[1], argv[2], argv[3])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
