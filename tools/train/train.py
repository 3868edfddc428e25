#!/usr/bin/python3
"""Trains the FoT model (model.py) on data.py's documents; exports recall's checkpoint.

    train.py --data build-train/data --out OUT [--time-budget 420] [--steps N]
             [--resume STATE.pt | --resume MODEL_DIR] [--seed 0]

- bf16 autocast, AdamW (fused on CUDA), linear warmup then cosine decay to 10%.
- Seeded: torch, the data workers (seed, worker id, start step) and the cross-batch
  pairing all derive from --seed. With --steps fixed, a run is reproducible up to GPU
  kernel nondeterminism; with --time-budget the step count is chosen from the measured
  speed of the first steps and recorded (pass it as --steps to repeat the run).
- Checkpoints: OUT/state.pt (weights, optimizer, step, schedule, seed) every
  --ckpt-every steps and at the end; --resume continues from it. --resume MODEL_DIR
  continues from an exported checkpoint (weights only; the optimizer restarts with a
  short warmup) when the full state could not be kept between machines.
- Writes OUT/model/{config.json, model.safetensors or shards + index, tokenizer.model},
  OUT/loss.tsv (step, lr, weighted loss, LM loss, answer-token accuracy, tokens/s) and,
  with --eval, OUT/eval.json: a parity check against tests/ref/longllama_ref.py and
  REFERENCE.md's passkey test run with the inference semantics at a few lengths.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import data as D  # noqa: E402
from model import Config, FoTModel, greedy  # noqa: E402


# ---------------------------------------------------------------------------------------
# Data workers

class Batches(torch.utils.data.IterableDataset):
    def __init__(self, data_dir, batch, length, n_english, seed, start_step, answer_weight,
                 restart_mix=False, tail_prob=0.0, boundary_prob=0.0, window=256):
        self.data_dir, self.batch, self.length = data_dir, batch, length
        self.boundary_prob, self.window = boundary_prob, window
        self.restart_mix = restart_mix
        self.tail_prob = tail_prob
        self.answer_weight = answer_weight
        self.n_english, self.seed, self.start_step = n_english, seed, start_step

    def __iter__(self):
        import sentencepiece as spm
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        sp = spm.SentencePieceProcessor(model_file=os.path.join(self.data_dir, "tokenizer.model"))
        with open(os.path.join(self.data_dir, "english.txt")) as f:
            eng = D.English(f.read())
        seed = (self.seed * 1000003 + wid * 7919 + self.start_step) & 0x7FFFFFFF
        bm = D.BatchMaker(sp, eng, self.batch, self.length, self.n_english, seed)
        bm.dm.answer_weight = self.answer_weight
        bm.restart_mix = self.restart_mix
        bm.dm.tail_prob = self.tail_prob
        bm.dm.boundary_prob = self.boundary_prob
        bm.dm.window = self.window
        while True:
            ids, w = bm.next()
            yield torch.from_numpy(ids), torch.from_numpy(w)


def neg_index(B, n_english, k, step):
    """Cross-batch negatives: each row's memory also holds k English rows (never itself);
    the pairing rotates with the step."""
    base = B - n_english
    if k > n_english - 1:
        raise SystemExit("train: --negatives %d needs at least %d English rows" % (k, k + 1))
    idx = torch.empty(B, k, dtype=torch.long)
    for b in range(B):
        j, got = step, []
        while len(got) < k:
            r = base + (b + 1 + j) % n_english
            j += 1
            if r != b and r not in got:
                got.append(r)
        idx[b] = torch.tensor(got)
    return idx


# ---------------------------------------------------------------------------------------
# Export in recall's format

def bf16_bytes(t):
    return t.detach().to(torch.bfloat16).contiguous().cpu().view(torch.int16).numpy().astype("<i2").tobytes()


def write_safetensors(path, named):
    """named: [(name, bytes, shape)] -> a safetensors file (header as make_test_model)."""
    hdr, off = {}, 0
    for name, b, shape in named:
        hdr[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    hdr["__metadata__"] = {"format": "pt"}
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for _, b, _ in named:
            f.write(b)


def export(model, cfg, data_dir, out_dir, shard_bytes=64 << 20):
    os.makedirs(out_dir, exist_ok=True)
    for fn in os.listdir(out_dir):
        if fn.startswith("model") and (fn.endswith(".safetensors") or fn.endswith(".json")):
            os.remove(os.path.join(out_dir, fn))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.hf_config(), f, indent=2)
        f.write("\n")
    named = [(n, bf16_bytes(t), tuple(t.shape)) for n, t in model.hf_state().items()]
    total = sum(len(b) for _, b, _ in named)
    if total + 65536 <= shard_bytes:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), named)
    else:
        groups, cur, acc = [], [], 0
        for t in named:
            if cur and acc + len(t[1]) > shard_bytes - 65536:
                groups.append(cur)
                cur, acc = [], 0
            cur.append(t)
            acc += len(t[1])
        groups.append(cur)
        m = len(groups)
        wm = {}
        for i, g in enumerate(groups):
            fn = "model-%05d-of-%05d.safetensors" % (i + 1, m)
            write_safetensors(os.path.join(out_dir, fn), g)
            wm.update({n: fn for n, _, _ in g})
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
            f.write("\n")
    shutil.copyfile(os.path.join(data_dir, "tokenizer.model"), os.path.join(out_dir, "tokenizer.model"))


def load_exported(model_dir):
    sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
    import longllama_ref as R
    return R.load_tensors(model_dir)


# ---------------------------------------------------------------------------------------
# Evaluation: REFERENCE.md's passkey test, with the inference semantics

def passkey_prompt(key, filler_chars, depth):
    """clients/passkey.c's prompt: intro, filler cut by characters, key line, filler, question.
    As in Landmark's code (garbage_inf[:n_prefix], garbage_inf[:n_suffix]) the filler after
    the key line starts again from the filler's first character."""
    unit = D_PASSKEY_FILLER + " "
    fill = (unit * (filler_chars // len(unit) + 2))
    pre = int(round(depth * filler_chars))
    return (D_PASSKEY_INTRO + "\n" + fill[:pre] + "\n" +
            "The pass key is %d. Remember it. %d is the pass key." % (key, key) + "\n" +
            fill[:filler_chars - pre] + "\n" + D_PASSKEY_QUESTION)


D_PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
                   "Find it and memorize them. I will quiz you about the important information there.")
D_PASSKEY_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
                    "There and back again.")
D_PASSKEY_QUESTION = "What is the pass key? The pass key is"


def eval_passkey(model, sp, lengths, depths, trials, seed, log, knn_k=0):
    """REFERENCE.md's passkey test at each length, depth and trial (greedy answer, exact
    token match as clients/passkey.c scores it). knn_k > 0 runs kNN memory."""
    rng = random.Random(seed)
    unit_toks = len(sp.encode((D_PASSKEY_FILLER + " ") * 20)) / (len(D_PASSKEY_FILLER) + 1) / 20
    res = {}
    for L in lengths:
        ok = n = 0
        toks, misses, by_depth = [], [], {}
        t0 = time.time()
        for d in depths:
            for _ in range(trials):
                key = rng.randrange(1, 50000)
                chars = int(L / unit_toks)
                prompt = [1] + sp.encode(passkey_prompt(key, chars, d))
                fixed = len(prompt) - chars * unit_toks  # intro, key line, question
                chars = max(0, int(chars * (L - fixed) / max(1.0, len(prompt) - fixed)))
                prompt = [1] + sp.encode(passkey_prompt(key, chars, d))
                ans = sp.encode(str(key))
                got = greedy(model, prompt, len(ans), knn_k=knn_k)
                hit = got == ans
                ok += int(hit)
                n += 1
                by_depth.setdefault(str(d), [0, 0])
                by_depth[str(d)][0] += int(hit)
                by_depth[str(d)][1] += 1
                if not hit:
                    misses.append({"depth": d, "key": key, "got": sp.decode(got)})
                toks.append(len(prompt))
        res[str(L)] = {"accuracy": ok / n, "passed": ok, "trials": n, "knn_k": knn_k,
                       "by_depth": by_depth, "misses": misses,
                       "mean_tokens": float(np.mean(toks)), "seconds": time.time() - t0}
        log("passkey %6d tokens%s: %d/%d (%.0f%%)  %.1fs" % (
            L, " knn %d" % knn_k if knn_k else "", ok, n, 100.0 * ok / n, time.time() - t0))
    return res


def parity_check(model, model_dir, n_tokens, log):
    """Exported checkpoint through tests/ref/longllama_ref.py (CPU, fp32) vs this
    model's Stream on the same weights: max |logit difference| over the last token."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
    import longllama_ref as R
    ref = R.Model(model_dir)
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(3, model.c.vocab, (n_tokens,), generator=g).tolist()
    s = R.Stream(ref)
    ref_logits = s.feed(toks)[-1]
    from model import Stream
    st = Stream(model)
    mine = st.feed(toks).float().cpu()
    d = float((mine - ref_logits).abs().max())
    log("parity vs tests/ref/longllama_ref.py over %d tokens: max |dlogit| %.2e (argmax %s)"
        % (n_tokens, d, "same" if int(mine.argmax()) == int(ref_logits.argmax()) else "DIFFERENT"))
    return {"tokens": n_tokens, "max_abs_logit_diff": d,
            "same_argmax": int(mine.argmax()) == int(ref_logits.argmax())}


# ---------------------------------------------------------------------------------------

def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "build-train", "data"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0, help="total steps (0: from --time-budget)")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds of training")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-english", type=int, default=8, help="English rows (negatives' source)")
    ap.add_argument("--negatives", type=int, default=2, help="other rows in each memory")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--mem-layers", default="2,5")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--answer-weight", type=float, default=4.0, help="loss weight of answer tokens")
    ap.add_argument("--restart-mix", action="store_true",
                    help="data.KINDS_RESTART: more passkey documents (fine-tune for the restarted filler)")
    ap.add_argument("--tail-prob", type=float, default=0.0,
                    help="share of task documents with text after the answer (answers off window ends)")
    ap.add_argument("--boundary-prob", type=float, default=0.0,
                    help="of the --tail-prob documents, the share whose answer starts within "
                         "5 tokens before a window boundary (or on it)")
    ap.add_argument("--no-state", action="store_true", help="do not write state.pt")
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--eval-lengths", default="1000,1024,2000,2048,4000,4096,8000,8192,16000,16384")
    ap.add_argument("--eval-depths", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--eval-trials", type=int, default=4)
    ap.add_argument("--max-steps-cap", type=int, default=100000)
    a = ap.parse_args(argv)
    if a.batch <= a.n_english:
        ap.error("--batch %d leaves no task rows: the last --n-english %d rows of a batch are "
                 "English negatives" % (a.batch, a.n_english))

    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "train.log"), "a")

    def log(msg):
        line = "[%7.1fs] %s" % (time.time() - T0, msg)
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.data, "tokenizer.model"))
    cfg = Config(vocab=sp.get_piece_size(), hidden=a.hidden, layers=a.layers, heads=a.heads,
                 ffn=a.ffn, window=a.window,
                 mem_layers=[int(x) for x in a.mem_layers.split(",") if x.strip()])
    model = FoTModel(cfg).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    log("model: %d params, config %s, device %s, torch %s"
        % (nparams, json.dumps(cfg.to_dict()), dev, torch.__version__))

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if dev.type == "cuda" else {}))
    step, total, warmup = 0, a.steps, a.warmup
    if a.resume:
        if os.path.isdir(a.resume):
            model.load_hf_state({k: torch.from_numpy(v) for k, v in load_exported(a.resume).items()})
            sf = os.path.join(a.resume, "train_state.json")
            st = json.load(open(sf)) if os.path.exists(sf) else {"step": 0, "total": 0}
            step = st["step"]
            warmup = step + 50
            if not total:
                total = st["total"] if st["total"] > step else 0
            log("resumed weights from %s at step %d (optimizer restarted)" % (a.resume, step))
        else:
            st = torch.load(a.resume, map_location=dev)
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            step, total = st["step"], (total or st["total"])
            log("resumed full state from %s at step %d of %d" % (a.resume, step, total))

    L = a.windows * a.window + 1
    loader = torch.utils.data.DataLoader(
        Batches(a.data, a.batch, L, a.n_english, a.seed, step, a.answer_weight,
                a.restart_mix, a.tail_prob, a.boundary_prob, a.window), batch_size=None,
        num_workers=a.workers, **({"prefetch_factor": 4} if a.workers else {}),
        pin_memory=dev.type == "cuda", persistent_workers=False)
    it = iter(loader)

    def lr_at(s):
        if s < warmup:
            return a.lr * (s + 1) / warmup
        if not total:
            return a.lr
        p = min(1.0, (s - warmup) / max(1, total - warmup))
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))

    lossf = open(os.path.join(a.out, "loss.tsv"), "a")
    if step == 0:
        lossf.write("step\tlr\tloss_weighted\tloss_lm\tanswer_acc\ttok_per_s\n")
    t_train = time.time()
    t_probe, s_probe = None, None
    acc_l = acc_w = acc_a = 0.0
    acc_n = 0
    tokens_per_step = a.batch * (L - 1)
    model.train()
    s_first = step
    while True:
        if total and step >= total:
            break
        if a.time_budget and time.time() - t_train > a.time_budget + 30 and (step % 10 == 0):
            log("wall-clock guard: stopping at step %d of %d" % (step, total))
            total = step
            break
        ids, w = next(it)
        ids = ids.to(dev, non_blocking=True).long()
        w = w.to(dev, non_blocking=True)
        inp, tgt, wt = ids[:, :-1], ids[:, 1:], w[:, 1:]
        neg = neg_index(a.batch, a.n_english, a.negatives, step).to(dev)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(inp, neg)
        ce = F.cross_entropy(logits.float().reshape(-1, cfg.vocab), tgt.reshape(-1),
                             reduction="none").view_as(wt)
        loss = (ce * wt).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0 or step == 1:
            with torch.no_grad():
                am = wt > 1
                accv = ((logits.argmax(-1) == tgt) & am).sum() / am.sum().clamp(min=1)
                acc_w += float(loss)
                acc_l += float(ce.mean())
                acc_a += float(accv)
                acc_n += 1
        # Choose the step count from the measured speed (steps 20..60), once.
        if not total and step == s_first + 20:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            t_probe, s_probe = time.time(), step
        if not total and step == s_first + 60:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            per = (time.time() - t_probe) / (step - s_probe)
            left = a.time_budget - (time.time() - t_train)
            total = min(a.max_steps_cap, step + max(0, int(left / per)))
            log("%.1f ms/step, %.0f tokens/s: training for %d steps" % (per * 1e3, tokens_per_step / per, total))
        if step % 50 == 0 and acc_n:
            el = time.time() - t_train
            lossf.write("%d\t%.3e\t%.4f\t%.4f\t%.4f\t%.0f\n" % (step, lr_at(step - 1), acc_w / acc_n,
                                                              acc_l / acc_n, acc_a / acc_n, step * tokens_per_step / el))
            lossf.flush()
            if step % 200 == 0:
                log("step %d lr %.2e loss %.4f lm %.4f answer-acc %.3f" % (
                    step, lr_at(step - 1), acc_w / acc_n, acc_l / acc_n, acc_a / acc_n))
            acc_w = acc_l = acc_a = 0.0
            acc_n = 0
        if not a.no_state and a.ckpt_every and step % a.ckpt_every == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "total": total, "seed": a.seed, "cfg": cfg.to_dict()},
                       os.path.join(a.out, "state.pt"))
    log("trained %d steps in %.1fs" % (step, time.time() - t_train))
    del it, loader
    if not a.no_state:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "total": total, "seed": a.seed, "cfg": cfg.to_dict()},
                   os.path.join(a.out, "state.pt"))
    mdir = os.path.join(a.out, "model")
    export(model, cfg, a.data, mdir)
    with open(os.path.join(mdir, "train_state.json"), "w") as f:
        json.dump({"step": step, "total": total, "seed": a.seed, "args": vars(a),
                   "params": nparams, "tokens_seen": step * tokens_per_step}, f, indent=2)
    log("exported %s" % mdir)

    if a.eval:
        model.eval()
        # Evaluate the weights as shipped: bf16-rounded, computed in fp32.
        model.load_hf_state({k: torch.from_numpy(v) for k, v in load_exported(mdir).items()})
        ev = {"step": step}
        try:
            cpu_model = FoTModel(cfg)
            cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
            ev["parity"] = parity_check(cpu_model, mdir, 3 * cfg.window + 17, log)
        except Exception as e:  # the eval must not lose the trained model
            log("parity check failed to run: %r" % (e,))
            ev["parity"] = {"error": repr(e)}
        ev["passkey"] = eval_passkey(
            model, sp, [int(x) for x in a.eval_lengths.split(",")],
            [float(x) for x in a.eval_depths.split(",")], a.eval_trials, a.seed + 12345, log)
        with open(os.path.join(a.out, "eval.json"), "w") as f:
            json.dump(ev, f, indent=2)


T0 = time.time()
if __name__ == "__main__":
    main(sys.argv[1:])
