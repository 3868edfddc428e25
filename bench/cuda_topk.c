/* cuda_topk.c — times cuda_topk (kernels/cuda/topk.cu) on LongLLaMA-3B-shaped memory
 * searches: 32 heads of 100, k = 128, bf16 keys, memories of 64k, 256k and 1M rows, for
 * decode (1 query; 2 and 16 queries at the largest memory) and prefill (2048 queries). bench/torch_topk.py times the same workloads
 * through PyTorch (bf16 matmul, then torch.topk); bench/topk_run.sh joins the two.
 *
 * Timing: warm-up runs, then the median of several runs, each between CUDA events. Prints a
 * table and one machine-readable line per workload:
 *   RESULT <mode> rows=<n> recall_ms=<median> tflops=<...> key_gbs=<...>
 * TFLOP/s counts 2·n_q·n_heads·rows·head_dim; GB/s counts one read of the keys
 * (rows·n_kv·head_dim·2 bytes). Arguments: "decode" or "prefill" runs only that mode; a
 * number caps the rows (e.g. 262144 on a small GPU).
 *
 * "small" runs the embedded model's prefill shape instead (4 heads of 64, 256 queries, k 128,
 * 64k and 256k rows) twice: random keys, and periodic keys (each row a copy of one of 25 base
 * rows plus noise of ±0.02, as repeated filler text gives), printing RESULT small-random /
 * small-periodic lines. Same products, different selection work. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cuda.h"

#define CK(call)                                                                               \
    do {                                                                                       \
        if (call) {                                                                            \
            fprintf(stderr, "bench_cuda_topk: %s failed (line %d)\n", #call, __LINE__);        \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* n random bf16 values in [-1.5, 1.5) on the device, made in slices of at most 256 MB. */
static void *rand_bf16_dev(size_t n, uint64_t seed)
{
    void *d = NULL;
    CK(cuda_alloc(&d, n * 2));
    const size_t slice = (size_t)128 << 20;
    uint16_t *h = NULL;
    CK(cuda_host_alloc((void **)&h, slice * 2));
    uint64_t r = 0x9E3779B97F4A7C15ull ^ seed;
    for (size_t done = 0; done < n; done += slice) {
        const size_t m = n - done < slice ? n - done : slice;
        for (size_t i = 0; i < m; i += 4) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            for (size_t j = 0; j < 4 && i + j < m; j++) {
                const float x = (float)((r >> (16 * j)) & 0xffff) * (3.0f / 65536.0f) - 1.5f;
                h[i + j] = f32_to_bf16(x);
            }
        }
        CK(cuda_upload((char *)d + done * 2, h, m * 2, NULL));
    }
    cuda_host_free((void **)&h);
    return d;
}

/* The median of reps timed cuda_topk calls (after two untimed ones), in ms, between CUDA
 * events on the default stream. */
static double time_topk(const cuda_topk_args_t *a, void *ws, size_t wsb, int reps,
                        cudaEvent_t e0, cudaEvent_t e1)
{
    float ms[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < 2 + reps; i++) {
        CK(cudaEventRecord(e0, 0) != cudaSuccess);
        CK(cuda_topk(a, ws, wsb, NULL));
        CK(cudaEventRecord(e1, 0) != cudaSuccess);
        CK(cudaEventSynchronize(e1) != cudaSuccess);
        if (i >= 2) CK(cudaEventElapsedTime(&ms[i - 2], e0, e1) != cudaSuccess);
    }
    CK(cuda_stream_sync(NULL));
    qsort(ms, (size_t)reps, sizeof(float), cmp_float);
    return ms[reps / 2];
}

/* rows × width bf16 on the device: row r is base row r % period (uniform in [-1.5, 1.5))
 * plus uniform noise in [-0.02, 0.02). */
static void *periodic_bf16_dev(size_t rows, size_t width, int period, uint64_t seed)
{
    float *base = malloc((size_t)period * width * sizeof(float));
    uint16_t *h = malloc(rows * width * sizeof(uint16_t));
    if (!base || !h) exit(1);
    uint64_t r = 0x9E3779B97F4A7C15ull ^ seed;
#define NEXT() (r ^= r << 13, r ^= r >> 7, r ^= r << 17, (float)((r >> 40) & 0xffffff) / 16777216.0f)
    for (size_t i = 0; i < (size_t)period * width; i++) base[i] = 3.0f * NEXT() - 1.5f;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < width; j++)
            h[i * width + j] = f32_to_bf16(base[(i % period) * width + j] + 0.04f * NEXT() - 0.02f);
#undef NEXT
    void *d = NULL;
    CK(cuda_alloc(&d, rows * width * 2));
    CK(cuda_upload(d, h, rows * width * 2, NULL));
    free(base);
    free(h);
    return d;
}

/* The embedded model's prefill shape on random and periodic keys (see the top). */
static void run_small(void)
{
    const int n_heads = 4, n_kv = 4, hd = 64, k = 128, n_q = 256;
    const long long rows_list[2] = {65536, 262144};
    void *q = rand_bf16_dev((size_t)n_q * n_heads * hd, 2);
    void *scores = NULL, *idx = NULL, *ws = NULL;
    CK(cuda_alloc(&scores, (size_t)n_q * n_heads * k * 4));
    CK(cuda_alloc(&idx, (size_t)n_q * n_heads * k * 4));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess);
    for (int kind = 0; kind < 2; kind++) {
        void *keys = kind ? periodic_bf16_dev((size_t)rows_list[1], (size_t)n_kv * hd, 25, 1)
                          : rand_bf16_dev((size_t)rows_list[1] * n_kv * hd, 1);
        for (int ri = 0; ri < 2; ri++) {
            const long long rows = rows_list[ri];
            cuda_topk_args_t a = {.n_q = n_q, .n_heads = n_heads, .n_kv_heads = n_kv,
                                  .head_dim = hd, .q = q, .keys = keys,
                                  .key_dtype = DTYPE_BF16, .row0 = 0, .row1 = rows, .k = k,
                                  .scores = scores, .idx = idx};
            size_t wsb = 0;
            CK(cuda_topk_workspace(&a, &wsb));
            CK(cuda_alloc(&ws, wsb));
            const double med = time_topk(&a, ws, wsb, 12, e0, e1);
            const double flop = 2.0 * n_q * n_heads * (double)rows * hd;
            printf("RESULT small-%s rows=%lld recall_ms=%.4f tflops=%.2f gscores_per_s=%.1f\n",
                   kind ? "periodic" : "random", rows, med, flop / (med * 1e-3) / 1e12,
                   (double)n_q * n_heads * rows / (med * 1e-3) / 1e9);
            fflush(stdout);
            cuda_free(&ws);
        }
        cuda_free(&keys);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cuda_free(&scores);
    cuda_free(&idx);
    cuda_free(&q);
}

int main(int argc, char **argv)
{
    int ndev = 0;
    if (cuda_device_count(&ndev) || ndev == 0) {
        printf("bench_cuda_topk: no GPU\n");
        return 0;
    }
    int want_decode = 1, want_prefill = 1, small = 0;
    long long max_rows = 1 << 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "small"))
            small = 1;
        else if (!strcmp(argv[i], "decode"))
            want_prefill = 0;
        else if (!strcmp(argv[i], "prefill"))
            want_decode = 0;
        else
            max_rows = atoll(argv[i]);
    }
    cuda_device_info_t info;
    CK(cuda_device_info(0, &info));
    cuda_ctx_t *ctx = NULL;
    CK(cuda_ctx_create(&ctx, 0));
    printf("device: %s (%d SMs)\n", info.name, info.sm_count);
    if (small) {
        run_small();
        cuda_ctx_destroy(&ctx);
        return 0;
    }

    const int n_heads = 32, n_kv = 32, hd = 100, k = 128;
    const long long rows_list[] = {65536, 262144, 1048576};
    long long rows_max = 0;
    for (int i = 0; i < 3; i++)
        if (rows_list[i] <= max_rows && rows_list[i] > rows_max) rows_max = rows_list[i];
    const int nq_max = want_prefill ? 2048 : 16;
    void *keys = rand_bf16_dev((size_t)rows_max * n_kv * hd, 1);
    void *q = rand_bf16_dev((size_t)nq_max * n_heads * hd, 2);
    void *scores = NULL, *idx = NULL, *ws = NULL;
    CK(cuda_alloc(&scores, (size_t)nq_max * n_heads * k * 4));
    CK(cuda_alloc(&idx, (size_t)nq_max * n_heads * k * 4));
    size_t ws_cap = 0;

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess);
    printf("%-8s %9s %10s %9s %9s %9s\n", "mode", "rows", "recall_ms", "TFLOP/s", "key_GB/s",
           "ws_MB");
    /* Modes: decode (1 query), decode2 / decode16 (a few queries, largest memory only),
     * prefill (2048 queries). */
    static const char *const names[4] = {"decode", "decode2", "decode16", "prefill"};
    static const int nqs[4] = {1, 2, 16, 2048};
    for (int mode = 0; mode < 4; mode++) {
        if ((mode < 3 && !want_decode) || (mode == 3 && !want_prefill)) continue;
        const int n_q = nqs[mode];
        for (int ri = 0; ri < 3; ri++) {
            const long long rows = rows_list[ri];
            if (rows > rows_max || ((mode == 1 || mode == 2) && rows != rows_max)) continue;
            cuda_topk_args_t a = {.n_q = n_q, .n_heads = n_heads, .n_kv_heads = n_kv,
                                  .head_dim = hd, .q = q, .keys = keys,
                                  .key_dtype = DTYPE_BF16, .row0 = 0, .row1 = rows, .k = k,
                                  .scores = scores, .idx = idx};
            size_t wsb = 0;
            CK(cuda_topk_workspace(&a, &wsb));
            if (wsb > ws_cap) {
                cuda_free(&ws);
                CK(cuda_alloc(&ws, wsb));
                ws_cap = wsb;
            }
            const double flop = 2.0 * n_q * n_heads * (double)rows * hd;
            const int reps = mode < 3 ? 50 : (rows >= 1 << 20 ? 5 : 10);
            const double med = time_topk(&a, ws, wsb, reps, e0, e1);
            const double tflops = flop / (med * 1e-3) / 1e12;
            const double gbs = (double)rows * n_kv * hd * 2 / (med * 1e-3) / 1e9;
            const char *name = names[mode];
            printf("%-8s %9lld %10.3f %9.1f %9.0f %9.1f\n", name, rows, med, tflops, gbs,
                   wsb / 1e6);
            printf("RESULT %s rows=%lld recall_ms=%.4f tflops=%.2f key_gbs=%.1f\n", name, rows,
                   med, tflops, gbs);
            fflush(stdout);
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cuda_free(&ws);
    cuda_free(&scores);
    cuda_free(&idx);
    cuda_free(&q);
    cuda_free(&keys);
    cuda_ctx_destroy(&ctx);
    return 0;
}
