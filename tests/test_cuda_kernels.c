/* test_cuda_kernels.c — every CUDA op against its CPU reference (kernels/cpu.h).
 *
 * The frame is tests/gpu_ops.h's. Inputs are fresh random numbers each run (the seed is
 * printed; RECALL_SEED=N repeats a run). bf16 operands are rounded on the host first and the reference gets the rounded
 * values, so what is measured is the kernel's own error: fp32 accumulation order and, for
 * bf16 outputs, the final rounding (at most 2^-9 ≈ 2e-3 relative per element). Every output
 * buffer is filled with NaN before the op runs, so an element the kernel fails to write
 * fails the finite check. One line per case: op, shape, dtypes, ‖out − ref‖ / ‖ref‖.
 *
 * With no GPU (CI) it prints "skipped: no GPU" and exits 77: ctest counts that as skipped. */
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

static double tol_for(dtype_t out_t)
{
    return out_t == DTYPE_BF16 ? GPU_TOL_BF16 : GPU_TOL_F32;
}

static double tol_sum_for(dtype_t out_t)
{
    return out_t == DTYPE_BF16 ? GPU_TOL_BF16 : GPU_TOL_F32_SUM;
}

static const char *dn(dtype_t t)
{
    return dtype_name(t);
}

/* ---- ops ----------------------------------------------------------------------------- */

static void test_convert(void)
{
    const size_t n = 10007;
    float *x = gpu_rand(n, 3.0f);
    void *src = gpu_upload(x, n, DTYPE_F32), *dst = gpu_poisoned(n, DTYPE_BF16);
    if (src && dst) {
        CHECK_RC(cuda_convert(dst, DTYPE_BF16, src, DTYPE_F32, n, NULL), RC_OK);
        float *out = gpu_download(dst, n, DTYPE_BF16);
        float *ref = malloc(n * sizeof(float));
        memcpy(ref, x, n * sizeof(float));
        gpu_round(ref, n, DTYPE_BF16);
        gpu_compare("convert", "n 10007 f32 -> bf16 (round to nearest even)", out, ref, n, GPU_TOL_EXACT);
        /* ...and back: bf16 -> f32 is exact. */
        void *back = gpu_poisoned(n, DTYPE_F32);
        CHECK_RC(cuda_convert(back, DTYPE_F32, dst, DTYPE_BF16, n, NULL), RC_OK);
        float *out2 = gpu_download(back, n, DTYPE_F32);
        gpu_compare("convert", "n 10007 bf16 -> f32", out2, ref, n, GPU_TOL_EXACT);
        cuda_free(&back);
        free(out);
        free(out2);
        free(ref);
    }
    CHECK_RC(cuda_convert(dst, DTYPE_F16, src, DTYPE_F32, n, NULL), RC_ERR_UNSUPPORTED);
    cuda_free(&src);
    cuda_free(&dst);
    free(x);
}

static void test_embedding(int vocab, int dim, int n_tok, dtype_t out_t)
{
    float *table = gpu_rand((size_t)vocab * dim, 1.0f);
    gpu_round(table, (size_t)vocab * dim, DTYPE_BF16);
    int32_t *ids = malloc(n_tok * sizeof(int32_t));
    for (int t = 0; t < n_tok; t++) ids[t] = (int32_t)(rng_next() % (uint64_t)vocab);
    ids[0] = vocab - 1; /* the last row, where an off-by-one would read past the table */
    void *d_table = gpu_upload(table, (size_t)vocab * dim, DTYPE_BF16);
    void *d_ids = gpu_upload_raw(ids, n_tok * sizeof(int32_t));
    void *d_out = gpu_poisoned((size_t)n_tok * dim, out_t);
    if (d_table && d_ids && d_out) {
        CHECK_RC(cuda_embedding(d_out, out_t, d_table, d_ids, n_tok, vocab, dim, NULL), RC_OK);
        float *out = gpu_download(d_out, (size_t)n_tok * dim, out_t);
        float *ref = malloc((size_t)n_tok * dim * sizeof(float));
        for (int t = 0; t < n_tok; t++)
            memcpy(ref + (size_t)t * dim, table + (size_t)ids[t] * dim, dim * sizeof(float));
        char desc[128];
        snprintf(desc, sizeof desc, "vocab %d dim %d n_tok %d bf16 -> %s", vocab, dim, n_tok,
                 dn(out_t));
        gpu_compare("embedding", desc, out, ref, (size_t)n_tok * dim, GPU_TOL_EXACT);
        free(out);
        free(ref);

        /* An id out of range gives a NaN row, not a read out of bounds. */
        int32_t bad[2] = {vocab, -1};
        CHECK_RC(cuda_upload(d_ids, bad, sizeof bad, NULL), RC_OK);
        CHECK_RC(cuda_embedding(d_out, out_t, d_table, d_ids, 2, vocab, dim, NULL), RC_OK);
        out = gpu_download(d_out, (size_t)2 * dim, out_t);
        if (out) CHECK(isnan(out[0]) && isnan(out[dim + dim - 1]));
        free(out);
    }
    cuda_free(&d_table);
    cuda_free(&d_ids);
    cuda_free(&d_out);
    free(table);
    free(ids);
}

static void test_rmsnorm(int n_tok, int dim, dtype_t x_t, dtype_t out_t, int in_place)
{
    const size_t n = (size_t)n_tok * dim;
    const float eps = 1e-6f;
    float *x = gpu_rand(n, 3.0f), *g = gpu_rand(dim, 0.2f);
    for (int i = 0; i < dim; i++) g[i] += 1.0f;
    gpu_round(x, n, x_t);
    gpu_round(g, dim, DTYPE_BF16);
    float *ref = malloc(n * sizeof(float));
    cpu_rmsnorm(ref, x, g, n_tok, dim, eps);
    void *d_x = gpu_upload(x, n, x_t), *d_g = gpu_upload(g, dim, DTYPE_BF16);
    void *d_out = in_place ? d_x : gpu_poisoned(n, out_t);
    if (d_x && d_g && d_out) {
        CHECK_RC(cuda_rmsnorm(d_out, out_t, d_x, x_t, d_g, n_tok, dim, eps, NULL), RC_OK);
        float *out = gpu_download(d_out, n, out_t);
        char desc[128];
        snprintf(desc, sizeof desc, "n_tok %d dim %d %s -> %s%s", n_tok, dim, dn(x_t), dn(out_t),
                 in_place ? " in place" : "");
        gpu_compare("rmsnorm", desc, out, ref, n, tol_for(out_t));
        free(out);
    }
    if (!in_place) cuda_free(&d_out);
    cuda_free(&d_x);
    cuda_free(&d_g);
    free(x);
    free(g);
    free(ref);
}

static void test_rope(int n_tok, int n_heads, int head_dim, float theta, float mscale,
                      dtype_t t)
{
    const size_t n = (size_t)n_tok * n_heads * head_dim;
    float *x = gpu_rand(n, 1.0f);
    gpu_round(x, n, t);
    int32_t *pos = malloc(n_tok * sizeof(int32_t));
    for (int i = 0; i < n_tok; i++) pos[i] = (int32_t)(rng_next() % 4096);
    pos[0] = 0;
    float *inv_freq = malloc((head_dim / 2) * sizeof(float));
    cpu_rope_inv_freq(inv_freq, head_dim, theta);
    float *ref = malloc(n * sizeof(float));
    memcpy(ref, x, n * sizeof(float));
    cpu_rope(ref, n_tok, n_heads, head_dim, pos, inv_freq, mscale);
    void *d_x = gpu_upload(x, n, t);
    void *d_pos = gpu_upload_raw(pos, n_tok * sizeof(int32_t));
    void *d_inv = gpu_upload_raw(inv_freq, (head_dim / 2) * sizeof(float));
    if (d_x && d_pos && d_inv) {
        /* In place: the input is its own output, so poisoning cannot apply; a skipped
         * element keeps its unrotated value, which the reference does not have. */
        CHECK_RC(cuda_rope(d_x, t, n_tok, n_heads, head_dim, d_pos, d_inv, mscale, NULL), RC_OK);
        float *out = gpu_download(d_x, n, t);
        char desc[128];
        snprintf(desc, sizeof desc, "n_tok %d heads %d dim %d theta %g mscale %g %s", n_tok,
                 n_heads, head_dim, theta, mscale, dn(t));
        gpu_compare("rope", desc, out, ref, n, tol_for(t));
        free(out);
    }
    CHECK_RC(cuda_rope(d_x, t, n_tok, n_heads, 99, d_pos, d_inv, mscale, NULL), RC_ERR_INVALID);
    cuda_free(&d_x);
    cuda_free(&d_pos);
    cuda_free(&d_inv);
    free(x);
    free(pos);
    free(inv_freq);
    free(ref);
}

static void test_swiglu(size_t n, dtype_t in_t, dtype_t out_t)
{
    float *gate = gpu_rand(n, 3.0f), *up = gpu_rand(n, 1.0f);
    gpu_round(gate, n, in_t);
    gpu_round(up, n, in_t);
    float *ref = malloc(n * sizeof(float));
    cpu_swiglu(ref, gate, up, n);
    void *d_g = gpu_upload(gate, n, in_t), *d_u = gpu_upload(up, n, in_t);
    void *d_out = gpu_poisoned(n, out_t);
    if (d_g && d_u && d_out) {
        CHECK_RC(cuda_swiglu(d_out, out_t, d_g, d_u, in_t, n, NULL), RC_OK);
        float *out = gpu_download(d_out, n, out_t);
        char desc[128];
        snprintf(desc, sizeof desc, "n %zu %s -> %s", n, dn(in_t), dn(out_t));
        gpu_compare("swiglu", desc, out, ref, n, tol_for(out_t));
        free(out);
    }
    cuda_free(&d_g);
    cuda_free(&d_u);
    cuda_free(&d_out);
    free(gate);
    free(up);
    free(ref);
}

static void test_matmul(cuda_ctx_t *ctx, int m, int n, int k, dtype_t y_t, float beta)
{
    float *x = gpu_rand((size_t)m * k, 1.0f), *w = gpu_rand((size_t)n * k, 0.05f);
    float *y0 = gpu_rand((size_t)m * n, 1.0f);
    gpu_round(x, (size_t)m * k, DTYPE_BF16);
    gpu_round(w, (size_t)n * k, DTYPE_BF16);
    gpu_round(y0, (size_t)m * n, y_t);
    float *ref = malloc((size_t)m * n * sizeof(float));
    cpu_matmul_nt(ref, x, w, m, n, k);
    if (beta != 0.0f)
        for (size_t i = 0; i < (size_t)m * n; i++) ref[i] += beta * y0[i];
    void *d_x = gpu_upload(x, (size_t)m * k, DTYPE_BF16), *d_w = gpu_upload(w, (size_t)n * k, DTYPE_BF16);
    /* beta = 0 must not read y at all: give it NaN. */
    void *d_y = beta != 0.0f ? gpu_upload(y0, (size_t)m * n, y_t) : gpu_poisoned((size_t)m * n, y_t);
    if (d_x && d_w && d_y) {
        CHECK_RC(cuda_matmul_nt(ctx, d_y, y_t, d_x, d_w, m, n, k, beta, NULL), RC_OK);
        float *out = gpu_download(d_y, (size_t)m * n, y_t);
        char desc[128];
        snprintf(desc, sizeof desc, "m %d n %d k %d bf16 -> %s beta %g", m, n, k, dn(y_t), beta);
        gpu_compare("matmul_nt", desc, out, ref, (size_t)m * n, tol_sum_for(y_t));
        free(out);
    }
    cuda_free(&d_x);
    cuda_free(&d_w);
    cuda_free(&d_y);
    free(x);
    free(w);
    free(y0);
    free(ref);
}

typedef struct attn_case {
    int head_dim, n_q, n_k, q_offset, n_heads, n_kv_heads;
    size_t n_mem;
    dtype_t t, mem_t;
    int clamp;       /* make every score far below −1e6, so the clamp decides the output */
    int want_split;  /* the workspace path must split this one */
} attn_case_t;

static void test_attention(const attn_case_t *c)
{
    const int hd = c->head_dim;
    const size_t nq = (size_t)c->n_q * c->n_heads * hd;
    const size_t nk = (size_t)c->n_k * c->n_kv_heads * hd;
    const size_t nm = c->n_mem * c->n_kv_heads * hd;
    float *q = gpu_rand(nq, 1.0f), *k = gpu_rand(nk, 1.0f), *v = gpu_rand(nk, 1.0f);
    float *mk = gpu_rand(nm, 1.0f), *mv = gpu_rand(nm, 1.0f);
    if (c->clamp) {
        /* q·k ≈ −1e6 · Σ|k| · scale ≪ −1e6 for every key: all scores clamp to −1e6 and the
         * softmax is uniform; without the clamp it would pick one key. */
        for (size_t i = 0; i < nq; i++) q[i] = -1e6f;
        for (size_t i = 0; i < nk; i++) k[i] = fabsf(k[i]) + 0.5f;
        for (size_t i = 0; i < nm; i++) mk[i] = fabsf(mk[i]) + 0.5f;
    }
    gpu_round(q, nq, c->t);
    gpu_round(k, nk, c->t);
    gpu_round(v, nk, c->t);
    gpu_round(mk, nm, c->mem_t);
    gpu_round(mv, nm, c->mem_t);

    /* The reference reads memory in its own dtype, as the model stores it. */
    void *h_mk = malloc((nm ? nm : 1) * dtype_size(c->mem_t));
    void *h_mv = malloc((nm ? nm : 1) * dtype_size(c->mem_t));
    dtype_from_f32(h_mk, c->mem_t, mk, nm);
    dtype_from_f32(h_mv, c->mem_t, mv, nm);
    float *ref = malloc(nq * sizeof(float));
    attn_args_t ra = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = c->n_heads,
                      .n_kv_heads = c->n_kv_heads, .head_dim = hd, .q_offset = c->q_offset,
                      .q = q, .k = k, .v = v, .n_mem = c->n_mem, .mem_dtype = c->mem_t,
                      .mem_k = h_mk, .mem_v = h_mv, .scale = 1.0f / sqrtf((float)hd), .out = ref};
    cpu_attention(&ra);

    cuda_attn_args_t a = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = c->n_heads,
                          .n_kv_heads = c->n_kv_heads, .head_dim = hd, .q_offset = c->q_offset,
                          .dtype = c->t, .n_mem = c->n_mem, .mem_dtype = c->mem_t,
                          .scale = ra.scale};
    a.q = gpu_upload(q, nq, c->t);
    a.k = gpu_upload(k, nk, c->t);
    a.v = gpu_upload(v, nk, c->t);
    if (nm) {
        a.mem_k = gpu_upload(mk, nm, c->mem_t);
        a.mem_v = gpu_upload(mv, nm, c->mem_t);
    }
    size_t ws_bytes = 0;
    CHECK_RC(cuda_attention_workspace(&a, &ws_bytes), RC_OK);
    if (c->want_split) CHECK_MSG(ws_bytes > 0, "case d%d n_q %d: no split planned", hd, c->n_q);
    void *ws = NULL;
    if (ws_bytes) CHECK_RC(cuda_alloc(&ws, ws_bytes), RC_OK);

    /* Without a workspace (one pass per block), with the planned one, and with half of it
     * (fewer splits than planned). */
    for (int use_ws = 0; use_ws <= (ws_bytes ? 2 : 0); use_ws++) {
        a.out = gpu_poisoned(nq, c->t);
        a.workspace = use_ws ? ws : NULL;
        a.workspace_bytes = use_ws == 1 ? ws_bytes : use_ws == 2 ? ws_bytes / 2 : 0;
        if (a.q && a.k && a.v && a.out && (!nm || (a.mem_k && a.mem_v))) {
            CHECK_RC(cuda_attention(&a, NULL), RC_OK);
            float *out = gpu_download(a.out, nq, c->t);
            char desc[160];
            snprintf(desc, sizeof desc, "d%d q%d k%d off%d h%d/%d mem %zu%s%s %s%s%s", hd,
                     c->n_q, c->n_k, c->q_offset, c->n_heads, c->n_kv_heads, c->n_mem,
                     nm ? " " : "", nm ? dn(c->mem_t) : "", dn(c->t),
                     use_ws == 1 ? " split" : use_ws == 2 ? " split/2" : "",
                     c->clamp ? " clamp" : "");
            gpu_compare("attention", desc, out, ref, nq, tol_sum_for(c->t));
            free(out);
        }
        void *o = a.out;
        cuda_free(&o);
    }

    /* Arguments the kernels must refuse. */
    cuda_attn_args_t bad = a;
    bad.head_dim = 96;
    CHECK_RC(cuda_attention(&bad, NULL), RC_ERR_UNSUPPORTED);
    bad = a;
    bad.q_offset = c->n_k - c->n_q + 1; /* a query would see keys that do not exist */
    CHECK_RC(cuda_attention(&bad, NULL), RC_ERR_INVALID);
    bad = a;
    bad.n_kv_heads = c->n_heads + 1;
    CHECK_RC(cuda_attention(&bad, NULL), RC_ERR_INVALID);

    void *p;
    p = (void *)a.q; cuda_free(&p);
    p = (void *)a.k; cuda_free(&p);
    p = (void *)a.v; cuda_free(&p);
    p = (void *)a.mem_k; cuda_free(&p);
    p = (void *)a.mem_v; cuda_free(&p);
    cuda_free(&ws);
    free(q); free(k); free(v); free(mk); free(mv); free(h_mk); free(h_mv); free(ref);
}

static void test_log_softmax(int n_tok, int vocab)
{
    const size_t n = (size_t)n_tok * vocab;
    float *x = gpu_rand(n, 4.0f);
    float *ref = malloc(n * sizeof(float));
    cpu_log_softmax(ref, x, n_tok, vocab);
    void *d_x = gpu_upload(x, n, DTYPE_F32), *d_out = gpu_poisoned(n, DTYPE_F32);
    if (d_x && d_out) {
        CHECK_RC(cuda_log_softmax(d_out, d_x, n_tok, vocab, NULL), RC_OK);
        float *out = gpu_download(d_out, n, DTYPE_F32);
        char desc[128];
        snprintf(desc, sizeof desc, "n_tok %d vocab %d f32", n_tok, vocab);
        gpu_compare("log_softmax", desc, out, ref, n, GPU_TOL_F32);
        free(out);
    }
    cuda_free(&d_x);
    cuda_free(&d_out);
    free(x);
    free(ref);
}

static void test_argmax(int vocab)
{
    enum { N_TOK = 5 };
    const size_t n = (size_t)N_TOK * vocab;
    float *x = gpu_rand(n, 4.0f);
    x[1 * (size_t)vocab + vocab / 4] = x[1 * (size_t)vocab + vocab - 7] = 50.0f; /* tie: first */
    x[2 * (size_t)vocab + vocab - 1] = 60.0f;                                /* last index */
    for (int i = 0; i < vocab; i++) x[3 * (size_t)vocab + i] = -5.0f;       /* all equal */
    x[4 * (size_t)vocab + 0] = 70.0f;                                        /* first index */
    void *d_x = gpu_upload(x, n, DTYPE_F32), *d_out = NULL;
    int32_t poison[N_TOK], out[N_TOK];
    for (int t = 0; t < N_TOK; t++) poison[t] = -1;
    d_out = gpu_upload_raw(poison, sizeof poison);
    if (d_x && d_out) {
        CHECK_RC(cuda_argmax(d_out, d_x, N_TOK, vocab, NULL), RC_OK);
        CHECK_RC(cuda_stream_sync(NULL), RC_OK);
        CHECK_RC(cuda_download(out, d_out, sizeof out, NULL), RC_OK);
        int same = 0;
        for (int t = 0; t < N_TOK; t++) {
            int want = cpu_argmax(x + (size_t)t * vocab, vocab);
            CHECK_MSG(out[t] == want, "argmax row %d: %d, want %d", t, out[t], want);
            same += out[t] == want;
        }
        char desc[128];
        snprintf(desc, sizeof desc, "n_tok %d vocab %d f32 (ties, ends)", N_TOK, vocab);
        printf("%-13s %-58s %d/%d rows equal        %s\n", "argmax", desc, same, N_TOK,
               same == N_TOK ? "ok" : "FAIL");
    }
    cuda_free(&d_x);
    cuda_free(&d_out);
    free(x);
}

int main(void)
{
    const int skip = gpu_ops_begin("test_cuda_kernels", 1);
    if (skip) return skip;
    cuda_ctx_t *ctx = NULL;
    CHECK_RC(cuda_ctx_create(&ctx, 0), RC_OK);
    if (!ctx) return check_summary();

    test_convert();
    test_embedding(1000, 3200, 37, DTYPE_F32);
    test_embedding(32000, 100, 5, DTYPE_BF16);

    test_rmsnorm(7, 3200, DTYPE_F32, DTYPE_F32, 0);
    test_rmsnorm(64, 4096, DTYPE_BF16, DTYPE_BF16, 0);
    test_rmsnorm(5, 100, DTYPE_F32, DTYPE_BF16, 0);
    test_rmsnorm(3, 2048, DTYPE_F32, DTYPE_F32, 1);

    test_rope(33, 8, 64, 1e4f, 1.0f, DTYPE_F32);
    test_rope(33, 8, 100, 1e4f, 1.0f, DTYPE_F32);
    test_rope(17, 4, 128, 1e6f, 1.25f, DTYPE_F32);
    test_rope(33, 8, 100, 1e4f, 1.0f, DTYPE_BF16);
    test_rope(9, 32, 128, 1e4f, 1.0f, DTYPE_BF16);

    test_swiglu(100003, DTYPE_F32, DTYPE_F32);
    test_swiglu(100003, DTYPE_BF16, DTYPE_BF16);
    test_swiglu(4099, DTYPE_BF16, DTYPE_F32);

    test_matmul(ctx, 1, 3200, 3200, DTYPE_F32, 0.0f);
    test_matmul(ctx, 37, 1000, 256, DTYPE_BF16, 0.0f);
    test_matmul(ctx, 128, 1024, 3200, DTYPE_F32, 1.0f);
    test_matmul(ctx, 64, 520, 100, DTYPE_BF16, 1.0f);

    static const attn_case_t cases[] = {
        /* dim  n_q  n_k   off  h  kv  mem   dtype       mem dtype   clamp split */
        {64, 70, 70, 0, 4, 4, 0, DTYPE_F32, DTYPE_F32, 0, 0},
        {64, 20, 50, 30, 2, 1, 40, DTYPE_F32, DTYPE_F32, 1, 0},
        {100, 17, 100, 83, 8, 2, 300, DTYPE_BF16, DTYPE_BF16, 0, 0},
        {100, 33, 33, 0, 4, 4, 1000, DTYPE_F32, DTYPE_BF16, 0, 1},
        {128, 1, 257, 256, 4, 1, 1000, DTYPE_F32, DTYPE_F32, 0, 1},
        {128, 64, 192, 128, 8, 4, 555, DTYPE_BF16, DTYPE_BF16, 0, 0},
        {100, 5, 3000, 2995, 2, 2, 0, DTYPE_F32, DTYPE_F32, 0, 1},
        {128, 40, 40, 0, 6, 2, 2048, DTYPE_BF16, DTYPE_F32, 0, 1},
        {64, 1, 1, 0, 2, 2, 0, DTYPE_BF16, DTYPE_BF16, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_attention(&cases[i]);

    test_log_softmax(3, 32000);
    test_log_softmax(2, 50);
    test_argmax(32000);
    test_argmax(33);

    CHECK_MSG(gpu_setup_failures() == 0, "%d device buffers could not be set up",
              gpu_setup_failures());
    cuda_ctx_destroy(&ctx);
    CHECK(ctx == NULL);
    return check_summary();
}
