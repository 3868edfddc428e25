#!/usr/bin/python3
"""A LongLLaMA-architecture model (LLaMA blocks + FoT memory layers) for training, and a
windowed inference stream with LongLLaMA's exact semantics for evaluation.

Training (FoT, cross-batch): a row is one document of n_windows * W tokens. Every layer
attends causally inside each window of W tokens, RoPE at the position inside the window.
Memory layers also attend, in the same softmax, to the keys of
  - the document's own earlier windows (positives), and
  - the earlier-indexed windows of k other documents of the batch (negatives, FoT's
    cross-batch contrast: keys that must not be picked),
all UNROTATED (position 0), exactly as at inference where memory keys are stored
unrotated and the query is rotated at its local position (REFERENCE.md). Because each
layer's keys for window n are computed in the same pass with the memory of windows < n,
the parallel pass equals streaming the document window by window.
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, vocab=2048, hidden=256, layers=8, heads=4, ffn=768, window=256,
                 mem_layers=(2, 5), theta=10000.0, eps=1e-6):
        self.vocab, self.hidden, self.layers, self.heads = vocab, hidden, layers, heads
        self.ffn, self.window, self.mem_layers = ffn, window, list(mem_layers)
        self.theta, self.eps = theta, eps
        self.head_dim = hidden // heads

    def to_dict(self):
        return dict(self.__dict__)

    @staticmethod
    def from_dict(d):
        c = Config()
        c.__dict__.update(d)
        return c

    @staticmethod
    def from_hf(d):
        """The inverse of hf_config: a Config from an exported config.json."""
        return Config(vocab=d["vocab_size"], hidden=d["hidden_size"],
                      layers=d["num_hidden_layers"], heads=d["num_attention_heads"],
                      ffn=d["intermediate_size"], window=d["max_position_embeddings"],
                      mem_layers=d["mem_layers"], theta=d["rope_theta"], eps=d["rms_norm_eps"])

    def hf_config(self):
        """config.json in LongLLaMA's form (what recall's loader reads)."""
        return {
            "architectures": ["LongLlamaForCausalLM"],
            "model_type": "longllama",
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.ffn,
            "max_position_embeddings": self.window,
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.heads,
            "rms_norm_eps": self.eps,
            "rope_theta": self.theta,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "vocab_size": self.vocab,
            "mem_layers": self.mem_layers,
            "mem_dtype": "bfloat16",
            "last_context_length": self.window // 2,
            "mem_positionals": True,
            "mem_attention_grouping": None,
            "torch_attention": False,
            "gradient_checkpoint_every_ith": 1,
        }


def sdpa(q, k, v, attn_mask=None, is_causal=False):
    """F.scaled_dot_product_attention, or the same formula where torch lacks it (1.x)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    s = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return (torch.softmax(s, -1).to(v.dtype) @ v)


def rope_cos_sin(n, dim, theta, device):
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    f = torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv)
    e = torch.cat([f, f], -1)
    return e.cos(), e.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def rope(x, cos, sin):
    """x [..., T, D]; cos/sin [T, D]. HF's rotate-half layout."""
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Block(nn.Module):
    def __init__(self, c, is_mem):
        super().__init__()
        H, D = c.hidden, c.head_dim
        self.c, self.is_mem = c, is_mem
        self.input_layernorm = RMSNorm(H, c.eps)
        self.post_attention_layernorm = RMSNorm(H, c.eps)
        self.q_proj = nn.Linear(H, c.heads * D, bias=False)
        self.k_proj = nn.Linear(H, c.heads * D, bias=False)
        self.v_proj = nn.Linear(H, c.heads * D, bias=False)
        self.o_proj = nn.Linear(c.heads * D, H, bias=False)
        self.gate_proj = nn.Linear(H, c.ffn, bias=False)
        self.up_proj = nn.Linear(H, c.ffn, bias=False)
        self.down_proj = nn.Linear(c.ffn, H, bias=False)

    def mlp(self, x):
        h = self.post_attention_layernorm(x)
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    def forward_train(self, x, cos, sin, neg_idx, mem_mask):
        """x [B, T, H] with T = n_windows * W. neg_idx [B, k] rows whose keys are negatives.
        mem_mask [T, (2 + k) * T] bool (True = attend) for memory layers."""
        c = self.c
        B, T, _ = x.shape
        W, nh, D = c.window, c.heads, c.head_dim
        N = T // W
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, nh, D).transpose(1, 2)  # [B, nh, T, D]
        k = self.k_proj(h).view(B, T, nh, D).transpose(1, 2)
        v = self.v_proj(h).view(B, T, nh, D).transpose(1, 2)
        cosT, sinT = cos.repeat(N, 1), sin.repeat(N, 1)          # local positions t mod W
        qr, kr = rope(q, cosT, sinT), rope(k, cosT, sinT)
        if not self.is_mem:
            qw = qr.view(B, nh, N, W, D).transpose(1, 2).reshape(B * N, nh, W, D)
            kw = kr.view(B, nh, N, W, D).transpose(1, 2).reshape(B * N, nh, W, D)
            vw = v.view(B, nh, N, W, D).transpose(1, 2).reshape(B * N, nh, W, D)
            o = sdpa(qw, kw, vw, is_causal=True)
            o = o.view(B, N, nh, W, D).transpose(1, 2).reshape(B, nh, T, D)
        else:
            # Memory keys: this row's keys unrotated, then each negative row's.
            kn = k[neg_idx].transpose(1, 2).reshape(B, nh, -1, D)   # [B, nh, k*T, D]
            vn = v[neg_idx].transpose(1, 2).reshape(B, nh, -1, D)
            K = torch.cat([kr, k, kn], 2)
            V = torch.cat([v, v, vn], 2)
            o = sdpa(qr, K, V, attn_mask=mem_mask)
        o = o.transpose(1, 2).reshape(B, T, nh * D)
        x = x + self.o_proj(o)
        return x + self.mlp(x)


class FoTModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList([Block(c, l in c.mem_layers) for l in range(c.layers)])
        self.norm = RMSNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.apply(self._init)
        for b in self.layers:  # GPT-2 style: residual writes scaled by depth
            nn.init.normal_(b.o_proj.weight, std=0.02 / math.sqrt(2 * c.layers))
            nn.init.normal_(b.down_proj.weight, std=0.02 / math.sqrt(2 * c.layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def mem_mask(self, T, k, device):
        W = self.c.window
        t = torch.arange(T, device=device)
        win = t // W
        local = (win[:, None] == win[None, :]) & (t[None, :] <= t[:, None])
        earlier = win[None, :] < win[:, None]
        return torch.cat([local, earlier] + [earlier] * k, 1)

    def forward(self, ids, neg_idx):
        """ids [B, T] -> logits [B, T, vocab]."""
        B, T = ids.shape
        c = self.c
        assert T % c.window == 0
        cos, sin = rope_cos_sin(c.window, c.head_dim, c.theta, ids.device)
        mask = self.mem_mask(T, neg_idx.shape[1], ids.device) if c.mem_layers else None
        x = self.embed_tokens(ids)
        for b in self.layers:
            x = b.forward_train(x, cos, sin, neg_idx, mask)
        return self.lm_head(self.norm(x))

    def hf_state(self):
        """Tensors under LongLLaMA's (HF) names."""
        out = {"model.embed_tokens.weight": self.embed_tokens.weight}
        for i, b in enumerate(self.layers):
            p = "model.layers.%d." % i
            out[p + "self_attn.q_proj.weight"] = b.q_proj.weight
            out[p + "self_attn.k_proj.weight"] = b.k_proj.weight
            out[p + "self_attn.v_proj.weight"] = b.v_proj.weight
            out[p + "self_attn.o_proj.weight"] = b.o_proj.weight
            out[p + "mlp.gate_proj.weight"] = b.gate_proj.weight
            out[p + "mlp.up_proj.weight"] = b.up_proj.weight
            out[p + "mlp.down_proj.weight"] = b.down_proj.weight
            out[p + "input_layernorm.weight"] = b.input_layernorm.weight
            out[p + "post_attention_layernorm.weight"] = b.post_attention_layernorm.weight
        out["model.norm.weight"] = self.norm.weight
        out["lm_head.weight"] = self.lm_head.weight
        return out

    def load_hf_state(self, t):
        own = self.hf_state()
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(torch.as_tensor(t[name]).to(p.dtype).view_as(p))


class Stream:
    """LongLLaMA inference on one token stream (REFERENCE.md; same rules as
    tests/ref/longllama_ref.py): windows aligned to the first token, local cache of at
    most W unrotated keys; when full, memory layers move it to memory (mem_dtype), other
    layers drop it; memory keys unrotated; one fp32 softmax over local + memory."""

    def __init__(self, model, mem_dtype=torch.bfloat16, dtype=torch.float32, knn_k=0):
        """knn_k > 0: REFERENCE.md's kNN memory -- each query attends to its knn_k
        highest-scoring memory keys (per head) instead of all of them."""
        self.m, self.c = model, model.c
        self.mem_dtype, self.dt = mem_dtype, dtype
        self.knn_k = knn_k
        dev = next(model.parameters()).device
        self.dev = dev
        nh, D = self.c.heads, self.c.head_dim
        e = lambda: torch.zeros(nh, 0, D, device=dev, dtype=dtype)
        self.ck = [e() for _ in range(self.c.layers)]
        self.cv = [e() for _ in range(self.c.layers)]
        self.mk = [e() for _ in range(self.c.layers)]
        self.mv = [e() for _ in range(self.c.layers)]
        self.cos, self.sin = rope_cos_sin(self.c.window, D, self.c.theta, dev)

    def _move(self):
        for l in range(self.c.layers):
            if l in self.c.mem_layers:
                self.mk[l] = torch.cat([self.mk[l], self.ck[l].to(self.mem_dtype).to(self.dt)], 1)
                self.mv[l] = torch.cat([self.mv[l], self.cv[l].to(self.mem_dtype).to(self.dt)], 1)
            self.ck[l] = self.ck[l][:, :0]
            self.cv[l] = self.cv[l][:, :0]

    @torch.no_grad()
    def feed(self, tokens):
        """Returns the logits after the last token [vocab]."""
        W = self.c.window
        i, last = 0, None
        while i < len(tokens):
            if self.ck[0].shape[1] >= W:
                self._move()
            take = min(W - self.ck[0].shape[1], len(tokens) - i)
            last = self._chunk(tokens[i:i + take])
            i += take
        return last

    def _chunk(self, toks):
        m, c = self.m, self.c
        T = len(toks)
        C = self.ck[0].shape[1]
        nh, D = c.heads, c.head_dim
        x = m.embed_tokens.weight.to(self.dt)[torch.tensor(toks, device=self.dev)]
        qi = torch.arange(T, device=self.dev)[:, None] + C
        kj = torch.arange(C + T, device=self.dev)[None, :]
        masked = kj > qi
        for l, b in enumerate(m.layers):
            w = lambda lin: lin.weight.to(self.dt)
            h = F.rms_norm(x, (c.hidden,), b.input_layernorm.weight.to(self.dt), c.eps) \
                if hasattr(F, "rms_norm") else b.input_layernorm(x)
            q = (h @ w(b.q_proj).T).view(T, nh, D).transpose(0, 1)
            k = (h @ w(b.k_proj).T).view(T, nh, D).transpose(0, 1)
            v = (h @ w(b.v_proj).T).view(T, nh, D).transpose(0, 1)
            self.ck[l] = torch.cat([self.ck[l], k], 1)
            self.cv[l] = torch.cat([self.cv[l], v], 1)
            kl = rope(self.ck[l], self.cos[:C + T], self.sin[:C + T])
            qr = rope(q, self.cos[C:C + T], self.sin[C:C + T])
            s = (qr @ kl.transpose(1, 2)) / math.sqrt(D)
            s = torch.clamp(s, min=-1e6).masked_fill(masked, float("-inf"))
            M = self.mk[l].shape[1]
            if l in c.mem_layers and M:
                sm = torch.clamp((qr @ self.mk[l].transpose(1, 2)) / math.sqrt(D), min=-1e6)
                if self.knn_k and M > self.knn_k:
                    sm, idx = sm.topk(self.knn_k, -1)                      # [nh, T, k]
                    rows = idx + (torch.arange(nh, device=self.dev) * M)[:, None, None]
                    vm = self.mv[l].reshape(nh * M, D)[rows]               # [nh, T, k, D]
                    p = torch.softmax(torch.cat([s, sm], -1).float(), -1).to(self.dt)
                    o = p[..., :C + T] @ self.cv[l] + \
                        (p[..., C + T:, None] * vm).sum(-2)
                else:
                    p = torch.softmax(torch.cat([s, sm], -1).float(), -1).to(self.dt)
                    o = p @ torch.cat([self.cv[l], self.mv[l]], 1)
            else:
                o = torch.softmax(s.float(), -1).to(self.dt) @ self.cv[l]
            o = o.transpose(0, 1).reshape(T, nh * D)
            x = x + o @ w(b.o_proj).T
            h = F.rms_norm(x, (c.hidden,), b.post_attention_layernorm.weight.to(self.dt), c.eps) \
                if hasattr(F, "rms_norm") else b.post_attention_layernorm(x)
            x = x + (F.silu(h @ w(b.gate_proj).T) * (h @ w(b.up_proj).T)) @ w(b.down_proj).T
        x = F.rms_norm(x, (c.hidden,), m.norm.weight.to(self.dt), c.eps) \
            if hasattr(F, "rms_norm") else m.norm(x)
        return (x[-1] @ m.lm_head.weight.to(self.dt).T)


def greedy(model, prompt, n_new, mem_dtype=torch.bfloat16, knn_k=0):
    s = Stream(model, mem_dtype, knn_k=knn_k)
    last = s.feed(prompt)
    out = []
    for i in range(n_new):
        t = int(torch.argmax(last))
        out.append(t)
        if i + 1 < n_new:
            last = s.feed([t])
    return out
