#!/usr/bin/env python3
"""recall's CUDA backend against Hugging Face transformers' LlamaForCausalLM on one GPU.

    hf_parity.py --model DIR --recall-score BIN [--n N] [--seed S] [--tol T]

DIR is a plain LLaMA checkpoint (config.json of model_type "llama", safetensors) that both
load. N random token ids (seeded, never zeros) go through
  - HF in bf16 (sdpa) on cuda  vs  recall --device cuda  (the product comparison; both bf16,
    rounded at different points: HF keeps its residual stream in bf16, recall in fp32), and
  - HF in fp32 on cuda         vs  recall --device cpu   (an fp32 anchor: it shows the two
    implementations compute the same function, so the bf16 gap above is rounding alone).
N must fit in one window (recall's window is max_position_embeddings; HF has no windows).
Prints one line per comparison: max and mean |Δ logprob| and greedy agreement of the next
token at every position; exits 1 if the bf16 max exceeds --tol or the fp32 max exceeds
--tol-f32. Runs on the GPU host (bench/gpu_model.sh); needs torch and transformers.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

GEN = 16  # greedy tokens compared
torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 anchor must be fp32


def hf_logprobs(model_dir, tok, dtype):
    from transformers import LlamaForCausalLM

    try:
        m = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    except TypeError:  # older transformers
        m = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype,
                                             attn_implementation="sdpa")
    m = m.cuda().eval()
    ids = torch.tensor(tok, dtype=torch.long, device="cuda")[None]
    with torch.inference_mode():
        logits = m(ids, use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    out = lp[:-1].gather(1, ids[0, 1:, None])[:, 0].cpu().numpy()
    # Greedy continuation of the first n - GEN tokens, KV cache on (as HF generates).
    gen = []
    with torch.inference_mode():
        o = m(ids[:, :-GEN], use_cache=True)
        pkv, nxt = o.past_key_values, o.logits[0, -1].argmax()
        for _ in range(GEN):
            gen.append(int(nxt))
            o = m(nxt.view(1, 1), past_key_values=pkv, use_cache=True)
            pkv, nxt = o.past_key_values, o.logits[0, -1].argmax()
    del m
    torch.cuda.empty_cache()
    return out.astype(np.float64), gen


def recall_run(binary, model_dir, tok, device, tmp, extra):
    tin = os.path.join(tmp, "tok.bin")
    np.asarray(tok, dtype="<i4").tofile(tin)
    r = subprocess.run([binary, "--model", model_dir, "--tokens", tin, "--device", device] + extra,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit("hf_parity: recall_score --device %s failed: %s" % (device, r.stderr.strip()))


def recall_logprobs(binary, model_dir, tok, device, tmp):
    out = os.path.join(tmp, "lp_%s.bin" % device)
    recall_run(binary, model_dir, tok, device, tmp, ["--logprobs", out])
    lp = np.fromfile(out, dtype="<f4").astype(np.float64)
    gout = os.path.join(tmp, "gen_%s.bin" % device)
    recall_run(binary, model_dir, tok[:-GEN], device, tmp,
               ["--generate", str(GEN), "--gen-out", gout])
    return lp, np.fromfile(gout, dtype="<i4").tolist()


def same_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--recall-score", required=True)
    p.add_argument("--n", type=int, default=0, help="tokens; 0: max_position_embeddings")
    p.add_argument("--seed", type=int, default=1)
    # bf16 on both sides, rounded at different points: run 1 (H100, notes/gpu.md) measured
    # max |Δ| 0.022 (tiny-llama-d64) and 0.024 (3B width); 3× margin. A wrong rotation or
    # mask gives ≥ 1.
    p.add_argument("--tol", type=float, default=0.08)
    # fp32 on both sides: summation order only.
    p.add_argument("--tol-f32", type=float, default=2e-3)
    a = p.parse_args()
    import json

    cfg = json.load(open(os.path.join(a.model, "config.json")))
    n = a.n or cfg["max_position_embeddings"]
    rng = np.random.RandomState(a.seed)
    tok = rng.randint(3, cfg["vocab_size"], size=n).tolist()
    name = os.path.basename(os.path.normpath(a.model))
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for label, dtype, dev, tol in (("bf16 hf-cuda vs recall-cuda", torch.bfloat16, "cuda", a.tol),
                                       ("fp32 hf-cuda vs recall-cpu", torch.float32, "cpu", a.tol_f32)):
            ref, hgen = hf_logprobs(a.model, tok, dtype)
            got, rgen = recall_logprobs(a.recall_score, a.model, tok, dev, tmp)
            d = np.abs(ref - got)
            good = bool(np.isfinite(got).all()) and d.max() <= tol
            ok &= good
            print("hf_parity %-14s %-28s n %5d  max|dlp| %.5f  mean|dlp| %.6f  tol %g  "
                  "greedy %d/%d identical before the first difference  %s"
                  % (name, label, n, d.max(), d.mean(), tol, same_prefix(hgen, rgen), GEN,
                     "ok" if good else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
