#!/usr/bin/python3
"""make_corpus_model.py — writes the seed corpora of fuzz_loader and fuzz_tokenizer.

  /usr/bin/python3 tests/fuzz/make_corpus_model.py tests/fuzz

tests/fuzz/corpus_loader and corpus_tokenizer are its committed output (plus any found-*
regression inputs, which it leaves alone). Loader inputs are config.json, the separator
line, a whole .safetensors file, and optionally the index separator and an index.json
(fuzz_loader.c); "ok-" seeds are complete tiny checkpoints (a few KB, so libFuzzer can
mutate every part), "bad-" seeds are damaged the ways downloads and hand edits damage them.
Tokenizer inputs are a mode byte and a payload (fuzz_tokenizer.c)."""
import json
import os
import struct
import sys

SEP_ST = b"\n#--safetensors--#\n"
SEP_IX = b"\n#--index--#\n"


def config(model_type="llama", **kw):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": model_type, "bos_token_id": 1,
         "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 8, "intermediate_size": 16,
         "max_position_embeddings": 16, "num_attention_heads": 2, "num_hidden_layers": 1,
         "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000,
         "tie_word_embeddings": False, "vocab_size": 32}
    c.update(kw)
    return c


def tensors(c, extra=()):
    h, i, v, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    t = [("model.embed_tokens.weight", [v, h])]
    for l in range(L):
        p = "model.layers.%d." % l
        t += [(p + "self_attn.q_proj.weight", [h, h]), (p + "self_attn.k_proj.weight", [kv, h]),
              (p + "self_attn.v_proj.weight", [kv, h]), (p + "self_attn.o_proj.weight", [h, h]),
              (p + "mlp.gate_proj.weight", [i, h]), (p + "mlp.up_proj.weight", [i, h]),
              (p + "mlp.down_proj.weight", [h, i]), (p + "input_layernorm.weight", [h]),
              (p + "post_attention_layernorm.weight", [h])]
    t.append(("model.norm.weight", [h]))
    if not c.get("tie_word_embeddings"):
        t.append(("lm_head.weight", [v, h]))
    return t + list(extra)


def safetensors(ts, dtype="F32", header_fix=None, data_cut=0):
    size = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in ts:
        n = size
        for d in shape:
            n *= d
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    if header_fix:
        header_fix(hdr)
    hb = json.dumps(hdr, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    data = bytes((k * 37) & 0x3F for k in range(off))  # small finite values in any dtype
    data = data[:len(data) - data_cut]
    return struct.pack("<Q", len(hb)) + hb + data


def loader_input(c, st, index=None):
    out = json.dumps(c, indent=1).encode() if isinstance(c, dict) else c
    if st is not None:
        out += SEP_ST + st
    if index is not None:
        out += SEP_IX + json.dumps(index).encode()
    return out


def loader_seeds():
    c = config()
    s = {}
    s["ok-llama-f32"] = loader_input(c, safetensors(tensors(c)))
    c16 = config(torch_dtype="bfloat16")
    s["ok-llama-bf16"] = loader_input(c16, safetensors(tensors(c16), "BF16"))
    s["ok-llama-f16-gqa"] = loader_input(config(num_key_value_heads=1),
                                         safetensors(tensors(config(num_key_value_heads=1)),
                                                     "F16"))
    ct = config(tie_word_embeddings=True)
    s["ok-tied"] = loader_input(ct, safetensors(tensors(ct)))
    cf = config("longllama", architectures=["LongLlamaForCausalLM"], num_hidden_layers=2,
                mem_layers=[1], mem_dtype="float32", last_context_length=8)
    s["ok-longllama"] = loader_input(cf, safetensors(tensors(cf)))
    cx = config(rope_scaling={"type": "clex", "factor": 1, "max_factor": 4, "param_factor": 2,
                              "act": "silu", "time_dt": 0.01}, log_scale=True)
    hd2 = 2  # head_dim 4
    clex = [("model.clex_layer.inv_freq", [hd2]), ("model.clex_layer.proj_func.ode_up_proj",
                                                    [hd2, 2 * 4]),
            ("model.clex_layer.proj_func.ode_down_proj", [2 * 4, hd2])]
    s["ok-clex"] = loader_input(cx, safetensors(tensors(cx, clex)))
    for kind, rs in (("linear", {"type": "linear", "factor": 2.0}),
                     ("dynamic", {"type": "dynamic", "factor": 2.0}),
                     ("yarn", {"type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 16})):
        cr = config(rope_scaling=rs)
        s["ok-rope-" + kind] = loader_input(cr, safetensors(tensors(cr)))
    s["ok-sharded"] = loader_input(c, safetensors(tensors(c)),
                                   {"metadata": {}, "weight_map": {n: "shard-1.safetensors"
                                                                   for n, _ in tensors(c)}})
    # Damage.
    st = safetensors(tensors(c))
    s["bad-header-length-huge"] = loader_input(c, struct.pack("<Q", 1 << 62) + st[8:])
    s["bad-header-length-past-end"] = loader_input(c, struct.pack("<Q", len(st)) + st[8:])
    s["bad-short-file"] = loader_input(c, st[:5])
    s["bad-truncated-data"] = loader_input(c, safetensors(tensors(c), data_cut=100))

    def overlap(h):
        h["model.norm.weight"]["data_offsets"] = [0, 32]

    def wrong_size(h):
        h["model.norm.weight"]["shape"] = [9]

    def neg_dim(h):
        h["model.norm.weight"]["shape"] = [-8]

    def big_dims(h):
        h["lm_head.weight"]["shape"] = [4294967296, 4294967296, 16]

    def bad_dtype(h):
        h["model.norm.weight"]["dtype"] = "I64"

    def offsets_reversed(h):
        a, b = h["model.norm.weight"]["data_offsets"]
        h["model.norm.weight"]["data_offsets"] = [b, a]

    def many_dims(h):
        h["model.norm.weight"]["shape"] = [1] * 20 + [8]

    for f in (overlap, wrong_size, neg_dim, big_dims, bad_dtype, offsets_reversed, many_dims):
        s["bad-" + f.__name__.replace("_", "-")] = loader_input(
            c, safetensors(tensors(c), header_fix=f))
    cm = dict(c)
    del cm["hidden_size"]
    s["bad-config-missing-hidden"] = loader_input(cm, st)
    s["bad-config-heads-not-dividing"] = loader_input(config(num_attention_heads=3), st)
    s["bad-config-zero-layers"] = loader_input(config(num_hidden_layers=0), st)
    s["bad-config-huge"] = loader_input(config(hidden_size=1 << 30, vocab_size=1 << 30,
                                               num_hidden_layers=1 << 20), st)
    s["bad-config-mem-layer-out-of-range"] = loader_input(
        config("longllama", mem_layers=[5], mem_dtype="float32"), st)
    s["bad-config-not-json"] = loader_input(b"{\"hidden_size\": 8,", st)
    s["bad-config-deep"] = loader_input(b"[" * 5000 + b"]" * 5000, st)
    s["bad-config-clex-huge-factor"] = loader_input(
        config(rope_scaling={"type": "clex", "factor": 1, "max_factor": 1 << 30,
                             "param_factor": 2}), st)
    s["bad-shape-mismatch"] = loader_input(config(intermediate_size=24), st)
    s["bad-no-safetensors"] = loader_input(c, None)
    s["bad-index-names-missing-file"] = loader_input(
        c, st, {"weight_map": {"model.norm.weight": "nope.safetensors"}})
    s["bad-index-escapes-dir"] = loader_input(
        c, st, {"weight_map": {"model.norm.weight": "../../../etc/passwd"}})
    s["bad-index-not-object"] = loader_input(c, st, [1, 2, 3])
    return s


def tokenizer_seeds():
    s = {}
    texts = {"ascii": b"The grass is green. The sky is blue.\nHere we go.",
             "empty": b"", "utf8-mixed": "h\u00e9llo \u4e2d\u6587 \U0001f642".encode(),
             "spaces": b"   a  \t b\n\n\r\n", "nul": b"a\x00b",
             "passkey": b"The pass key is 12345. Remember it. 12345 is the pass key.",
             "max-codepoint": "\U0010ffff".encode(), "bom": b"\xef\xbb\xbfhi"}
    for k, t in texts.items():
        s["enc-" + k] = b"\x00" + t
        s["enc-bos-" + k] = b"\x02" + t
    bad = {"lone-continuation": b"a\x80b", "overlong-nul": b"\xc0\x80",
           "surrogate": b"\xed\xa0\x80", "above-max": b"\xf4\x90\x80\x80",
           "truncated-3": b"\xe4\xb8", "ff": b"\xff\xfe", "truncated-at-end": b"ok \xf0\x9f\x99"}
    for k, t in bad.items():
        s["enc-bad-" + k] = b"\x00" + t

    def ids(*xs):
        return b"\x01" + b"".join(struct.pack("<i", x) for x in xs)
    s["dec-words"] = ids(1, 371, 198, 172, 454, 408, 444, 2)
    s["dec-control"] = ids(0, 1, 2)
    s["dec-lone-byte-piece"] = ids(3 + 0xC3)          # <0xC3>: half a character
    s["dec-byte-pieces-valid"] = ids(3 + 0xC3, 3 + 0xA9)
    s["dec-byte-pieces-surrogate"] = ids(3 + 0xED, 3 + 0xA0, 3 + 0x80)
    s["dec-out-of-range"] = ids(5, 512)
    s["dec-negative"] = ids(-1)
    s["dec-int-max"] = ids(2147483647)
    s["dec-empty"] = b"\x01"
    s["dec-odd-tail"] = ids(5, 6) + b"\x07"
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for name, seeds in (("corpus_loader", loader_seeds()), ("corpus_tokenizer", tokenizer_seeds())):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        for k, v in seeds.items():
            with open(os.path.join(d, k + ".bin"), "wb") as f:
                f.write(v)
        print("%s: %d seeds" % (d, len(seeds)))


if __name__ == "__main__":
    main()
