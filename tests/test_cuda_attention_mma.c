/* test_cuda_attention_mma.c — cuda_attention_fast (the tensor-core kernel) against
 * cpu_attention.
 *
 * Fresh random inputs each run (the seed is printed; RECALL_SEED=N repeats a run). Inputs
 * are rounded to bf16 on the host and the reference gets the rounded values, except fp32
 * memory, which the reference reads exactly while the kernel rounds it to bf16 as it stages
 * it. Every case runs without a workspace, with the planned one (split key range) and with
 * half of it, into an output filled with NaN first; unwritten or non-finite elements fail.
 *
 * Tolerance on ‖out − ref‖ / ‖ref‖: 5e-3. The bf16 output alone is rounded by up to 2^-9
 * relative per element (the plain kernel measures 1.7e-3 from that); the mma path adds two
 * roundings of the same size, the probabilities before P·V and fp32 memory rows, but each
 * output element averages them over many keys, so they add far less than their size. An
 * indexing or mask error shows as 1e-1 or worse. A second run of the same inputs must give
 * the same bits (a race shows as a moving result).
 *
 * The frame (skip, seed, buffers, comparison) is tests/gpu_ops.h's. With no GPU (CI) it
 * prints "skipped: no GPU" and exits 77. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "kernels/cpu.h"
#include "kernels/cuda.h"
#include "tests/check.h"
#include "tests/gpu_ops.h"

/* n values of x as dtype t in a fresh device buffer, `shift` bytes past its start (a
 * misaligned view when shift is not a multiple of 16). *base gets what to free. */
static void *dev_from(const float *x, size_t n, dtype_t t, size_t shift, void **base)
{
    const size_t bytes = n * dtype_size(t);
    void *host = malloc(bytes ? bytes : 1), *d = NULL;
    if (!host) abort();
    dtype_from_f32(host, t, x, n);
    rc_t rc = cuda_alloc(&d, bytes + shift);
    if (!rc) rc = cuda_upload((char *)d + shift, host, bytes, NULL);
    free(host);
    if (rc) {
        gpu_setup_failed("a device buffer");
        fprintf(stderr, "FAIL: device buffer of %zu bytes: %s\n", bytes, rc_strerror(rc));
        cuda_free(&d);
        *base = NULL;
        return NULL;
    }
    *base = d;
    return (char *)d + shift;
}

static void dev_release(void **base)
{
    cuda_free(base);
}

/* Waits for the device and reads n bf16 values back (raw, so runs can be compared bitwise). */
static uint16_t *host_raw(const void *d, size_t n)
{
    uint16_t *raw = gpu_xmalloc(n * 2);
    if (gpu_fetch(raw, d, n * 2)) {
        free(raw);
        return NULL;
    }
    return raw;
}

static double worst_err;

static void compare(const char *desc, const uint16_t *raw, const float *ref, size_t n)
{
    const double err = gpu_compare_raw("attention_mma", desc, raw, DTYPE_BF16, ref, n,
                                       GPU_TOL_BF16);
    if (raw && err > worst_err) worst_err = err;
}

typedef struct mcase {
    int head_dim, n_q, n_k, q_offset, n_heads, n_kv_heads;
    size_t n_mem;
    dtype_t mem_t;
    int clamp;      /* every score far below −1e6: the clamp decides the output */
    int want_split; /* the workspace path must split this one */
    size_t shift;   /* bytes by which q is misaligned: the plain kernel must take over */
} mcase_t;

static void test_case(const mcase_t *c)
{
    const int hd = c->head_dim;
    const size_t nq = (size_t)c->n_q * c->n_heads * hd;
    const size_t nk = (size_t)c->n_k * c->n_kv_heads * hd;
    const size_t nm = c->n_mem * c->n_kv_heads * hd;
    float *q = gpu_rand(nq, 1.0f), *k = gpu_rand(nk, 1.0f), *v = gpu_rand(nk, 1.0f);
    float *mk = gpu_rand(nm, 1.0f), *mv = gpu_rand(nm, 1.0f);
    if (c->clamp) {
        for (size_t i = 0; i < nq; i++) q[i] = -1e6f;
        for (size_t i = 0; i < nk; i++) k[i] = fabsf(k[i]) + 0.5f;
        for (size_t i = 0; i < nm; i++) mk[i] = fabsf(mk[i]) + 0.5f;
    }
    gpu_round(q, nq, DTYPE_BF16);
    gpu_round(k, nk, DTYPE_BF16);
    gpu_round(v, nk, DTYPE_BF16);
    gpu_round(mk, nm, c->mem_t);
    gpu_round(mv, nm, c->mem_t);

    void *h_mk = malloc((nm ? nm : 1) * dtype_size(c->mem_t));
    void *h_mv = malloc((nm ? nm : 1) * dtype_size(c->mem_t));
    float *ref = malloc((nq ? nq : 1) * sizeof(float));
    if (!h_mk || !h_mv || !ref) abort();
    dtype_from_f32(h_mk, c->mem_t, mk, nm);
    dtype_from_f32(h_mv, c->mem_t, mv, nm);
    attn_args_t ra = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = c->n_heads,
                      .n_kv_heads = c->n_kv_heads, .head_dim = hd, .q_offset = c->q_offset,
                      .q = q, .k = k, .v = v, .n_mem = c->n_mem, .mem_dtype = c->mem_t,
                      .mem_k = h_mk, .mem_v = h_mv, .scale = 1.0f / sqrtf((float)hd), .out = ref};
    cpu_attention(&ra);

    cuda_attn_args_t a = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = c->n_heads,
                          .n_kv_heads = c->n_kv_heads, .head_dim = hd, .q_offset = c->q_offset,
                          .dtype = DTYPE_BF16, .n_mem = c->n_mem, .mem_dtype = c->mem_t,
                          .scale = ra.scale};
    void *bq = NULL, *bk = NULL, *bv = NULL, *bmk = NULL, *bmv = NULL, *ws = NULL;
    a.q = dev_from(q, nq, DTYPE_BF16, c->shift, &bq);
    a.k = dev_from(k, nk, DTYPE_BF16, 0, &bk);
    a.v = dev_from(v, nk, DTYPE_BF16, 0, &bv);
    if (nm) {
        a.mem_k = dev_from(mk, nm, c->mem_t, 0, &bmk);
        a.mem_v = dev_from(mv, nm, c->mem_t, 0, &bmv);
    }
    size_t ws_bytes = 0;
    CHECK_RC(cuda_attention_fast_workspace(&a, &ws_bytes), RC_OK);
    if (c->want_split)
        CHECK_MSG(ws_bytes > 0, "case d%d n_q %d n_mem %zu: no split planned", hd, c->n_q,
                  c->n_mem);
    if (ws_bytes) CHECK_RC(cuda_alloc(&ws, ws_bytes), RC_OK);

    uint16_t *first = NULL;
    for (int use_ws = 0; use_ws <= (ws_bytes ? 2 : 0); use_ws++) {
        void *o = NULL;
        if (cuda_alloc(&o, nq * 2) || cuda_memset(o, 0xFF, nq * 2, NULL))
            gpu_setup_failed("the output buffer");
        a.out = o;
        a.workspace = use_ws ? ws : NULL;
        a.workspace_bytes = use_ws == 1 ? ws_bytes : use_ws == 2 ? ws_bytes / 2 : 0;
        if (a.q && a.k && a.v && a.out && (!nm || (a.mem_k && a.mem_v))) {
            CHECK_RC(cuda_attention_fast(&a, NULL), RC_OK);
            uint16_t *out = host_raw(a.out, nq);
            char desc[200];
            snprintf(desc, sizeof desc, "d%d q%d k%d off%d h%d/%d mem %zu%s%s%s%s%s", hd,
                     c->n_q, c->n_k, c->q_offset, c->n_heads, c->n_kv_heads, c->n_mem,
                     nm ? " " : "", nm ? dtype_name(c->mem_t) : "",
                     use_ws == 1 ? " split" : use_ws == 2 ? " split/2" : "",
                     c->clamp ? " clamp" : "", c->shift ? " misaligned" : "");
            compare(desc, out, ref, nq);
            if (use_ws == 0 && out) {
                /* Once more, same inputs, fresh poison: the bits must not move. */
                CHECK_RC(cuda_memset(o, 0xFF, nq * 2, NULL), RC_OK);
                CHECK_RC(cuda_attention_fast(&a, NULL), RC_OK);
                first = host_raw(a.out, nq);
                CHECK_MSG(first && !memcmp(first, out, nq * 2),
                          "%s: a second run gave different bits (a race?)", desc);
            }
            free(out);
        }
        cuda_free(&o);
    }
    free(first);

    cuda_attn_args_t bad = a;
    bad.head_dim = 96;
    CHECK_RC(cuda_attention_fast(&bad, NULL), RC_ERR_UNSUPPORTED);
    bad = a;
    bad.q_offset = c->n_k - c->n_q + 1;
    CHECK_RC(cuda_attention_fast(&bad, NULL), RC_ERR_INVALID);
    bad = a;
    bad.n_kv_heads = c->n_heads + 1;
    CHECK_RC(cuda_attention_fast(&bad, NULL), RC_ERR_INVALID);

    dev_release(&bq);
    dev_release(&bk);
    dev_release(&bv);
    dev_release(&bmk);
    dev_release(&bmv);
    cuda_free(&ws);
    free(q);
    free(k);
    free(v);
    free(mk);
    free(mv);
    free(h_mk);
    free(h_mv);
    free(ref);
}

int main(void)
{
    const int skip = gpu_ops_begin("test_cuda_attention_mma", 1);
    if (skip) return skip;

    const dtype_t B = DTYPE_BF16, F = DTYPE_F32;
    static mcase_t cases[] = {
        /* dim  n_q   n_k   off   h  kv  mem    mem_t clamp split shift */
        {64, 70, 70, 0, 4, 4, 0, 0, 0, 0, 0},
        {64, 20, 50, 30, 2, 1, 40, 0, 1, 0, 0},
        {100, 17, 100, 83, 8, 2, 300, 0, 0, 0, 0},
        {100, 33, 33, 0, 4, 4, 1000, 0, 0, 1, 0},
        {128, 1, 257, 256, 4, 1, 1000, 0, 0, 1, 0},
        {128, 64, 192, 128, 8, 4, 555, 0, 0, 0, 0},
        {100, 5, 3000, 2995, 2, 2, 0, 0, 0, 1, 0},
        {128, 40, 40, 0, 6, 2, 2048, 0, 0, 1, 0},
        {64, 1, 1, 0, 2, 2, 0, 0, 0, 0, 0},
        {100, 256, 256, 0, 4, 4, 0, 0, 0, 0, 0},
        {128, 200, 1000, 800, 4, 4, 0, 0, 0, 0, 0},
        {64, 300, 700, 400, 8, 2, 130, 0, 0, 0, 0},
        {100, 130, 300, 170, 4, 2, 20000, 0, 0, 1, 0},     /* long memory */
        {128, 1, 2048, 2047, 8, 8, 20000, 0, 0, 1, 0},     /* decode, long memory */
        {100, 1, 2048, 2047, 32, 32, 0, 0, 0, 1, 0},       /* decode, LongLLaMA-3B heads */
        {100, 96, 96, 0, 4, 4, 200, 0, 1, 0, 0},           /* clamp with memory */
        {100, 40, 90, 50, 4, 2, 77, 0, 0, 0, 2},           /* misaligned q: plain kernel */
    };
    /* mem_t: alternate bf16 and fp32 memory over the cases that have memory. */
    /* RECALL_MMA_SMALL=1 leaves out the long memories (for slow tools: racecheck). */
    const int small = getenv("RECALL_MMA_SMALL") && atoi(getenv("RECALL_MMA_SMALL"));
    int alt = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cases[i].mem_t = cases[i].n_mem ? (alt++ % 2 ? F : B) : B;
        if (small && cases[i].n_mem > 5000) continue;
        test_case(&cases[i]);
    }
    /* Both memory dtypes on the long-memory prefill. */
    mcase_t extra = cases[12];
    extra.mem_t = extra.mem_t == F ? B : F;
    if (!small) test_case(&extra);

    /* fp32 activations are not the mma path's: cuda_attention_fast hands them over. */
    {
        const int n = 8, hd = 64, h = 2;
        const size_t nx = (size_t)n * h * hd;
        float *x = gpu_rand(nx, 1.0f), *ref = malloc(nx * sizeof(float)), *out = malloc(nx * 4);
        if (!ref || !out) abort();
        attn_args_t ra = {.n_q = n, .n_k = n, .n_heads = h, .n_kv_heads = h, .head_dim = hd,
                          .q = x, .k = x, .v = x, .scale = 0.125f, .out = ref};
        cpu_attention(&ra);
        void *bx = NULL, *o = NULL;
        const float *dx = dev_from(x, nx, F, 0, &bx);
        CHECK_RC(cuda_alloc(&o, nx * 4), RC_OK);
        cuda_attn_args_t a = {.n_q = n, .n_k = n, .n_heads = h, .n_kv_heads = h,
                              .head_dim = hd, .dtype = F, .q = dx, .k = dx, .v = dx,
                              .scale = 0.125f, .out = o};
        CHECK_RC(cuda_attention_fast(&a, NULL), RC_OK);
        CHECK_RC(cuda_stream_sync(NULL), RC_OK);
        CHECK_RC(cuda_download(out, o, nx * 4, NULL), RC_OK);
        double num = 0, den = 0;
        for (size_t i = 0; i < nx; i++) {
            num += ((double)out[i] - ref[i]) * ((double)out[i] - ref[i]);
            den += (double)ref[i] * ref[i];
        }
        printf("attention_mma f32 activations (plain kernel)  rel_err %.2e\n", sqrt(num / den));
        CHECK(sqrt(num / den) < 5e-5);
        cuda_free(&o);
        dev_release(&bx);
        free(x);
        free(ref);
        free(out);
    }

    printf("attention_mma worst rel_err %.2e\n", worst_err);
    CHECK_MSG(gpu_setup_failures() == 0, "%d device buffers could not be set up",
              gpu_setup_failures());
    return check_summary();
}
