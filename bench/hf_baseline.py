#!/usr/bin/env python3
"""PyTorch's side of the GPU model benchmarks (bench/bench_gpu.c is recall's side).

    hf_baseline.py --make DIR [--layers 26] [--seed 0]   random LongLLaMA-3B-shaped checkpoint
    hf_baseline.py --bench DIR [--window 2048] ...       HF LlamaForCausalLM, bf16, sdpa

--make writes, with torch on the GPU (seconds, where numpy would take minutes), a checkpoint
recall loads: DIR/config.json (LongLLaMA: mem layers 6, 12, 18 — those below --layers, else
the last layer: [1] for the 2-layer parity model — bf16 memory, window 2048),
DIR/model-0000N-of-0000M.safetensors + index (bf16), and DIR/hf/ — the same shards under a
plain LLaMA config.json for transformers. Weights are N(0, 1/fan_in) like
tools/make_test_model.py (norm gains 1 + 0.1·N), seeded.

--bench times the same workloads as bench_gpu on the same weights (one "key value" per line):
  (a) prefill: one 2048-token forward, no KV cache, logits of the last row only
      (logits_to_keep=1, as recall computes none); median of --reps after warm-up.
  (b) decode: a 1920-token prompt with the KV cache, then 128 greedy steps, each a
      one-token forward whose argmax is read on the host (.item(), as recall's loop does).
  (c) ingest of 64k tokens with exact memory has no PyTorch implementation here (HF has no
      FoT memory), so its PyTorch time is composed of measured parts: 32 × the prefill of (a)
      plus, for each window w and each of the 3 memory layers, the extra time of a masked
      sdpa over the w · 2048 memory rows and the 2048 local keys (one softmax, as FoT does)
      over the causal sdpa that (a) already contains. Peak memory is read after that sdpa
      over the last window's memory (weights + 3 layers of 62k bf16 memory rows + buffers).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

SHAPE = dict(vocab=32000, hidden=3200, heads=32, ffn=8640, layers=26)
MEM_LAYERS = [6, 12, 18]


def tensor_plan(layers, h, ffn, vocab):
    t = [("model.embed_tokens.weight", (vocab, h), 1.0, 0.0)]
    for l in range(layers):
        p = "model.layers.%d." % l
        t += [(p + "self_attn.q_proj.weight", (h, h), h ** -0.5, 0.0),
              (p + "self_attn.k_proj.weight", (h, h), h ** -0.5, 0.0),
              (p + "self_attn.v_proj.weight", (h, h), h ** -0.5, 0.0),
              (p + "self_attn.o_proj.weight", (h, h), h ** -0.5, 0.0),
              (p + "mlp.gate_proj.weight", (ffn, h), h ** -0.5, 0.0),
              (p + "mlp.up_proj.weight", (ffn, h), h ** -0.5, 0.0),
              (p + "mlp.down_proj.weight", (h, ffn), ffn ** -0.5, 0.0),
              (p + "input_layernorm.weight", (h,), 0.1, 1.0),
              (p + "post_attention_layernorm.weight", (h,), 0.1, 1.0)]
    t.append(("model.norm.weight", (h,), 0.1, 1.0))
    t.append(("lm_head.weight", (vocab, h), h ** -0.5, 0.0))
    return t


def llama_config(a):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": SHAPE["hidden"],
        "intermediate_size": SHAPE["ffn"], "max_position_embeddings": 2048,
        "num_attention_heads": SHAPE["heads"], "num_hidden_layers": a.layers,
        "num_key_value_heads": SHAPE["heads"], "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": SHAPE["vocab"],
        "use_cache": True,
    }


def save_bf16(tensors, path):
    """A safetensors file of bf16 tensors (header JSON, 8-byte aligned, then the data in
    order); written directly so that only torch is needed."""
    hdr, off = {}, 0
    for name, t in tensors:
        n = t.numel() * 2
        hdr[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    hdr["__metadata__"] = {"format": "pt"}
    b = json.dumps(hdr, separators=(",", ":")).encode()
    b += b" " * (-len(b) % 8)
    with open(path, "wb") as f:
        f.write(len(b).to_bytes(8, "little"))
        f.write(b)
        for _, t in tensors:
            f.write(t.contiguous().view(torch.int16).numpy().tobytes())


def make(a):
    t0 = time.time()
    os.makedirs(os.path.join(a.make, "hf"), exist_ok=True)
    g = torch.Generator(device=a.make_device).manual_seed(a.seed)
    plan = tensor_plan(a.layers, SHAPE["hidden"], SHAPE["ffn"], SHAPE["vocab"])
    n_shards = 4
    per = (len(plan) + n_shards - 1) // n_shards
    weight_map = {}
    for s in range(n_shards):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, n_shards)
        part = []
        for name, shape, std, mean in plan[s * per:(s + 1) * per]:
            x = torch.randn(shape, generator=g, device=a.make_device, dtype=torch.float32)
            part.append((name, (x * std + mean).to(torch.bfloat16).cpu()))
            weight_map[name] = fname
        save_bf16(part, os.path.join(a.make, fname))
        os.symlink(os.path.join("..", fname), os.path.join(a.make, "hf", fname))
    index = {"metadata": {}, "weight_map": weight_map}
    for d in (a.make, os.path.join(a.make, "hf")):
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f)
    cfg = llama_config(a)
    with open(os.path.join(a.make, "hf", "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    cfg.update({"architectures": ["LongLlamaForCausalLM"], "model_type": "longllama",
                "mem_layers": [l for l in MEM_LAYERS if l < a.layers] or [a.layers - 1], "mem_dtype": "bfloat16", "last_context_length": 1024,
                "mem_positionals": True, "mem_attention_grouping": None})
    with open(os.path.join(a.make, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    print("make_s %.1f" % (time.time() - t0))


def timed(fn, reps, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3)
    return statistics.median(ts)


def bench(a):
    from transformers import LlamaForCausalLM
    import torch.nn.functional as F

    t0 = time.time()
    hf = os.path.join(a.bench, "hf")
    try:
        m = LlamaForCausalLM.from_pretrained(hf, dtype=torch.bfloat16, attn_implementation="sdpa")
    except TypeError:
        m = LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.bfloat16,
                                             attn_implementation="sdpa")
    m = m.cuda().eval()
    print("hf_load_s %.1f" % (time.time() - t0))
    print("torch %s" % torch.__version__)
    import transformers
    print("transformers %s" % transformers.__version__)
    W = a.window
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(3, SHAPE["vocab"], (1, W), generator=g, device="cuda")
    with torch.inference_mode():
        # (a) prefill
        pre = timed(lambda: m(ids, use_cache=False, logits_to_keep=1), a.reps)
        print("hf_prefill_ms %.3f\nhf_prefill_tok_s %.0f" % (pre * 1e3, W / pre))
        # (b) decode
        P, T = a.decode_prompt, a.decode_tokens

        def decode(steps):
            o = m(ids[:, :P], use_cache=True, logits_to_keep=1)
            pkv, nxt = o.past_key_values, o.logits[0, -1].argmax()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                tok = nxt.item()
                o = m(torch.tensor([[tok]], device="cuda"), past_key_values=pkv, use_cache=True)
                pkv, nxt = o.past_key_values, o.logits[0, -1].argmax()
            torch.cuda.synchronize()
            return time.perf_counter() - t

        decode(8)
        dt = decode(T)
        print("hf_decode_ms_per_token %.3f\nhf_decode_tok_s %.1f" % (dt / T * 1e3, T / dt))

        # (c) composed ingest: prefill per window + memory attention beyond the causal part.
        H, D = SHAPE["heads"], SHAPE["hidden"] // SHAPE["heads"]
        n_win = a.ingest // W
        q = torch.randn(1, H, W, D, device="cuda", dtype=torch.bfloat16)
        kl = torch.randn(1, H, W, D, device="cuda", dtype=torch.bfloat16)
        causal = timed(lambda: F.scaled_dot_product_attention(q, kl, kl, is_causal=True), a.reps)
        torch.cuda.reset_peak_memory_stats()
        max_mem = (n_win - 1) * W
        memk = [torch.randn(1, H, max_mem + W, D, device="cuda", dtype=torch.bfloat16)
                for _ in MEM_LAYERS]
        memv = [torch.randn(1, H, max_mem + W, D, device="cuda", dtype=torch.bfloat16)
                for _ in MEM_LAYERS]
        extra = 0.0
        tri = torch.ones(W, W, device="cuda", dtype=torch.bool).tril()
        for w in range(n_win):
            M = w * W
            if M == 0:
                continue
            mask = torch.cat([torch.ones(W, M, device="cuda", dtype=torch.bool), tri], dim=1)
            k, v = memk[0][:, :, :M + W], memv[0][:, :, :M + W]
            t = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), 3, 1)
            extra += len(MEM_LAYERS) * max(t - causal, 0.0)
        peak = torch.cuda.max_memory_allocated()
        ing = n_win * pre + extra
        print("hf_causal_attn_ms %.3f" % (causal * 1e3))
        print("hf_ingest_composed_s %.3f\nhf_ingest_tok_s %.0f" % (ing, n_win * W / ing))
        print("hf_ingest_peak_gpu_gb %.2f" % (peak / 1e9))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--make")
    p.add_argument("--bench")
    p.add_argument("--layers", type=int, default=SHAPE["layers"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--make-device", default="cuda", help="where --make draws (cpu for tests)")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--decode-prompt", type=int, default=1920)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--ingest", type=int, default=65536)
    a = p.parse_args()
    if not a.make and not a.bench:
        sys.exit("hf_baseline: give --make DIR or --bench DIR")
    if a.make:
        make(a)
    if a.bench:
        bench(a)


if __name__ == "__main__":
    main()
