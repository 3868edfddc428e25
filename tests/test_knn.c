/* test_knn.c — knn memory mode (issue 6, CPU side):
 *   1. cpu_attention_knn over every memory row equals cpu_attention_ext (plain, Self-Extend
 *      and DCA layouts; f32 and bf16 memory); a small top-k differs, finitely;
 *   2. the index tier: flat search is exact; IVF recall@k on clustered keys is above 0.9;
 *      window-by-window adds, rewinds (above and below the training rows) and a save/load
 *      round trip all give the same results as a fresh build on the same rows; keys unlike
 *      the training prefix, added after it, are still found (the exact list);
 *   3. tiny-fot streams: knn with k ≥ memory equals exact (≤ 1e-5); a small k differs,
 *      finitely; a question's rewind leaves the index as if the question never happened;
 *   4. recalld: a knn session answers a greedy question identically after a restart. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu.h"
#include "memory/knn.h"
#include "memory/store.h"
#include "model/model.h"
#include "model/stream.h"
#include "memory/db.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static float frand(void) { return (float)((next_u64() >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1; }
static void fill(float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++) x[i] = a * frand();
}
static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN wins */
    }
    return m;
}
static int all_finite(const float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

/* ---- 1. the kernel ------------------------------------------------------------------------ */

static void test_kernel(cpu_attn_layout_t layout, dtype_t mdt)
{
    enum { NQ = 40, OFF = 24, NH = 4, NKV = 2, HD = 16, NMEM = 300 };
    const int nk = OFF + NQ, qrow = NH * HD, kvrow = NKV * HD;
    float *q = malloc(sizeof(float) * NQ * qrow), *qa0 = malloc(sizeof(float) * NQ * qrow);
    float *qa1 = malloc(sizeof(float) * NQ * qrow), *qm = malloc(sizeof(float) * NQ * qrow);
    float *k = malloc(sizeof(float) * nk * kvrow), *ka = malloc(sizeof(float) * nk * kvrow);
    float *v = malloc(sizeof(float) * nk * kvrow);
    float *mk = malloc(sizeof(float) * NMEM * kvrow), *mv = malloc(sizeof(float) * NMEM * kvrow);
    fill(q, NQ * qrow, 1), fill(qa0, NQ * qrow, 1), fill(qa1, NQ * qrow, 1), fill(qm, NQ * qrow, 1);
    fill(k, nk * kvrow, 1), fill(ka, nk * kvrow, 1), fill(v, nk * kvrow, 1);
    fill(mk, NMEM * kvrow, 1.5f), fill(mv, NMEM * kvrow, 1);
    void *mk_s = mk, *mv_s = mv;
    if (mdt != DTYPE_F32) {
        mk_s = malloc(dtype_size(mdt) * NMEM * kvrow);
        mv_s = malloc(dtype_size(mdt) * NMEM * kvrow);
        dtype_from_f32(mk_s, mdt, mk, (size_t)NMEM * kvrow);
        dtype_from_f32(mv_s, mdt, mv, (size_t)NMEM * kvrow);
    }
    float *want = malloc(sizeof(float) * NQ * qrow), *got = malloc(sizeof(float) * NQ * qrow);
    attn_ext_args_t e = {
        .a = {.n_q = NQ, .n_k = nk, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD,
              .q_offset = OFF, .q = q, .k = k, .v = v, .n_mem = NMEM, .mem_dtype = mdt,
              .mem_k = mk_s, .mem_v = mv_s, .scale = 0.25f, .out = want},
        .layout = layout, .neighbor = 7, .chunk_len = 20,
        .q_alt = {qa0, layout == CPU_ATTN_DCA ? qa1 : NULL},
        .k_alt = layout == CPU_ATTN_SELF_EXTEND ? ka : NULL,
        .q_mem = layout != CPU_ATTN_PLAIN ? qm : NULL,
        .mem_scale = layout == CPU_ATTN_DCA ? 0.3f : 0.0f,
    };
    cpu_attention_ext(&e);

    /* Every row once, shuffled, with −1 padding: the same attention. */
    const int K = NMEM + 5;
    int64_t *idx = malloc(sizeof(int64_t) * NQ * NH * K);
    for (int r = 0; r < NQ * NH; r++) {
        int64_t *ix = idx + (size_t)r * K;
        for (int j = 0; j < K; j++) ix[j] = j < NMEM ? j : -1;
        for (int j = K - 1; j > 0; j--) {
            int t = (int)(next_u64() % (uint64_t)(j + 1));
            int64_t s = ix[j];
            ix[j] = ix[t], ix[t] = s;
        }
    }
    for (size_t i = 0; i < (size_t)NQ * qrow; i++) got[i] = NAN; /* poisoned */
    attn_knn_args_t ka_args = {.e = e, .k = K, .idx = idx};
    ka_args.e.a.out = got;
    CHECK_RC(cpu_attention_knn(&ka_args), RC_OK);
    double d = max_abs_diff(want, got, (size_t)NQ * qrow);
    CHECK_MSG(d <= 1e-5, "layout %d dtype %s: knn over every row vs exact: %g", layout,
              dtype_name(mdt), d);
    /* A list naming a row past the memory (an index of another memory) is refused. */
    const int64_t saved = idx[K / 2];
    idx[K / 2] = NMEM;
    CHECK_RC(cpu_attention_knn(&ka_args), RC_ERR_INVALID);
    idx[K / 2] = saved;

    /* A top-4 by score (what an index returns): finite, and not the exact output. */
    const int K4 = 4;
    const float *qs = e.q_mem ? e.q_mem : q;
    for (int i = 0; i < NQ; i++)
        for (int h = 0; h < NH; h++) {
            int64_t *ix = idx + ((size_t)i * NH + h) * K4;
            float best[4] = {-1e30f, -1e30f, -1e30f, -1e30f};
            for (int m = 0; m < NMEM; m++) {
                float s = 0;
                for (int t = 0; t < HD; t++)
                    s += qs[((size_t)i * NH + h) * HD + t] * mk[(size_t)m * kvrow + (h / 2) * HD + t];
                int p = K4;
                while (p > 0 && s > best[p - 1]) p--;
                if (p == K4) continue;
                for (int j = K4 - 1; j > p; j--) best[j] = best[j - 1], ix[j] = ix[j - 1];
                best[p] = s, ix[p] = m;
            }
        }
    ka_args.k = K4;
    cpu_attention_knn(&ka_args);
    d = max_abs_diff(want, got, (size_t)NQ * qrow);
    CHECK_MSG(all_finite(got, (size_t)NQ * qrow) && d > 1e-4 && d < 10,
              "layout %d: top-4 vs exact differs finitely: %g", layout, d);

    if (mdt != DTYPE_F32) free(mk_s), free(mv_s);
    free(q), free(qa0), free(qa1), free(qm), free(k), free(ka), free(v), free(mk), free(mv);
    free(want), free(got), free(idx);
}

/* ---- 2. the index tier --------------------------------------------------------------------- */

enum { IKV = 2, IHD = 16, NCLUST = 64 };
static float centers[IKV][NCLUST][IHD];

/* n clustered key rows [n, IKV * IHD] (the memory of a "document": keys near topics). */
static void clustered(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (int h = 0; h < IKV; h++) {
            int c = (int)(next_u64() % NCLUST);
            for (int t = 0; t < IHD; t++)
                x[(i * IKV + h) * IHD + t] = centers[h][c][t] + 0.35f * frand();
        }
}

static memory_store_t *store_of(const float *keys, size_t n)
{
    memory_store_t *s = NULL;
    memory_store_create(1, IKV * IHD, DTYPE_F32, &s);
    if (n) memory_store_append_f32(s, 0, keys, keys, n); /* values are not searched */
    return s;
}

/* Search results of a fresh index over s (what every incremental path must equal). */
static void fresh_search(const memory_knn_opts_t *o, memory_store_t *s, const float *q, int nq,
                         int k, int64_t *idx)
{
    memory_knn_t *x = NULL;
    CHECK_RC(memory_knn_create(1, IKV, IHD, o, &x), RC_OK);
    CHECK_RC(memory_knn_search(x, s, 0, q, nq, IKV * 2, k, idx), RC_OK);
    memory_knn_destroy(&x);
}

static void test_index(void)
{
    for (int h = 0; h < IKV; h++)
        for (int c = 0; c < NCLUST; c++)
            for (int t = 0; t < IHD; t++) centers[h][c][t] = 1.5f * frand();
    enum { N = 20000, NQ = 64, K = 16, NH = IKV * 2 };
    float *keys = malloc(sizeof(float) * N * IKV * IHD), *q = malloc(sizeof(float) * NQ * NH * IHD);
    clustered(keys, N);
    /* Queries: near stored keys of their kv head, scaled like attention queries. */
    for (int i = 0; i < NQ; i++)
        for (int h = 0; h < NH; h++) {
            size_t r = next_u64() % N;
            for (int t = 0; t < IHD; t++)
                q[((size_t)i * NH + h) * IHD + t] =
                    2 * keys[(r * IKV + h / 2) * IHD + t] + 0.2f * frand();
        }
    int64_t *a = malloc(sizeof(int64_t) * NQ * NH * K), *b = malloc(sizeof(int64_t) * NQ * NH * K);
    int64_t *exact = malloc(sizeof(int64_t) * NQ * NH * K);

    /* Flat (below the IVF threshold): exactly the brute-force top-k. */
    memory_knn_opts_t o = {.ivf_min_rows = 4096};
    memory_store_t *s = store_of(keys, 3000);
    memory_knn_t *x = NULL;
    CHECK_RC(memory_knn_create(1, IKV, IHD, &o, &x), RC_OK);
    CHECK_RC(memory_knn_search(x, s, 0, q, NQ, NH, K, a), RC_OK);
    CHECK(!memory_knn_is_ivf(x, 0) && memory_knn_rows(x, 0) == 3000);
    /* A flat head keeps every key in fp32: exactly that, counted. */
    CHECK_MSG(memory_knn_bytes(x) == (size_t)3000 * IKV * IHD * sizeof(float),
              "flat index: %zu bytes counted", memory_knn_bytes(x));
    int bad = 0;
    for (int i = 0; i < NQ * NH; i++) {
        const float *qq = q + (size_t)i * IHD;
        const int kh = (i % NH) / 2;
        float kth = 0; /* the k-th best score must be ≥ every unlisted score */
        for (int t = 0; t < IHD; t++) kth += qq[t] * keys[((size_t)a[i * K + K - 1] * IKV + kh) * IHD + t];
        for (int r = 0; r < 3000; r++) {
            int listed = 0;
            for (int j = 0; j < K; j++) listed |= a[i * K + j] == r;
            if (listed) continue;
            float sc = 0;
            for (int t = 0; t < IHD; t++) sc += qq[t] * keys[((size_t)r * IKV + kh) * IHD + t];
            bad += sc > kth + 1e-4f;
        }
    }
    CHECK_MSG(bad == 0, "flat search missed %d better keys", bad);
    /* k ≥ rows: every row in order. */
    int64_t *all = malloc(sizeof(int64_t) * NH * 3005);
    CHECK_RC(memory_knn_search(x, s, 0, q, 1, NH, 3005, all), RC_OK);
    CHECK(all[0] == 0 && all[2999] == 2999 && all[3000] == -1 && all[3005 + 7] == 7);
    free(all);
    memory_knn_destroy(&x);
    memory_store_destroy(&s);

    /* IVF: rows arrive window by window; retraining happens at 4096 and 16384 rows. */
    s = store_of(NULL, 0);
    CHECK_RC(memory_knn_create(1, IKV, IHD, &o, &x), RC_OK);
    for (size_t r = 0; r < N; r += 1000) {
        memory_store_append_f32(s, 0, keys + r * IKV * IHD, keys + r * IKV * IHD, 1000);
        CHECK_RC(memory_knn_sync(x, s, 0), RC_OK);
    }
    CHECK(memory_knn_is_ivf(x, 0) && memory_knn_nlist(x, 0) == 512);
    CHECK_RC(memory_knn_search(x, s, 0, q, NQ, NH, K, a), RC_OK);
    /* IVF: at least the keys in fp32 and their ids, and not wildly more (the lists grow by
     * doubling; the centroids and the row map add a little). */
    {
        const size_t floor = (size_t)N * IKV * (IHD * sizeof(float) + sizeof(int64_t));
        CHECK_MSG(memory_knn_bytes(x) >= floor && memory_knn_bytes(x) < 3 * floor,
                  "IVF index: %zu bytes counted, %zu at least", memory_knn_bytes(x), floor);
    }
    fresh_search(&o, s, q, NQ, K, b);
    CHECK_MSG(memcmp(a, b, sizeof(int64_t) * NQ * NH * K) == 0,
              "window-by-window IVF differs from one built at once");
    /* Recall@k against exact search (a flat index: threshold above the rows). */
    memory_knn_opts_t flat = {.ivf_min_rows = 1u << 30};
    fresh_search(&flat, s, q, NQ, K, exact);
    size_t hit = 0;
    for (int i = 0; i < NQ * NH; i++)
        for (int j = 0; j < K; j++)
            for (int t = 0; t < K; t++) hit += a[i * K + j] == exact[i * K + t];
    double recall = (double)hit / (NQ * NH * K);
    printf("IVF recall@%d at %d clustered keys, nlist 512, nprobe 32: %.3f\n", K, N, recall);
    CHECK_MSG(recall >= 0.9, "IVF recall@%d %.3f < 0.9", K, recall);
    /* Two lists of ~10k rows, both probed: exact again, through lists longer than one
     * scoring block (memory/knn.c scores a list 4096 rows at a time). */
    memory_knn_opts_t two = {.ivf_min_rows = 4096, .nlist = 2, .nprobe = 2};
    fresh_search(&two, s, q, NQ, K, b);
    hit = 0;
    for (int i = 0; i < NQ * NH; i++)
        for (int j = 0; j < K; j++)
            for (int t = 0; t < K; t++) hit += b[i * K + j] == exact[i * K + t];
    CHECK_MSG(hit == (size_t)NQ * NH * K, "2 long lists, all probed: %zu of %d exact hits", hit,
              NQ * NH * K);

    /* Save / load: identical results; a mismatched or damaged copy is refused. */
    void *buf = NULL;
    size_t len = 0;
    CHECK_RC(memory_knn_save(x, 0, &buf, &len), RC_OK);
    memory_knn_t *y = NULL;
    CHECK_RC(memory_knn_create(1, IKV, IHD, &o, &y), RC_OK);
    CHECK_RC(memory_knn_load(y, 0, buf, len, N - 1), RC_ERR_FORMAT);
    CHECK_RC(memory_knn_load(y, 0, buf, len / 2, N), RC_ERR_FORMAT);
    CHECK_RC(memory_knn_load(y, 0, buf, len, N), RC_OK);
    CHECK(memory_knn_rows(y, 0) == N);
    CHECK_RC(memory_knn_search(y, s, 0, q, NQ, NH, K, b), RC_OK);
    CHECK(memcmp(a, b, sizeof(int64_t) * NQ * NH * K) == 0);
    free(buf);
    memory_knn_destroy(&y);

    /* Rewinds: above the training rows (tail removed), then below (rebuilt), then new rows
     * of the old count: each as a fresh build on the same rows. */
    const size_t cuts[2] = {17000, 9000};
    for (int c = 0; c < 2; c++) {
        memory_store_truncate(s, cuts[c]);
        CHECK_RC(memory_knn_sync(x, s, 0), RC_OK);
        CHECK(memory_knn_rows(x, 0) == cuts[c]);
        CHECK_RC(memory_knn_search(x, s, 0, q, NQ, NH, K, a), RC_OK);
        fresh_search(&o, s, q, NQ, K, b);
        CHECK_MSG(memcmp(a, b, sizeof(int64_t) * NQ * NH * K) == 0, "rewind to %zu", cuts[c]);
    }
    float *other = malloc(sizeof(float) * 2000 * IKV * IHD);
    clustered(other, 2000);
    memory_store_truncate(s, 7000);
    CHECK_RC(memory_knn_sync(x, s, 0), RC_OK);
    memory_store_append_f32(s, 0, other, other, 2000); /* 9000 rows again, others */
    CHECK_RC(memory_knn_search(x, s, 0, q, NQ, NH, K, a), RC_OK);
    fresh_search(&o, s, q, NQ, K, b);
    CHECK_MSG(memcmp(a, b, sizeof(int64_t) * NQ * NH * K) == 0, "rewind then new rows");
    free(other);

    CHECK_RC(memory_knn_search(x, s, 0, q, NQ, 3, K, a), RC_ERR_INVALID); /* heads ∤ kv */
    memory_knn_opts_t bad_o = {.retrain_growth = 1};
    memory_knn_t *z = NULL;
    CHECK_RC(memory_knn_create(1, IKV, IHD, &bad_o, &z), RC_ERR_INVALID);
    memory_knn_destroy(&x);
    memory_knn_destroy(&x); /* NULL-safe */
    memory_store_destroy(&s);
    free(keys), free(q), free(a), free(b), free(exact);
}

/* Needles: after the quantizer was trained on clustered rows, rows unlike all of them (a pass
 * key in filler) arrive, and queries ask for them. Query i is u_i + 4 c_i (c_i a cluster's
 * unit direction, u_i needle i's), with the c's and u's orthonormal: it scores needle i (40)
 * far above every other row (≤ about 18), but its nprobe best lists are around cluster i,
 * not the list of the needle's best centroid. The exact list must still give the needle. */
static void test_needles(void)
{
    enum { N = 20000, NEED = 6, NH = IKV * 2, K = 4 };
    float *keys = malloc(sizeof(float) * N * IKV * IHD), *q = malloc(sizeof(float) * NEED * NH * IHD);
    clustered(keys, N);
    size_t rows[NEED];
    for (int i = 0; i < NEED; i++) rows[i] = 16384 + 400 * (size_t)i + 7; /* after [0, 16384) */
    for (int h = 0; h < IKV; h++) {
        double B[2 * NEED][IHD]; /* Gram-Schmidt: the clusters' directions, then the needles' */
        for (int b = 0; b < 2 * NEED; b++) {
            for (int t = 0; t < IHD; t++)
                B[b][t] = b < NEED ? centers[h][(b * 5 + h) % NCLUST][t] : frand();
            for (int a = 0; a < b; a++) {
                double d = 0;
                for (int t = 0; t < IHD; t++) d += B[a][t] * B[b][t];
                for (int t = 0; t < IHD; t++) B[b][t] -= d * B[a][t];
            }
            double n2 = 0;
            for (int t = 0; t < IHD; t++) n2 += B[b][t] * B[b][t];
            for (int t = 0; t < IHD; t++) B[b][t] /= sqrt(n2);
        }
        for (int i = 0; i < NEED; i++)
            for (int t = 0; t < IHD; t++) {
                keys[(rows[i] * IKV + h) * IHD + t] = (float)(40 * B[NEED + i][t]);
                for (int g = 0; g < 2; g++)
                    q[((size_t)i * NH + h * 2 + g) * IHD + t] = (float)(B[NEED + i][t] + 4 * B[i][t]);
            }
    }
    memory_knn_opts_t o = {.ivf_min_rows = 4096};
    memory_store_t *s = store_of(keys, N);
    memory_knn_t *x = NULL;
    int64_t idx[NEED * NH * K];
    CHECK_RC(memory_knn_create(1, IKV, IHD, &o, &x), RC_OK);
    CHECK_RC(memory_knn_search(x, s, 0, q, NEED, NH, K, idx), RC_OK);
    CHECK(memory_knn_is_ivf(x, 0) && memory_knn_nlist(x, 0) == 512);
    int found = 0;
    for (int i = 0; i < NEED; i++)
        for (int h = 0; h < NH; h++) found += idx[((size_t)i * NH + h) * K] == (int64_t)rows[i];
    printf("needles after the training rows found first: %d of %d\n", found, NEED * NH);
    CHECK_MSG(found == NEED * NH, "IVF lost %d of %d needles", NEED * NH - found, NEED * NH);
    /* The same after a save / load round trip (the exact list is part of the format). */
    void *buf = NULL;
    size_t len = 0;
    memory_knn_t *y = NULL;
    int64_t idx2[NEED * NH * K];
    CHECK_RC(memory_knn_save(x, 0, &buf, &len), RC_OK);
    CHECK_RC(memory_knn_create(1, IKV, IHD, &o, &y), RC_OK);
    CHECK_RC(memory_knn_load(y, 0, buf, len, N), RC_OK);
    CHECK_RC(memory_knn_search(y, s, 0, q, NEED, NH, K, idx2), RC_OK);
    CHECK(memcmp(idx, idx2, sizeof idx) == 0);
    free(buf);
    memory_knn_destroy(&y);
    memory_knn_destroy(&x);
    memory_store_destroy(&s);
    free(keys), free(q);
}

/* ---- 3. streams on tiny-fot ------------------------------------------------------------------ */

/* lp[i] = log p(tok[i+1]) for a stream fed tok in 3 pieces. */
static rc_t score(model_t *m, const model_stream_opts_t *o, const int32_t *tok, int n,
                  float *lp)
{
    model_stream_t *s = NULL;
    rc_t rc = model_stream_create(m, o, &s);
    if (rc) return rc;
    rc = model_stream_feed(s, tok, (size_t)n, lp, NULL);
    model_stream_destroy(&s);
    return rc;
}

static void test_stream(model_t *m)
{
    const model_config_t *c = model_get_config(m);
    const int W = c->max_pos, n = 24 * W + 17;
    int32_t *tok = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) tok[i] = 3 + (int32_t)(next_u64() % (uint64_t)(c->vocab_size - 3));
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);

    model_stream_opts_t exact = {0}, big = {.memory_knn = 1, .knn_k = 100000},
                        small = {.memory_knn = 1, .knn_k = 4};
    CHECK_RC(score(m, &exact, tok, n, a), RC_OK);
    CHECK_RC(score(m, &big, tok, n, b), RC_OK);
    double d = max_abs_diff(a, b, (size_t)n - 1);
    CHECK_MSG(d <= 1e-5, "knn k ≥ memory vs exact: max |Δ logprob| %g", d);
    CHECK_RC(score(m, &small, tok, n, b), RC_OK);
    d = max_abs_diff(a, b, (size_t)n - 1);
    CHECK_MSG(all_finite(b, (size_t)n - 1) && d > 1e-4 && d < 50,
              "knn k = 4 vs exact: max |Δ logprob| %g (should differ, finitely)", d);
    printf("tiny-fot, %d tokens: knn k=4 vs exact max |Δ logprob| %.4g\n", n, d);

    /* Same under DCA (a memory query rotated apart from the local one). */
    model_stream_opts_t dca_e = {.window = 2 * W, .positional = POSITIONAL_DCA},
                        dca_k = {.window = 2 * W, .positional = POSITIONAL_DCA, .memory_knn = 1,
                                 .knn_k = 1 << 20};
    CHECK_RC(score(m, &dca_e, tok, n, a), RC_OK);
    CHECK_RC(score(m, &dca_k, tok, n, b), RC_OK);
    d = max_abs_diff(a, b, (size_t)n - 1);
    CHECK_MSG(d <= 1e-5, "dca: knn k ≥ memory vs exact: %g", d);

    model_stream_opts_t neg = {.memory_knn = 1, .knn_k = -1};
    char err[256];
    CHECK_RC(model_stream_opts_resolve(m, &neg, err, sizeof err), RC_ERR_INVALID);
    model_stream_opts_t dflt = {.memory_knn = 1};
    CHECK_RC(model_stream_opts_resolve(m, &dflt, err, sizeof err), RC_OK);
    CHECK(dflt.knn_k == 128);

    /* A question's windows go into memory and are rewound; the next rows (as many, but
     * other tokens) must not be mistaken for indexed ones. */
    const int nA = 10 * W, nB = 3 * W;
    model_stream_t *s = NULL, *f = NULL;
    CHECK_RC(model_stream_create(m, &small, &s), RC_OK);
    CHECK_RC(model_stream_create(m, &small, &f), RC_OK);
    if (s && f) {
        CHECK_RC(model_stream_feed(s, tok, nA, NULL, NULL), RC_OK);
        CHECK_RC(model_stream_flush(s), RC_OK);
        model_stream_mark_t mk = model_stream_get_mark(s);
        CHECK_RC(model_stream_feed(s, tok + nA, nB, NULL, NULL), RC_OK);
        CHECK_RC(model_stream_flush(s), RC_OK);
        CHECK(memory_store_len(model_stream_memory(s)) == (size_t)(nA + nB));
        model_stream_rewind(s, mk);
        CHECK(memory_store_len(model_stream_memory(s)) == (size_t)nA);
        const int32_t *C = tok + nA + nB; /* other tokens, same count */
        CHECK_RC(model_stream_feed(s, C, nB + 5, a, NULL), RC_OK);
        CHECK_RC(model_stream_feed(f, tok, nA, NULL, NULL), RC_OK);
        CHECK_RC(model_stream_flush(f), RC_OK);
        CHECK_RC(model_stream_feed(f, C, nB + 5, b, NULL), RC_OK);
        CHECK_MSG(memcmp(a, b, sizeof(float) * (nB + 4)) == 0, "after a rewind: %g",
                  max_abs_diff(a, b, nB + 4));
    }
    model_stream_destroy(&s);
    model_stream_destroy(&f);
    free(tok), free(a), free(b);
}

/* ---- 4. recalld --------------------------------------------------------------------------- */

static Recall__Response *create_knn(rpc_client_t *c, const char *name, uint32_t k)
{
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.memory = (char *)"knn";
    o.k = k;
    return rpc_create_opts(c, name, &o, 0);
}

static int ingest(rpc_client_t *c, const char *name, int32_t *toks, size_t n)
{
    Recall__Response *r = rpc_ingest_tokens(c, name, 1, toks, n);
    int ok = r && r->status && r->status->code == 0;
    if (r) recall__response__free_unpacked(r, NULL);
    return ok ? 0 : -1;
}

static void check_info(rpc_client_t *c, const char *name, uint32_t k)
{
    Recall__Response *r = rpc_info(c, name);
    const Recall__SessionOptions *o =
        r && r->session_info && r->session_info->info ? r->session_info->info->options : NULL;
    CHECK_MSG(o && o->memory && !strcmp(o->memory, "knn") && o->k == k, "%s: info says knn k %u",
              name, k);
    if (r) recall__response__free_unpacked(r, NULL);
}

static void test_daemon(const char *model_dir, model_t *m)
{
    char dir[512], data[600], log[600], ep[600];
    CHECK(rpc_tempdir(dir, sizeof dir) == 0);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/recalld.log", dir);
    snprintf(ep, sizeof ep, "ipc://%s/sock", dir);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", data);
    CHECK(system(cmd) == 0);
    rpc_daemon_t dm;
    rpc_client_t c;
    if (rpc_daemon_start(&dm, model_dir, data, ep, log, NULL) || rpc_client_open(&c, ep)) {
        CHECK_MSG(0, "recalld did not start");
        return;
    }
    const int n = 40 * model_get_config(m)->max_pos + 9;
    int32_t *toks = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++)
        toks[i] = 3 + (int32_t)(next_u64() % (uint64_t)(model_get_config(m)->vocab_size - 3));
    Recall__Response *r = create_knn(&c, "kn", 8);
    CHECK_MSG(r && r->status && r->status->code == 0, "create knn: %s",
              r && r->status ? r->status->message : "no answer");
    if (r) recall__response__free_unpacked(r, NULL);
    r = create_knn(&c, "kdefault", 0);
    CHECK(r && r->status && r->status->code == 0);
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(ingest(&c, "kn", toks, (size_t)n) == 0);
    check_info(&c, "kn", 8);
    check_info(&c, "kdefault", 128);
    static rpc_answer_t before, after;
    CHECK(rpc_ask(&c, "kn", "What was it about?", 24, 0, &before) == 0);
    CHECK_MSG(before.status == 0 && before.n_tokens > 0, "ask: %s", before.message);
    rpc_client_close(&c);
    CHECK(rpc_daemon_stop(&dm, SIGTERM) == 0);

    CHECK(rpc_daemon_start(&dm, model_dir, data, ep, log, NULL) == 0 && rpc_client_open(&c, ep) == 0);
    check_info(&c, "kn", 8);
    check_info(&c, "kdefault", 128);
    CHECK(rpc_ask(&c, "kn", "What was it about?", 24, 0, &after) == 0);
    CHECK_MSG(after.status == 0 && after.n_tokens == before.n_tokens &&
                  memcmp(after.tokens, before.tokens, sizeof(int32_t) * before.n_tokens) == 0,
              "answer after restart differs (%zu vs %zu tokens)", after.n_tokens, before.n_tokens);
    /* The first shutdown saved the index into LMDB and the restart used it. */
    CHECK(rpc_file_contains(log, "'kn': kNN index of memory layer 0 saved"));
    CHECK(!rpc_file_contains(log, "failed to load"));
    rpc_client_close(&c);
    rpc_daemon_stop(&dm, SIGTERM);

    /* A damaged saved index is refused, logged, and rebuilt from the stored keys: the
     * answer does not change. */
    memory_db_t *db = NULL;
    char err[256];
    CHECK(memory_db_open(data, NULL, &db, err, sizeof err) == RC_OK);
    uint64_t rows = 0;
    void *blob = NULL;
    size_t len = 0;
    CHECK(db && memory_db_get_index(db, "kn", 0, &rows, &blob, &len) == RC_OK && rows > 0);
    if (blob && len > 64) memset((char *)blob + len / 2, 0x5a, 32);
    if (db && blob) CHECK(memory_db_put_index(db, "kn", 0, rows, blob, len, err, sizeof err) == RC_OK);
    free(blob);
    memory_db_close(&db);
    static rpc_answer_t rebuilt;
    CHECK(rpc_daemon_start(&dm, model_dir, data, ep, log, NULL) == 0 && rpc_client_open(&c, ep) == 0);
    /* Sessions open lazily: the index is read when the question brings the session in. */
    CHECK(rpc_ask(&c, "kn", "What was it about?", 24, 0, &rebuilt) == 0);
    CHECK(rpc_file_contains(log, "memory layer 0 failed to load"));
    CHECK_MSG(rebuilt.status == 0 && rebuilt.n_tokens == before.n_tokens &&
                  memcmp(rebuilt.tokens, before.tokens, sizeof(int32_t) * before.n_tokens) == 0,
              "answer after an index rebuild differs");
    rpc_client_close(&c);
    rpc_daemon_stop(&dm, SIGTERM);
    free(toks);
    rpc_rmtree(dir);
}

int main(void)
{
    test_kernel(CPU_ATTN_PLAIN, DTYPE_F32);
    test_kernel(CPU_ATTN_PLAIN, DTYPE_BF16);
    test_kernel(CPU_ATTN_SELF_EXTEND, DTYPE_F32);
    test_kernel(CPU_ATTN_DCA, DTYPE_BF16);
    test_index();
    test_needles();

    const char *td = getenv("RECALL_TEST_DATA");
    char model_dir[1024], err[512];
    snprintf(model_dir, sizeof model_dir, "%s/tiny-fot", td ? td : "tests/data");
    model_t *m = NULL;
    rc_t rc = model_load(model_dir, 1, &m, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "load %s: %s", model_dir, err);
    if (m) {
        test_stream(m);
        test_daemon(model_dir, m);
    }
    model_destroy(&m);
    return check_summary();
}
