#!/usr/bin/env python3
"""torch_topk.py: PyTorch's baseline for bench/cuda_topk.c: the same kNN memory searches
(32 heads of 100, k = 128, bf16 keys, 64k / 256k / 1M rows; decode: 1 query (2 and 16 at
the largest memory), prefill: 2048)
as a bf16 matmul q . K^T followed by torch.topk, on the GPU.

PyTorch gets its best layout: keys as [heads, rows, head_dim] (recall reads them as
[rows, heads, head_dim], the memory's own layout), one batched matmul over heads. Prefill
against 1M rows would need a 2048 x 1M score matrix per head (4 GiB in bf16, 128 GiB for all
heads), so heads are taken in chunks whose score matrices fit a budget (default 16 GiB):
the fastest way that fits (bigger chunks did not help: the matmul is already large).

Timing: warm-up runs, then the median of several runs between CUDA events. Prints a table
and one machine-readable line per workload:
  RESULT <mode> rows=<n> torch_ms=<median> tflops=<...> key_gbs=<...>
Arguments: "decode" or "prefill" runs only that mode; a number caps the rows.
"""
import sys

import torch


def main():
    want = {"decode", "prefill"}
    max_rows = 1 << 20
    for a in sys.argv[1:]:
        if a in ("decode", "prefill"):
            want = {a}
        else:
            max_rows = int(a)
    if not torch.cuda.is_available():
        print("torch_topk: no GPU")
        return
    dev = torch.device("cuda")
    H, D, K = 32, 100, 128
    budget = 16 << 30  # bytes of bf16 scores per chunk
    rows_list = [r for r in (65536, 262144, 1 << 20) if r <= max_rows]
    rmax = max(rows_list)
    g = torch.Generator(device=dev).manual_seed(1)
    keys = (torch.rand(H, rmax, D, device=dev, generator=g) * 3 - 1.5).to(torch.bfloat16)
    nq_max = 2048 if "prefill" in want else 16
    q = (torch.rand(H, nq_max, D, device=dev, generator=g) * 3 - 1.5).to(torch.bfloat16)
    print("device: %s" % torch.cuda.get_device_name(0))
    print("%-8s %9s %10s %9s %9s %6s" % ("mode", "rows", "torch_ms", "TFLOP/s", "key_GB/s", "chunk"))

    def run(qm, km, chunk):
        outs = []
        for h0 in range(0, H, chunk):
            s = torch.bmm(qm[h0:h0 + chunk], km[h0:h0 + chunk].transpose(1, 2))
            outs.append(torch.topk(s, K, dim=-1))
        return outs

    modes = (("decode", 1), ("decode2", 2), ("decode16", 16), ("prefill", 2048))
    for mode, nq in modes:
        if mode.rstrip("0123456789") not in want:
            continue
        for rows in rows_list:
            if nq in (2, 16) and rows != rmax:
                continue
            km = keys[:, :rows]
            qm = q[:, :nq]
            chunk = max(1, min(H, budget // (nq * rows * 2)))
            reps = 50 if nq <= 16 else (5 if rows >= 1 << 20 else 10)
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            ms = []
            for i in range(2 + reps):
                e0.record()
                run(qm, km, chunk)
                e1.record()
                e1.synchronize()
                if i >= 2:
                    ms.append(e0.elapsed_time(e1))
            ms.sort()
            med = ms[len(ms) // 2]
            flop = 2.0 * nq * H * rows * D
            tflops = flop / (med * 1e-3) / 1e12
            gbs = rows * H * D * 2 / (med * 1e-3) / 1e9
            print("%-8s %9d %10.3f %9.1f %9.0f %6d" % (mode, rows, med, tflops, gbs, chunk))
            print("RESULT %s rows=%d torch_ms=%.4f tflops=%.2f key_gbs=%.1f chunk_heads=%d"
                  % (mode, rows, med, tflops, gbs, chunk))
            sys.stdout.flush()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
