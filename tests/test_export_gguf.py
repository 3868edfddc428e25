#!/usr/bin/python3
"""Checks tools/export_gguf.py by reading its GGUF back with gguf-py's GGUFReader.

    test_export_gguf.py        # exit 0: passed or "skipped: ..."; 1: a mismatch

Cases:
  1. models/default (8 layers, bf16, LongLLaMA config) at f32: every tensor's name, shape and
     values exactly (bf16 widens to f32 without loss), q/k rows in llama.cpp's order, the
     LLaMA metadata and the vocabulary against sentencepiece.
  2. the same at bf16 (bit-exact) and f16 (within f16 rounding).
  3. a tiny LLaMA from tools/make_test_model.py with grouped-query attention (kv heads <
     heads, so k uses its own head count), two shards and tied embeddings (no output.weight).
  4. a checkpoint without tokenizer.model is refused with a non-zero exit and no file.
  5. with the sentencepiece and yaml modules made unimportable (a bare GPU host), the export
     is byte-identical: the built-in tokenizer.model reader and the yaml stub stand in.

The expected q/k order is written out index by index here rather than with the exporter's
reshape, so a wrong permutation cannot agree with itself: llama.cpp rotates adjacent pairs,
HF LLaMA pairs i and i + d/2, hence GGUF row h*d + 2i + j = checkpoint row h*d + j*d/2 + i.

gguf-py comes from $GGUF_PY, an installed `gguf`, or is unpacked from the llama.cpp source
archive ($LLAMA_SRC_TARBALL, peers/llama-src-trimmed.tar.xz in the repo, or
../shared/peers/ beside the checkout). Needs numpy and sentencepiece; without them,
or without gguf-py, it prints "skipped: <why>" and exits 0.
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXPORTER = os.path.join(REPO, "tools", "export_gguf.py")
MAKER = os.path.join(REPO, "tools", "make_test_model.py")
DEFAULT_MODEL = os.path.join(REPO, "models", "default")
TARBALLS = [os.environ.get("LLAMA_SRC_TARBALL", ""),
            os.path.join(REPO, "peers", "llama-src-trimmed.tar.xz"),
            # the team's shared folder beside the checkout (../shared/peers)
            os.path.join(REPO, "..", "shared", "peers", "llama-src-trimmed.tar.xz")]

failures = []


def skip(why):
    print("skipped: " + why)
    sys.exit(0)


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL: " + what)
    return ok


def find_gguf_py(tmp):
    """A directory holding gguf/ (gguf-py), or None."""
    if os.environ.get("GGUF_PY"):
        return os.environ["GGUF_PY"]
    try:
        import gguf  # noqa: F401  (installed: the exporter finds it the same way)
        return ""
    except ImportError:
        pass
    for tb in TARBALLS:
        if tb and os.path.isfile(tb):
            with tarfile.open(tb, "r:xz") as t:
                members = [m for m in t.getmembers()
                           if "/gguf-py/gguf/" in m.name and m.name.endswith(".py")]
                if not members:
                    continue
                t.extractall(tmp, members=members)
                root = members[0].name.split("/gguf-py/")[0]
                return os.path.join(tmp, root, "gguf-py")
    return None


def export(src, out, outtype, gguf_py, bare=False):
    args = [src, out, "--outtype", outtype] + (["--gguf-py", gguf_py] if gguf_py else [])
    if not bare:
        return subprocess.run([sys.executable, EXPORTER] + args, capture_output=True, text=True)
    # None in sys.modules makes `import name` raise ImportError, as on a host without it
    boot = ("import runpy, sys; sys.modules['sentencepiece'] = sys.modules['yaml'] = None; "
            "sys.argv = [%r] + %r; runpy.run_path(%r, run_name='__main__')"
            % (EXPORTER, args, EXPORTER))
    return subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True)


def read_st(src):
    """{name: float32 array} of a checkpoint (single file or shards), parsed here too."""
    import numpy as np

    files = [os.path.join(src, "model.safetensors")]
    if not os.path.isfile(files[0]):
        with open(os.path.join(src, "model.safetensors.index.json")) as f:
            files = [os.path.join(src, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
    out = {}
    for path in files:
        raw = open(path, "rb").read()
        n = int.from_bytes(raw[:8], "little")
        hdr = json.loads(raw[8:8 + n])
        hdr.pop("__metadata__", None)
        for name, m in hdr.items():
            b, e = m["data_offsets"]
            buf = raw[8 + n + b:8 + n + e]
            if m["dtype"] == "BF16":
                a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(buf, {"F32": "<f4", "F16": "<f2"}[m["dtype"]]).astype(np.float32)
            out[name] = a.reshape(m["shape"])
    return out


def llama_order(w, n_head):
    """Checkpoint q/k rows in the order the GGUF must hold them (see the docstring)."""
    import numpy as np

    d = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(d // 2):
            for j in range(2):
                out[h * d + 2 * i + j] = w[h * d + j * (d // 2) + i]
    return out


def expected(st, cfg):
    """{gguf name: float32 array in numpy (row-major) shape} the export must contain."""
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    ren = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    out = {}
    for name, a in st.items():
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = a
        elif name == "model.norm.weight":
            out["output_norm.weight"] = a
        elif name == "lm_head.weight":
            out["output.weight"] = a
        else:
            parts = name.split(".")  # model.layers.N.<module...>.weight
            l, mod = parts[2], ".".join(parts[3:-1])
            g = ren[mod]
            if g == "attn_q":
                a = llama_order(a, heads)
            elif g == "attn_k":
                a = llama_order(a, kv)
            out["blk.%s.%s.weight" % (l, g)] = a
    return out


def as_f32(gguf, t):
    """A ReaderTensor's values as float32 in numpy shape, whatever type it was written in."""
    import numpy as np

    shape = tuple(reversed([int(x) for x in t.shape]))
    T = gguf.GGMLQuantizationType
    if t.tensor_type == T.BF16:
        bits = np.ascontiguousarray(t.data).view(np.uint16).astype(np.uint32)
        return (bits << 16).view(np.float32).reshape(shape)
    if t.tensor_type in (T.F32, T.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    raise AssertionError("unexpected tensor type %s" % t.tensor_type)


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def compare(gguf, path, want, outtype, label):
    """Reads path back; checks names, shapes, types and values against want."""
    import numpy as np

    r = gguf.GGUFReader(path)
    got = {t.name: t for t in r.tensors}
    check(sorted(got) == sorted(want),
          "%s: tensor names differ: extra %s missing %s"
          % (label, sorted(set(got) - set(want))[:3], sorted(set(want) - set(got))[:3]))
    T = gguf.GGMLQuantizationType
    ttype = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16}[outtype]
    for name in sorted(set(got) & set(want)):
        t, w = got[name], want[name]
        shape = tuple(reversed([int(x) for x in t.shape]))
        if not check(shape == w.shape, "%s: %s shape %s != %s" % (label, name, shape, w.shape)):
            continue
        wt = T.F32 if w.ndim == 1 else ttype
        check(t.tensor_type == wt, "%s: %s type %s != %s" % (label, name, t.tensor_type.name, wt.name))
        a = as_f32(gguf, t)
        if outtype == "f16" and w.ndim > 1:
            ref = w.astype(np.float16).astype(np.float32)
        else:  # f32, and bf16 from a bf16 or bf16-representable source: exact
            ref = w
        if outtype == "bf16" and w.ndim > 1:
            bits = w.view(np.uint32)
            if (bits & 0xFFFF).any():  # not bf16-exact: allow gguf-py's rounding
                ref = None
                check(np.allclose(a, w, rtol=2 ** -8, atol=0),
                      "%s: %s differs beyond bf16 rounding" % (label, name))
        if ref is not None:
            bad = np.flatnonzero(a.ravel() != ref.ravel())
            check(bad.size == 0, "%s: %s: %d values differ, first at %s (%r vs %r)"
                  % (label, name, bad.size, bad[:1], a.ravel()[bad[:1]], ref.ravel()[bad[:1]]))
    return r


def check_metadata(r, cfg, src, label):
    import sentencepiece as spm

    check(field(r, "general.architecture") == "llama", label + ": architecture is not llama")
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    for key, want in [("llama.block_count", cfg["num_hidden_layers"]),
                      ("llama.embedding_length", cfg["hidden_size"]),
                      ("llama.feed_forward_length", cfg["intermediate_size"]),
                      ("llama.attention.head_count", cfg["num_attention_heads"]),
                      ("llama.attention.head_count_kv", kv),
                      ("llama.rope.dimension_count", cfg["hidden_size"] // cfg["num_attention_heads"]),
                      ("llama.context_length", cfg["max_position_embeddings"]),
                      ("tokenizer.ggml.bos_token_id", cfg["bos_token_id"]),
                      ("tokenizer.ggml.eos_token_id", cfg["eos_token_id"])]:
        check(field(r, key) == want, "%s: %s = %r, want %r" % (label, key, field(r, key), want))
    check(abs(field(r, "llama.rope.freq_base") - cfg["rope_theta"]) < 1e-3, label + ": rope theta")
    check(abs(field(r, "llama.attention.layer_norm_rms_epsilon") - cfg["rms_norm_eps"]) < 1e-9,
          label + ": rms eps")
    check(field(r, "tokenizer.ggml.model") == "llama", label + ": tokenizer model")
    sp = spm.SentencePieceProcessor(model_file=os.path.join(src, "tokenizer.model"))
    toks, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    check(len(toks) == cfg["vocab_size"], "%s: %d tokens, want %d" % (label, len(toks), cfg["vocab_size"]))
    pieces = [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    check(toks[:len(pieces)] == pieces, label + ": token pieces differ from sentencepiece")
    check(types[0] == 2 and types[1] == 3 and types[2] == 3,
          "%s: <unk>/<s>/</s> types %s, want 2 3 3" % (label, types[:3]))
    byte_ids = [i for i in range(sp.vocab_size()) if sp.IsByte(i)]
    check(all(types[i] == 6 for i in byte_ids), label + ": byte pieces not typed BYTE")


def main():
    try:
        import numpy  # noqa: F401
        import sentencepiece  # noqa: F401
    except ImportError as e:
        skip("needs numpy and sentencepiece (%s)" % e)
    tmp = tempfile.mkdtemp(prefix="test_export_gguf.")
    gguf_py = find_gguf_py(tmp)
    if gguf_py is None:
        skip("gguf-py not found (set GGUF_PY or LLAMA_SRC_TARBALL)")
    if gguf_py:
        sys.path.insert(0, gguf_py)
    import gguf

    # 1-2: the shipped default model, every output type
    with open(os.path.join(DEFAULT_MODEL, "config.json")) as f:
        cfg = json.load(f)
    want = expected(read_st(DEFAULT_MODEL), cfg)
    check(len(want) == 1 + 9 * cfg["num_hidden_layers"] + 2, "default: unexpected tensor count")
    for outtype in ("f32", "bf16", "f16"):
        out = os.path.join(tmp, "default-%s.gguf" % outtype)
        p = export(DEFAULT_MODEL, out, outtype, gguf_py)
        if not check(p.returncode == 0, "default %s: export failed: %s" % (outtype, p.stderr)):
            continue
        r = compare(gguf, out, want, outtype, "default " + outtype)
        if outtype == "f32":
            check_metadata(r, cfg, DEFAULT_MODEL, "default")
            # the permutation must actually move rows (d > 2), or the check above is vacuous
            q = want["blk.0.attn_q.weight"]
            raw = read_st(DEFAULT_MODEL)["model.layers.0.self_attn.q_proj.weight"]
            check(not (q == raw).all(), "default: q rows were not permuted")

    # 3: GQA, shards, tied embeddings, fp32 source
    tiny = os.path.join(tmp, "tiny")
    p = subprocess.run([sys.executable, MAKER, "--out", tiny, "--kind", "llama", "--layers", "3",
                        "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--vocab", "512",
                        "--shards", "2", "--tie", "--seed", "7"], capture_output=True, text=True)
    if check(p.returncode == 0, "make_test_model failed: %s" % p.stderr):
        with open(os.path.join(tiny, "config.json")) as f:
            tcfg = json.load(f)
        st = read_st(tiny)
        check("lm_head.weight" not in st, "tiny: expected tied embeddings (no lm_head)")
        twant = expected(st, tcfg)
        out = os.path.join(tmp, "tiny.gguf")
        p = export(tiny, out, "f32", gguf_py)
        if check(p.returncode == 0, "tiny: export failed: %s" % p.stderr):
            r = compare(gguf, out, twant, "f32", "tiny")
            check_metadata(r, tcfg, tiny, "tiny")
            check("output.weight" not in {t.name for t in r.tensors}, "tiny: output.weight written")
        out = os.path.join(tmp, "tiny-bf16.gguf")
        p = export(tiny, out, "bf16", gguf_py)
        if check(p.returncode == 0, "tiny bf16: export failed: %s" % p.stderr):
            compare(gguf, out, twant, "bf16", "tiny bf16")

    # 4: no tokenizer -> a clear refusal, no output file left behind
    notok = os.path.join(tmp, "notok")
    subprocess.run([sys.executable, MAKER, "--out", notok, "--kind", "llama", "--layers", "1",
                    "--no-tokenizer"], check=True, capture_output=True)
    out = os.path.join(tmp, "notok.gguf")
    p = export(notok, out, "f16", gguf_py)
    check(p.returncode != 0 and "tokenizer.model" in p.stderr,
          "notok: want a refusal naming tokenizer.model, got rc %d: %s" % (p.returncode, p.stderr))
    check(not os.path.exists(out) and not os.path.exists(out + ".tmp"), "notok: a file was left")

    # 5: no sentencepiece, no yaml: the same bytes
    for src, name in ((DEFAULT_MODEL, "default"), (tiny, "tiny")):
        ref, bare = os.path.join(tmp, name + "-ref.gguf"), os.path.join(tmp, name + "-bare.gguf")
        p1, p2 = export(src, ref, "f16", gguf_py), export(src, bare, "f16", gguf_py, bare=True)
        if check(p1.returncode == 0 and p2.returncode == 0,
                 "%s bare: export failed: %s %s" % (name, p1.stderr, p2.stderr)):
            same = open(ref, "rb").read() == open(bare, "rb").read()
            check(same, "%s: export without sentencepiece/yaml differs from the one with" % name)

    subprocess.run(["rm", "-rf", tmp])
    if failures:
        print("test_export_gguf: %d failure(s)" % len(failures))
        sys.exit(1)
    print("test_export_gguf: ok")


if __name__ == "__main__":
    main()
