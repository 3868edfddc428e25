#!/usr/bin/python3
"""An independent PyTorch reference of recall's positional schemes for local attention —
Self-Extend and Dual Chunk Attention (DCA) — and of the RoPE scalings (linear, NTK,
dynamic NTK, YaRN), written from docs/REFERENCE.md alone (not from recall's C code), on top
of the LongLLaMA reference in longllama_ref.py (weights, blocks, windows, FoT memory).

Semantics (REFERENCE.md; recall's choices where it is silent):
  - Positions are local indices inside the window (query i, key j, 0-based from the window
    start). Windows align to the stream's first token; when the local cache is full the
    whole cache moves into memory (memory layers) or is dropped (other layers).
  - rope: query i, key j at positions (i, j).
  - self-extend (G, W): for j <= i, i - j < W -> positions (i, j); otherwise query
    i // G + W - W // G and key j // G. Both logits computed, one chosen per pair, ONE
    softmax.
  - dca (S, w; c = S - w): key position j mod c. Query against key j: same chunk -> i mod c;
    the previous chunk -> min(i mod c + c, S); older chunks -> S. Computed as ChunkLlama
    does: three partial attentions (causal intra-chunk, full over the previous chunk, full
    over older chunks), merged per query row by log-sum-exp in fp32 after subtracting the
    max lse. When the window n > L, cos and sin are scaled by 0.05 ln(n / L) + 1 (unless
    chunk_scale is off).
  - RoPE scalings: linear inv_freq /= F; ntk base * F^(d/(d-2)); dynamic base *
    (F n / L - (F - 1))^(d/(d-2)) when n > L, n = the window; yarn: beta_fast 32,
    beta_slow 1, correction range from original_max_position_embeddings (else L), linear
    ramp between interpolated and extrapolated frequencies, 0.1 ln(F) + 1 on cos and sin.
  - FoT memory layers: memory keys are scored as a local key at index 0 would be — key at
    position 0 (unrotated; with a cos/sin scale in effect R(0) multiplies by that scale, as
    for any local key at index 0) — and the query at the position its scheme gives it
    against key index 0: rope i; self-extend i if i < W else i // G + W - W // G; dca
    i mod c in chunk 0, min(i mod c + c, S) in chunk 1, else S. One softmax over local and
    memory keys (dca: memory is a fourth partial merged by lse).

CLI (same options as recall_score):
  positional_ref.py --model DIR --tokens IN.bin [--window N] [--positional rope|self-extend|dca]
      [--group G] [--neighbor W] [--chunk-size S] [--local-window w] [--no-chunk-scale]
      [--rope-scaling none|linear|ntk|dynamic|yarn] [--rope-factor F]
      [--mem-dtype f32|bf16|f16] [--no-memory] [--f64] [--logprobs OUT.bin]
      [--generate N --gen-out OUT.bin]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import longllama_ref as R  # noqa: E402

RefError = R.RefError
SCHEMES = ("rope", "self-extend", "dca")
SCALINGS = ("none", "linear", "ntk", "dynamic", "yarn")
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0


class Model(R.Model):
    """longllama_ref's model, also accepting rope_scaling in config.json (applied here)."""

    def __init__(self, model_dir, f64=False):
        super().__init__(model_dir, f64=f64, allow_rope_scaling=True)
        with open(os.path.join(model_dir, "config.json")) as f:
            raw = json.load(f)
        rs = raw.get("rope_scaling") or {}
        kind = str(rs.get("type") or rs.get("rope_type") or "none")
        if kind == "default":
            kind = "none"
        if kind not in SCALINGS:
            raise RefError(f"config.json: rope_scaling type {kind!r} is not supported")
        self.cfg["rope_scaling"] = kind
        self.cfg["rope_factor"] = float(rs.get("factor", 1.0)) if kind != "none" else 1.0
        self.cfg["rope_original_max_pos"] = int(rs.get("original_max_position_embeddings")
                                                or raw.get("original_max_position_embeddings")
                                                or 0)


class Positional:
    """One session's resolved positional settings (defaults from the config as recall's
    model_stream_opts_resolve documents them), and its RoPE tables."""

    def __init__(self, model, scheme="rope", window=0, group=0, neighbor=0, chunk_size=0,
                 local_window=None, chunk_scale=True, rope_scaling=None, rope_factor=None,
                 mem_key_scaled=True, no_attn_factor=False):
        c = model.cfg
        L = c["max_pos"]
        D = c["head_dim"]
        self.L, self.D = L, D
        if scheme not in SCHEMES:
            raise RefError(f"unknown positional scheme {scheme!r}")
        self.scheme = scheme
        self.window = int(window) if window else L
        if self.window <= 0:
            raise RefError("window must be positive")
        # rope scaling: the command line's, else the config's
        if rope_scaling is None:
            if rope_factor is not None:
                raise RefError("--rope-factor needs --rope-scaling")
            self.scaling, self.factor = c["rope_scaling"], c["rope_factor"]
        else:
            if rope_scaling not in SCALINGS:
                raise RefError(f"unknown rope scaling {rope_scaling!r}")
            self.scaling = rope_scaling
            if rope_scaling == "none":
                self.factor = 1.0
            elif rope_factor is None:
                raise RefError(f"--rope-scaling {rope_scaling} needs --rope-factor")
            else:
                self.factor = float(rope_factor)
        if self.scaling != "none" and not self.factor > 0:
            raise RefError("rope factor must be positive")
        self.orig_L = c.get("rope_original_max_pos") or L
        self.G = self.Wn = 0
        self.S = self.w = self.c = 0
        self.chunk_scale = bool(chunk_scale)
        # Variants for the self-checks only (to show that the tests can tell them apart):
        # memory keys not multiplied by R(0)'s scale; no cos/sin scale at all.
        self.mem_key_scaled = mem_key_scaled
        self.no_attn_factor = no_attn_factor
        # recall's rules (not REFERENCE.md's): a scaling stretches plain RoPE to factor * L
        # tokens; Self-Extend and DCA take no scaling on top.
        if scheme != "rope" and self.scaling != "none":
            raise RefError(f"{scheme} cannot be combined with RoPE scaling {self.scaling}")
        if scheme == "rope":
            # YaRN stretches the original length (which may be shorter than L)
            reach = L if self.scaling == "none" else int(
                self.factor * (self.orig_L if self.scaling == "yarn" else L))
            if self.window > reach:
                raise RefError(f"window {self.window} exceeds what plain RoPE reaches with "
                               f"scaling {self.scaling} ({reach} tokens)")
        elif scheme == "self-extend":
            self.G, self.Wn = int(group), int(neighbor)
            if self.G <= 0 or self.Wn <= 0:
                raise RefError("self-extend needs positive --group and --neighbor")
            reach = (L - self.Wn) * self.G + self.Wn
            if self.Wn > L or self.window > reach:
                raise RefError(f"self-extend with G={self.G}, W={self.Wn} reaches "
                               f"{reach} tokens; window is {self.window}")
        else:
            self.S = int(chunk_size) if chunk_size else 3 * L // 4
            self.w = int(local_window) if local_window else L // 8  # 0: default, as in C
            self.c = self.S - self.w
            if self.S <= 0 or self.S > L or self.w < 0 or self.c <= 0:
                raise RefError(f"dca needs 0 < chunk size <= {L} and 0 <= local window < "
                               f"chunk size (got S={self.S}, w={self.w})")
        self._tables(model)

    # --- RoPE frequencies and tables -----------------------------------------------------

    def inv_freq(self, model):
        """[D/2] in the model dtype; exactly longllama_ref's when unscaled."""
        D, base, F = self.D, model.cfg["theta"], self.factor
        if self.scaling == "none":
            return model.inv_freq
        ar = np.arange(0, D, 2, dtype=np.float64)
        if self.scaling == "linear":
            inv = 1.0 / (base ** (ar / D)) / F
        elif self.scaling == "ntk":
            inv = 1.0 / ((base * F ** (D / (D - 2))) ** (ar / D))
        elif self.scaling == "dynamic":
            n = self.window
            b = base * (F * n / self.L - (F - 1)) ** (D / (D - 2)) if n > self.L else base
            inv = 1.0 / (b ** (ar / D))
        else:  # yarn
            def corr_dim(rot):  # the dim whose wavelength fits `rot` times in orig_L
                return D * math.log(self.orig_L / (rot * 2 * math.pi)) / (2 * math.log(base))
            lo = max(math.floor(corr_dim(YARN_BETA_FAST)), 0)
            hi = min(math.ceil(corr_dim(YARN_BETA_SLOW)), D - 1)
            if lo == hi:
                hi += 0.001
            ramp = np.clip((np.arange(D // 2, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
            extrap_w = 1.0 - ramp  # 1: keep the original (extrapolated) frequency
            pos_freqs = base ** (ar / D)
            inv = (1.0 / (F * pos_freqs)) * (1.0 - extrap_w) + (1.0 / pos_freqs) * extrap_w
        return torch.from_numpy(inv).to(model.dt)

    def attn_factor(self):
        """The factor multiplying cos and sin (so every rotated vector, R(0) included)."""
        m = 1.0
        if self.no_attn_factor:
            return m
        if self.scaling == "yarn" and self.factor > 1:
            m *= 0.1 * math.log(self.factor) + 1.0
        if self.scheme == "dca" and self.chunk_scale and self.window > self.L:
            m *= 0.05 * math.log(self.window / self.L) + 1.0
        return m

    def _tables(self, model):
        P = max(self.window, self.S + 1)
        if self.scheme == "self-extend":  # group logits are computed for every pair
            P = max(P, (self.window - 1) // self.G + self.Wn - self.Wn // self.G + 1)
        pos = torch.arange(P, dtype=model.dt)
        freqs = torch.outer(pos, self.inv_freq(model))
        emb = torch.cat([freqs, freqs], dim=-1)
        m = self.attn_factor()
        self.cos, self.sin = emb.cos(), emb.sin()
        if m != 1.0:
            self.cos, self.sin = self.cos * m, self.sin * m

    def rot(self, x, pos):
        """x [N, heads, D] rotated at per-row positions pos [N] (long)."""
        return R.apply_rope(x, self.cos[pos], self.sin[pos])

    # --- Positions, written per rule (Stream) -------------------------------------------

    def mem_query_pos(self, i):
        """Query position against memory keys, i [T] local indices (REFERENCE.md rule)."""
        if self.scheme == "rope":
            return i
        if self.scheme == "self-extend":
            G, W = self.G, self.Wn
            return torch.where(i < W, i, i // G + W - W // G)
        c, S = self.c, self.S
        ci = i // c
        return torch.where(ci == 0, i % c,
                           torch.where(ci == 1, torch.clamp(i % c + c, max=S),
                                       torch.full_like(i, S)))

    # --- Positions, written per pair (for the naive check) -------------------------------

    def pair_pos(self, li, lj):
        """(query pos, key pos) for local query index li and key index lj (broadcast)."""
        if self.scheme == "rope":
            return li + 0 * lj, lj + 0 * li
        if self.scheme == "self-extend":
            G, W = self.G, self.Wn
            near = (li - lj) < W
            return (torch.where(near, li, li // G + W - W // G),
                    torch.where(near, lj, lj // G))
        c, S = self.c, self.S
        ci, cj = li // c, lj // c
        qp = torch.where(cj == ci, li % c,
                         torch.where(cj == ci - 1, torch.clamp(li % c + c, max=S),
                                     torch.full_like(li + lj, S)))
        return qp, lj % c + 0 * li

    def describe(self):
        s = self.scheme
        if s == "self-extend":
            s += f" G={self.G} W={self.Wn}"
        elif s == "dca":
            s += f" S={self.S} w={self.w}" + ("" if self.chunk_scale else " no-scale")
        if self.scaling != "none":
            s += f" {self.scaling} x{self.factor:g}"
        return s


def _partial(s, mask, v):
    """One partial attention: s [nh, T, N] scores, mask [T, N] keys it covers, v [nh, N, D].
    Returns (o [nh, T, D] normalized within the partial, lse [nh, T]; -inf where the row
    covers no key, and o 0 there)."""
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                      # [nh, T]
    has = torch.isfinite(lse)
    p = torch.exp(s - torch.where(has, lse, torch.zeros_like(lse))[..., None])
    p = torch.where(mask, p, torch.zeros_like(p))
    return torch.matmul(p, v), lse


class Stream(R.Stream):
    """longllama_ref's stream (windows, cache moves, memory) with the local attention of a
    positional scheme."""

    def __init__(self, model, pos, mem_dtype=None, use_memory=True):
        super().__init__(model, pos.window, mem_dtype, use_memory)
        self.p = pos

    def _chunk(self, toks):
        m, c, P = self.m, self.m.cfg, self.p
        T = len(toks)
        C = self.local_len()
        nh, nkv, D = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        rep = nh // nkv
        qi = torch.arange(C, C + T)            # local indices of the queries [T]
        kj = torch.arange(C + T)               # of the keys [C+T]
        x = m.emb[torch.tensor(toks, dtype=torch.long)]
        for l, Lw in enumerate(m.layers):
            q, _ = self.layer_qkv(l, Lw, x)
            mem = None
            if l in self.mem_set and self.use_memory and self.mem_k[l].shape[0] > 0:
                mem = (self.mem_k[l], self.mem_v[l])
            o = self._attend(q, self.cache_k[l], self.cache_v[l], qi, kj, mem, rep)
            x = x + o.permute(1, 0, 2).reshape(T, nh * D) @ Lw["wo"].T
            h = m.rmsnorm(x, Lw["ffn_norm"])
            x = x + (torch.nn.functional.silu(h @ Lw["w_gate"].T) * (h @ Lw["w_up"].T)) \
                @ Lw["w_down"].T
        return m.rmsnorm(x, m.norm) @ m.lm_head.T

    def _attend(self, q, K, V, qi, kj, mem, rep):
        """q [T, nh, D] unrotated queries at local indices qi; K, V [C+T, nkv, D] unrotated
        local keys/values at kj; mem (K_m, V_m) [M, nkv, D] or None. Returns [nh, T, D]."""
        P = self.p
        D = q.shape[-1]
        scale = 1.0 / math.sqrt(D)

        def heads_k(kr):   # [N, nkv, D] -> [nh, D, N]
            return kr.repeat_interleave(rep, dim=1).permute(1, 2, 0)

        def heads_v(vv):   # [N, nkv, D] -> [nh, N, D]
            return vv.repeat_interleave(rep, dim=1).permute(1, 0, 2)

        def score(qr, kh):  # [T, nh, D] x [nh, D, N] -> [nh, T, N], clamped
            return torch.clamp(torch.matmul(qr.permute(1, 0, 2), kh) * scale, min=-1e6)

        causal = kj[None, :] <= qi[:, None]                                # [T, C+T]
        vl = heads_v(V)
        if mem is not None:
            mk, mv = mem
            mkr = P.rot(mk, torch.zeros(mk.shape[0], dtype=torch.long)) if P.mem_key_scaled \
                else mk
            s_mem = score(P.rot(q, P.mem_query_pos(qi)), heads_k(mkr))     # [nh, T, M]
            v_mem = heads_v(mv)

        if P.scheme in ("rope", "self-extend"):
            s = score(P.rot(q, qi), heads_k(P.rot(K, kj)))                 # neighbour logits
            if P.scheme == "self-extend":
                G, W = P.G, P.Wn
                s_grp = score(P.rot(q, qi // G + W - W // G), heads_k(P.rot(K, kj // G)))
                near = (qi[:, None] - kj[None, :]) < W
                s = torch.where(near, s, s_grp)
            s = s.masked_fill(~causal, float("-inf"))
            scores, values = [s], [vl]
            if mem is not None:
                scores.append(s_mem)
                values.append(v_mem)
            p = torch.softmax(torch.cat(scores, dim=-1), dim=-1)           # one softmax
            return torch.matmul(p, torch.cat(values, dim=1))

        # DCA: ChunkLlama's partial attentions merged by log-sum-exp.
        c, S = P.c, P.S
        ci, cj = qi // c, kj // c
        kh = heads_k(P.rot(K, kj % c))                                     # keys rotated once
        parts = [
            _partial(score(P.rot(q, qi % c), kh),
                     (cj[None, :] == ci[:, None]) & causal, vl),           # intra, causal
            _partial(score(P.rot(q, torch.clamp(qi % c + c, max=S)), kh),
                     cj[None, :] == ci[:, None] - 1, vl),                  # successive chunk
            _partial(score(P.rot(q, torch.full_like(qi, S)), kh),
                     cj[None, :] < ci[:, None] - 1, vl),                   # older chunks
        ]
        if mem is not None:
            parts.append(_partial(s_mem, torch.ones(s_mem.shape[1:], dtype=torch.bool), v_mem))
        lse = torch.stack([p[1] for p in parts])                           # [P, nh, T]
        top = lse.max(dim=0).values                                        # finite: intra
        wts = torch.exp(lse - top)                                         # 0 for empty parts
        o = sum(wts[n][..., None] * parts[n][0] for n in range(len(parts)))
        return o / wts.sum(dim=0)[..., None]


# ---------------------------------------------------------------------------------------
# Entry points.

def logprobs(model, pos, tokens, mem_dtype=None, use_memory=True):
    s = Stream(model, pos, mem_dtype, use_memory)
    logits = s.feed(tokens).to(torch.float64)
    ls = torch.log_softmax(logits, dim=-1)
    nxt = torch.tensor([int(t) for t in tokens[1:]], dtype=torch.long)
    return ls[torch.arange(len(tokens) - 1), nxt].numpy()


def generate(model, pos, prompt, n_new, mem_dtype=None, use_memory=True, margins=None):
    s = Stream(model, pos, mem_dtype, use_memory)
    last = s.feed(prompt)[-1]
    out = []
    for i in range(n_new):
        t = R.greedy_argmax(last)
        if margins is not None:
            top2 = torch.topk(last, 2).values
            margins.append(float(top2[0] - top2[1]))
        out.append(t)
        if i + 1 < n_new:
            last = s.feed([t])[-1]
    return out


def naive_logits(model, pos, tokens, mem_dtype=None, use_memory=True):
    """The whole sequence at once, per (query, key) pair, ONE masked softmax: token i
    (window i // N, local index i mod N) sees keys j <= i of its window with the positions
    pos.pair_pos gives the pair, and in memory layers every key of earlier windows (rounded
    to mem_dtype) scored as a key at local index 0: key position 0, query position
    pair_pos(i mod N, 0). Independent of Stream's caches, partials and lse merge."""
    m, c = model, model.cfg
    n = len(tokens)
    N = pos.window
    md = mem_dtype if mem_dtype is not None else c["mem_dtype"]
    nh, nkv, D = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    idx = torch.arange(n)
    li, win = idx % N, idx // N
    local = (win[:, None] == win[None, :]) & (idx[None, :] <= idx[:, None])   # [n, n]
    earlier = win[None, :] < win[:, None]
    qp, kp = pos.pair_pos(li[:, None], li[None, :])                          # [n, n]
    qp_mem, _ = pos.pair_pos(li[:, None], torch.zeros(1, 1, dtype=torch.long))  # [n, 1]
    qp_mem = qp_mem.expand(n, n)
    npos = pos.cos.shape[0]
    x = m.emb[torch.tensor(tokens, dtype=torch.long)]
    for l, Lw in enumerate(m.layers):
        use_mem = l in c["mem_layers"] and use_memory
        h = m.rmsnorm(x, Lw["attn_norm"])
        q = (h @ Lw["wq"].T).view(n, nh, D)
        k = (h @ Lw["wk"].T).view(n, nkv, D)
        v = (h @ Lw["wv"].T).view(n, nkv, D)
        km, vm = k.to(md).to(m.dt), v.to(md).to(m.dt)
        if pos.mem_key_scaled:
            km = R.apply_rope(km, pos.cos[:1].expand(n, D), pos.sin[:1].expand(n, D))
        o = torch.empty(n, nh, D, dtype=m.dt)
        for hh in range(nh):
            g = hh * nkv // nh
            # every vector rotated at every position: [npos, n, D]
            qa = R.apply_rope(q[:, hh][None].expand(npos, n, D).reshape(npos * n, 1, D),
                              pos.cos.repeat_interleave(n, 0), pos.sin.repeat_interleave(n, 0)
                              ).view(npos, n, D)
            ka = R.apply_rope(k[:, g][None].expand(npos, n, D).reshape(npos * n, 1, D),
                              pos.cos.repeat_interleave(n, 0), pos.sin.repeat_interleave(n, 0)
                              ).view(npos, n, D)
            s = torch.full((n, n), float("-inf"), dtype=m.dt)
            qsel = qa[qp.clamp(max=npos - 1), idx[:, None]]                   # [n, n, D]
            ksel = ka[kp.clamp(max=npos - 1), idx[None, :]]
            s_loc = torch.clamp((qsel * ksel).sum(-1) / math.sqrt(D), min=-1e6)
            s = torch.where(local, s_loc, s)
            if use_mem:
                qsel = qa[qp_mem.clamp(max=npos - 1), idx[:, None]]
                s_mem = torch.clamp((qsel * km[:, g][None, :, :]).sum(-1) / math.sqrt(D),
                                    min=-1e6)
                s = torch.where(earlier, s_mem, s)
            p = torch.softmax(s, -1)
            o[:, hh] = (p * local) @ v[:, g] + ((p * earlier) @ vm[:, g] if use_mem else 0)
        x = x + o.reshape(n, nh * D) @ Lw["wo"].T
        h = m.rmsnorm(x, Lw["ffn_norm"])
        x = x + (torch.nn.functional.silu(h @ Lw["w_gate"].T) * (h @ Lw["w_up"].T)) \
            @ Lw["w_down"].T
    return m.rmsnorm(x, m.norm) @ m.lm_head.T


def add_cli_options(ap):
    """The positional options, shared with recall_score's command line."""
    ap.add_argument("--window", type=int, default=0, help="tokens per window (default L)")
    ap.add_argument("--positional", choices=SCHEMES, default="rope")
    ap.add_argument("--group", type=int, default=0, help="self-extend group size G")
    ap.add_argument("--neighbor", type=int, default=0, help="self-extend neighbour window W")
    ap.add_argument("--chunk-size", type=int, default=0, help="dca chunk size S (3L/4)")
    ap.add_argument("--local-window", type=int, default=None, help="dca local window w (L/8)")
    ap.add_argument("--no-chunk-scale", action="store_true",
                    help="dca: no ChunkLlama cos/sin scaling")
    ap.add_argument("--rope-scaling", choices=SCALINGS)
    ap.add_argument("--rope-factor", type=float)


def positional_from_args(model, a):
    return Positional(model, a.positional, a.window, a.group, a.neighbor, a.chunk_size,
                      a.local_window, not a.no_chunk_scale, a.rope_scaling, a.rope_factor)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="int32 LE token ids")
    add_cli_options(ap)
    ap.add_argument("--mem-dtype", choices=["f32", "bf16", "f16"])
    ap.add_argument("--no-memory", action="store_true", help="memory layers ignore memory")
    ap.add_argument("--f64", action="store_true", help="compute in float64")
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
        pos = positional_from_args(model, a)
        toks = R.read_tokens(a.tokens)
        md = R.MEM_DTYPES[a.mem_dtype] if a.mem_dtype else None
        if a.logprobs:
            logprobs(model, pos, toks, md, not a.no_memory).astype("<f4").tofile(a.logprobs)
        if a.generate:
            g = generate(model, pos, toks, a.generate, md, not a.no_memory)
            np.asarray(g, dtype="<i4").tofile(a.gen_out)
    except (RefError, OSError, KeyError, ValueError) as e:
        print(f"positional_ref: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
