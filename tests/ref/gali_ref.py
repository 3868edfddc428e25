#!/usr/bin/python3
"""GALI reference: training-free attention-logit interpolation on LongLLaMA/LLaMA, written
from the released code's behaviour (blap/GALI: models/DPI/help_funcs.py construct_new_pi and
get_chunk_size_list, models/DPI/patches/Llama.py attention_score_approximate), on top of
longllama_ref's model and windows.

    gali_ref.py --model DIR --tokens IN.bin [--window W] [--local-window w]
                [--chunk-size c] [--mode paper|reference] [--feeds N[,N...]]
                --logprobs OUT.bin

What it does, in the release's own terms:
  - positions: a list grown group by group as construct_new_pi grows it (each step adds g
    fractional positions i + j/g for the next integer i and retires one integer position,
    until the list covers the target length), then torch.tensor'd to float32;
  - a forward is split like dpi_sample splits a prompt: the first part up to L tokens
    plain, then chunks of c (get_chunk_size_list with an int chunk_coe); each chunk's
    target length is every token up to its end, and its queries take the last positions;
  - scores as attention_score_approximate: attend_floor = q(ceil) . k(ceil),
    attend_ceil = q(ceil) . k(floor), rel_coef = (ceil(p_q) - p_k).remainder(1) in the
    logits' dtype (float32 for mode paper, bfloat16 for mode reference), and
    attend_floor - (-(attend_ceil - attend_floor) * rel_coef);
  - FoT memory keys are unrotated (position 0) against q(ceil), in the same softmax.
"""
import argparse
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import longllama_ref as R  # noqa: E402
from longllama_ref import RefError  # noqa: E402


def default_local_window(L):
    return min(128, L // 8)


def default_chunk(L):
    return max(1, (3 * L) // 4)


def gali_positions(target_len, L, local_window):
    """float32 positions of target_len tokens (target_len > L), grown as the release does."""
    g = math.ceil((target_len - local_window) / (L - local_window))
    interval = 1 / g
    frac = []
    i = 0
    covered = L
    while covered < target_len:
        frac += [i + interval * j for j in range(g)]
        i += 1
        covered = L - i + len(frac)
    tail = list(range(i, L))
    pos = frac[:target_len - len(tail)] + tail
    return torch.tensor(pos, dtype=torch.float32)


def positions(T, L, local_window):
    if T <= L:
        return torch.arange(T, dtype=torch.float32)
    return gali_positions(T, L, local_window)


def chunk_sizes(local, n, L, c):
    """Pieces of a forward of n tokens after `local` in the window."""
    out = []
    done = 0
    while done < n:
        have = local + done
        room = L - have if have < L else c
        k = min(room, n - done)
        out.append(k)
        done += k
    return out


def rope_tables(pos, inv_freq, dt):
    freqs = (inv_freq.float()[:, None] @ pos.float()[None, :]).transpose(0, 1)  # as HF
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dt), emb.sin().to(dt)


class Stream(R.Stream):
    def __init__(self, model, window=0, mem_dtype=None, use_memory=True, local_window=None,
                 chunk=None, mode="paper"):
        super().__init__(model, window, mem_dtype, use_memory)
        L = model.cfg["max_pos"]
        self.w = default_local_window(L) if local_window is None else int(local_window)
        self.c = default_chunk(L) if chunk is None else int(chunk)
        if not 0 <= self.w < L:
            raise RefError(f"local window {self.w} outside [0, {L})")
        if not 1 <= self.c <= L:
            raise RefError(f"chunk size {self.c} outside [1, {L}]")
        if mode not in ("paper", "reference"):
            raise RefError(f"unknown mode {mode}")
        self.coef_dtype = torch.bfloat16 if mode == "reference" else torch.float32
        self.interpolate = True  # False: c = 0 everywhere (the self-check's ablation)
        self.pieces = []  # (T, interpolating) of every piece, for coverage reports

    def _chunk(self, toks):
        L = self.m.cfg["max_pos"]
        out, off = [], 0
        for k in chunk_sizes(self.local_len(), len(toks), L, self.c):
            out.append(self._piece(toks[off:off + k]))
            off += k
        return torch.cat(out)

    def _piece(self, toks):
        m, c = self.m, self.m.cfg
        T = len(toks)
        C = self.local_len()
        n = C + T
        L = c["max_pos"]
        pos = positions(n, L, self.w)
        interp = n > L and self.interpolate
        self.pieces.append((n, interp))
        cos_c, sin_c = rope_tables(pos.ceil(), m.inv_freq, m.dt)
        cos_f, sin_f = rope_tables(pos.floor(), m.inv_freq, m.dt)
        qpos = pos[C:].ceil()
        rel = qpos.to(self.coef_dtype)[:, None] - pos.to(self.coef_dtype)[None, :]
        rel = rel.remainder(1).to(m.dt)                                   # [T, n]
        nh, nkv, D = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        rep = nh // nkv
        x = m.emb[torch.tensor(toks, dtype=torch.long)]
        masked = torch.arange(n)[None, :] > (torch.arange(T)[:, None] + C)
        for l, Lw in enumerate(m.layers):
            q, _ = self.layer_qkv(l, Lw, x)
            qc = R.apply_rope(q, cos_c[C:], sin_c[C:]).permute(1, 0, 2)          # [nh, T, D]
            kc = R.apply_rope(self.cache_k[l], cos_c, sin_c)
            kc = kc.repeat_interleave(rep, dim=1).permute(1, 2, 0)               # [nh, D, n]
            a = torch.matmul(qc, kc) / math.sqrt(D)
            if interp:
                kf = R.apply_rope(self.cache_k[l], cos_f, sin_f)
                kf = kf.repeat_interleave(rep, dim=1).permute(1, 2, 0)
                b = torch.matmul(qc, kf) / math.sqrt(D)
                a = a - (-(b - a) * rel[None])
            s = torch.clamp(a, min=-1e6).masked_fill(masked, float("-inf"))
            # memory keys at position 0: unrotated, against q(ceil), c = 0
            x = self.layer_rest(l, Lw, x, qc, s, 1.0 / math.sqrt(D))
        return m.rmsnorm(x, m.norm) @ m.lm_head.T


def logprobs(model, tokens, window=0, feeds=None, local_window=None, chunk=None,
             mode="paper", mem_dtype=None, use_memory=True, stream_out=None):
    """n-1 log-probs (float64 numpy), the tokens fed in calls of `feeds` sizes."""
    s = Stream(model, window, mem_dtype, use_memory, local_window, chunk, mode)
    if stream_out is not None:
        stream_out.append(s)
    return R.stream_logprobs(s, tokens, feeds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--local-window", type=int)
    ap.add_argument("--chunk-size", type=int)
    ap.add_argument("--mode", default="paper")
    ap.add_argument("--feeds", default="")
    ap.add_argument("--logprobs", required=True)
    a = ap.parse_args(argv)
    try:
        model = R.Model(a.model)
        toks = R.read_tokens(a.tokens)
        feeds = [int(x) for x in a.feeds.split(",") if x]
        lp = logprobs(model, toks, a.window, feeds, a.local_window, a.chunk_size, a.mode)
        lp.astype("<f4").tofile(a.logprobs)
    except (RefError, OSError, KeyError, ValueError) as e:
        print(f"gali_ref: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
