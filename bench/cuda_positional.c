/* cuda_positional.c — attention throughput of the positional layouts (Self-Extend, DCA)
 * against plain causal flash attention, on cuda_attention_fast (kernels/cuda/attention_mma.cu).
 *
 * Shapes: one window of T = 16384 and 32768 tokens prefilled at once (n_q = n_k = T, causal),
 * 32 heads of 100 (LongLLaMA-3B) and 128 (Llama-2-7B), bf16, random data, no memory.
 * Schemes: plain (RoPE; the tensor-core kernel as it was), Self-Extend with W = 1024 (the
 * neighbour band; G only changes the rotated inputs, not the kernel's work) and DCA with
 * Llama-2's defaults S = 3072, w = 512 (c = 2560). Prints one line per (shape, scheme):
 *   <name> <median ms> <TFLOP/s of the causal product> <ratio to plain>
 * and, as sanity checks, whether Self-Extend with W > T and DCA with c >= T (every pair
 * takes the plain variant) give the plain kernel's output bit for bit. Timing: 2 warm-up
 * runs, then the median of 10 runs between CUDA events.
 * bench/cuda_positional_sdpa.py times PyTorch's causal sdpa on the same shapes. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cuda.h"

#define CK(expr)                                                                               \
    do {                                                                                       \
        rc_t rc_ = (expr);                                                                     \
        if (rc_) {                                                                             \
            fprintf(stderr, "bench: %s failed: %s\n", #expr, rc_strerror(rc_));                \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void *rand_bf16_dev(size_t n, uint64_t seed)
{
    uint16_t *h = malloc(n * 2);
    if (!h) abort();
    uint64_t r = 0x9E3779B97F4A7C15ull ^ (seed * 0xD1B54A32D192ED03ull);
    for (size_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        h[i] = f32_to_bf16(((float)(r >> 40) / 16777216.0f - 0.5f) * 3.0f);
    }
    void *d = NULL;
    CK(cuda_alloc(&d, n * 2));
    CK(cuda_upload(d, h, n * 2, NULL));
    free(h);
    return d;
}

/* Median ms of cuda_attention_fast(a) (workspace as planned). */
static float time_attn(cuda_attn_args_t *a, void **ws, size_t *ws_cap)
{
    size_t need = 0;
    CK(cuda_attention_fast_workspace(a, &need));
    if (need > *ws_cap) {
        cuda_free(ws);
        CK(cuda_alloc(ws, need));
        *ws_cap = need;
    }
    a->workspace = *ws;
    a->workspace_bytes = *ws_cap;
    cudaEvent_t e0, e1;
    if (cudaEventCreate(&e0) || cudaEventCreate(&e1)) exit(1);
    for (int i = 0; i < 2; i++) CK(cuda_attention_fast(a, NULL));
    CK(cuda_stream_sync(NULL));
    float t[10];
    for (int r = 0; r < 10; r++) {
        cudaEventRecord(e0, NULL);
        CK(cuda_attention_fast(a, NULL));
        cudaEventRecord(e1, NULL);
        CK(cuda_stream_sync(NULL));
        if (cudaEventElapsedTime(&t[r], e0, e1) != cudaSuccess) exit(1);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    qsort(t, 10, sizeof t[0], cmp_float);
    return (t[4] + t[5]) / 2;
}

static int same_bits(const void *x, const void *y, size_t bytes)
{
    void *hx = malloc(bytes), *hy = malloc(bytes);
    if (!hx || !hy) abort();
    CK(cuda_stream_sync(NULL));
    CK(cuda_download(hx, x, bytes, NULL));
    CK(cuda_download(hy, y, bytes, NULL));
    int same = !memcmp(hx, hy, bytes);
    /* Also: every output finite (a NaN would be equal to itself bitwise). */
    const uint16_t *u = hx;
    for (size_t i = 0; i < bytes / 2 && same; i++) same = isfinite(bf16_to_f32(u[i]));
    free(hx);
    free(hy);
    return same;
}

int main(int argc, char **argv)
{
    int n_dev = 0;
    if (cuda_device_count(&n_dev) || !n_dev) {
        printf("skipped: no GPU\n");
        return 77;
    }
    cuda_device_info_t info;
    CK(cuda_device_info(0, &info));
    printf("device %s sm_%d%d\n", info.name, info.cc_major, info.cc_minor);
    const int lens[] = {16384, 32768}, dims[] = {100, 128}, H = 32;
    const int only = argc > 1 ? atoi(argv[1]) : 0; /* a length to run alone */
    void *ws = NULL;
    size_t ws_cap = 0;
    int checks_failed = 0;
    for (int li = 0; li < 2; li++) {
        const int T = lens[li];
        if (only && only != T) continue;
        for (int di = 0; di < 2; di++) {
            const int hd = dims[di];
            const size_t n = (size_t)T * H * hd;
            void *q = rand_bf16_dev(n, 1), *k = rand_bf16_dev(n, 2), *v = rand_bf16_dev(n, 3);
            void *qa = rand_bf16_dev(n, 4), *qb = rand_bf16_dev(n, 5), *kg = rand_bf16_dev(n, 6);
            void *out = NULL, *ref = NULL;
            CK(cuda_alloc(&out, n * 2));
            CK(cuda_alloc(&ref, n * 2));
            cuda_attn_args_t a = {.n_q = T, .n_k = T, .n_heads = H, .n_kv_heads = H,
                                  .head_dim = hd, .dtype = DTYPE_BF16, .q = q, .k = k, .v = v,
                                  .mem_dtype = DTYPE_BF16, .scale = 1.0f / sqrtf((float)hd),
                                  .out = ref};
            const double flop = 4.0 * hd * H * ((double)T * (T + 1) / 2);
            char name[64];
            const float plain = time_attn(&a, &ws, &ws_cap);
            snprintf(name, sizeof name, "attn_T%d_d%d_plain", T, hd);
            printf("%-32s %9.3f ms %7.1f TFLOP/s  ratio %.3f\n", name, plain,
                   flop / plain / 1e9, 1.0);

            cuda_attn_args_t se = a;
            se.out = out;
            se.layout = CUDA_ATTN_SELF_EXTEND;
            se.neighbor = 1024;
            se.q_alt[0] = qa;
            se.k_alt = kg;
            const float t_se = time_attn(&se, &ws, &ws_cap);
            snprintf(name, sizeof name, "attn_T%d_d%d_self-extend", T, hd);
            printf("%-32s %9.3f ms %7.1f TFLOP/s  ratio %.3f\n", name, t_se,
                   flop / t_se / 1e9, t_se / plain);

            cuda_attn_args_t dca = a;
            dca.out = out;
            dca.layout = CUDA_ATTN_DCA;
            dca.chunk_len = 2560;
            dca.q_alt[0] = qa;
            dca.q_alt[1] = qb;
            const float t_dca = time_attn(&dca, &ws, &ws_cap);
            snprintf(name, sizeof name, "attn_T%d_d%d_dca", T, hd);
            printf("%-32s %9.3f ms %7.1f TFLOP/s  ratio %.3f\n", name, t_dca,
                   flop / t_dca / 1e9, t_dca / plain);

            if (T == lens[0]) {
                /* Degenerate layouts = plain: the same arithmetic in the same order. */
                se.neighbor = T + 1;
                CK(cuda_attention_fast(&se, NULL));
                int ok = same_bits(out, ref, n * 2);
                printf("check_T%d_d%d self-extend W>T == plain bitwise: %s\n", T, hd,
                       ok ? "yes" : "NO");
                checks_failed += !ok;
                dca.chunk_len = T;
                CK(cuda_attention_fast(&dca, NULL));
                ok = same_bits(out, ref, n * 2);
                printf("check_T%d_d%d dca c>=T == plain bitwise: %s\n", T, hd, ok ? "yes" : "NO");
                checks_failed += !ok;
            }
            void *bufs[] = {q, k, v, qa, qb, kg, out, ref};
            for (int i = 0; i < 8; i++) cuda_free(&bufs[i]);
        }
    }
    cuda_free(&ws);
    return checks_failed ? 1 : 0;
}
