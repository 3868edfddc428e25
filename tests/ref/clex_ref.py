#!/usr/bin/python3
"""An independent PyTorch reference of CLEX (continuous length extrapolation: a learned
ODE over RoPE frequencies that checkpoints are fine-tuned with) as DAMO-NLP-SG's released
code computes it, on top of the LongLLaMA reference in longllama_ref.py (weights, blocks,
FoT memory). Written from the released code's behaviour (CLEX/clex_layer.py,
CLEX/llama/modeling_llama_clex.py, configuration_llama_clex.py; torchdiffeq's fixed-grid
RK4), not from recall's C code; torchdiffeq itself is not used (not in Debian): the solver
is written out here.

Facts taken from the released code:
  - config.json rope_scaling {"type": "clex", "max_factor": M, "param_factor": p,
    "act": "silu"|"tanh", "time_dt": dt}; first releases have no act / time_dt (silu, 0.01);
    top-level log_scale, true when absent (CLEXLlamaConfig's default).
  - weights model.clex_layer.inv_freq [d/2] (a registered buffer: saved with the model),
    model.clex_layer.proj_func.ode_up_proj [d/2, p*d], ode_down_proj [p*d, d/2].
  - ODELinear.forward(t, x): time = ntk_inv_freq(t) with base 10000 always (the default
    argument of get_time_embedding, whatever rope_theta is), alpha = 2t - 1 (1 below t = 1),
    ntk_inv_freq = 1 / (10000 alpha^(d/(d-2)))^(2i/d),
    delta = -2(2i)/(d-2) / (10000^(2i/d) alpha^(2i/(d-2) + 1));
    dx/dt = act((x + log ntk_inv_freq) @ U) @ D + delta / ntk_inv_freq.
  - odeint(func, log inv_freq, arange(1, M + 1), method rk4, step_size dt): torchdiffeq's
    fixed grid t0 + k dt (float32, ceil((t1 - t0) / dt + 1) points, the last set to t1),
    RK4 3/8 rule per step, linear interpolation onto each output time from the step whose
    end first reaches it. Rows exp(z(t)); t = 1 uses the inv_freq buffer itself. Here in
    float64 (the release works in float32 and is only ~3e-5 exact), rounded to float32.
  - per forward: n = past + new keys, t = ceil(n / L) (capped at M, which recall refuses
    to reach past), cos/sin of row t at positions 0 .. n-1, keys cached unrotated and all
    rotated with row t, queries at their positions; with log_scale, queries times
    ln(n) / ln(L) (the flash-attention path; at every n).
  - recall's rules where the release has no FoT: memory keys (unrotated) scored as a local
    key at index 0, the query rotated with row t at its position and scaled by the same
    factor; n counts local keys only; windows as longllama_ref (the whole cache moves).

CLI:
  clex_ref.py --model DIR --tokens IN.bin [--window N] [--feeds N[,N...]]
              [--logprobs OUT.bin] [--table OUT.bin] [--mem-dtype f32|bf16|f16]
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


class Model(R.Model):
    """longllama_ref's model plus CLEX's config fields, ODE weights and frequency table."""

    def __init__(self, model_dir, f64=False, table_f64=True):
        super().__init__(model_dir, f64=f64, allow_rope_scaling=True)
        with open(os.path.join(model_dir, "config.json")) as f:
            raw = json.load(f)
        rs = raw.get("rope_scaling") or {}
        if rs.get("type") != "clex":
            raise RefError("config.json: rope_scaling type is not clex")
        c = self.cfg
        c["clex_M"] = int(rs["max_factor"])
        c["clex_p"] = int(rs["param_factor"])
        c["clex_act"] = rs.get("act", "silu")
        c["clex_dt"] = float(rs.get("time_dt", 0.01))
        c["log_scale"] = bool(raw.get("log_scale", True))
        if c["clex_act"] not in ("silu", "tanh"):
            raise RefError(f"act must be silu or tanh, got {c['clex_act']!r}")
        t = R.load_tensors(model_dir)
        D = c["head_dim"]
        if "model.clex_layer.inv_freq" in t:
            self.clex_inv_freq = torch.from_numpy(t["model.clex_layer.inv_freq"].copy())
        else:  # the released module's buffer: rope_theta's frequencies in float32
            self.clex_inv_freq = 1.0 / (c["theta"] ** (torch.arange(0, D, 2).float() / D))
        self.clex_up = torch.from_numpy(t["model.clex_layer.proj_func.ode_up_proj"].copy())
        self.clex_down = torch.from_numpy(t["model.clex_layer.proj_func.ode_down_proj"].copy())
        self.table = clex_table(self.clex_inv_freq, self.clex_up, self.clex_down, D,
                                c["clex_M"], c["clex_act"], c["clex_dt"])


# ---------------------------------------------------------------------------------------
# The ODE and its solution.

def ode_rhs(t, x, up, down, dim, act, base=10000.0, learned=True):
    """ODELinear.forward in float64. t a python float, x [d/2]."""
    alpha = 1.0 if t < 1 else 2.0 * t - 1.0
    index = torch.arange(0, dim, 2, dtype=torch.float64)
    ntk_base = base * alpha ** (dim / (dim - 2))
    ntk_inv_freq = 1.0 / (ntk_base ** (index / dim))
    delta_ntk = -2 * index / (dim - 2) * 1 / (base ** (index / dim) * (alpha ** (index / (dim - 2) + 1)))
    x = x + torch.log(ntk_inv_freq)
    f = torch.tanh if act == "tanh" else torch.nn.functional.silu
    out = delta_ntk / ntk_inv_freq
    if learned:
        out = out + f(x @ up) @ down
    return out


def fixed_grid(t_start, t_end, step):
    """torchdiffeq's grid from a float32 time tensor: float32 arithmetic throughout."""
    ts = torch.tensor([t_start, t_end], dtype=torch.float32)
    n = int(torch.ceil((ts[1] - ts[0]) / step + 1).item())
    g = torch.arange(0, n, dtype=torch.float32) * step + ts[0]
    g[-1] = ts[1]
    return g


def rk38_step(f, t0, dt, y0):
    """One RK4 step in the 3/8-rule form (torchdiffeq's rk4_alt_step_func)."""
    k1 = f(t0, y0)
    k2 = f(t0 + dt / 3.0, y0 + dt * k1 / 3.0)
    k3 = f(t0 + dt * 2.0 / 3.0, y0 + dt * (k2 - k1 / 3.0))
    k4 = f(t0 + dt, y0 + dt * (k1 - k2 + k3))
    return y0 + (k1 + 3.0 * (k2 + k3) + k4) * dt / 8.0


def solve(f, y0, times, step):
    """z at each of `times` (ascending, times[0] the start), fixed grid + linear interp."""
    grid = fixed_grid(float(times[0]), float(times[-1]), step).double()
    out = [y0]
    j = 1
    y = y0
    for a, b in zip(grid[:-1].tolist(), grid[1:].tolist()):
        y1 = rk38_step(f, a, b - a, y)
        while j < len(times) and b >= times[j]:
            t = float(times[j])
            out.append(y if t == a else y1 if t == b else y + (t - a) / (b - a) * (y1 - y))
            j += 1
        y = y1
    return torch.stack(out)


def clex_table(inv_freq, up, down, dim, M, act, dt, learned=True, step=None):
    """[M, d/2] float32: row t-1 = the inverse frequencies at t (row 0: inv_freq itself)."""
    up, down = up.double(), down.double()
    f = lambda t, x: ode_rhs(t, x, up, down, dim, act, learned=learned)
    if M == 1:
        return inv_freq.float().clone()[None]
    times = [float(t) for t in range(1, M + 1)]
    z = solve(f, torch.log(inv_freq.double()), times, step if step is not None else dt)
    tab = torch.exp(z).float()
    tab[0] = inv_freq.float()
    return tab


# ---------------------------------------------------------------------------------------
# The stream: windows as longllama_ref, each forward with its own row t.

class Stream(R.Stream):
    def __init__(self, model, window=0, mem_dtype=None, use_memory=True):
        super().__init__(model, window, mem_dtype, use_memory)
        c = model.cfg
        if self.W > c["clex_M"] * c["max_pos"]:
            raise RefError(f"window {self.W} exceeds max_factor x L = "
                           f"{c['clex_M'] * c['max_pos']}")
        self.ts = []  # the row t of every forward, for the tests' coverage reports

    def _chunk(self, toks):
        m, c = self.m, self.m.cfg
        T = len(toks)
        C = self.local_len()
        n = C + T
        L = c["max_pos"]
        t = min(-(-n // L), c["clex_M"])
        self.ts.append(t)
        pos = torch.arange(n, dtype=torch.float32)
        freqs = torch.outer(pos, m.table[t - 1]).to(m.dt)      # float32 product, as HF
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        qs = 1.0
        if c["log_scale"]:
            qs = float(np.float32(math.log(n) / math.log(L)))
        nh, nkv, D = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        rep = nh // nkv
        scale = 1.0 / math.sqrt(D)
        x = m.emb[torch.tensor(toks, dtype=torch.long)]
        masked = torch.arange(n)[None, :] > (torch.arange(T)[:, None] + C)
        for l, Lw in enumerate(m.layers):
            q, _ = self.layer_qkv(l, Lw, x)
            kr = R.apply_rope(self.cache_k[l], cos, sin)            # every key with row t
            qr = R.apply_rope(q, cos[C:], sin[C:]) * qs
            qh = qr.permute(1, 0, 2)
            kh = kr.repeat_interleave(rep, dim=1).permute(1, 2, 0)
            s = torch.clamp(torch.matmul(qh, kh) * scale, min=-1e6).masked_fill(masked, float("-inf"))
            x = self.layer_rest(l, Lw, x, qh, s, scale)
        return m.rmsnorm(x, m.norm) @ m.lm_head.T


def logprobs(model, tokens, window=0, feeds=None, mem_dtype=None, use_memory=True,
             stream_out=None):
    """n-1 log-probs (float64 numpy), the tokens fed in calls of `feeds` sizes."""
    s = Stream(model, window, mem_dtype, use_memory)
    if stream_out is not None:
        stream_out.append(s)
    return R.stream_logprobs(s, tokens, feeds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens")
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--feeds", default="")
    ap.add_argument("--mem-dtype", choices=["f32", "bf16", "f16"])
    ap.add_argument("--logprobs")
    ap.add_argument("--table")
    a = ap.parse_args(argv)
    try:
        model = Model(a.model)
        if a.table:
            model.table.numpy().astype("<f4").tofile(a.table)
        if a.logprobs:
            toks = R.read_tokens(a.tokens)
            feeds = [int(x) for x in a.feeds.split(",") if x]
            md = R.MEM_DTYPES[a.mem_dtype] if a.mem_dtype else None
            logprobs(model, toks, a.window, feeds, md).astype("<f4").tofile(a.logprobs)
    except (RefError, OSError, KeyError, ValueError) as e:
        print(f"clex_ref: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
