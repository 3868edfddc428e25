#!/usr/bin/python3
"""Writes a recall checkpoint directory as a GGUF file that llama.cpp loads as plain LLaMA.

    export_gguf.py SRC_DIR OUT.gguf [--outtype f32|f16|bf16] [--gguf-py DIR]

SRC_DIR is a Hugging Face style directory: config.json, model.safetensors (or shards listed
in model.safetensors.index.json) and a SentencePiece tokenizer.model, as recall loads it and
as tools/make_test_model.py and tools/convert_longllama.py write it.

What llama.cpp gets is the LLaMA half of the model only. A LongLLaMA checkpoint
("LongLlamaForCausalLM", mem_layers, last_context_length, ...) has the same tensors as a
LLaMA one; its Focused Transformer memory is a way of *running* some layers (they also
attend to an external key/value memory), not extra weights. llama.cpp has no such memory, so
it runs every layer as ordinary causal attention over its KV cache and the FoT keys in
config.json are dropped. That is what we want for a speed peer (prefill, KV-cache save and
restore, first-token latency over a long context); its answers past the training window are
not comparable with recall's.

The output follows what llama.cpp's own convert_hf_to_gguf.py (LlamaModel) writes:
  - q_proj / k_proj rows are permuted per head. HF's LLaMA rotates the pair (i, i + d/2) of
    each head ("half split"); llama.cpp's LLAMA architecture rotates adjacent pairs
    (2i, 2i + 1). Reordering the rows of W_q and W_k turns one into the other, and since
    q.k is a sum over the same permuted coordinates on both sides, attention scores are
    unchanged.
  - 1-D tensors (the RMSNorm weights) are always F32; 2-D ones take --outtype.
  - the vocabulary is the SentencePiece model's pieces, scores and token types under
    tokenizer.ggml.model = "llama", special ids from config.json.
The default --outtype is f16: llama.cpp's usual type for GPU inference, and exact enough for
weights drawn from a bf16 checkpoint of this scale (an overflow to inf is refused).

Tensors are read and written one at a time (GGUF header and tensor table first, then the
data), so memory stays at about the largest tensor. Needs numpy and gguf-py, found through
--gguf-py DIR, then $GGUF_PY, then an installed `gguf` module (llama.cpp's source tree has it
at gguf-py/). Nothing else: the sentencepiece package is used when present, else
tokenizer.model is read as the protobuf it is; PyYAML, which gguf-py imports but this
script never uses, is stubbed when absent; safetensors are parsed here. (A GPU host without
network may have numpy and nothing more.)
"""
import argparse
import json
import os
import struct
import sys
import types

import numpy as np

FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}  # llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_BF16
ST_DTYPE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}

# HF name (after "model.layers.N.") -> llama.cpp block tensor; order is the order written.
BLOCK_TENSORS = [
    ("input_layernorm.weight", "attn_norm"),
    ("self_attn.q_proj.weight", "attn_q"),
    ("self_attn.k_proj.weight", "attn_k"),
    ("self_attn.v_proj.weight", "attn_v"),
    ("self_attn.o_proj.weight", "attn_output"),
    ("post_attention_layernorm.weight", "ffn_norm"),
    ("mlp.gate_proj.weight", "ffn_gate"),
    ("mlp.up_proj.weight", "ffn_up"),
    ("mlp.down_proj.weight", "ffn_down"),
]


def fail(msg):
    raise SystemExit("export_gguf: " + msg)


def import_gguf(explicit):
    """gguf-py from --gguf-py, $GGUF_PY or site-packages, in that order."""
    for d in (explicit, os.environ.get("GGUF_PY")):
        if d:
            if not os.path.isfile(os.path.join(d, "gguf", "__init__.py")):
                fail("%s is not gguf-py (no gguf/__init__.py in it)" % d)
            sys.path.insert(0, d)
            break
    try:
        import yaml  # noqa: F401
    except ImportError:
        # gguf.metadata imports yaml when gguf is imported, but only its model-card parsing
        # uses it, which this script never calls; a stub saves installing PyYAML on a host
        # without network.
        sys.modules["yaml"] = types.ModuleType("yaml")
    try:
        import gguf
    except ImportError:
        fail("gguf-py not found: pass --gguf-py LLAMA_SRC/gguf-py or set GGUF_PY")
    return gguf


# ---------------------------------------------------------------- safetensors, read by hand


class StTensor:
    """One tensor of a safetensors file: where its bytes are and how to read them."""

    def __init__(self, path, data_start, name, meta):
        if meta["dtype"] not in ST_DTYPE:
            fail("%s: tensor %s has dtype %s; only F32, F16, BF16 are handled"
                 % (path, name, meta["dtype"]))
        self.path, self.name = path, name
        self.st_dtype, self.shape = meta["dtype"], tuple(meta["shape"])
        begin, end = meta["data_offsets"]
        self.offset = data_start + begin
        self.count = int(np.prod(self.shape, dtype=np.int64))
        if end - begin != self.count * ST_DTYPE[self.st_dtype].itemsize:
            fail("%s: tensor %s: %d bytes for shape %s" % (path, name, end - begin, self.shape))

    def read_f32(self):
        """The tensor as float32 in its own shape (bf16 widened by a 16-bit shift: exact)."""
        raw = np.fromfile(self.path, dtype=ST_DTYPE[self.st_dtype], count=self.count,
                          offset=self.offset)
        if raw.size != self.count:
            fail("%s: tensor %s is truncated" % (self.path, self.name))
        if self.st_dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False).reshape(self.shape)


def read_st_header(path):
    """{name: StTensor} of one .safetensors file: u64 LE header length, JSON header, data."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            fail("%s: too short for a safetensors file" % path)
        n = int.from_bytes(head, "little")
        if n > 100 << 20:  # a real header is kilobytes; this is not safetensors
            fail("%s: header length %d is implausible" % (path, n))
        try:
            hdr = json.loads(f.read(n))
        except ValueError as e:
            fail("%s: bad safetensors header: %s" % (path, e))
    return {k: StTensor(path, 8 + n, k, v) for k, v in hdr.items() if k != "__metadata__"}


def load_checkpoint_index(src):
    """All tensors of the checkpoint, from model.safetensors or the shards the index names."""
    single = os.path.join(src, "model.safetensors")
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.isfile(single):
        return read_st_header(single)
    if not os.path.isfile(index):
        fail("%s has neither model.safetensors nor model.safetensors.index.json" % src)
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        for name, t in read_st_header(os.path.join(src, shard)).items():
            if name in tensors:
                fail("tensor %s is in two shards" % name)
            tensors[name] = t
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        fail("index names %d tensor(s) its shards lack, e.g. %s" % (len(missing), missing[0]))
    return tensors


# ---------------------------------------------------------------- the LLaMA view of it


def permute_qk(w, n_head):
    """Rows of W_q / W_k from HF's half-split rotary order to llama.cpp's interleaved one:
    within each head, row j*(d/2) + i moves to 2i + j. w: [n_head * d, n_embd]."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def hparams_of(cfg):
    """The LLaMA hyper-parameters llama.cpp needs, checked for what it cannot run."""
    need = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
            "rms_norm_eps", "vocab_size"]
    missing = [k for k in need if k not in cfg]
    if missing:
        fail("config.json lacks %s" % ", ".join(missing))
    if cfg.get("hidden_act", "silu") != "silu":
        fail("hidden_act %r: llama.cpp's LLaMA graph is SwiGLU (silu)" % cfg["hidden_act"])
    rs = cfg.get("rope_scaling")
    if rs and (rs.get("rope_type") or rs.get("type")) not in (None, "linear"):
        fail("rope_scaling %r is not handled here" % rs)
    h = dict(cfg)
    h["num_key_value_heads"] = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    h["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if h["head_dim"] % 2:
        fail("head_dim %d is odd; rotary embedding needs pairs" % h["head_dim"])
    return h


def tensor_plan(gguf, st, h):
    """[(gguf name, StTensor, n_head for the q/k permutation or 0)] in writing order; every
    checkpoint tensor must be used (rotary inv_freq buffers excepted: llama.cpp computes
    them from rope.freq_base)."""
    name = lambda t, bid=None: gguf.TENSOR_NAMES[t].format(bid=bid) + ".weight"
    MT = gguf.MODEL_TENSOR
    plan = [(name(MT.TOKEN_EMBD), "model.embed_tokens.weight", 0)]
    for l in range(h["num_hidden_layers"]):
        for hf, gg in BLOCK_TENSORS:
            heads = {"attn_q": h["num_attention_heads"], "attn_k": h["num_key_value_heads"]}
            plan.append(("blk.%d.%s.weight" % (l, gg), "model.layers.%d.%s" % (l, hf),
                         heads.get(gg, 0)))
    plan.append((name(MT.OUTPUT_NORM), "model.norm.weight", 0))
    if "lm_head.weight" in st:
        plan.append((name(MT.OUTPUT), "lm_head.weight", 0))
    elif not h.get("tie_word_embeddings", False):
        fail("no lm_head.weight and tie_word_embeddings is not set")
    # with tied embeddings llama.cpp reuses token_embd for the output when output is absent

    used = {hf for _, hf, _ in plan}
    absent = [hf for hf in used if hf not in st]
    if absent:
        fail("checkpoint lacks %d tensor(s), e.g. %s" % (len(absent), sorted(absent)[0]))
    extra = [k for k in st if k not in used and not k.endswith("rotary_emb.inv_freq")]
    if extra:
        fail("%d tensor(s) llama.cpp's LLaMA has no place for, e.g. %s"
             % (len(extra), sorted(extra)[0]))
    return [(g, st[hf], nh) for g, hf, nh in plan]


def check_shapes(plan, h):
    """Shapes against config.json, so a wrong head count fails here rather than in
    llama.cpp's loader (or worse, permutes rows wrongly)."""
    E, F, V = h["hidden_size"], h["intermediate_size"], h["vocab_size"]
    q, kv = h["num_attention_heads"] * h["head_dim"], h["num_key_value_heads"] * h["head_dim"]
    want = {"token_embd": (V, E), "output": (V, E), "output_norm": (E,), "attn_norm": (E,),
            "ffn_norm": (E,), "attn_q": (q, E), "attn_k": (kv, E), "attn_v": (kv, E),
            "attn_output": (E, q), "ffn_gate": (F, E), "ffn_up": (F, E), "ffn_down": (E, F)}
    for gname, t, _ in plan:
        kind = gname[:-len(".weight")].split(".")[-1]
        if t.shape != want[kind]:
            fail("%s has shape %s, config.json implies %s" % (t.name, t.shape, want[kind]))


def _varint(b, i):
    v = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        v |= (b[i] & 0x7F) << shift
        i += 1
        if b[i - 1] < 0x80:
            return v, i
        shift += 7


def _proto_fields(b):
    """(field number, wire type, value) of one protobuf message; value is bytes for
    length-delimited fields, an int for varints, raw bytes for fixed32/64."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        if i > len(b):
            raise ValueError("truncated field %d" % field)
        yield field, wt, v


def pieces_from_proto(path):
    """[(piece bytes, score, sentencepiece type)] read straight from tokenizer.model, for
    hosts without the sentencepiece package. ModelProto field 1 is the repeated
    SentencePiece {1: piece, 2: score (float), 3: type (enum, NORMAL = 1 when absent)}."""
    with open(path, "rb") as f:
        b = f.read()
    out = []
    try:
        for field, wt, v in _proto_fields(b):
            if field != 1 or wt != 2:
                continue
            piece, score, typ = b"", 0.0, 1
            for f2, wt2, v2 in _proto_fields(v):
                if f2 == 1 and wt2 == 2:
                    piece = bytes(v2)
                elif f2 == 2 and wt2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif f2 == 3 and wt2 == 0:
                    typ = v2
            out.append((piece, score, typ))
    except ValueError as e:
        fail("%s is not a SentencePiece model: %s" % (path, e))
    return out


def pieces_from_sentencepiece(path):
    """The same list through the sentencepiece package, as the llama.cpp converter reads it
    (its Is* predicates are tests of these very types)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    if not sp.LoadFromFile(path):
        fail("cannot load %s" % path)
    out = []
    for i in range(sp.vocab_size()):
        typ = 2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 5 if sp.IsUnused(i) \
            else 6 if sp.IsByte(i) else 1
        out.append((sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i), typ))
    return out


def sentencepiece_vocab(gguf, path, n_vocab):
    """(tokens, scores, types) as convert_hf_to_gguf.py's _create_vocab_sentencepiece makes
    them: ids the model has but the tokenizer lacks become unused [PADi] pieces; a piece that
    is none of unknown / control / unused / byte (user-defined included) is NORMAL."""
    try:
        pieces = pieces_from_sentencepiece(path)
    except ImportError:
        pieces = pieces_from_proto(path)
    if len(pieces) > n_vocab:
        fail("tokenizer has %d pieces, the model only %d embedding rows" % (len(pieces), n_vocab))
    T = gguf.TokenType
    kind = {2: T.UNKNOWN, 3: T.CONTROL, 5: T.UNUSED, 6: T.BYTE}
    tokens = [("[PAD%d]" % i).encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [T.UNUSED] * n_vocab
    for i, (piece, score, typ) in enumerate(pieces):
        tokens[i], scores[i], types[i] = piece, score, kind.get(typ, T.NORMAL)
    return tokens, scores, types


def stored_dtype(ndim, outtype):
    """numpy dtype a tensor is written as; uint16 stands for bf16 bits."""
    if ndim == 1 or outtype == "f32":
        return np.dtype(np.float32)
    return np.dtype(np.float16) if outtype == "f16" else np.dtype(np.uint16)


def encode(gguf, a, outtype, name):
    """a (float32) in the type stored_dtype names."""
    dt = stored_dtype(a.ndim, outtype)
    if dt == np.float32:
        return a
    if dt == np.float16:
        b = a.astype(np.float16)
        if not np.isfinite(b).all() and np.isfinite(a).all():
            fail("%s overflows float16; export with --outtype bf16 or f32" % name)
        return b
    # bf16, rounded to nearest even by gguf-py (exact when the source was bf16)
    b = gguf.quants.quantize(a, gguf.GGMLQuantizationType.BF16)
    return np.ascontiguousarray(b).view(np.uint16).reshape(a.shape)


def export(src, out, outtype, gguf):
    with open(os.path.join(src, "config.json")) as f:
        h = hparams_of(json.load(f))
    tok_path = os.path.join(src, "tokenizer.model")
    if not os.path.isfile(tok_path):
        fail("%s: no tokenizer.model (llama.cpp needs a vocabulary in the GGUF)" % src)
    st = load_checkpoint_index(src)
    plan = tensor_plan(gguf, st, h)
    check_shapes(plan, h)

    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(os.path.basename(os.path.normpath(src)))
    w.add_file_type(FILE_TYPE[outtype])
    w.add_block_count(h["num_hidden_layers"])
    w.add_context_length(h.get("max_position_embeddings", 2048))
    w.add_embedding_length(h["hidden_size"])
    w.add_feed_forward_length(h["intermediate_size"])
    w.add_head_count(h["num_attention_heads"])
    w.add_head_count_kv(h["num_key_value_heads"])
    w.add_layer_norm_rms_eps(h["rms_norm_eps"])
    w.add_rope_freq_base(h.get("rope_theta", 10000.0))
    w.add_rope_dimension_count(h["head_dim"])
    if h["head_dim"] != h["hidden_size"] // h["num_attention_heads"]:
        w.add_key_length(h["head_dim"])
        w.add_value_length(h["head_dim"])
    rs = h.get("rope_scaling")
    if rs and rs.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
    w.add_vocab_size(h["vocab_size"])

    tokens, scores, types = sentencepiece_vocab(gguf, tok_path, h["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    gguf.SpecialVocab(src, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    # Tensor table first (names, shapes, types, sizes), then the data in the same order.
    for gname, t, _ in plan:
        dt = stored_dtype(len(t.shape), outtype)
        raw = None if dt != np.uint16 else gguf.GGMLQuantizationType.BF16
        w.add_tensor_info(gname, t.shape, dt, t.count * dt.itemsize, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for gname, t, n_head in plan:
        a = t.read_f32()
        if n_head:
            a = permute_qk(a, n_head)
        w.write_tensor_data(np.ascontiguousarray(encode(gguf, a, outtype, t.name)))
    w.close()
    return len(plan)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="checkpoint directory (config.json, safetensors, tokenizer.model)")
    p.add_argument("out", help="GGUF file to write")
    p.add_argument("--outtype", choices=sorted(FILE_TYPE), default="f16")
    p.add_argument("--gguf-py", default=None, help="llama.cpp's gguf-py folder")

    a = p.parse_args(argv)
    if sys.byteorder != "little":
        fail("big-endian host: safetensors and GGUF here are little-endian")
    gguf = import_gguf(a.gguf_py)
    tmp = a.out + ".tmp"
    try:
        n = export(a.src, tmp, a.outtype, gguf)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, a.out)  # a failed export leaves no file under the real name
    print("export_gguf: %s -> %s (%d tensors, %s, %.1f MB)"
          % (a.src, a.out, n, a.outtype, os.path.getsize(a.out) / 1e6))


if __name__ == "__main__":
    main(sys.argv[1:])
