#!/usr/bin/python3
"""An independent PyTorch reference of LongLLaMA (FoT) inference, written from
docs/REFERENCE.md alone, for parity tests against recall's C forward pass.

Semantics (REFERENCE.md, "LLaMA block", "FoT memory attention", recall's session rule):
  - LLaMA blocks: RMSNorm, RoPE in HF's rotate-half layout, SwiGLU, no biases, GQA.
  - Tokens are processed from the stream's first token. The local cache holds at most W
    tokens; when adding the next token would exceed W, the whole cache moves: memory layers
    append its UNROTATED keys/values to memory (cast to mem_dtype), other layers drop it.
    So windows are [0, W), [W, 2W), ... and local RoPE positions are always in [0, W).
  - Memory layers: queries rotated at their local position, local keys at theirs, memory
    keys unrotated (position 0); ONE fp32 softmax over [local causal scores, memory
    scores], scores clamped below at -1e6.

CLI:
  longllama_ref.py --model DIR --tokens IN.bin [--window W] [--mem-dtype f32|bf16|f16]
                   [--no-memory] [--f64] [--logprobs OUT.bin] [--generate N --gen-out OUT.bin]
IN: int32 little-endian token ids. --logprobs writes n-1 float32 LE values,
logprob[i] = log p(tok[i+1] | tok[..i]). --generate continues the whole input greedily.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)  # the dev machine's cores are shared; tiny models need no more

MEM_DTYPES = {
    "f32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "f16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


class RefError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Checkpoint reading: config.json and safetensors, parsed here with numpy.

def load_config(model_dir, allow_rope_scaling=False):
    """allow_rope_scaling: the caller (positional_ref.py) reads and applies rope_scaling
    itself; this module alone implements plain RoPE and refuses it."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as e:
        raise RefError(f"cannot read {path}: {e}")
    c = {}
    c["vocab"] = int(raw["vocab_size"])
    c["hidden"] = int(raw["hidden_size"])
    c["n_layers"] = int(raw["num_hidden_layers"])
    c["n_heads"] = int(raw["num_attention_heads"])
    c["n_kv_heads"] = int(raw.get("num_key_value_heads") or c["n_heads"])
    c["head_dim"] = int(raw.get("head_dim") or c["hidden"] // c["n_heads"])
    c["ffn"] = int(raw["intermediate_size"])
    c["eps"] = float(raw.get("rms_norm_eps", 1e-6))
    c["theta"] = float(raw.get("rope_theta", 10000.0))
    c["max_pos"] = int(raw.get("max_position_embeddings", 2048))
    c["tie"] = bool(raw.get("tie_word_embeddings", False))
    c["mem_layers"] = sorted(int(x) for x in (raw.get("mem_layers") or []))
    c["mem_dtype"] = MEM_DTYPES[str(raw.get("mem_dtype", "bfloat16")).replace("torch.", "")]
    c["last_context_length"] = int(raw.get("last_context_length", 1024))
    if raw.get("rope_scaling") and not allow_rope_scaling:
        raise RefError("rope_scaling is not implemented in the reference")
    if raw.get("mem_positionals", True) is False:
        raise RefError("mem_positionals=false is not implemented in the reference")
    if c["n_heads"] % c["n_kv_heads"]:
        raise RefError("num_attention_heads must be a multiple of num_key_value_heads")
    return c


def _read_safetensors(path, out):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise RefError(f"{path}: too short for a safetensors file")
    hlen = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, shape = info["dtype"], info["shape"]
        b, e = info["data_offsets"]
        raw = blob[base + b: base + e]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif dt == "F64":
            a = np.frombuffer(raw, dtype="<f8").astype(np.float32)
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            a = u.view(np.float32)
        else:
            raise RefError(f"{path}: tensor {name} has unsupported dtype {dt}")
        n = int(np.prod(shape)) if shape else 1
        if a.size != n:
            raise RefError(f"{path}: tensor {name} holds {a.size} values, shape says {n}")
        out[name] = a.reshape(shape)


def load_tensors(model_dir):
    tensors = {}
    index = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        _read_safetensors(single, tensors)
    elif os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for fn in files:
            _read_safetensors(os.path.join(model_dir, fn), tensors)
    else:
        raise RefError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    return tensors


# ---------------------------------------------------------------------------------------
# The model.

class Model:
    def __init__(self, model_dir, f64=False, allow_rope_scaling=False):
        self.cfg = load_config(model_dir, allow_rope_scaling)
        self.dt = torch.float64 if f64 else torch.float32
        t = load_tensors(model_dir)
        c = self.cfg

        def w(name, shape):
            if name not in t:
                raise RefError(f"{model_dir}: tensor {name} is missing")
            a = t[name]
            if list(a.shape) != list(shape):
                raise RefError(f"{model_dir}: tensor {name} has shape {list(a.shape)}, "
                               f"expected {list(shape)}")
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.dt)

        H, D, nh, nkv = c["hidden"], c["head_dim"], c["n_heads"], c["n_kv_heads"]
        self.emb = w("model.embed_tokens.weight", (c["vocab"], H))
        self.layers = []
        for l in range(c["n_layers"]):
            p = f"model.layers.{l}."
            self.layers.append(dict(
                attn_norm=w(p + "input_layernorm.weight", (H,)),
                wq=w(p + "self_attn.q_proj.weight", (nh * D, H)),
                wk=w(p + "self_attn.k_proj.weight", (nkv * D, H)),
                wv=w(p + "self_attn.v_proj.weight", (nkv * D, H)),
                wo=w(p + "self_attn.o_proj.weight", (H, nh * D)),
                ffn_norm=w(p + "post_attention_layernorm.weight", (H,)),
                w_gate=w(p + "mlp.gate_proj.weight", (c["ffn"], H)),
                w_up=w(p + "mlp.up_proj.weight", (c["ffn"], H)),
                w_down=w(p + "mlp.down_proj.weight", (H, c["ffn"])),
            ))
        self.norm = w("model.norm.weight", (H,))
        if "lm_head.weight" in t:
            self.lm_head = w("lm_head.weight", (c["vocab"], H))
        elif c["tie"]:
            self.lm_head = self.emb
        else:
            raise RefError(f"{model_dir}: lm_head.weight is missing and embeddings are not tied")
        for l in c["mem_layers"]:
            if not 0 <= l < c["n_layers"]:
                raise RefError(f"mem_layers lists layer {l}, the model has {c['n_layers']}")
        # HF: inv_freq = 1 / theta^(arange(0, d, 2).float() / d), computed in fp32.
        ar = torch.arange(0, D, 2, dtype=self.dt)
        self.inv_freq = 1.0 / (c["theta"] ** (ar / D))
        self._rope_len = 0

    def rope_tables(self, n):
        """cos/sin [n, D] for positions 0..n-1, HF layout: cat(freqs, freqs)."""
        if n > self._rope_len:
            pos = torch.arange(n, dtype=self.dt)  # positions as float like HF
            freqs = torch.outer(pos, self.inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            self._cos, self._sin = emb.cos(), emb.sin()
            self._rope_len = n
        return self._cos[:n], self._sin[:n]

    def rmsnorm(self, x, g):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.cfg["eps"]) * g


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    """x [T, heads, D]; cos/sin [T, D] for each row's position."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


class Stream:
    """One token stream: per-layer local cache (unrotated keys, values) and FoT memory."""

    def __init__(self, model, window=0, mem_dtype=None, use_memory=True, knn_k=0):
        """knn_k > 0: REFERENCE.md's kNN memory -- each query (and head) keeps only its knn_k
        best memory scores; equal scores keep the lower memory row."""
        self.m = model
        self.knn_k = int(knn_k)
        c = model.cfg
        self.W = int(window) if window else c["max_pos"]
        if self.W <= 0:
            raise RefError("window must be positive")
        self.mem_dtype = mem_dtype if mem_dtype is not None else c["mem_dtype"]
        self.use_memory = use_memory
        self.mem_set = set(c["mem_layers"])
        nkv, D = c["n_kv_heads"], c["head_dim"]
        empty = lambda: torch.zeros((0, nkv, D), dtype=model.dt)
        self.cache_k = [empty() for _ in range(c["n_layers"])]  # [C, nkv, D] unrotated
        self.cache_v = [empty() for _ in range(c["n_layers"])]
        # Memory as stored: values rounded to mem_dtype, held in the compute dtype.
        self.mem_k = [empty() for _ in range(c["n_layers"])]    # [M, nkv, D] unrotated
        self.mem_v = [empty() for _ in range(c["n_layers"])]
        self.n_tokens = 0

    def local_len(self):
        return self.cache_k[0].shape[0]

    def move_cache(self):
        """The whole local cache goes to memory (memory layers) or is dropped (others)."""
        for l in range(self.m.cfg["n_layers"]):
            if l in self.mem_set:
                k = self.cache_k[l].to(self.mem_dtype).to(self.m.dt)
                v = self.cache_v[l].to(self.mem_dtype).to(self.m.dt)
                self.mem_k[l] = torch.cat([self.mem_k[l], k])
                self.mem_v[l] = torch.cat([self.mem_v[l], v])
            self.cache_k[l] = self.cache_k[l][:0]
            self.cache_v[l] = self.cache_v[l][:0]

    def feed(self, tokens):
        """Feeds tokens; returns logits [n, vocab] for every fed token."""
        tokens = [int(t) for t in tokens]
        V = self.m.cfg["vocab"]
        for t in tokens:
            if not 0 <= t < V:
                raise RefError(f"token id {t} is out of range [0, {V})")
        out = []
        i = 0
        while i < len(tokens):
            if self.local_len() >= self.W:
                self.move_cache()
            take = min(self.W - self.local_len(), len(tokens) - i)
            out.append(self._chunk(tokens[i:i + take]))
            i += take
        self.n_tokens += len(tokens)
        if not out:
            return torch.zeros((0, V), dtype=self.m.dt)
        return torch.cat(out)

    def layer_qkv(self, l, Lw, x):
        """Layer l's unrotated queries [T, nh, D] and keys [T, nkv, D] from the residual x;
        its keys and values are appended to the local cache."""
        m, c = self.m, self.m.cfg
        T, nh, nkv, D = x.shape[0], c["n_heads"], c["n_kv_heads"], c["head_dim"]
        h = m.rmsnorm(x, Lw["attn_norm"])
        q = (h @ Lw["wq"].T).view(T, nh, D)
        k = (h @ Lw["wk"].T).view(T, nkv, D)
        v = (h @ Lw["wv"].T).view(T, nkv, D)
        self.cache_k[l] = torch.cat([self.cache_k[l], k])
        self.cache_v[l] = torch.cat([self.cache_v[l], v])
        return q, k

    def layer_rest(self, l, Lw, x, qh, s_loc, scale):
        """Layer l after its local scores s_loc [nh, T, C+T] (clamped and masked), for the
        positional schemes' references: memory scores of the rotated queries qh [nh, T, D]
        against the unrotated memory keys, one softmax, the values, o_proj and the FFN.
        Returns the new residual x [T, H]."""
        m, c = self.m, self.m.cfg
        rep = c["n_heads"] // c["n_kv_heads"]
        T = qh.shape[1]
        vh = self.cache_v[l].repeat_interleave(rep, dim=1).permute(1, 0, 2)
        scores, values = [s_loc], [vh]
        if l in self.mem_set and self.use_memory and self.mem_k[l].shape[0] > 0:
            mk = self.mem_k[l].repeat_interleave(rep, dim=1).permute(1, 2, 0)
            mv = self.mem_v[l].repeat_interleave(rep, dim=1).permute(1, 0, 2)
            scores.append(torch.clamp(torch.matmul(qh, mk) * scale, min=-1e6))
            values.append(mv)
        p = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
        o = torch.matmul(p, torch.cat(values, dim=1)).permute(1, 0, 2).reshape(T, -1)
        x = x + o @ Lw["wo"].T
        h = m.rmsnorm(x, Lw["ffn_norm"])
        return x + (torch.nn.functional.silu(h @ Lw["w_gate"].T) * (h @ Lw["w_up"].T)) \
            @ Lw["w_down"].T

    def _chunk(self, toks):
        """A chunk that fits in the local cache: attends to cache + itself (+ memory)."""
        m, c = self.m, self.m.cfg
        T = len(toks)
        C = self.local_len()
        nh, nkv, D = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        rep = nh // nkv
        scale = 1.0 / math.sqrt(D)
        cos, sin = m.rope_tables(C + T)
        x = m.emb[torch.tensor(toks, dtype=torch.long)]                    # [T, H]
        # causal mask over local keys: query i (local index C+i) sees keys 0..C+i
        qi = torch.arange(T)[:, None] + C
        kj = torch.arange(C + T)[None, :]
        masked = kj > qi                                                   # [T, C+T]
        for l, L in enumerate(m.layers):
            h = m.rmsnorm(x, L["attn_norm"])
            q = (h @ L["wq"].T).view(T, nh, D)
            k = (h @ L["wk"].T).view(T, nkv, D)
            v = (h @ L["wv"].T).view(T, nkv, D)
            self.cache_k[l] = torch.cat([self.cache_k[l], k])              # unrotated
            self.cache_v[l] = torch.cat([self.cache_v[l], v])
            kl = apply_rope(self.cache_k[l], cos, sin)                     # [C+T, nkv, D]
            vl = self.cache_v[l]
            qr = apply_rope(q, cos[C:], sin[C:])                           # [T, nh, D]
            # GQA: query head h uses kv head h // rep (HF repeat_kv)
            kl = kl.repeat_interleave(rep, dim=1).permute(1, 2, 0)         # [nh, D, C+T]
            vl = vl.repeat_interleave(rep, dim=1).permute(1, 0, 2)         # [nh, C+T, D]
            qh = qr.permute(1, 0, 2)                                       # [nh, T, D]
            s_loc = torch.matmul(qh, kl) * scale                           # [nh, T, C+T]
            s_loc = torch.clamp(s_loc, min=-1e6).masked_fill(masked, float("-inf"))
            scores, values = [s_loc], [vl]
            if l in self.mem_set and self.use_memory and self.mem_k[l].shape[0] > 0:
                mk = self.mem_k[l].repeat_interleave(rep, dim=1).permute(1, 2, 0)  # [nh, D, M]
                mv = self.mem_v[l].repeat_interleave(rep, dim=1).permute(1, 0, 2)  # [nh, M, D]
                s_mem = torch.clamp(torch.matmul(qh, mk) * scale, min=-1e6)        # [nh, T, M]
                if self.knn_k and s_mem.shape[-1] > self.knn_k:
                    # Stable sort: among equal scores the lower row comes first.
                    order = torch.sort(s_mem, dim=-1, descending=True, stable=True).indices
                    drop = order[..., self.knn_k:]
                    s_mem = s_mem.scatter(-1, drop, float("-inf"))
                scores.append(s_mem)
                values.append(mv)
            p = torch.softmax(torch.cat(scores, dim=-1), dim=-1)  # one softmax, fp32 (or f64)
            o = torch.matmul(p, torch.cat(values, dim=1))                  # [nh, T, D]
            o = o.permute(1, 0, 2).reshape(T, nh * D)
            x = x + o @ L["wo"].T
            h = m.rmsnorm(x, L["ffn_norm"])
            g = h @ L["w_gate"].T
            u = h @ L["w_up"].T
            x = x + (torch.nn.functional.silu(g) * u) @ L["w_down"].T
        return m.rmsnorm(x, m.norm) @ m.lm_head.T                          # [T, vocab]


# ---------------------------------------------------------------------------------------
# Entry points used by the CLI and by parity.py.

def logprobs(model, tokens, window=0, mem_dtype=None, use_memory=True, knn_k=0):
    """n-1 log-probs (float64 numpy): lp[i] = log p(tok[i+1] | tok[..i])."""
    s = Stream(model, window, mem_dtype, use_memory, knn_k)
    logits = s.feed(tokens).to(torch.float64)
    ls = torch.log_softmax(logits, dim=-1)
    nxt = torch.tensor([int(t) for t in tokens[1:]], dtype=torch.long)
    return ls[torch.arange(len(tokens) - 1), nxt].numpy()


def split_feeds(n, feeds):
    """Sizes of successive feeds of n tokens: feeds repeats its last entry; [] = one."""
    if not feeds:
        return [n]
    out, i = [], 0
    while sum(out) < n:
        out.append(min(feeds[min(i, len(feeds) - 1)], n - sum(out)))
        i += 1
    return out


def stream_logprobs(s, tokens, feeds=None):
    """n-1 log-probs (float64 numpy) of tokens fed to stream s in calls of `feeds` sizes
    (schemes whose results depend on the grouping: CLEX, GALI)."""
    parts, off = [], 0
    for k in split_feeds(len(tokens), feeds):
        parts.append(s.feed(tokens[off:off + k]))
        off += k
    ls = torch.log_softmax(torch.cat(parts).to(torch.float64), dim=-1)
    nxt = torch.tensor([int(t) for t in tokens[1:]], dtype=torch.long)
    return ls[torch.arange(len(tokens) - 1), nxt].numpy()


def greedy_argmax(logits):
    return int(np.argmax(logits.numpy()))  # numpy: first index on ties


def generate(model, prompt, n_new, window=0, mem_dtype=None, use_memory=True,
             margins=None, knn_k=0):
    """Greedy continuation of prompt; optionally records the top-2 logit gap per step."""
    s = Stream(model, window, mem_dtype, use_memory, knn_k)
    last = s.feed(prompt)[-1]
    out = []
    for i in range(n_new):
        t = greedy_argmax(last)
        if margins is not None:
            top2 = torch.topk(last, 2).values
            margins.append(float(top2[0] - top2[1]))
        out.append(t)
        if i + 1 < n_new:
            last = s.feed([t])[-1]
    return out


def direct_logits(model, tokens):
    """No windows, no cache, no memory: plain causal LLaMA over all tokens, written
    separately from Stream to check it on inputs of at most one window."""
    m, c = model, model.cfg
    n = len(tokens)
    nh, nkv, D = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    cos, sin = m.rope_tables(n)
    x = m.emb[torch.tensor(tokens, dtype=torch.long)]
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    for L in m.layers:
        h = m.rmsnorm(x, L["attn_norm"])
        q = apply_rope((h @ L["wq"].T).view(n, nh, D), cos, sin)
        k = apply_rope((h @ L["wk"].T).view(n, nkv, D), cos, sin)
        v = (h @ L["wv"].T).view(n, nkv, D)
        o = torch.empty(n, nh, D, dtype=m.dt)
        for hh in range(nh):
            kv = hh // (nh // nkv)
            s = (q[:, hh] @ k[:, kv].T) / math.sqrt(D)
            s = s.masked_fill(mask, float("-inf"))
            o[:, hh] = torch.softmax(s, -1) @ v[:, kv]
        x = x + o.reshape(n, nh * D) @ L["wo"].T
        h = m.rmsnorm(x, L["ffn_norm"])
        x = x + (torch.nn.functional.silu(h @ L["w_gate"].T) * (h @ L["w_up"].T)) @ L["w_down"].T
    return m.rmsnorm(x, m.norm) @ m.lm_head.T


def naive_fot_logits(model, tokens, window=0, mem_dtype=None, use_memory=True):
    """The FoT formula written per (query, key) pair over the whole sequence at once, with
    no cache and no streaming, to check Stream: token i (window i // W, local position
    i mod W) sees the keys j <= i of its own window rotated at j mod W and, in memory
    layers, every key of earlier windows unrotated and rounded to mem_dtype."""
    m, c = model, model.cfg
    n = len(tokens)
    W = int(window) if window else c["max_pos"]
    md = mem_dtype if mem_dtype is not None else c["mem_dtype"]
    nh, nkv, D = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    cos, sin = m.rope_tables(W)
    idx = torch.arange(n)
    lpos = idx % W
    win = idx // W
    local = (win[:, None] == win[None, :]) & (idx[None, :] <= idx[:, None])  # [n, n]
    earlier = win[None, :] < win[:, None]
    x = m.emb[torch.tensor(tokens, dtype=torch.long)]
    for l, L in enumerate(m.layers):
        use_mem = l in c["mem_layers"] and use_memory
        h = m.rmsnorm(x, L["attn_norm"])
        q = apply_rope((h @ L["wq"].T).view(n, nh, D), cos[lpos], sin[lpos])
        k = (h @ L["wk"].T).view(n, nkv, D)
        v = (h @ L["wv"].T).view(n, nkv, D)
        kr = apply_rope(k, cos[lpos], sin[lpos])
        km, vm = k.to(md).to(m.dt), v.to(md).to(m.dt)
        o = torch.empty(n, nh, D, dtype=m.dt)
        for hh in range(nh):
            g = hh * nkv // nh
            s = torch.full((n, n), float("-inf"), dtype=m.dt)
            s_loc = torch.clamp(q[:, hh] @ kr[:, g].T / math.sqrt(D), min=-1e6)
            s = torch.where(local, s_loc, s)
            if use_mem:
                s_mem = torch.clamp(q[:, hh] @ km[:, g].T / math.sqrt(D), min=-1e6)
                s = torch.where(earlier, s_mem, s)
            p = torch.softmax(s, -1)
            o[:, hh] = (p * local) @ v[:, g] + (p * earlier) @ vm[:, g]
        x = x + o.reshape(n, nh * D) @ L["wo"].T
        h = m.rmsnorm(x, L["ffn_norm"])
        x = x + (torch.nn.functional.silu(h @ L["w_gate"].T) * (h @ L["w_up"].T)) @ L["w_down"].T
    return m.rmsnorm(x, m.norm) @ m.lm_head.T


def read_tokens(path):
    a = np.fromfile(path, dtype="<i4")
    if a.size == 0:
        raise RefError(f"{path}: no tokens")
    return [int(x) for x in a]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="int32 LE token ids")
    ap.add_argument("--window", type=int, default=0, help="tokens per window (default max_pos)")
    ap.add_argument("--mem-dtype", choices=["f32", "bf16", "f16"])
    ap.add_argument("--no-memory", action="store_true", help="memory layers ignore memory")
    ap.add_argument("--f64", action="store_true", help="compute in float64")
    ap.add_argument("--knn", type=int, default=0, metavar="K",
                    help="kNN memory: each query attends to its K best memory keys")
    ap.add_argument("--logprobs", help="write n-1 float32 LE log-probs here")
    ap.add_argument("--generate", type=int, default=0, help="greedy tokens to generate")
    ap.add_argument("--gen-out", help="write generated int32 LE ids here")
    a = ap.parse_args(argv)
    if a.generate and not a.gen_out:
        ap.error("--generate needs --gen-out")
    if not a.logprobs and not a.generate:
        ap.error("nothing to do: give --logprobs and/or --generate")
    try:
        model = Model(a.model, f64=a.f64)
        toks = read_tokens(a.tokens)
        md = MEM_DTYPES[a.mem_dtype] if a.mem_dtype else None
        if a.logprobs:
            lp = logprobs(model, toks, a.window, md, not a.no_memory, a.knn)
            lp.astype("<f4").tofile(a.logprobs)
        if a.generate:
            g = generate(model, toks, a.generate, a.window, md, not a.no_memory, knn_k=a.knn)
            np.asarray(g, dtype="<i4").tofile(a.gen_out)
    except (RefError, OSError, KeyError, ValueError) as e:
        print(f"longllama_ref: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
