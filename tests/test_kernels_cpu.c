/* The CPU kernels against naive double-precision versions written out here. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/dtype.h"
#include "kernels/cpu.h"
#include "tests/check.h"

/* AddressSanitizer: GCC says so with __SANITIZE_ADDRESS__, clang through __has_feature. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static unsigned long long rng = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 4503599627370496.0)) - 1.0f;
}
static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = frand() * scale;
}
static double max_abs_diff(const float *a, const double *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

static void test_matmul(void)
{
    int m = 7, n = 13, k = 33;
    float *x = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
    float *y = malloc(sizeof(float) * m * n);
    double *ref = malloc(sizeof(double) * m * n);
    fill(x, (size_t)m * k, 1);
    fill(w, (size_t)n * k, 1);
    for (int i = 0; i < m * n; i++) y[i] = NAN;
    cpu_matmul_nt(y, x, w, m, n, k);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int e = 0; e < k; e++) s += (double)x[i * k + e] * w[j * k + e];
            ref[i * n + j] = s;
        }
    CHECK(max_abs_diff(y, ref, (size_t)m * n) < 1e-5);
    free(x), free(w), free(y), free(ref);
}

static void test_rmsnorm(void)
{
    int t = 5, d = 64;
    float x[5 * 64], g[64], out[5 * 64];
    double ref[5 * 64];
    fill(x, sizeof x / 4, 3);
    fill(g, 64, 1);
    cpu_rmsnorm(out, x, g, t, d, 1e-6f);
    for (int r = 0; r < t; r++) {
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)x[r * d + i] * x[r * d + i];
        double inv = 1 / sqrt(ss / d + 1e-6);
        for (int i = 0; i < d; i++) ref[r * d + i] = x[r * d + i] * inv * g[i];
    }
    CHECK(max_abs_diff(out, ref, sizeof x / 4) < 1e-5);
    /* in place gives the same */
    cpu_rmsnorm(x, x, g, t, d, 1e-6f);
    CHECK(max_abs_diff(x, ref, sizeof x / 4) < 1e-5);
}

static void test_rope(void)
{
    /* head_dim 100 (LongLLaMA-3B) exercises a non power of two. */
    int t = 4, h = 3, d = 100;
    float *x = malloc(sizeof(float) * t * h * d), *x0 = malloc(sizeof(float) * t * h * d);
    double *ref = malloc(sizeof(double) * t * h * d);
    float inv[50];
    int32_t pos[4] = {0, 1, 17, 2047};
    fill(x, (size_t)t * h * d, 1);
    memcpy(x0, x, sizeof(float) * t * h * d);
    cpu_rope_inv_freq(inv, d, 10000.0f);
    CHECK_NEAR(inv[0], 1.0, 0);
    CHECK_NEAR(inv[49], pow(10000.0, -98.0 / 100), 1e-9);
    cpu_rope(x, t, h, d, pos, inv, 1.0f);
    for (int a = 0; a < t; a++)
        for (int b = 0; b < h; b++)
            for (int p = 0; p < d / 2; p++) {
                size_t o = ((size_t)a * h + b) * d;
                double ang = (double)pos[a] * pow(10000.0, -2.0 * p / d);
                double c = cos(ang), s = sin(ang);
                ref[o + p] = x0[o + p] * c - x0[o + p + d / 2] * s;
                ref[o + p + d / 2] = x0[o + p + d / 2] * c + x0[o + p] * s;
            }
    /* fp32 angles at position 2047 carry ~1e-4 absolute error, as in HF's fp32 tables. */
    CHECK(max_abs_diff(x, ref, (size_t)t * h * d) < 5e-4);
    /* position 0 is the identity: memory keys "at position 0" are the unrotated keys. */
    CHECK(memcmp(x, x0, sizeof(float) * h * d) == 0);
    free(x), free(x0), free(ref);
}

static void test_swiglu(void)
{
    float g[100], u[100], o[100];
    fill(g, 100, 4);
    fill(u, 100, 1);
    cpu_swiglu(o, g, u, 100);
    double worst = 0;
    for (int i = 0; i < 100; i++) {
        double r = g[i] / (1 + exp(-(double)g[i])) * u[i];
        if (fabs(r - o[i]) > worst) worst = fabs(r - o[i]);
    }
    CHECK(worst < 1e-6);
}

/* Naive attention over local + memory keys in double precision. */
static void attention_ref(const attn_args_t *a, const float *memk, const float *memv, double *out)
{
    int hd = a->head_dim, grp = a->n_heads / a->n_kv_heads, kvr = a->n_kv_heads * hd;
    size_t nmax = (size_t)a->n_k + a->n_mem;
    double *s = malloc(sizeof(double) * nmax);
    for (int i = 0; i < a->n_q; i++)
        for (int h = 0; h < a->n_heads; h++) {
            const float *q = a->q + ((size_t)i * a->n_heads + h) * hd;
            int kh = h / grp, nv = a->q_offset + i + 1;
            size_t n = 0;
            double mx = -INFINITY;
            for (int j = 0; j < nv; j++, n++) {
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)q[e] * a->k[(size_t)j * kvr + kh * hd + e];
                s[n] = d * a->scale;
            }
            for (size_t m = 0; m < a->n_mem; m++, n++) {
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)q[e] * memk[m * kvr + kh * hd + e];
                s[n] = d * a->scale;
            }
            for (size_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
            double sum = 0;
            for (size_t j = 0; j < n; j++) sum += (s[j] = exp(s[j] - mx));
            double *o = out + ((size_t)i * a->n_heads + h) * hd;
            for (int e = 0; e < hd; e++) {
                double acc = 0;
                for (int j = 0; j < nv; j++) acc += s[j] * a->v[(size_t)j * kvr + kh * hd + e];
                for (size_t m = 0; m < a->n_mem; m++)
                    acc += s[nv + m] * memv[m * kvr + kh * hd + e];
                o[e] = acc / sum;
            }
        }
    free(s);
}

static void test_attention(int n_heads, int n_kv, int hd, int n_q, int q_off, size_t n_mem,
                           dtype_t mt)
{
    int n_k = q_off + n_q, kvr = n_kv * hd;
    float *q = malloc(sizeof(float) * n_q * n_heads * hd);
    float *k = malloc(sizeof(float) * n_k * kvr), *v = malloc(sizeof(float) * n_k * kvr);
    float *mk = malloc(sizeof(float) * (n_mem + 1) * kvr), *mv = malloc(sizeof(float) * (n_mem + 1) * kvr);
    void *mk_t = malloc(4 * (n_mem + 1) * kvr), *mv_t = malloc(4 * (n_mem + 1) * kvr);
    float *out = malloc(sizeof(float) * n_q * n_heads * hd);
    double *ref = malloc(sizeof(double) * n_q * n_heads * hd);
    fill(q, (size_t)n_q * n_heads * hd, 2);
    fill(k, (size_t)n_k * kvr, 2);
    fill(v, (size_t)n_k * kvr, 1);
    fill(mk, n_mem * kvr, 2);
    fill(mv, n_mem * kvr, 1);
    /* The kernel sees memory in mt; the reference sees the same rounded values. */
    dtype_from_f32(mk_t, mt, mk, n_mem * kvr);
    dtype_from_f32(mv_t, mt, mv, n_mem * kvr);
    dtype_to_f32(mk, mk_t, mt, n_mem * kvr);
    dtype_to_f32(mv, mv_t, mt, n_mem * kvr);
    for (int i = 0; i < n_q * n_heads * hd; i++) out[i] = NAN;
    attn_args_t a = {.n_q = n_q, .n_k = n_k, .n_heads = n_heads, .n_kv_heads = n_kv,
                     .head_dim = hd, .q_offset = q_off, .q = q, .k = k, .v = v,
                     .n_mem = n_mem, .mem_dtype = mt, .mem_k = mk_t, .mem_v = mv_t,
                     .scale = 1.0f / sqrtf((float)hd), .out = out};
    cpu_attention(&a);
    attention_ref(&a, mk, mv, ref);
    double err = max_abs_diff(out, ref, (size_t)n_q * n_heads * hd);
    CHECK_MSG(err < 2e-5, "attention h%d kv%d d%d q%d off%d mem%zu %s: max err %g", n_heads,
              n_kv, hd, n_q, q_off, n_mem, dtype_name(mt), err);
    free(q), free(k), free(v), free(mk), free(mv), free(mk_t), free(mv_t), free(out), free(ref);
}

static void test_attention_causal_mask(void)
{
    /* Changing a future key or value must not change earlier outputs. */
    int hd = 16, n = 8;
    float q[8 * 16], k[8 * 16], v[8 * 16], o1[8 * 16], o2[8 * 16];
    fill(q, sizeof q / 4, 1);
    fill(k, sizeof k / 4, 1);
    fill(v, sizeof v / 4, 1);
    attn_args_t a = {.n_q = n, .n_k = n, .n_heads = 1, .n_kv_heads = 1, .head_dim = hd,
                     .q = q, .k = k, .v = v, .scale = 0.25f, .out = o1};
    cpu_attention(&a);
    k[7 * 16 + 3] += 5;
    v[7 * 16 + 1] += 5;
    a.out = o2;
    cpu_attention(&a);
    CHECK(memcmp(o1, o2, sizeof(float) * 7 * 16) == 0);
    CHECK(memcmp(o1 + 7 * 16, o2 + 7 * 16, sizeof(float) * 16) != 0);
}

static void test_log_softmax(void)
{
    float l[2 * 50], o[2 * 50];
    fill(l, 100, 20);
    cpu_log_softmax(o, l, 2, 50);
    for (int r = 0; r < 2; r++) {
        double s = 0;
        for (int i = 0; i < 50; i++) s += exp(o[r * 50 + i]);
        CHECK_NEAR(s, 1.0, 1e-5);
    }
    CHECK(cpu_argmax(l, 50) == cpu_argmax(o, 50));
    float t[4] = {1, 3, 3, 2};
    CHECK(cpu_argmax(t, 4) == 1);
}

/* A window too large for memory (the window comes with a client's session options) is an
 * RC_ERR_NOMEM answer, not an abort: the address space is capped at 64 GiB, so the
 * attention's score scratch (a block's query rows of n_k scores per thread) and the kNN path's
 * copies of the heads' keys cannot be had, whatever the machine's memory and overcommit
 * policy. Runs last: the cap stays. Not under AddressSanitizer, whose shadow memory needs
 * the address space. */
static void test_attention_nomem(void)
{
#ifdef UNDER_ASAN
    return;
#else
    struct rlimit rl;
    const rlim_t cap = (rlim_t)64 << 30;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > cap)) {
        rl.rlim_cur = cap;
        CHECK(setrlimit(RLIMIT_AS, &rl) == 0);
    }
    float q[64], k[64], v[64], out[64];
    fill(q, 64, 1);
    fill(k, 64, 1);
    fill(v, 64, 1);
    /* n_k sizes the scratch: a row of INT_MAX scores is 8 GiB, and the scratch has a row per
     * query of a block (up to 64), so 16 queries ask for 128 GiB; the allocation fails
     * before anything is read. */
    attn_args_t a = {.n_q = 16, .n_k = INT_MAX, .n_heads = 1, .n_kv_heads = 1, .head_dim = 64,
                     .q = q, .k = k, .v = v, .scale = 0.125f, .out = out};
    CHECK_RC(cpu_attention(&a), RC_ERR_NOMEM);
    /* One query at offset 0 reads key 0 only. */
    a.n_q = 1;
    const int64_t idx[1] = {-1};
    attn_knn_args_t ka = {.e = {.a = a, .layout = CPU_ATTN_PLAIN}, .k = 1, .idx = idx};
    CHECK_RC(cpu_attention_knn(&ka), RC_ERR_NOMEM);
    /* The same call with a sane window still works under the cap. */
    a.n_k = 1;
    CHECK_RC(cpu_attention(&a), RC_OK);
    ka.e.a.n_k = 1;
    CHECK_RC(cpu_attention_knn(&ka), RC_OK);
#endif
}

int main(void)
{
    test_matmul();
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_attention(4, 4, 16, 5, 0, 0, DTYPE_F32);
    test_attention(4, 4, 16, 5, 11, 0, DTYPE_F32);
    test_attention(4, 4, 16, 5, 11, 37, DTYPE_F32);
    test_attention(4, 2, 16, 3, 7, 20, DTYPE_BF16);
    test_attention(2, 2, 100, 4, 3, 50, DTYPE_F16);
    test_attention(2, 1, 128, 1, 30, 64, DTYPE_BF16);
    /* Memories of several tiles (the kernel folds 2048 rows at a time into an online
     * softmax), the last one partial, with more than one block of queries. */
    test_attention(4, 2, 16, 70, 5, 5000, DTYPE_BF16);
    test_attention(2, 2, 32, 3, 9, 4096, DTYPE_F32);
    test_attention(4, 4, 16, 2, 0, 2049, DTYPE_F16);
    test_attention_causal_mask();
    test_log_softmax();
    test_attention_nomem();
    return check_summary();
}
