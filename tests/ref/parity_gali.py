#!/usr/bin/python3
"""GALI parity: recall's CPU backend (tests/recall_score --positional gali) against the
independent PyTorch reference tests/ref/gali_ref.py, on tiny-llama (L = 128) and tiny-fot
(LongLLaMA, L = 64, memory layers) from tests/make_tiny_models.sh.

    parity_gali.py --test NAME[,NAME]|all --data DIR --recall-score BIN [--corpus FILE]
                   [--keep DIR]

Tests:
  ref_selfcheck  the reference alone: positions as the issue states them (closed form),
                 GALI within L is plain RoPE, interpolation and the bf16 coefficient
                 change the log-probs, grouping matters
  parity         log-probs at windows of 1x, 2x, 2.5x, 4x and 8x L in both modes, chunked
                 prefill (feeds), decode steps, other local windows and chunk sizes, FoT
                 memory; 1e-4 relative
  noise          --gali-noise: changes the log-probs, the same seed gives the same numbers,
                 another seed others, 0 is off (not a parity check: the reference has none)
  bad_input      options recall must refuse, with the option and the accepted range

Prints one line per check and ends with "N passed, N failed"; exits 1 on any failure.
"""
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gali_ref as G  # noqa: E402
import longllama_ref as R  # noqa: E402
import parity as PAR  # noqa: E402

TOL = 1e-4  # relative on log-probs: |Δ| <= TOL * max(1, |ref|)


class Ctx(PAR.Ctx):
    def run(self, model, args, expect_ok=True):
        cmd = [self.bin, "--model", self.model_dir(model)] + args
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        if expect_ok and r.returncode != 0:
            raise R.RefError(f"recall_score {' '.join(args)} failed ({r.returncode}): "
                             f"{r.stderr.strip()}")
        return r

    def recall_lp(self, model, toks, window=0, feeds=None, mode="paper", w=None, c=None,
                  extra=()):
        tin, lpo = os.path.join(self.tmp, "in.bin"), os.path.join(self.tmp, "lp.bin")
        if os.path.exists(lpo):
            os.remove(lpo)
        np.asarray(toks, dtype="<i4").tofile(tin)
        args = ["--tokens", tin, "--logprobs", lpo, "--positional", "gali",
                "--gali-mode", mode]
        if window:
            args += ["--window", str(window)]
        if feeds:
            args += ["--feeds", ",".join(str(x) for x in feeds)]
        if w is not None:
            args += ["--local-window", str(w)]
        if c is not None:
            args += ["--chunk-size", str(c)]
        self.run(model, args + list(extra))
        return np.fromfile(lpo, dtype="<f4")


def closed_form(T, L, w):
    """The issue's statement of the positions, independent of the reference's loop."""
    if T <= L:
        return np.arange(T, dtype=np.float32)
    g = math.ceil((T - w) / (L - w))
    i = next(i for i in range(L + 1) if (L - i) + g * i >= T)
    old = T - (L - i)
    frac = [np.float32(m // g + (m % g) / g) for m in range(old)]
    return np.array(frac + list(range(i, L)), dtype=np.float32)


def rel_err(rec, ref):
    rec, ref = np.asarray(rec, np.float64), np.asarray(ref, np.float64)
    d = np.abs(rec - ref)
    rel = d / np.maximum(1.0, np.abs(ref))
    return rel.max(), int(np.argmax(rel)), d.max()


def t_ref_selfcheck(ctx):
    bad = []
    for L, w in ((64, 8), (128, 16), (64, 0), (4096, 128), (8, 7)):
        for T in list(range(1, 9 * L, max(1, L // 16))) + [2 * L, 8 * L, L + 1]:
            a = G.positions(T, L, w).numpy()
            b = closed_form(T, L, w)
            ok = (a.shape == b.shape and np.array_equal(a, b) and a.max() < L and
                  np.all(np.diff(a) > 0) and (T <= L or w == 0 or a[-1] == L - 1))
            if not ok:
                bad.append((L, w, T))
    ctx.check(not bad, f"reference positions = the closed form (g, i, integer tail, 1/g "
                       f"spacing), increasing, inside [0, L), an integer tail when w > 0: {bad[:3] or 'all'}")
    m = ctx.model("tiny-llama")
    L = m.cfg["max_pos"]
    toks, _ = ctx.tokens("tiny-llama", 2 * L + 60)
    plain = R.logprobs(m, toks[:L], window=L)
    for mode in ("paper", "reference"):
        g = G.logprobs(m, toks[:L], window=L, mode=mode)
        d = float(np.abs(g - plain).max())
        ctx.check(d < 1e-5, f"{mode}: within L GALI is plain RoPE (max |Δ| {d:.3g})")
    p = G.logprobs(m, toks, window=4 * L, mode="paper")
    r = G.logprobs(m, toks, window=4 * L, mode="reference")
    d = float(np.abs(p[L:] - r[L:]).max())
    ctx.check(d > 1e-3, f"past L, paper and reference (bf16 coefficient) differ by up to "
                        f"{d:.3g} (> 1e-3: the parity checks can tell the modes apart)")
    s = G.Stream(m, 4 * L)
    s.interpolate = False
    ls = torch.log_softmax(s.feed(toks).double(), dim=-1)
    nointerp = ls[torch.arange(len(toks) - 1), torch.tensor(toks[1:])].numpy()
    d = float(np.abs(nointerp[L:] - p[L:]).max())
    ctx.check(d > 1e-3, f"interpolation (c != 0) changes the log-probs by up to {d:.3g} "
                        f"(> 1e-3)")
    q = G.logprobs(m, toks, window=4 * L, feeds=[L + 10, 1])
    d = float(np.abs(q[L + 10:] - p[L + 10:]).max())
    ctx.check(d > 1e-3, f"grouping matters: decode steps vs one prefill differ by {d:.3g}")


def compare(ctx, label, model, n, window, feeds=None, mode="paper", w=None, c=None):
    toks, _ = ctx.tokens(model, n)
    streams = []
    t0 = time.time()
    ref = G.logprobs(ctx.model(model), toks, window, feeds, w, c, mode, stream_out=streams)
    t1 = time.time()
    rec = ctx.recall_lp(model, toks, window, feeds, mode, w, c)
    t2 = time.time()
    L = ctx.model(model).cfg["max_pos"]
    interp = sum(1 for _, i in streams[0].pieces if i)
    desc = (f"{label} {mode}: {n} tokens, window {window} ({window / L:g}x L), feeds "
            f"{feeds or 'one'}, w {w if w is not None else 'default'}, c "
            f"{c if c is not None else 'default'}, {len(streams[0].pieces)} pieces "
            f"({interp} interpolating)")
    if rec.shape != ref.shape or not np.isfinite(rec).all():
        return ctx.check(False, f"{desc}: recall wrote {rec.size} values, expected {ref.size}")
    rel, worst, ab = rel_err(rec, ref)
    return ctx.check(rel <= TOL, f"{desc}: max relative |Δ logprob| {rel:.3g} (token "
                                 f"{worst + 1}), max abs {ab:.3g}, tolerance {TOL:g} "
                                 f"[ref {t1 - t0:.1f}s, recall {t2 - t1:.1f}s]")


def t_parity(ctx):
    L = ctx.model("tiny-llama").cfg["max_pos"]
    for mode in ("paper", "reference"):
        for mult in (1, 2, 2.5, 4, 8):
            win = int(mult * L)
            compare(ctx, "llama", "tiny-llama", min(win + 30, 8 * L), win, mode=mode)
        compare(ctx, "llama chunked prefill", "tiny-llama", 600, 8 * L, [150, 77], mode)
        compare(ctx, "llama decode steps", "tiny-llama", 3 * L, 4 * L, [L + 20, 1], mode)
        compare(ctx, "llama w=0 c=1", "tiny-llama", 2 * L + 40, 4 * L, mode=mode, w=0, c=1)
        compare(ctx, "llama w=100 c=128", "tiny-llama", 5 * L, 8 * L, mode=mode, w=100,
                c=L)
    Lf = ctx.model("tiny-fot").cfg["max_pos"]
    for mode in ("paper", "reference"):
        compare(ctx, "FoT memory", "tiny-fot", 700, int(2.5 * Lf), mode=mode)
        compare(ctx, "FoT memory chunked", "tiny-fot", 600, 4 * Lf, [90, 33], mode)
        compare(ctx, "FoT memory decode", "tiny-fot", 400, 2 * Lf, [100, 1], mode)


def t_noise(ctx):
    L = ctx.model("tiny-llama").cfg["max_pos"]
    toks, _ = ctx.tokens("tiny-llama", 3 * L)
    base = ctx.recall_lp("tiny-llama", toks, 4 * L)
    a = ctx.recall_lp("tiny-llama", toks, 4 * L, extra=["--gali-noise", "0.5", "--seed", "7"])
    b = ctx.recall_lp("tiny-llama", toks, 4 * L, extra=["--gali-noise", "0.5", "--seed", "7"])
    c = ctx.recall_lp("tiny-llama", toks, 4 * L, extra=["--gali-noise", "0.5", "--seed", "8"])
    z = ctx.recall_lp("tiny-llama", toks, 4 * L, extra=["--gali-noise", "0", "--seed", "8"])
    d = float(np.abs(a - base).max())
    ctx.check(d > 1e-3 and np.array_equal(a[:L - 1], base[:L - 1]),
              f"noise 0.5 changes log-probs past L by up to {d:.3g}, none within L")
    ctx.check(np.array_equal(a, b), "the same seed gives the same log-probs")
    ctx.check(float(np.abs(a - c).max()) > 1e-4, "another seed gives other log-probs")
    ctx.check(np.array_equal(z, base), "noise 0 is off")


def expect_refusal(ctx, label, model, args, want):
    tin = os.path.join(ctx.tmp, "in.bin")
    np.asarray([1, 5, 9], dtype="<i4").tofile(tin)
    lpo = os.path.join(ctx.tmp, "bad.bin")
    r = ctx.run(model, ["--tokens", tin, "--logprobs", lpo] + args, expect_ok=False)
    lines = [x for x in r.stderr.strip().splitlines() if not x.lstrip().startswith(
        ("usage:", "[", "recall_score --"))]
    err = " | ".join(lines)
    ok = r.returncode != 0 and all(x in err for x in want)
    ctx.check(ok, f"refused: {label}: rc {r.returncode}, message: {err!r}"
                  f"{'' if ok else f' (wanted {want})'}")


def t_bad_input(ctx):
    g = ["--positional", "gali"]
    expect_refusal(ctx, "local window = L", "tiny-llama", g + ["--local-window", "128"],
                   ["--local-window", "0 <= w < L", "0 to 127", "got 128"])
    expect_refusal(ctx, "local window past L", "tiny-fot", g + ["--local-window", "1000"],
                   ["--local-window", "0 to 63", "got 1000"])
    expect_refusal(ctx, "chunk size past L", "tiny-llama", g + ["--chunk-size", "129"],
                   ["--chunk-size", "1 <= c <= L", "1 to 128", "got 129"])
    expect_refusal(ctx, "unknown mode", "tiny-llama", g + ["--gali-mode", "fast"],
                   ["--gali-mode", "fast", "paper", "reference"])
    expect_refusal(ctx, "negative noise", "tiny-llama", g + ["--gali-noise", "-1"],
                   ["--gali-noise", ">= 0"])
    expect_refusal(ctx, "with a RoPE scaling", "tiny-llama",
                   g + ["--rope-scaling", "linear", "--rope-factor", "2"], ["gali", "linear"])
    expect_refusal(ctx, "with knn memory", "tiny-fot", g + ["--knn", "4"], ["gali", "knn"])
    if os.path.isdir(ctx.model_dir("tiny-clex")):
        expect_refusal(ctx, "on a CLEX checkpoint", "tiny-clex", g,
                       ["trained with CLEX", "gali"])
    toks, _ = ctx.tokens("tiny-llama", 20)
    try:
        ctx.recall_lp("tiny-llama", toks, 1024, w=0, c=1)
        ctx.recall_lp("tiny-llama", toks, 1024, w=127, c=128, mode="reference")
        ctx.check(True, "accepted: w = 0, c = 1 and w = L - 1, c = L, any window")
    except R.RefError as e:
        ctx.check(False, f"accepted cases: {e}")


TESTS = {"ref_selfcheck": t_ref_selfcheck, "parity": t_parity, "noise": t_noise,
         "bad_input": t_bad_input}


def main():
    return PAR.script_main(__doc__, TESTS, "parity_gali", "tiny-llama", Ctx,
                           (R.RefError, OSError, KeyError, subprocess.TimeoutExpired))


if __name__ == "__main__":
    sys.exit(main())
