"""sdpa_attention.py — PyTorch's scaled_dot_product_attention on the shapes of
bench/cuda_attention.c (bf16, random data), printing `<name> <median ms> <TFLOP/s>` lines.

Causal local attention uses is_causal=True (PyTorch picks its flash or memory-efficient
kernel); with memory keys, memory and local keys are concatenated and a boolean mask does
the causal part, which is how the FoT reference computes it. Timing: triton's do_bench
(CUDA events, median) when present, else a CUDA-event loop.

Each line is printed twice, as <name> and <name>_mma: bench/cuda_attention.c times the plain
kernel as <name> and the tensor-core kernel as <name>_mma, and scripts/gpu_run.sh joins lines
by name, so both get the same baseline."""
import torch
import torch.nn.functional as F

SHAPES = [
    # name, n_q, n_k, q_offset, heads, kv_heads, head_dim, n_mem
    ("prefill_d100_2048", 2048, 2048, 0, 32, 32, 100, 0),
    ("prefill_d128_2048", 2048, 2048, 0, 32, 32, 128, 0),
    ("decode_d100_k2048", 1, 2048, 2047, 32, 32, 100, 0),
    ("prefill_d100_2048_mem8192", 2048, 2048, 0, 32, 32, 100, 8192),
    ("prefill_d64_2048", 2048, 2048, 0, 32, 32, 64, 0),
    ("prefill_d100_16384", 16384, 16384, 0, 32, 32, 100, 0),
    ("prefill_d128_16384", 16384, 16384, 0, 32, 32, 128, 0),
    ("chunk_d100_q512_k2048_mem8192", 512, 2048, 1536, 32, 32, 100, 8192),
    ("decode_d100_k2048_mem16384", 1, 2048, 2047, 32, 32, 100, 16384),
]


def bench(fn):
    try:
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=200, return_mode="median")
    except ImportError:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        times.sort()
        return (times[9] + times[10]) / 2


def main():
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    for name, n_q, n_k, off, h, kvh, d, n_mem in SHAPES:
        def r(*shape):
            return (torch.rand(*shape, generator=g, device=dev) - 0.5).mul(3).to(torch.bfloat16)
        q = r(1, h, n_q, d)
        k = r(1, kvh, n_mem + n_k, d)
        v = r(1, kvh, n_mem + n_k, d)
        if n_mem == 0 and off == 0 and n_q == n_k:
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            qi = torch.arange(n_q, device=dev)[:, None]
            kj = torch.arange(n_mem + n_k, device=dev)[None, :]
            mask = (kj < n_mem) | (kj - n_mem <= off + qi)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ms = bench(fn)
        pairs = sum(n_mem + off + i + 1 for i in range(n_q))
        tflops = 4.0 * pairs * d * h / (ms * 1e-3) / 1e12
        for suffix in ("", "_mma"):
            print(f"{name}{suffix} {ms:.4f} {tflops:.2f}", flush=True)


if __name__ == "__main__":
    main()
