/* test_quant.c — the fp8 e4m3 / int8 memory rows (common/quant.h) and the CPU readers.
 *
 *   codec:      known e4m3 encodings from the format's definition, every code's round trip,
 *               row encodings' error bounds, int8's range, zero rows, non-finite inputs;
 *   store:      rows appended to anonymous and file stores are the codec's bytes, at
 *               dtype_row_bytes apiece, and read back the same after reopening;
 *   attention:  cpu_attention over fp8/int8 memory equals the same attention over the
 *               dequantized rows in f32 (tight), and stays near the bf16 rows' result;
 *               cpu_attention_knn likewise; a kNN index over a quantized store finds what
 *               one over the dequantized f32 rows finds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "common/quant.h"
#include "kernels/cpu.h"
#include "memory/knn.h"
#include "memory/store.h"
#include "test_rng.h"

static void rng_seed(uint64_t s)
{
    rng = s * 0x9e3779b97f4a7c15ull | 1;
}

static uint64_t rng_u64(void)
{
    return rng_next();
}

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_e4m3_known(void)
{
    static const struct {
        float x;
        uint8_t code;
    } k[] = {
        {0.0f, 0x00},         {1.0f, 0x38},          {-1.0f, 0xb8},        {0.5f, 0x30},
        {448.0f, 0x7e},       {-448.0f, 0xfe},       {0.015625f, 0x08},    /* 2^-6 */
        {0.001953125f, 0x01}, /* 2^-9, smallest subnormal */
        {0.013671875f, 0x07}, /* 7 * 2^-9, largest subnormal */
        {1.125f, 0x39},       {240.0f, 0x77},        {256.0f, 0x78},       {416.0f, 0x7d},
        /* ties go to the even code */
        {1.0625f, 0x38},      {1.1875f, 0x3a},       {0.0009765625f, 0x00}, /* 2^-10 */
        {0.0029296875f, 0x02},                        /* 1.5 * 2^-9 */
        {464.0f, 0x7e},                               /* between 448 and (non-finite) 480 */
        /* saturation and specials */
        {470.0f, 0x7e},       {1e30f, 0x7e},         {-1e30f, 0xfe},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        CHECK_MSG(quant_e4m3_encode(k[i].x) == k[i].code, "encode(%g) = 0x%02x, want 0x%02x",
                  k[i].x, quant_e4m3_encode(k[i].x), k[i].code);
    CHECK(quant_e4m3_encode(INFINITY) == 0x7e && quant_e4m3_encode(-INFINITY) == 0xfe);
    CHECK(quant_e4m3_encode(NAN) == 0x7f && quant_e4m3_encode(-NAN) == 0xff);
    CHECK(quant_e4m3_encode(-0.0f) == 0x80);
    CHECK(quant_e4m3_encode(bits_f(1)) == 0x00); /* the smallest fp32 subnormal */
    CHECK(isnan(quant_e4m3_decode(0x7f)) && isnan(quant_e4m3_decode(0xff)));
    CHECK(quant_e4m3_decode(0x7e) == 448.0f && quant_e4m3_decode(0x01) == 0.001953125f);
    /* Every finite code decodes to a value that encodes back to it. */
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) continue;
        float v = quant_e4m3_decode((uint8_t)c);
        if (quant_e4m3_encode(v) != c) bad++;
    }
    CHECK_MSG(bad == 0, "%d codes do not round-trip", bad);
}

enum { KV = 3, HD = 40 };

static void test_rows(void)
{
    CHECK(dtype_row_bytes(DTYPE_FP8_E4M3, KV, HD) == (size_t)KV * (HD + 4));
    CHECK(dtype_row_bytes(DTYPE_I8, KV, HD) == (size_t)KV * (HD + 4));
    CHECK(dtype_row_bytes(DTYPE_BF16, KV, HD) == (size_t)KV * HD * 2);
    dtype_t t;
    CHECK(dtype_parse_mem("fp8", &t) == 0 && t == DTYPE_FP8_E4M3);
    CHECK(dtype_parse_mem("int8", &t) == 0 && t == DTYPE_I8);
    CHECK(dtype_parse_mem("bf16", &t) == 0 && t == DTYPE_BF16);
    CHECK(dtype_parse_mem("f8", &t) == -1 && dtype_parse("int8", &t) == -1);
    CHECK(!strcmp(dtype_name(DTYPE_FP8_E4M3), "fp8") && !strcmp(dtype_name(DTYPE_I8), "int8"));

    uint8_t row[KV * (HD + 4)];
    float x[KV * HD], y[KV * HD];
    rng_seed(7);
    for (int trial = 0; trial < 200; trial++) {
        /* Heads of very different magnitudes: each gets its own scale. */
        for (int h = 0; h < KV; h++) {
            float mag = powf(10.0f, (float)(h * 2 - 2)) * (1.0f + (float)trial / 50.0f);
            for (int d = 0; d < HD; d++) x[h * HD + d] = mag * rng_normal();
        }
        for (int q = 0; q < 2; q++) {
            const dtype_t dt = q ? DTYPE_I8 : DTYPE_FP8_E4M3;
            quant_row_encode(row, dt, x, KV, HD);
            quant_row_decode(y, row, dt, KV, HD);
            for (int h = 0; h < KV; h++) {
                float amax = 0;
                for (int d = 0; d < HD; d++) amax = fmaxf(amax, fabsf(x[h * HD + d]));
                const float s = quant_row_scale(row, KV, HD, h);
                CHECK(s == amax / (q ? 127.0f : 448.0f));
                int worst = 0;
                for (int d = 0; d < HD; d++) {
                    const float xv = x[h * HD + d], err = fabsf(y[h * HD + d] - xv);
                    /* fp8: half an ulp of 3 mantissa bits (2^-4 relative) above the
                     * subnormals, half a subnormal step (2^-10 of the scale) below.
                     * int8: half a step. A little slack for the fp32 products. */
                    const float bound = q ? 0.5f * s * 1.0001f
                                          : fmaxf(fabsf(xv) * 0.0625f, s * 0.0009765625f) * 1.0001f;
                    if (err > bound) worst++;
                    if (q) {
                        const int8_t c = (int8_t)row[h * HD + d];
                        if (c < -127) worst++;
                    }
                }
                CHECK_MSG(worst == 0, "trial %d %s head %d: %d elements off", trial,
                          dtype_name(dt), h, worst);
            }
        }
    }
    /* The largest element takes the top code. */
    memset(x, 0, sizeof x);
    x[5] = -3.0f;
    x[HD + 1] = 2.0f;
    quant_row_encode(row, DTYPE_I8, x, KV, HD);
    CHECK((int8_t)row[5] == -127 && (int8_t)row[HD + 1] == 127 && row[0] == 0);
    quant_row_encode(row, DTYPE_FP8_E4M3, x, KV, HD);
    CHECK(row[5] == 0xfe && row[HD + 1] == 0x7e);
    /* A zero head (head 2 here): scale 0, codes 0, zeros back. */
    CHECK(quant_row_scale(row, KV, HD, 2) == 0.0f);
    quant_row_decode(y, row, DTYPE_FP8_E4M3, KV, HD);
    int nz = 0;
    for (int d = 0; d < HD; d++) nz += y[2 * HD + d] != 0.0f || row[2 * HD + d] != 0;
    CHECK(nz == 0);
    /* Non-finite inputs: inf takes the top code (±amax of the finite ones), NaN becomes 0;
     * a head with nothing finite is all zeros. Nothing non-finite comes back. */
    for (int q = 0; q < 2; q++) {
        const dtype_t dt = q ? DTYPE_I8 : DTYPE_FP8_E4M3;
        for (int d = 0; d < KV * HD; d++) x[d] = 0.25f * (float)(d % 7) - 0.5f;
        x[0] = INFINITY;
        x[1] = -INFINITY;
        x[2] = NAN;
        for (int d = 0; d < HD; d++) x[2 * HD + d] = d & 1 ? NAN : INFINITY;
        quant_row_encode(row, dt, x, KV, HD);
        quant_row_decode(y, row, dt, KV, HD);
        int nonfinite = 0;
        for (int d = 0; d < KV * HD; d++) nonfinite += !isfinite(y[d]);
        CHECK(nonfinite == 0);
        CHECK_NEAR(y[0], 1.0f, 1e-6);
        CHECK_NEAR(y[1], -1.0f, 1e-6);
        CHECK(y[2] == 0.0f && y[2 * HD] == 0.0f && y[2 * HD + 1] == 0.0f);
    }
}

static void test_store(void)
{
    enum { N = 37, L = 2 };
    float *k = malloc(sizeof(float) * N * KV * HD), *v = malloc(sizeof(float) * N * KV * HD);
    rng_seed(11);
    for (int i = 0; i < N * KV * HD; i++) k[i] = rng_normal(), v[i] = 2.0f * rng_normal();
    const size_t rb = dtype_row_bytes(DTYPE_FP8_E4M3, KV, HD);
    uint8_t *want = malloc(N * rb);
    quant_rows_encode(want, DTYPE_FP8_E4M3, k, N, KV, HD);

    memory_store_t *s = NULL;
    CHECK_RC(memory_store_create_heads(L, KV, HD, DTYPE_FP8_E4M3, &s), RC_OK);
    CHECK_RC(memory_store_create_heads(L, KV, 0, DTYPE_I8, &(memory_store_t *){NULL}),
             RC_ERR_INVALID);
    CHECK(memory_store_row_bytes(s) == rb && memory_store_row_dim(s) == KV * HD);
    CHECK_RC(memory_store_append_f32(s, 1, k, v, N), RC_OK);
    CHECK(memory_store_bytes(s) == 2 * N * rb);
    CHECK(!memcmp(memory_store_keys(s, 1), want, N * rb));
    memory_store_destroy(&s);

    char dir[] = "/tmp/test_quant_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char err[256] = "";
    CHECK_RC(memory_store_open_heads(L, KV, HD, DTYPE_FP8_E4M3, dir, 0, 1, &s, err, sizeof err),
             RC_OK);
    for (int l = 0; s && l < L; l++) CHECK_RC(memory_store_append_f32(s, l, k, v, N), RC_OK);
    memory_store_destroy(&s);
    char path[512];
    snprintf(path, sizeof path, "%s/L0.keys", dir);
    FILE *f = fopen(path, "rb");
    long size = -1;
    if (f && !fseek(f, 0, SEEK_END)) size = ftell(f);
    if (f) fclose(f);
    CHECK_MSG(size == (long)(N * rb), "L0.keys holds %ld bytes, want %zu", size, N * rb);
    CHECK_RC(memory_store_open_heads(L, KV, HD, DTYPE_FP8_E4M3, dir, N, 0, &s, err, sizeof err),
             RC_OK);
    if (s) {
        CHECK(memory_store_len(s) == N && !memcmp(memory_store_keys(s, 0), want, N * rb));
        float *back = malloc(sizeof(float) * N * KV * HD);
        quant_rows_decode(back, memory_store_values(s, 1), DTYPE_FP8_E4M3, N, KV, HD);
        double worst = 0;
        for (int i = 0; i < N * KV * HD; i++) worst = fmax(worst, fabs(back[i] - v[i]));
        CHECK_MSG(worst < 0.0625 * 2.0 * 4.5, "values read back off by %g", worst);
        free(back);
    }
    memory_store_destroy(&s);
    /* The same files as bf16 rows of this width are not a whole number of rows. */
    CHECK_RC(memory_store_open_heads(L, KV, HD, DTYPE_BF16, dir, N, 0, &s, err, sizeof err),
             RC_ERR_FORMAT);
    for (int l = 0; l < L; l++) {
        snprintf(path, sizeof path, "%s/L%d.keys", dir, l);
        unlink(path);
        snprintf(path, sizeof path, "%s/L%d.values", dir, l);
        unlink(path);
    }
    rmdir(dir);
    free(k), free(v), free(want);
}

/* Normalized max error: max |a − b| / max |b|. */
static double nerr(const float *a, const float *b, size_t n)
{
    double e = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return e / m;
}

static void test_attention(void)
{
    enum { NQ = 24, NK = 40, NH = 6, NKV = 2, D = 64, NMEM = 4500 }; /* 3 memory tiles */
    const size_t mrow = (size_t)NKV * D;
    float *q = malloc(sizeof(float) * NQ * NH * D), *k = malloc(sizeof(float) * NK * mrow),
          *v = malloc(sizeof(float) * NK * mrow);
    float *mk = malloc(sizeof(float) * NMEM * mrow), *mv = malloc(sizeof(float) * NMEM * mrow);
    float *dk = malloc(sizeof(float) * NMEM * mrow), *dv = malloc(sizeof(float) * NMEM * mrow);
    uint16_t *bk = malloc(2 * NMEM * mrow), *bv = malloc(2 * NMEM * mrow);
    const size_t rb = dtype_row_bytes(DTYPE_FP8_E4M3, NKV, D);
    uint8_t *qk = malloc(NMEM * rb), *qv = malloc(NMEM * rb);
    float *o_q = malloc(sizeof(float) * NQ * NH * D), *o_d = malloc(sizeof(float) * NQ * NH * D),
          *o_b = malloc(sizeof(float) * NQ * NH * D);
    rng_seed(3);
    for (int i = 0; i < NQ * NH * D; i++) q[i] = 0.6f * rng_normal();
    for (size_t i = 0; i < NK * mrow; i++) k[i] = rng_normal(), v[i] = rng_normal();
    /* Memory keys with a few strong ones, so the softmax is not flat. */
    for (size_t i = 0; i < NMEM * mrow; i++)
        mk[i] = rng_normal() * (i / mrow % 97 == 0 ? 3.0f : 1.0f), mv[i] = rng_normal();
    dtype_from_f32(bk, DTYPE_BF16, mk, NMEM * mrow);
    dtype_from_f32(bv, DTYPE_BF16, mv, NMEM * mrow);

    enum { K = 48 };
    int64_t *idx = malloc(sizeof(int64_t) * NQ * NH * K);
    for (int i = 0; i < NQ * NH * K; i++)
        idx[i] = i % 11 == 0 ? -1 : (int64_t)(rng_u64() % NMEM);

    for (int qi = 0; qi < 2; qi++) {
        const dtype_t dt = qi ? DTYPE_I8 : DTYPE_FP8_E4M3;
        quant_rows_encode(qk, dt, mk, NMEM, NKV, D);
        quant_rows_encode(qv, dt, mv, NMEM, NKV, D);
        quant_rows_decode(dk, qk, dt, NMEM, NKV, D);
        quant_rows_decode(dv, qv, dt, NMEM, NKV, D);
        attn_args_t a = {.n_q = NQ, .n_k = NK, .n_heads = NH, .n_kv_heads = NKV,
                         .head_dim = D, .q_offset = NK - NQ, .q = q, .k = k, .v = v,
                         .n_mem = NMEM, .scale = 1.0f / 8.0f};
        a.mem_dtype = dt, a.mem_k = qk, a.mem_v = qv, a.out = o_q;
        for (int i = 0; i < NQ * NH * D; i++) o_q[i] = NAN; /* poisoned */
        CHECK_RC(cpu_attention(&a), RC_OK);
        a.mem_dtype = DTYPE_F32, a.mem_k = dk, a.mem_v = dv, a.out = o_d;
        CHECK_RC(cpu_attention(&a), RC_OK);
        a.mem_dtype = DTYPE_BF16, a.mem_k = bk, a.mem_v = bv, a.out = o_b;
        CHECK_RC(cpu_attention(&a), RC_OK);
        const double e_d = nerr(o_q, o_d, NQ * NH * D), e_b = nerr(o_q, o_b, NQ * NH * D);
        printf("%s exact: vs dequantized f32 %.2e, vs bf16 rows %.2e\n", dtype_name(dt), e_d, e_b);
        CHECK_MSG(e_d < 1e-5, "%s attention vs its dequantized rows: %g", dtype_name(dt), e_d);
        CHECK_MSG(e_b < (qi ? 0.03 : 0.1), "%s attention vs bf16 rows: %g", dtype_name(dt), e_b);
        CHECK(e_b > 1e-7); /* the codes are really coarser than bf16 */

        attn_knn_args_t kn = {.e = {.a = a}, .k = K, .idx = idx};
        kn.e.a.mem_dtype = dt, kn.e.a.mem_k = qk, kn.e.a.mem_v = qv, kn.e.a.out = o_q;
        for (int i = 0; i < NQ * NH * D; i++) o_q[i] = NAN;
        CHECK_RC(cpu_attention_knn(&kn), RC_OK);
        kn.e.a.mem_dtype = DTYPE_F32, kn.e.a.mem_k = dk, kn.e.a.mem_v = dv, kn.e.a.out = o_d;
        CHECK_RC(cpu_attention_knn(&kn), RC_OK);
        kn.e.a.mem_dtype = DTYPE_BF16, kn.e.a.mem_k = bk, kn.e.a.mem_v = bv, kn.e.a.out = o_b;
        CHECK_RC(cpu_attention_knn(&kn), RC_OK);
        const double k_d = nerr(o_q, o_d, NQ * NH * D), k_b = nerr(o_q, o_b, NQ * NH * D);
        printf("%s knn: vs dequantized f32 %.2e, vs bf16 rows %.2e\n", dtype_name(dt), k_d, k_b);
        CHECK_MSG(k_d < 1e-5, "%s knn attention vs its dequantized rows: %g", dtype_name(dt), k_d);
        CHECK_MSG(k_b < (qi ? 0.03 : 0.1), "%s knn attention vs bf16 rows: %g", dtype_name(dt),
                  k_b);

        /* The kNN index searches the dequantized keys: over a quantized store it finds what
         * an index over those keys in f32 finds. */
        memory_store_t *sq = NULL, *sf = NULL;
        memory_store_create_heads(1, NKV, D, dt, &sq);
        memory_store_create_heads(1, NKV, D, DTYPE_F32, &sf);
        memory_store_append_f32(sq, 0, mk, mv, NMEM);
        memory_store_append_f32(sf, 0, dk, dv, NMEM);
        memory_knn_t *xq = NULL, *xf = NULL;
        memory_knn_opts_t ko = {.ivf_min_rows = 1 << 20}; /* flat: exact top-k */
        CHECK_RC(memory_knn_create(1, NKV, D, &ko, &xq), RC_OK);
        CHECK_RC(memory_knn_create(1, NKV, D, &ko, &xf), RC_OK);
        int64_t *iq = malloc(sizeof(int64_t) * NQ * NH * 16);
        int64_t *iff = malloc(sizeof(int64_t) * NQ * NH * 16);
        CHECK_RC(memory_knn_search(xq, sq, 0, q, NQ, NH, 16, iq), RC_OK);
        CHECK_RC(memory_knn_search(xf, sf, 0, q, NQ, NH, 16, iff), RC_OK);
        CHECK(!memcmp(iq, iff, sizeof(int64_t) * NQ * NH * 16));
        free(iq), free(iff);
        memory_knn_destroy(&xq), memory_knn_destroy(&xf);
        memory_store_destroy(&sq), memory_store_destroy(&sf);
    }
    free(q), free(k), free(v), free(mk), free(mv), free(dk), free(dv), free(bk), free(bv);
    free(qk), free(qv), free(o_q), free(o_d), free(o_b), free(idx);
}

int main(void)
{
    test_e4m3_known();
    test_rows();
    test_store();
    test_attention();
    return check_summary();
}
