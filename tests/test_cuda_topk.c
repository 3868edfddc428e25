/* test_cuda_topk.c — cuda_topk (kernels/cuda/topk.cu) against a CPU reference.
 *
 * The reference scores every row of the range in double from the same bf16 queries and
 * bf16 or fp32 keys the kernel reads. The kernel's scores are fp32 sums of exact products,
 * so they differ from the reference by accumulation order only: tol(row) = 1e-3·|score| +
 * 1e-5·Σ|q_i·k_i| (an fp32 sum of 128 terms is off by far less; an indexing error is off by
 * the score itself). Per (query, head) the test checks:
 *   - order: best first by (score desc, row asc), strictly: no duplicate rows;
 *   - every row inside [row0, row1), each returned score within tol of the row's reference;
 *   - the set, up to near-ties: every returned row's reference score >= the reference k-th
 *     best - margin, and every row above the k-th best + margin is returned;
 *   - padding: exactly max(0, k - rows) trailing slots with idx -1 and score -inf.
 * Adversarial inputs: identical key rows (every score ties: the lowest rows must come back,
 * in order), keys from four distinct vectors (ties inside groups resolve by row), scores
 * of 1e30 and all-negative scores. Outputs are poisoned before each run; a second run of a
 * case must give the same bits, and a workspace of half the planned size (fewer splits) the
 * same answer.
 *
 * Fresh random data each run (the seed is printed; RECALL_SEED=N repeats a run). With no
 * GPU (CI) it prints "skipped: no GPU" and exits 77. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "kernels/cuda.h"
#include "tests/check.h"
#include "tests/gpu_ops.h"

enum { DATA_RANDOM, DATA_SAME, DATA_GROUPS, DATA_HUGE, DATA_NEGATIVE };

typedef struct tcase {
    const char *name;
    int n_q, n_heads, n_kv, hd;
    int64_t row0, row1;
    int k;
    dtype_t kt;
    int data;
} tcase_t;

static int group_of(int64_t row) { return (int)((uint64_t)(row * 2654435761u) >> 7) & 3; }

static int cmp_desc(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int fails_printed;
#define DIAG(...)                                                                              \
    do {                                                                                       \
        if (fails_printed++ < 12) fprintf(stderr, __VA_ARGS__);                               \
    } while (0)

static void run_case(const tcase_t *c)
{
    const int hd = c->hd, nq = c->n_q, nh = c->n_heads, nkv = c->n_kv, k = c->k;
    const int64_t nrows_all = c->row1; /* keys are [row1, nkv, hd]; rows < row0 unused */
    const int64_t n = c->row1 - c->row0;
    const size_t qn = (size_t)nq * nh * hd, kn = (size_t)nrows_all * nkv * hd;
    const size_t on = (size_t)nq * nh * k;
    float *qf = malloc(qn * sizeof(float));
    float *kf = malloc((kn ? kn : 1) * sizeof(float));
    uint16_t *qb = malloc(qn * 2);
    void *kh = malloc((kn ? kn : 1) * dtype_size(c->kt));
    float *sc = malloc(on * sizeof(float)), *sc2 = malloc(on * sizeof(float));
    int32_t *ix = malloc(on * sizeof(int32_t)), *ix2 = malloc(on * sizeof(int32_t));
    double *ref = malloc((n ? n : 1) * sizeof(double)), *mag = malloc((n ? n : 1) * sizeof(double));
    double *sorted = malloc((n ? n : 1) * sizeof(double));
    unsigned char *ret = calloc(n ? n : 1, 1);
    if (!qf || !kf || !qb || !kh || !sc || !sc2 || !ix || !ix2 || !ref || !mag || !sorted || !ret)
        abort();

    const float qscale = c->data == DATA_HUGE ? 1e15f : 1.0f;
    for (size_t i = 0; i < qn; i++) {
        float x = rng_normal() * qscale;
        if (c->data == DATA_NEGATIVE) x = -fabsf(x) - 0.25f;
        qb[i] = f32_to_bf16(x);
        qf[i] = bf16_to_f32(qb[i]);
    }
    float base[4][128];
    for (int g = 0; g < 4; g++)
        for (int d = 0; d < hd; d++) base[g][d] = rng_normal();
    for (int64_t r = 0; r < nrows_all; r++)
        for (int j = 0; j < nkv; j++)
            for (int d = 0; d < hd; d++) {
                const size_t i = ((size_t)r * nkv + j) * hd + d;
                float x;
                switch (c->data) {
                case DATA_SAME: x = base[j & 3][d]; break;
                case DATA_GROUPS: x = base[(group_of(r) + j) & 3][d]; break;
                case DATA_HUGE: x = rng_normal() * 1e15f; break;
                case DATA_NEGATIVE: x = fabsf(rng_normal()) + 0.25f; break;
                default: x = rng_normal(); break;
                }
                if (c->kt == DTYPE_BF16) x = bf16_to_f32(f32_to_bf16(x));
                kf[i] = x;
            }
    dtype_from_f32(kh, c->kt, kf, kn);

    void *dq = NULL, *dk = NULL, *ds = NULL, *di = NULL, *ws = NULL;
    size_t wsb = 0;
    cuda_topk_args_t a = {.n_q = nq, .n_heads = nh, .n_kv_heads = nkv, .head_dim = hd,
                          .key_dtype = c->kt, .row0 = c->row0, .row1 = c->row1, .k = k};
    rc_t rc = cuda_topk_workspace(&a, &wsb);
    if (!rc) rc = cuda_alloc(&dq, qn * 2);
    if (!rc) rc = cuda_alloc(&dk, kn * dtype_size(c->kt));
    if (!rc) rc = cuda_alloc(&ds, on * sizeof(float));
    if (!rc) rc = cuda_alloc(&di, on * sizeof(int32_t));
    if (!rc) rc = cuda_alloc(&ws, wsb);
    if (!rc) rc = cuda_upload(dq, qb, qn * 2, NULL);
    if (!rc && kn) rc = cuda_upload(dk, kh, kn * dtype_size(c->kt), NULL);
    CHECK_MSG(rc == RC_OK, "%s: setup: %s", c->name, rc_strerror(rc));
    if (rc) goto done;
    a.q = dq;
    a.keys = dk;
    a.scores = ds;
    a.idx = di;

    /* Three runs: planned workspace (twice: same bits), then half of it. */
    for (int run = 0; run < 3; run++) {
        float *s_out = run == 0 ? sc : sc2;
        int32_t *i_out = run == 0 ? ix : ix2;
        size_t wb = run == 2 ? wsb / 2 : wsb;
        const size_t min_ws = (size_t)nq * nh * k * 8;
        if (run == 2 && wb < min_ws) wb = min_ws;
        rc = cuda_memset(ds, 0x7f, on * sizeof(float), NULL); /* poison: 3.4e38, idx huge */
        if (!rc) rc = cuda_memset(di, 0x5a, on * sizeof(int32_t), NULL);
        if (!rc) rc = cuda_topk(&a, ws, wb, NULL);
        if (!rc) rc = cuda_stream_sync(NULL);
        if (!rc) rc = cuda_download(s_out, ds, on * sizeof(float), NULL);
        if (!rc) rc = cuda_download(i_out, di, on * sizeof(int32_t), NULL);
        CHECK_MSG(rc == RC_OK, "%s: run %d: %s", c->name, run, rc_strerror(rc));
        if (rc) goto done;
        if (run == 1)
            CHECK_MSG(!memcmp(sc, sc2, on * sizeof(float)) && !memcmp(ix, ix2, on * 4),
                      "%s: a second run gave other bits", c->name);
        if (run == 2)
            CHECK_MSG(!memcmp(ix, ix2, on * 4),
                      "%s: half the workspace (fewer splits) gave other rows", c->name);
    }

    long bad_order = 0, bad_range = 0, bad_score = 0, bad_set = 0, bad_pad = 0, bad_tie = 0;
    const int nvalid = n < k ? (int)n : k;
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < nh; h++) {
            const int kvh = h / (nh / nkv);
            const float *qv = qf + ((size_t)i * nh + h) * hd;
            for (int64_t r = 0; r < n; r++) {
                const float *kv = kf + ((size_t)(c->row0 + r) * nkv + kvh) * hd;
                double s = 0.0, m = 0.0;
                for (int d = 0; d < hd; d++) {
                    const double p = (double)qv[d] * (double)kv[d];
                    s += p;
                    m += fabs(p);
                }
                ref[r] = s;
                mag[r] = m;
                sorted[r] = s;
                ret[r] = 0;
            }
            const size_t o = ((size_t)i * nh + h) * k;
            const float *so = sc + o;
            const int32_t *io = ix + o;
            double kth = -INFINITY, maxmag = 0.0;
            if (nvalid > 0) {
                qsort(sorted, (size_t)n, sizeof(double), cmp_desc);
                kth = sorted[nvalid - 1];
            }
            for (int64_t r = 0; r < n; r++) maxmag = fmax(maxmag, mag[r]);
            const double margin = 2e-3 * fabs(kth) + 2e-5 * maxmag;
            for (int j = 0; j < k; j++) {
                if (j >= nvalid) {
                    if (io[j] != -1 || !(isinf(so[j]) && so[j] < 0)) {
                        bad_pad++;
                        DIAG("%s: q %d h %d slot %d: want padding, got row %d score %g\n",
                             c->name, i, h, j, io[j], so[j]);
                    }
                    continue;
                }
                const int64_t row = io[j];
                if (row < c->row0 || row >= c->row1) {
                    bad_range++;
                    DIAG("%s: q %d h %d slot %d: row %lld outside [%lld, %lld) (score %g)\n",
                         c->name, i, h, j, (long long)row, (long long)c->row0,
                         (long long)c->row1, so[j]);
                    continue;
                }
                const int64_t r = row - c->row0;
                if (ret[r]) {
                    bad_order++;
                    DIAG("%s: q %d h %d: row %lld returned twice\n", c->name, i, h,
                         (long long)row);
                }
                ret[r] = 1;
                const double tol = 1e-3 * fabs(ref[r]) + 1e-5 * mag[r];
                if (!(fabs(so[j] - ref[r]) <= tol)) {
                    bad_score++;
                    DIAG("%s: q %d h %d slot %d row %lld: score %.9g, reference %.9g\n",
                         c->name, i, h, j, (long long)row, so[j], ref[r]);
                }
                if (ref[r] < kth - margin) {
                    bad_set++;
                    DIAG("%s: q %d h %d slot %d row %lld: reference %.9g below k-th %.9g\n",
                         c->name, i, h, j, (long long)row, ref[r], kth);
                }
                if (j > 0 && io[j - 1] >= 0 &&
                    !(so[j - 1] > so[j] || (so[j - 1] == so[j] && io[j - 1] < io[j]))) {
                    bad_order++;
                    DIAG("%s: q %d h %d slot %d: (%g, row %d) after (%g, row %d)\n", c->name,
                         i, h, j, so[j], io[j], so[j - 1], io[j - 1]);
                }
            }
            for (int64_t r = 0; r < n; r++)
                if (!ret[r] && ref[r] > kth + margin) {
                    bad_set++;
                    DIAG("%s: q %d h %d: row %lld (reference %.9g > k-th %.9g) missing\n",
                         c->name, i, h, (long long)(c->row0 + r), ref[r], kth);
                }
            /* Identical rows tie exactly on the GPU too: the lowest rows must win. */
            if (c->data == DATA_SAME) {
                for (int j = 0; j < nvalid; j++)
                    if (io[j] != c->row0 + j) {
                        bad_tie++;
                        DIAG("%s: q %d h %d slot %d: row %d, want %lld (all rows tie)\n",
                             c->name, i, h, j, io[j], (long long)(c->row0 + j));
                        break;
                    }
            }
            if (c->data == DATA_GROUPS) { /* in each group, the returned rows are its first */
                const int g_kv = kvh;
                int64_t seen[4] = {0, 0, 0, 0}, got[4] = {0, 0, 0, 0};
                for (int64_t r = 0; r < n; r++) {
                    const int g = (group_of(c->row0 + r) + g_kv) & 3;
                    if (ret[r]) {
                        got[g]++;
                        if (got[g] != seen[g] + 1) {
                            bad_tie++;
                            DIAG("%s: q %d h %d: row %lld returned before a lower tied row\n",
                                 c->name, i, h, (long long)(c->row0 + r));
                            break;
                        }
                    }
                    seen[g]++;
                }
            }
        }
    CHECK_MSG(bad_order == 0, "%s: %ld order/duplicate errors", c->name, bad_order);
    CHECK_MSG(bad_range == 0, "%s: %ld rows outside the range", c->name, bad_range);
    CHECK_MSG(bad_score == 0, "%s: %ld scores off the reference", c->name, bad_score);
    CHECK_MSG(bad_set == 0, "%s: %ld set errors", c->name, bad_set);
    CHECK_MSG(bad_pad == 0, "%s: %ld padding errors", c->name, bad_pad);
    CHECK_MSG(bad_tie == 0, "%s: %ld tie-break errors", c->name, bad_tie);
    printf("%-28s n_q %4d heads %2d/%d d%-3d rows [%lld, %lld) k %3d %s: ws %zu B, %s\n",
           c->name, nq, nh, nkv, hd, (long long)c->row0, (long long)c->row1, k,
           c->kt == DTYPE_F32 ? "f32 " : "bf16", wsb,
           bad_order + bad_range + bad_score + bad_set + bad_pad + bad_tie ? "FAIL" : "ok");
    fflush(stdout);
done:
    cuda_free(&dq);
    cuda_free(&dk);
    cuda_free(&ds);
    cuda_free(&di);
    cuda_free(&ws);
    free(qf);
    free(kf);
    free(qb);
    free(kh);
    free(sc);
    free(sc2);
    free(ix);
    free(ix2);
    free(ref);
    free(mag);
    free(sorted);
    free(ret);
}

static void check_args(void)
{
    void *buf = NULL;
    if (cuda_alloc(&buf, 1 << 20)) {
        CHECK(0);
        return;
    }
    const cuda_topk_args_t ok = {.n_q = 1, .n_heads = 4, .n_kv_heads = 2, .head_dim = 64,
                                 .q = buf, .keys = buf, .key_dtype = DTYPE_BF16, .row0 = 0,
                                 .row1 = 100, .k = 8, .scores = buf, .idx = buf};
    size_t b = 0;
    CHECK_RC(cuda_topk_workspace(&ok, &b), RC_OK);
    CHECK(b >= 8 * 8 * 4);
    cuda_topk_args_t a = ok;
    a.k = 0;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_INVALID);
    a.k = CUDA_TOPK_MAX_K + 1;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_INVALID);
    a = ok;
    a.n_heads = 3;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_INVALID);
    a = ok;
    a.head_dim = 96;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_UNSUPPORTED);
    a = ok;
    a.row1 = -1;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_INVALID);
    a = ok;
    a.row0 = 5;
    a.row1 = 4;
    CHECK_RC(cuda_topk_workspace(&a, &b), RC_ERR_INVALID);
    a = ok;
    a.row1 = (int64_t)INT32_MAX + 2;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_INVALID);
    a = ok;
    a.key_dtype = DTYPE_F16;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_UNSUPPORTED);
    a = ok;
    a.q = NULL;
    CHECK_RC(cuda_topk(&a, buf, 1 << 20, NULL), RC_ERR_INVALID);
    CHECK_RC(cuda_topk(&ok, buf, 8, NULL), RC_ERR_INVALID); /* workspace too small */
    CHECK_RC(cuda_topk(&ok, NULL, 0, NULL), RC_ERR_INVALID);
    CHECK_RC(cuda_topk(NULL, buf, 1 << 20, NULL), RC_ERR_INVALID);
    CHECK_RC(cuda_topk_workspace(&ok, NULL), RC_ERR_INVALID);
    CHECK_RC(cuda_stream_sync(NULL), RC_OK);
    cuda_free(&buf);
}

int main(void)
{
    const int skip = gpu_ops_begin("test_cuda_topk", 1);
    if (skip) return skip;
    cuda_ctx_t *ctx = NULL;
    CHECK_RC(cuda_ctx_create(&ctx, 0), RC_OK);

    check_args();

    const dtype_t B = DTYPE_BF16, F = DTYPE_F32;
    const tcase_t cases[] = {
        {"decode d128", 1, 32, 32, 128, 0, 5000, 32, B, DATA_RANDOM},
        {"gqa d100 row0", 3, 8, 2, 100, 1234, 71234, 128, B, DATA_RANDOM},
        {"k256 d64", 64, 32, 32, 64, 0, 5000, 256, B, DATA_RANDOM},
        {"n_q 300 f32 d100", 300, 8, 2, 100, 10, 2010, 128, F, DATA_RANDOM},
        {"prefill 2048 k256", 2048, 8, 2, 64, 0, 600, 256, B, DATA_RANDOM},
        {"k1 f32 d128", 5, 8, 2, 128, 3, 70003, 1, F, DATA_RANDOM},
        {"f32 d64 k32", 17, 32, 32, 64, 0, 5000, 32, F, DATA_RANDOM},
        {"rows 1", 3, 32, 32, 100, 7, 8, 32, B, DATA_RANDOM},
        {"rows k-1", 3, 32, 32, 100, 50, 81, 32, B, DATA_RANDOM},
        {"rows k", 3, 32, 32, 100, 0, 32, 32, B, DATA_RANDOM},
        {"rows k+1", 20, 8, 2, 128, 1, 258, 256, F, DATA_RANDOM},
        {"rows k-1 k256", 70, 8, 2, 64, 0, 255, 256, B, DATA_RANDOM},
        {"empty range", 2, 8, 2, 64, 9, 9, 16, B, DATA_RANDOM},
        {"all tied", 3, 32, 32, 64, 5, 5005, 128, B, DATA_SAME},
        {"all tied prefill", 100, 8, 2, 100, 0, 3000, 256, B, DATA_SAME},
        {"tied groups", 5, 8, 2, 100, 77, 20077, 256, B, DATA_GROUPS},
        {"tied groups f32", 40, 8, 2, 128, 0, 6000, 32, F, DATA_GROUPS},
        {"huge", 64, 8, 2, 128, 0, 5000, 128, B, DATA_HUGE},
        {"negative", 17, 32, 32, 100, 0, 5000, 32, B, DATA_NEGATIVE},
        {"1M rows", 1, 8, 2, 64, 1000, 1000 + (1 << 20), 128, B, DATA_RANDOM},
        /* The streaming decode path (n_q · group <= 4): ranges that are no multiple of a
         * tile, odd row0, k > rows, GQA, two and three queries, every head dim, fp32 keys,
         * ties, and the flush of a buffer still holding candidates at the end. */
        {"dec d100 odd rows", 1, 32, 32, 100, 3, 40006, 128, B, DATA_RANDOM},
        {"dec d100 k256", 1, 32, 32, 100, 1, 20000, 256, B, DATA_RANDOM},
        {"dec d64 gqa2", 1, 16, 8, 64, 17, 30030, 64, B, DATA_RANDOM},
        {"dec d128 n_q 2", 2, 32, 32, 128, 0, 12345, 128, B, DATA_RANDOM},
        {"dec d100 n_q 3", 3, 32, 32, 100, 9, 9009, 32, B, DATA_RANDOM},
        {"dec f32 d100", 1, 32, 32, 100, 5, 10005, 128, F, DATA_RANDOM},
        {"dec f32 d64 gqa4", 1, 8, 2, 64, 0, 30001, 128, F, DATA_RANDOM},
        {"dec f32 d128", 1, 4, 4, 128, 2, 7003, 16, F, DATA_RANDOM},
        {"dec rows < k", 1, 32, 32, 100, 11, 100, 128, B, DATA_RANDOM},
        {"dec rows 1", 1, 4, 1, 128, 0, 1, 8, B, DATA_RANDOM},
        {"dec one kv head", 1, 1, 1, 100, 1, 5001, 200, B, DATA_RANDOM},
        {"dec all tied", 1, 32, 32, 100, 3, 9003, 128, B, DATA_SAME},
        {"dec tied groups", 1, 8, 8, 64, 1, 20001, 256, B, DATA_GROUPS},
        {"dec tied groups f32", 2, 4, 2, 128, 0, 4001, 64, F, DATA_GROUPS},
        {"dec huge", 1, 8, 8, 128, 0, 5000, 128, B, DATA_HUGE},
        {"dec negative", 1, 32, 32, 100, 0, 5000, 32, B, DATA_NEGATIVE},
        {"dec 64k rows", 1, 32, 32, 100, 7, 7 + (1 << 16), 128, B, DATA_RANDOM},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);

    cuda_ctx_destroy(&ctx);
    return check_summary();
}
