/* cuda_attention.c — times cuda_attention on LongLLaMA-3B-shaped inputs (32 heads of 100;
 * 128 for comparison), bf16, random data. Prints one line per shape:
 *   <name> <median ms> <TFLOP/s>
 * bench/sdpa_attention.py prints the same names for PyTorch's scaled_dot_product_attention;
 * scripts/gpu_run.sh joins the two into ratios. Timing: 3 warm-up runs, then the median of
 * 20 runs, each between CUDA events.
 *
 * Both kernels are timed: cuda_attention (the plain FMA kernel) as <name>, and
 * cuda_attention_fast (the tensor-core kernel, attention_mma.cu) as <name>_mma; sdpa prints
 * its numbers under both names. An argument "plain" or "mma" times only that kernel. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cuda.h"

typedef struct shape {
    const char *name;
    int n_q, n_k, q_offset, n_heads, n_kv_heads, head_dim;
    size_t n_mem;
} shape_t;

static const shape_t shapes[] = {
    {"prefill_d100_2048", 2048, 2048, 0, 32, 32, 100, 0},
    {"prefill_d128_2048", 2048, 2048, 0, 32, 32, 128, 0},
    {"decode_d100_k2048", 1, 2048, 2047, 32, 32, 100, 0},
    {"prefill_d100_2048_mem8192", 2048, 2048, 0, 32, 32, 100, 8192},
    {"prefill_d64_2048", 2048, 2048, 0, 32, 32, 64, 0},
    {"prefill_d100_16384", 16384, 16384, 0, 32, 32, 100, 0},
    {"prefill_d128_16384", 16384, 16384, 0, 32, 32, 128, 0},
    {"chunk_d100_q512_k2048_mem8192", 512, 2048, 1536, 32, 32, 100, 8192},
    {"decode_d100_k2048_mem16384", 1, 2048, 2047, 32, 32, 100, 16384},
};

typedef rc_t (*ws_fn)(const cuda_attn_args_t *, size_t *);
typedef rc_t (*attn_fn)(const cuda_attn_args_t *, void *);

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void *rand_bf16_dev(size_t n)
{
    uint16_t *h = malloc(n * 2);
    if (!h) abort();
    uint64_t r = 0x9E3779B97F4A7C15ull ^ n;
    for (size_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        h[i] = f32_to_bf16(((float)(r >> 40) / 16777216.0f - 0.5f) * 3.0f);
    }
    void *d = NULL;
    if (cuda_alloc(&d, n * 2) || cuda_upload(d, h, n * 2, NULL)) {
        fprintf(stderr, "bench: device allocation of %zu bytes failed\n", n * 2);
        exit(1);
    }
    free(h);
    return d;
}

#define CK(x)                                                                                  \
    do {                                                                                       \
        if (x) {                                                                               \
            fprintf(stderr, "bench: %s failed at line %d\n", #x, __LINE__);                    \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : "";
    int n_dev = 0;
    if (cuda_device_count(&n_dev) || !n_dev) {
        printf("skipped: no GPU\n");
        return 77;
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape_t *s = &shapes[si];
        const size_t nq = (size_t)s->n_q * s->n_heads * s->head_dim;
        const size_t nk = (size_t)s->n_k * s->n_kv_heads * s->head_dim;
        const size_t nm = s->n_mem * s->n_kv_heads * s->head_dim;
        cuda_attn_args_t a = {.n_q = s->n_q, .n_k = s->n_k, .n_heads = s->n_heads,
                              .n_kv_heads = s->n_kv_heads, .head_dim = s->head_dim,
                              .q_offset = s->q_offset, .dtype = DTYPE_BF16,
                              .n_mem = s->n_mem, .mem_dtype = DTYPE_BF16,
                              .scale = 1.0f / sqrtf((float)s->head_dim)};
        a.q = rand_bf16_dev(nq);
        a.k = rand_bf16_dev(nk);
        a.v = rand_bf16_dev(nk);
        if (nm) {
            a.mem_k = rand_bf16_dev(nm);
            a.mem_v = rand_bf16_dev(nm);
        }
        CK(cuda_alloc(&a.out, nq * 2));
        for (int kern = 0; kern < 2; kern++) {
            if ((kern == 0 && !strcmp(only, "mma")) || (kern == 1 && !strcmp(only, "plain")))
                continue;
            const ws_fn ws = kern ? cuda_attention_fast_workspace : cuda_attention_workspace;
            const attn_fn run = kern ? cuda_attention_fast : cuda_attention;
            CK(ws(&a, &a.workspace_bytes));
            CK(cuda_alloc(&a.workspace, a.workspace_bytes));
            for (int i = 0; i < 3; i++) CK(run(&a, NULL));
            CK(cuda_stream_sync(NULL));
            float ms[20];
            for (int i = 0; i < 20; i++) {
                CK(cudaEventRecord(e0, 0) != cudaSuccess);
                CK(run(&a, NULL));
                CK(cudaEventRecord(e1, 0) != cudaSuccess);
                CK(cudaEventSynchronize(e1) != cudaSuccess);
                CK(cudaEventElapsedTime(&ms[i], e0, e1) != cudaSuccess);
            }
            CK(cuda_stream_sync(NULL));
            cuda_free(&a.workspace);
            qsort(ms, 20, sizeof(float), cmp_float);
            const float med = (ms[9] + ms[10]) / 2;
            /* Score and value products over the keys each query sees: 4 · d flops a pair. */
            double pairs = 0;
            for (int i = 0; i < s->n_q; i++) pairs += (double)s->n_mem + s->q_offset + i + 1;
            const double flops = 4.0 * pairs * s->head_dim * s->n_heads;
            printf("%s%s %.4f %.2f\n", s->name, kern ? "_mma" : "", med,
                   flops / (med * 1e-3) / 1e12);
            fflush(stdout);
        }
        void *p;
        p = (void *)a.q; cuda_free(&p);
        p = (void *)a.k; cuda_free(&p);
        p = (void *)a.v; cuda_free(&p);
        p = (void *)a.mem_k; cuda_free(&p);
        p = (void *)a.mem_v; cuda_free(&p);
        cuda_free(&a.out);
    }
    return 0;
}
