#!/usr/bin/python3
"""Writes a small random LLaMA / LongLLaMA checkpoint directory that recall loads.

    make_test_model.py --out DIR [--kind llama|longllama] [--layers N] [--hidden H] ...

The directory holds config.json (Hugging Face LLaMA or LongLLaMA form), model.safetensors
(or --shards N files plus model.safetensors.index.json) and tokenizer.model (a SentencePiece
BPE model trained here on --corpus, or a copy of --tokenizer, or none with --no-tokenizer).

--clex-max-factor M makes a CLEX checkpoint (rope_scaling type "clex", DAMO-NLP-SG's
layout): model.clex_layer.inv_freq (rope_theta's frequencies times exp(0.15 N(0,1)), so not
rope_theta's), proj_func.ode_up_proj [d/2, p*d] and ode_down_proj [p*d, d/2] (normal, with
--clex-up-std / --clex-down-std), drawn after every other tensor so the rest of a seed's
weights do not change.

Weights come from a seeded numpy RandomState in float32, in a fixed tensor order, and are
cast to --dtype only when written: the same seed gives the same weights in every dtype
(bf16 rounds to nearest even, as torch does). Needs only numpy and sentencepiece.

Large shapes are fine: tensors are generated and written in chunks, so memory stays at a
few hundred MB even for a 7B-width checkpoint.
"""
import argparse
import io
import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CORPUS = os.path.join(HERE, "..", "tests", "data", "corpus.txt")

ST_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
CHUNK = 1 << 22  # elements generated per step; RandomState's stream does not depend on it


def f32_to_bf16_bits(a):
    """fp32 array -> uint16 bf16 bits, round to nearest even (torch's .to(bfloat16))."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def encode(a, dtype):
    if dtype == "float32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "float16":
        return np.ascontiguousarray(a).astype("<f2").tobytes()
    return f32_to_bf16_bits(a).astype("<u2").tobytes()


class Tensor:
    """A tensor described by how to draw it: out = mean + std * N(0,1), shape row-major."""

    def __init__(self, name, shape, std, mean=0.0, fn=None):
        self.name, self.shape, self.std, self.mean = name, tuple(shape), std, mean
        self.fn = fn  # optional: fn(drawn values, offset of the first) -> values written

    @property
    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n


def tensor_plan(a):
    """The checkpoint's tensors in generation order (the order fixes the random stream)."""
    hd = a.hidden // a.heads
    q_out, kv_out = a.heads * hd, a.kv_heads * hd
    lin = lambda fan_in, g: g / np.sqrt(fan_in)
    t = [Tensor("model.embed_tokens.weight", (a.vocab, a.hidden), 1.0)]
    for l in range(a.layers):
        p = "model.layers.%d." % l
        t += [
            Tensor(p + "self_attn.q_proj.weight", (q_out, a.hidden), lin(a.hidden, a.qk_gain)),
            Tensor(p + "self_attn.k_proj.weight", (kv_out, a.hidden), lin(a.hidden, a.qk_gain)),
            Tensor(p + "self_attn.v_proj.weight", (kv_out, a.hidden), lin(a.hidden, a.gain)),
            Tensor(p + "self_attn.o_proj.weight", (a.hidden, q_out), lin(q_out, a.gain)),
            Tensor(p + "mlp.gate_proj.weight", (a.ffn, a.hidden), lin(a.hidden, a.gain)),
            Tensor(p + "mlp.up_proj.weight", (a.ffn, a.hidden), lin(a.hidden, a.gain)),
            Tensor(p + "mlp.down_proj.weight", (a.hidden, a.ffn), lin(a.ffn, a.gain)),
            Tensor(p + "input_layernorm.weight", (a.hidden,), 0.1, 1.0),
            Tensor(p + "post_attention_layernorm.weight", (a.hidden,), 0.1, 1.0),
        ]
    t.append(Tensor("model.norm.weight", (a.hidden,), 0.1, 1.0))
    if not a.tie:
        t.append(Tensor("lm_head.weight", (a.vocab, a.hidden), 1.0 / np.sqrt(a.hidden)))
    if a.clex_max_factor:
        pd = a.clex_param_factor * hd
        base = 1.0 / (float(a.rope_theta) ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        if not a.clex_no_inv_freq:
            t.append(Tensor("model.clex_layer.inv_freq", (hd // 2,), 0.15,
                            fn=lambda x, off: base[off:off + x.size] * np.exp(x)))
        t += [Tensor("model.clex_layer.proj_func.ode_up_proj", (hd // 2, pd), a.clex_up_std),
              Tensor("model.clex_layer.proj_func.ode_down_proj", (pd, hd // 2), a.clex_down_std)]
    return t


def st_header(tensors, dtype):
    """The safetensors JSON header, padded with spaces to a multiple of 8 bytes."""
    hdr, off = {}, 0
    for t in tensors:
        n = t.numel * ITEMSIZE[dtype]
        hdr[t.name] = {"dtype": ST_DTYPE[dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    hdr["__metadata__"] = {"format": "pt"}
    b = json.dumps(hdr, separators=(",", ":")).encode()
    b += b" " * (-len(b) % 8)
    return b


def write_shards(out, shards, dtype, rng):
    """shards: list of (filename, [Tensor]) in generation order. Draws and writes each tensor."""
    for fname, tensors in shards:
        with open(os.path.join(out, fname), "wb") as f:
            h = st_header(tensors, dtype)
            f.write(len(h).to_bytes(8, "little"))
            f.write(h)
            for t in tensors:
                left = t.numel
                while left:
                    n = min(left, CHUNK)
                    x = rng.standard_normal(n).astype(np.float32)
                    x = (np.float32(t.mean) + np.float32(t.std) * x).astype(np.float32)
                    if t.fn is not None:
                        x = t.fn(x, t.numel - left).astype(np.float32)
                    f.write(encode(x, dtype))
                    left -= n


def split_shards(tensors, n, dtype):
    """Splits tensors (in order) into n files of roughly equal byte size."""
    if n <= 1:
        return [("model.safetensors", tensors)]
    total = sum(t.numel for t in tensors)
    groups, cur, acc = [], [], 0
    for t in tensors:
        cur.append(t)
        acc += t.numel
        if len(groups) < n - 1 and acc >= total * (len(groups) + 1) / n:
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    while len(groups) < n:  # more shards than tensors can fill: split is impossible
        raise SystemExit("make_test_model: --shards %d is more than the %d tensors allow"
                         % (n, len(tensors)))
    m = len(groups)
    return [("model-%05d-of-%05d.safetensors" % (i + 1, m), g) for i, g in enumerate(groups)]


def make_config(a):
    c = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.ffn,
        "max_position_embeddings": a.max_pos,
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": a.rope_theta,
        "tie_word_embeddings": bool(a.tie),
        "torch_dtype": a.dtype,
        "use_cache": True,
        "vocab_size": a.vocab,
    }
    if a.clex_max_factor:
        rs = {"type": "clex", "factor": 1, "max_factor": a.clex_max_factor,
              "param_factor": a.clex_param_factor}
        if a.clex_act != "none":
            rs["act"] = a.clex_act
        if a.clex_time_dt:
            rs["time_dt"] = a.clex_time_dt
        c["rope_scaling"] = rs
    if a.log_scale != "absent":
        c["log_scale"] = a.log_scale == "true"
    if a.kind == "longllama":
        c.update({
            "architectures": ["LongLlamaForCausalLM"],
            "model_type": "longllama",
            "mem_layers": a.mem_layers,
            "mem_dtype": a.mem_dtype,
            "last_context_length": a.last_context,
            "mem_positionals": True,
            "mem_attention_grouping": None,
            "torch_attention": False,
            "gradient_checkpoint_every_ith": 1,
        })
    return c


def train_tokenizer(corpus, vocab, dest):
    """A LLaMA-like BPE model: byte fallback, digits split, identity normalization that keeps
    whitespace as written (LLaMA's tokenizer.model does the same), one thread for determinism."""
    import sentencepiece as spm

    buf = io.BytesIO()
    with open(corpus, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
            vocab_size=vocab, byte_fallback=True, split_digits=True, character_coverage=1.0,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
            remove_extra_whitespaces=False, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        raise SystemExit("make_test_model: training a %d-piece tokenizer on %s failed: %s\n"
                         "(for large vocabularies reuse a tokenizer with --tokenizer FILE)"
                         % (vocab, corpus, e))
    with open(dest, "wb") as f:
        f.write(buf.getvalue())


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=["llama", "longllama"], default="longllama")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--ffn", type=int, default=176)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--max-pos", type=int, default=128)
    p.add_argument("--mem-layers", default=None, help="comma-separated 0-indexed layers")
    p.add_argument("--last-context", type=int, default=None)
    p.add_argument("--mem-dtype", choices=list(ST_DTYPE), default="bfloat16")
    p.add_argument("--dtype", choices=list(ST_DTYPE), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--tie", action="store_true", help="tie lm_head to the embeddings")
    p.add_argument("--gain", type=float, default=1.0)
    p.add_argument("--qk-gain", type=float, default=1.0)
    p.add_argument("--clex-max-factor", type=int, default=0, help="CLEX: max_factor M (0: no CLEX)")
    p.add_argument("--clex-param-factor", type=int, default=1)
    p.add_argument("--clex-act", choices=["silu", "tanh", "none"], default="silu",
                   help="none: leave act out (first releases)")
    p.add_argument("--clex-time-dt", type=float, default=0.0, help="0: leave time_dt out")
    p.add_argument("--clex-up-std", type=float, default=0.05)
    p.add_argument("--clex-down-std", type=float, default=0.05)
    p.add_argument("--clex-no-inv-freq", action="store_true", help="leave inv_freq out")
    p.add_argument("--log-scale", choices=["true", "false", "absent"], default="absent")
    p.add_argument("--tokenizer", default=None, help="copy this tokenizer.model")
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    p.add_argument("--no-tokenizer", action="store_true")
    a = p.parse_args(argv)
    if a.kv_heads is None:
        a.kv_heads = a.heads
    for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "max_pos", "shards"):
        if getattr(a, k) <= 0:
            p.error("--%s must be positive" % k.replace("_", "-"))
    if a.hidden % a.heads or a.heads % a.kv_heads or (a.hidden // a.heads) % 2:
        p.error("--hidden must split into an even head_dim per head, heads into kv-heads")
    if a.kind == "longllama":
        if a.mem_layers is None:
            a.mem_layers = [a.layers - 1]
        else:
            a.mem_layers = [int(x) for x in a.mem_layers.split(",") if x.strip()]
        if any(l < 0 or l >= a.layers for l in a.mem_layers) or a.mem_layers != sorted(set(a.mem_layers)):
            p.error("--mem-layers must be ascending distinct indices below --layers")
        if a.last_context is None:
            a.last_context = min(1024, a.max_pos)
    elif a.mem_layers:
        p.error("--mem-layers needs --kind longllama")
    if a.rope_theta == int(a.rope_theta):
        a.rope_theta = int(a.rope_theta) if a.rope_theta < 1e15 else a.rope_theta
    return a


def main(argv):
    a = parse_args(argv)
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(make_config(a), f, indent=2)
        f.write("\n")

    tensors = tensor_plan(a)
    shards = split_shards(tensors, a.shards, a.dtype)
    rng = np.random.RandomState(a.seed)
    write_shards(a.out, shards, a.dtype, rng)
    if len(shards) > 1:
        idx = {"metadata": {"total_size": sum(t.numel * ITEMSIZE[a.dtype] for t in tensors)},
               "weight_map": {t.name: fname for fname, ts in shards for t in ts}}
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump(idx, f, indent=2)
            f.write("\n")

    tok = os.path.join(a.out, "tokenizer.model")
    if a.tokenizer:
        shutil.copyfile(a.tokenizer, tok)
    elif not a.no_tokenizer:
        train_tokenizer(a.corpus, a.vocab, tok)

    n = sum(t.numel for t in tensors)
    print("make_test_model: %s %s %d layers, hidden %d, %d params (%s) in %d file(s) -> %s (%.1fs)"
          % (a.kind, "mem layers %s" % a.mem_layers if a.kind == "longllama" else "no memory",
             a.layers, a.hidden, n, a.dtype, len(shards), a.out, time.time() - t0))


if __name__ == "__main__":
    main(sys.argv[1:])
