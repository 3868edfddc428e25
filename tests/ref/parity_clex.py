#!/usr/bin/python3
"""CLEX parity: recall's CPU backend (tests/recall_score) against the independent PyTorch
reference tests/ref/clex_ref.py, on the tiny CLEX checkpoints (tests/make_tiny_models.sh:
tiny-clex, plain LLaMA, p = 2, silu, log_scale; tiny-clex-fot, LongLLaMA, p = 1, tanh, no
log_scale) and copies of them whose config.json says otherwise.

    parity_clex.py --test NAME[,NAME]|all --data DIR --recall-score BIN [--corpus FILE]
                   [--keep DIR]

Tests:
  ref_selfcheck  the reference alone: its RK4 converges (dt / 8 agrees to ~dt^4), the
                 learned term moves the table (so a loader that ignores the ODE fails), the
                 stored inv_freq is not rope_theta's (so one that recomputes it fails), row t
                 changes the log-probs, log_scale changes them
  table          recall's frequency table (--clex-table) against the reference's
  parity         log-probs at windows of 1x, 2x, 2.5x, 4x and 8x L, one-shot, chunked
                 prefill and decode steps, silu/tanh, p = 1/2, with and without log_scale,
                 first-release configs (no act, no time_dt), FoT memory
  bad_input      configs and checkpoints recall must refuse, and the messages it gives

Prints one line per check and ends with "N passed, N failed"; exits 1 on any failure.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clex_ref as X  # noqa: E402
import longllama_ref as R  # noqa: E402
import parity as PAR  # noqa: E402

TOL = 1e-4          # relative on log-probs: |Δ| <= TOL * max(1, |ref|)
TABLE_TOL = 2e-7    # both sides compute in double and round once to float32
L_CLEX = 64         # max_position_embeddings of both tiny CLEX checkpoints


class Ctx(PAR.Ctx):
    def __init__(self, a, tmp):
        super().__init__(a, tmp)
        self._cmodels = {}

    def model(self, name, f64=False):  # PAR.Ctx.tokens reads the vocabulary from it
        return self.cmodel(name)

    def cmodel(self, name):
        d = self.model_dir(name)
        if d not in self._cmodels:
            self._cmodels[d] = X.Model(d)
        return self._cmodels[d]

    def variant(self, base, name, edit=None, drop=(), reshape=None):
        """A copy of checkpoint `base` in tmp with config.json edited by edit(cfg), and its
        safetensors rewritten without the tensors in drop / with reshape {name: array}."""
        d = os.path.join(self.tmp, name)
        if os.path.exists(d):
            shutil.rmtree(d)
        src = self.model_dir(base)
        os.makedirs(d)
        for f in os.listdir(src):
            if f not in ("config.json", "model.safetensors"):
                shutil.copy(os.path.join(src, f), d)
        with open(os.path.join(src, "config.json")) as f:
            cfg = json.load(f)
        if edit:
            edit(cfg)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        t = R.load_tensors(src)
        for k in drop:
            t.pop(k)
        t.update(reshape or {})
        write_safetensors(os.path.join(d, "model.safetensors"), t)
        return d

    def run(self, model, args, expect_ok=True):
        cmd = [self.bin, "--model", self.model_dir(model)] + args
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        if expect_ok and r.returncode != 0:
            raise R.RefError(f"recall_score {' '.join(args)} failed ({r.returncode}): "
                             f"{r.stderr.strip()}")
        return r

    def recall_lp(self, model, toks, window=0, feeds=None):
        tin, lpo = os.path.join(self.tmp, "in.bin"), os.path.join(self.tmp, "lp.bin")
        if os.path.exists(lpo):
            os.remove(lpo)
        np.asarray(toks, dtype="<i4").tofile(tin)
        args = ["--tokens", tin, "--logprobs", lpo]
        if window:
            args += ["--window", str(window)]
        if feeds:
            args += ["--feeds", ",".join(str(x) for x in feeds)]
        self.run(model, args)
        return np.fromfile(lpo, dtype="<f4")

    def recall_table(self, model):
        tin, out = os.path.join(self.tmp, "in.bin"), os.path.join(self.tmp, "table.bin")
        np.asarray([1, 2, 3], dtype="<i4").tofile(tin)
        self.run(model, ["--tokens", tin, "--clex-table", out])
        return np.fromfile(out, dtype="<f4")


def write_safetensors(path, tensors):
    hdr, off, blobs = {}, 0, []
    for k, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        hdr[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def rel_err(rec, ref):
    rec, ref = np.asarray(rec, np.float64), np.asarray(ref, np.float64)
    d = np.abs(rec - ref)
    rel = d / np.maximum(1.0, np.abs(ref))
    return rel.max(), int(np.argmax(rel)), d.max()


def set_cfg(**kw):
    """A config edit: top-level keys, and rope_scaling.KEY for rs_KEY (None removes)."""
    def edit(cfg):
        for k, v in kw.items():
            obj, key = (cfg["rope_scaling"], k[3:]) if k.startswith("rs_") else (cfg, k)
            if v is None:
                obj.pop(key, None)
            else:
                obj[key] = v
    return edit


# ---------------------------------------------------------------------------------------
# Tests

def t_ref_selfcheck(ctx):
    m = ctx.cmodel("tiny-clex")
    c = m.cfg
    D, M, dt = c["head_dim"], c["clex_M"], c["clex_dt"]
    tab = m.table.double()
    fine = X.clex_table(m.clex_inv_freq, m.clex_up, m.clex_down, D, M, c["clex_act"], dt,
                        step=dt / 8).double()
    conv = float(((tab - fine).abs() / fine).max())
    ctx.check(conv < 1e-6, f"RK4 at dt={dt} vs dt/8: max relative difference {conv:.3g} "
                           f"(< 1e-6: the integrator converges)")
    coarse = X.clex_table(m.clex_inv_freq, m.clex_up, m.clex_down, D, M, c["clex_act"], dt,
                          step=0.5).double()
    cd = float(((tab - coarse).abs() / fine).max())
    ctx.check(cd > 1e-5, f"... while a step of 0.5 is off by {cd:.3g} (> 1e-5: the table "
                         f"check can tell steps apart)")
    nolearn = X.clex_table(m.clex_inv_freq, m.clex_up, m.clex_down, D, M, c["clex_act"], dt,
                           learned=False).double()
    moved = float(((tab - nolearn).abs() / nolearn).max())
    ctx.check(moved > 0.5, f"the learned term moves the table by up to {moved:.3g} (relative; "
                           f"> 0.5: a loader that drops it fails)")
    theta = 1.0 / (c["theta"] ** (torch.arange(0, D, 2).double() / D))
    off = float(((m.clex_inv_freq.double() - theta).abs() / theta).max())
    ctx.check(off > 0.05, f"stored inv_freq differs from rope_theta's by up to {off:.3g} "
                          f"(relative; > 0.05)")
    ctx.check(torch.equal(m.table[0], m.clex_inv_freq.float()),
              "row t = 1 is the stored inv_freq itself")
    toks, _ = ctx.tokens("tiny-clex", 200)
    # the same tokens in one forward (t = 4 for 200 keys) and in L-sized feeds (t grows)
    a = X.logprobs(m, toks, window=256)
    b = X.logprobs(m, toks, window=256, feeds=[64])
    d = float(np.abs(a[64:] - b[64:]).max())
    ctx.check(d > 1e-2, f"grouping matters under CLEX: one 200-token forward vs 64-token "
                        f"feeds differ by {d:.3g} past the first feed (> 1e-2)")
    ctx.check(float(np.abs(a[:63] - b[:63]).max()) > 1e-2,
              "... and inside the first feed too (row 1 vs row 4)")
    nl = X.Model(ctx.variant("tiny-clex", "nolog", set_cfg(log_scale=False)))
    e = float(np.abs(X.logprobs(nl, toks, window=256) - a).max())
    ctx.check(e > 1e-2, f"log_scale changes the log-probs by up to {e:.3g} (> 1e-2)")


def t_table(ctx):
    cases = [
        ("tiny-clex", "tiny-clex"),
        ("tiny-clex-fot", "tiny-clex-fot"),
        ("first release (no act, no time_dt: silu, 0.01)",
         ctx.variant("tiny-clex-fot", "first", set_cfg(rs_act=None, rs_time_dt=None))),
        ("max_factor 16, time_dt 0.03 (grid not landing on integers)",
         ctx.variant("tiny-clex", "m16", set_cfg(rs_max_factor=16, rs_time_dt=0.03))),
        ("max_factor 1", ctx.variant("tiny-clex", "m1", set_cfg(rs_max_factor=1))),
        ("no inv_freq tensor (rope_theta's frequencies)",
         ctx.variant("tiny-clex", "noinv", drop=["model.clex_layer.inv_freq"])),
    ]
    for label, d in cases:
        ref = X.Model(ctx.model_dir(d)).table.numpy()
        rec = ctx.recall_table(d).reshape(ref.shape)
        err = float(np.max(np.abs(rec.astype(np.float64) / ref - 1)))
        ctx.check(err <= TABLE_TOL, f"table {label}: {ref.shape[0]} rows, max relative "
                                    f"difference {err:.3g} (tolerance {TABLE_TOL:g})")


def compare(ctx, label, model, n, window, feeds=None):
    toks, _ = ctx.tokens("tiny-clex", n)
    streams = []
    t0 = time.time()
    ref = X.logprobs(ctx.cmodel(model), toks, window, feeds, stream_out=streams)
    t1 = time.time()
    rec = ctx.recall_lp(model, toks, window, feeds)
    t2 = time.time()
    ts = sorted(set(streams[0].ts))
    desc = (f"{label}: {n} tokens, window {window} ({window / L_CLEX:g}x L), "
            f"feeds {feeds or 'one'}, rows t {ts}")
    if rec.shape != ref.shape or not np.isfinite(rec).all():
        return ctx.check(False, f"{desc}: recall wrote {rec.size} values (finite: "
                                f"{np.isfinite(rec).all()}), expected {ref.size}")
    rel, worst, ab = rel_err(rec, ref)
    return ctx.check(rel <= TOL, f"{desc}: max relative |Δ logprob| {rel:.3g} (token "
                                 f"{worst + 1}), max abs {ab:.3g}, tolerance {TOL:g} "
                                 f"[ref {t1 - t0:.1f}s, recall {t2 - t1:.1f}s]")


def t_parity(ctx):
    L = L_CLEX
    variants = [
        ("p=2 silu log_scale", "tiny-clex"),
        ("p=2 silu no log_scale", ctx.variant("tiny-clex", "v-nolog", set_cfg(log_scale=False))),
        ("p=2 tanh log_scale", ctx.variant("tiny-clex", "v-tanh", set_cfg(rs_act="tanh"))),
        ("p=2 first release, log_scale absent",
         ctx.variant("tiny-clex", "v-first", set_cfg(rs_act=None, rs_time_dt=None,
                                                     log_scale=None))),
    ]
    for label, model in variants:
        for mult in (1, 2, 2.5, 4, 8):
            w = int(mult * L)
            compare(ctx, label, model, min(w + 40, 560), w)          # one forward per window
        compare(ctx, label, model, 300, 4 * L, feeds=[50, 23])       # chunked prefill
        compare(ctx, label, model, 200, 4 * L, feeds=[120, 1])       # decode across t=2..4
    # FoT: p = 1, tanh, log_scale off (the checkpoint) and on; memory across windows.
    fot = [("FoT p=1 tanh no log_scale", "tiny-clex-fot"),
           ("FoT p=1 tanh log_scale", ctx.variant("tiny-clex-fot", "f-log",
                                                  set_cfg(log_scale=True))),
           ("FoT p=1 silu log_scale", ctx.variant("tiny-clex-fot", "f-silu",
                                                  set_cfg(log_scale=True, rs_act="silu")))]
    for label, model in fot:
        compare(ctx, label, model, 3 * L + 10, L)                    # 1x: memory, t = 1
        compare(ctx, label, model, 400, int(2.5 * L))                # 2.5x with memory
        compare(ctx, label, model, 560, 8 * L // 2, feeds=[100, 37])  # 4x, chunked
        compare(ctx, label, model, 300, 2 * L, feeds=[150, 1])       # decode, memory


def expect_refusal(ctx, label, model, args, want):
    tin = os.path.join(ctx.tmp, "in.bin")
    np.asarray([1, 5, 9], dtype="<i4").tofile(tin)
    lpo = os.path.join(ctx.tmp, "bad.bin")
    r = ctx.run(model, ["--tokens", tin, "--logprobs", lpo] + args, expect_ok=False)
    err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    ok = r.returncode != 0 and all(w in err for w in want)
    ctx.check(ok, f"refused: {label}: rc {r.returncode}, message: {err!r}"
                  f"{'' if ok else f' (wanted {want})'}")


def t_bad_input(ctx):
    t = R.load_tensors(ctx.model_dir("tiny-clex"))
    up = t["model.clex_layer.proj_func.ode_up_proj"]
    cases = [
        ("missing ode_up_proj", ctx.variant("tiny-clex", "b1",
                                            drop=["model.clex_layer.proj_func.ode_up_proj"]),
         ["missing tensor", "model.clex_layer.proj_func.ode_up_proj"]),
        ("missing ode_down_proj", ctx.variant("tiny-clex", "b2",
                                              drop=["model.clex_layer.proj_func.ode_down_proj"]),
         ["missing tensor", "ode_down_proj"]),
        ("ode_up_proj of the wrong shape (p=1 weights, config p=2)",
         ctx.variant("tiny-clex", "b3", reshape={
             "model.clex_layer.proj_func.ode_up_proj": up[:, :up.shape[1] // 2]}),
         ["ode_up_proj", "shape [8, 16]", "expected [8, 32]"]),
        ("inv_freq of the wrong shape",
         ctx.variant("tiny-clex", "b4", reshape={
             "model.clex_layer.inv_freq": t["model.clex_layer.inv_freq"][:4]}),
         ["model.clex_layer.inv_freq", "shape [4]"]),
        ("inv_freq not positive",
         ctx.variant("tiny-clex", "b5", reshape={
             "model.clex_layer.inv_freq": -t["model.clex_layer.inv_freq"]}),
         ["model.clex_layer.inv_freq", "positive"]),
        ("unknown act", ctx.variant("tiny-clex", "b6", set_cfg(rs_act="gelu")),
         ["rope_scaling.act", "gelu", "silu", "tanh"]),
        ("max_factor < 1", ctx.variant("tiny-clex", "b7", set_cfg(rs_max_factor=0.5)),
         ["rope_scaling.max_factor"]),
        ("max_factor 0", ctx.variant("tiny-clex", "b8", set_cfg(rs_max_factor=0)),
         ["rope_scaling.max_factor", "between 1"]),
        ("max_factor missing", ctx.variant("tiny-clex", "b9", set_cfg(rs_max_factor=None)),
         ["rope_scaling.max_factor", "missing"]),
        ("param_factor missing", ctx.variant("tiny-clex", "b10", set_cfg(rs_param_factor=None)),
         ["rope_scaling.param_factor", "missing"]),
        ("time_dt negative", ctx.variant("tiny-clex", "b11", set_cfg(rs_time_dt=-0.1)),
         ["rope_scaling.time_dt"]),
        ("log_scale not a bool", ctx.variant("tiny-clex", "b12", set_cfg(log_scale="yes")),
         ["log_scale"]),
    ]
    for label, model, want in cases:
        expect_refusal(ctx, label, model, [], want)
    expect_refusal(ctx, "window past max_factor x L", "tiny-clex",
                   ["--window", str(8 * L_CLEX + 1)], ["window 513", "max_factor 8", "512"])
    expect_refusal(ctx, "--positional clex on a checkpoint without CLEX", "tiny-llama",
                   ["--positional", "clex"], ["clex", "CLEX checkpoint"])
    expect_refusal(ctx, "self-extend on a CLEX checkpoint", "tiny-clex",
                   ["--positional", "self-extend", "--group", "2", "--neighbor", "8"],
                   ["trained with CLEX", "self-extend"])
    expect_refusal(ctx, "a RoPE scaling on a CLEX checkpoint", "tiny-clex",
                   ["--rope-scaling", "linear", "--rope-factor", "2"], ["clex", "linear"])
    # and what is accepted: the window M x L exactly, clex named explicitly
    toks, _ = ctx.tokens("tiny-clex", 20)
    try:
        ctx.recall_lp("tiny-clex", toks, 8 * L_CLEX)
        tin = os.path.join(ctx.tmp, "in.bin")
        ctx.run("tiny-clex", ["--tokens", tin, "--logprobs", os.path.join(ctx.tmp, "x.bin"),
                              "--positional", "clex"])
        ctx.check(True, "accepted: window = max_factor x L, --positional clex on a CLEX "
                        "checkpoint")
    except R.RefError as e:
        ctx.check(False, f"accepted cases: {e}")


TESTS = {"ref_selfcheck": t_ref_selfcheck, "table": t_table, "parity": t_parity,
         "bad_input": t_bad_input}


def main():
    return PAR.script_main(__doc__, TESTS, "parity_clex", "tiny-clex", Ctx,
                           (R.RefError, OSError, KeyError, subprocess.TimeoutExpired))


if __name__ == "__main__":
    sys.exit(main())
