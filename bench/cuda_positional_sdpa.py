"""cuda_positional_sdpa.py — PyTorch's causal scaled_dot_product_attention on the shapes of
bench/cuda_positional.c (one window of 16384 / 32768 tokens, 32 heads of 100 / 128, bf16,
random data): the plain causal flash attention of the framework, as a second denominator
beside recall's own plain kernel. Prints `<name> <median ms> <TFLOP/s>` lines, timed with
CUDA events (2 warm-up runs, median of 10)."""
import torch
import torch.nn.functional as F


def median_ms(fn):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return (times[4] + times[5]) / 2


def main():
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    for T in (16384, 32768):
        for d in (100, 128):
            g = torch.Generator(device="cuda").manual_seed(T + d)
            q, k, v = (torch.rand(1, 32, T, d, device="cuda", generator=g, dtype=torch.float32)
                       .sub_(0.5).mul_(3).to(torch.bfloat16) for _ in range(3))
            ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            flop = 4.0 * d * 32 * T * (T + 1) / 2
            print(f"sdpa_T{T}_d{d}_causal {ms:.3f} {flop / ms / 1e9:.1f}")
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
