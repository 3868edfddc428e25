/* test_knn_tiers.c — the GPU knn tiers' host logic (model/knn_tiers.c), no GPU needed:
 * where memory splits, merging the two tiers' lists (order, ties, padding, unsorted input,
 * k larger than both lists), and the spilled rows' slot table (dedup, encoding, capacity).
 * The merge is also checked against a brute-force top-k of random lists. Last, the options
 * check of gpu_memory_budget (model_stream_opts_resolve, on the tiny checkpoints): a budget
 * below one window of memory rows is refused on every backend, with the minimum in MiB. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memory/tiers.h"
#include "model/knn_tiers.h"
#include "model/model.h"
#include "model/stream.h"
#include "tests/check.h"

static void test_spill_rows(void)
{
    /* Within the budget nothing spills. */
    CHECK(memory_tiers_spill_rows(0, 256, 64) == 0);
    CHECK(memory_tiers_spill_rows(256, 256, 64) == 0);
    /* cap 256, window 64: step 128 (half the hot tier, whole windows). */
    CHECK(memory_tiers_spill_rows(257, 256, 64) == 128);
    CHECK(memory_tiers_spill_rows(320, 256, 64) == 128);
    CHECK(memory_tiers_spill_rows(384, 256, 64) == 128);
    CHECK(memory_tiers_spill_rows(385, 256, 64) == 256);
    /* cap of one window: step one window, one window hot at most. */
    CHECK(memory_tiers_spill_rows(64, 64, 64) == 0);
    CHECK(memory_tiers_spill_rows(128, 64, 64) == 64);
    CHECK(memory_tiers_spill_rows(129, 64, 64) == 128);
    /* cap 100, window 64: step 64 (half of 100 is under a window). */
    CHECK(memory_tiers_spill_rows(134, 100, 64) == 64);
    /* No limit. */
    CHECK(memory_tiers_spill_rows((size_t)1 << 40, SIZE_MAX, 2048) == 0);
    /* Properties over a range: monotone, whole steps, hot part within (0, cap]. */
    int bad = 0;
    const size_t caps[] = {64, 100, 192, 256, 1000, 4096}, win = 64;
    for (size_t ci = 0; ci < sizeof caps / sizeof caps[0]; ci++) {
        const size_t cap = caps[ci];
        size_t step = cap / 2 / win * win;
        if (step < win) step = win;
        size_t prev = 0;
        for (size_t rows = 0; rows < 20000; rows++) {
            const size_t sp = memory_tiers_spill_rows(rows, cap, win);
            if (sp < prev || sp % step || rows - sp > cap || (rows > 0 && sp >= rows)) {
                if (bad++ < 5)
                    fprintf(stderr, "cap %zu rows %zu: spill %zu (prev %zu, step %zu)\n", cap, rows,
                            sp, prev, step);
            }
            prev = sp;
        }
    }
    CHECK_MSG(bad == 0, "%d spill points break monotone / whole steps / hot <= cap", bad);
    /* A cap under a window (refused by the options check) still never passes rows. */
    CHECK(memory_tiers_spill_rows(70, 10, 64) <= 70);
}

static void test_merge_basic(void)
{
    /* One list: spilled {rows 3, 1, 7} hot {device 0, 2} at base 10 (rows 10, 12). */
    const int64_t sp_idx[] = {3, 1, 7};
    const float sp_sc[] = {5.0f, 2.0f, 1.0f};
    const int32_t hot_idx[] = {2, 0};
    const float hot_sc[] = {4.0f, 2.0f};
    int64_t out[4];
    float osc[4];
    CHECK_RC(knn_tiers_merge(1, 4, sp_idx, sp_sc, 3, hot_idx, hot_sc, 2, 10, out, osc), RC_OK);
    /* 5 (row 3), 4 (row 12), then the tie at 2: row 1 before row 10. */
    CHECK(out[0] == 3 && out[1] == 12 && out[2] == 1 && out[3] == 10);
    CHECK(osc[0] == 5.0f && osc[1] == 4.0f && osc[2] == 2.0f && osc[3] == 2.0f);

    /* k larger than both lists: -1 padding and -inf scores. */
    int64_t out7[7];
    float osc7[7];
    CHECK_RC(knn_tiers_merge(1, 7, sp_idx, sp_sc, 3, hot_idx, hot_sc, 2, 10, out7, osc7), RC_OK);
    CHECK(out7[4] == 7 && out7[5] == -1 && out7[6] == -1);
    CHECK(isinf(osc7[5]) && osc7[5] < 0);

    /* Padding inside the inputs (-1) is skipped; a tie where the hot row is lower wins. */
    const int64_t sp2[] = {50, -1, -1};
    const float sp2s[] = {1.0f, -INFINITY, -INFINITY};
    const int32_t hot2[] = {5, -1};
    const float hot2s[] = {1.0f, -INFINITY};
    int64_t o2[3];
    CHECK_RC(knn_tiers_merge(1, 3, sp2, sp2s, 3, hot2, hot2s, 2, 40, o2, NULL), RC_OK);
    CHECK(o2[0] == 45 && o2[1] == 50 && o2[2] == -1);

    /* Unsorted input (an exact "every row" list comes in row order) and a NaN score. */
    const int64_t sp3[] = {0, 1, 2, 3};
    const float sp3s[] = {0.5f, 3.0f, NAN, 1.5f};
    int64_t o3[3];
    CHECK_RC(knn_tiers_merge(1, 3, sp3, sp3s, 4, NULL, NULL, 0, 4, o3, NULL), RC_OK);
    CHECK(o3[0] == 1 && o3[1] == 3 && o3[2] == 0);

    /* Only the hot list. */
    const int32_t hot4[] = {1, 0, 2};
    const float hot4s[] = {3.0f, 2.0f, 1.0f};
    int64_t o4[2];
    CHECK_RC(knn_tiers_merge(1, 2, NULL, NULL, 0, hot4, hot4s, 3, 100, o4, NULL), RC_OK);
    CHECK(o4[0] == 101 && o4[1] == 100);

    /* Several lists: each merged on its own. */
    const int64_t sp5[] = {0, 1, 2, 3};         /* [2 lists, 2] */
    const float sp5s[] = {1.0f, 0.0f, 0.0f, 9.0f};
    const int32_t hot5[] = {0, 1};              /* [2 lists, 1] */
    const float hot5s[] = {0.5f, 10.0f};
    int64_t o5[4];
    CHECK_RC(knn_tiers_merge(2, 2, sp5, sp5s, 2, hot5, hot5s, 1, 8, o5, NULL), RC_OK);
    CHECK(o5[0] == 0 && o5[1] == 8 && o5[2] == 9 && o5[3] == 3);

    CHECK_RC(knn_tiers_merge(1, 0, sp_idx, sp_sc, 3, hot_idx, hot_sc, 2, 10, out, NULL),
             RC_ERR_INVALID);
}

static uint64_t rng = 0x1234567ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static int cmp_desc(const void *pa, const void *pb)
{
    const float *a = pa, *b = pb; /* (score, row) pairs */
    if (a[0] != b[0]) return a[0] > b[0] ? -1 : 1;
    return a[1] < b[1] ? -1 : a[1] > b[1];
}

/* Random tiers (scores from a small set, so ties are common): the merge equals the best k of
 * the union by (score desc, row asc). */
static void test_merge_random(void)
{
    enum { SP = 40, HOT = 30, LISTS = 200 };
    int bad = 0;
    for (int trial = 0; trial < 50; trial++) {
        const int k = 1 + (int)(rnd() % 80);
        const int ka = k < SP ? k : SP, kb = k < HOT ? k : HOT;
        float spv[SP], hotv[HOT];
        int64_t *sp_idx = malloc(sizeof(int64_t) * LISTS * ka);
        float *sp_sc = malloc(sizeof(float) * LISTS * ka);
        int32_t *hot_idx = malloc(sizeof(int32_t) * LISTS * kb);
        float *hot_sc = malloc(sizeof(float) * LISTS * kb);
        int64_t *out = malloc(sizeof(int64_t) * LISTS * k);
        float(*all)[2] = malloc(sizeof *all * (SP + HOT));
        if (!sp_idx || !sp_sc || !hot_idx || !hot_sc || !out || !all) return;
        const int64_t base = SP;
        for (int l = 0; l < LISTS; l++) {
            for (int r = 0; r < SP; r++) spv[r] = (float)(rnd() % 7);
            for (int r = 0; r < HOT; r++) hotv[r] = (float)(rnd() % 7);
            /* Each tier's own best lists, sorted as the tiers give them. */
            float tmp[SP > HOT ? SP : HOT][2];
            for (int r = 0; r < SP; r++) tmp[r][0] = spv[r], tmp[r][1] = (float)r;
            qsort(tmp, SP, sizeof tmp[0], cmp_desc);
            for (int j = 0; j < ka; j++) {
                sp_idx[l * ka + j] = (int64_t)tmp[j][1];
                sp_sc[l * ka + j] = tmp[j][0];
            }
            for (int r = 0; r < HOT; r++) tmp[r][0] = hotv[r], tmp[r][1] = (float)r;
            qsort(tmp, HOT, sizeof tmp[0], cmp_desc);
            for (int j = 0; j < kb; j++) {
                hot_idx[l * kb + j] = (int32_t)tmp[j][1];
                hot_sc[l * kb + j] = tmp[j][0];
            }
            /* The brute-force answer over every row, absolute numbering. */
            for (int r = 0; r < SP; r++) all[r][0] = spv[r], all[r][1] = (float)r;
            for (int r = 0; r < HOT; r++) all[SP + r][0] = hotv[r], all[SP + r][1] = (float)(base + r);
            qsort(all, SP + HOT, sizeof all[0], cmp_desc);
            if (knn_tiers_merge(1, k, sp_idx + l * ka, sp_sc + l * ka, ka, hot_idx + l * kb,
                                hot_sc + l * kb, kb, base, out + (size_t)l * k, NULL)) {
                bad++;
                continue;
            }
            for (int j = 0; j < k; j++) {
                const int64_t want = j < SP + HOT ? (int64_t)all[j][1] : -1;
                if (out[(size_t)l * k + j] != want && bad++ < 5)
                    fprintf(stderr, "trial %d list %d k %d: out[%d] = %lld, want %lld\n", trial,
                            l, k, j, (long long)out[(size_t)l * k + j], (long long)want);
            }
        }
        free(sp_idx);
        free(sp_sc);
        free(hot_idx);
        free(hot_sc);
        free(out);
        free(all);
    }
    CHECK_MSG(bad == 0, "%d merged entries differ from the brute-force top-k", bad);
}

static void test_slots(void)
{
    knn_slots_t *t = NULL;
    CHECK_RC(knn_slots_create(0, &t), RC_ERR_INVALID);
    CHECK_RC(knn_slots_create(6, &t), RC_OK);
    if (!t) return;
    CHECK(knn_slots_cap(t) == 6 && knn_slots_count(t) == 0);
    /* spill_rows 100, n_hot 20: rows 100..119 are hot (0..19), rows < 100 get slots 20+. */
    const int64_t q1[] = {105, 7, -1, 42, 7, 119, 100};
    int32_t e1[7];
    CHECK(knn_slots_encode(t, q1, 7, 100, 20, e1) == 0);
    CHECK(e1[0] == 5 && e1[1] == 20 && e1[2] == -1 && e1[3] == 21 && e1[4] == 20 &&
          e1[5] == 19 && e1[6] == 0);
    CHECK(knn_slots_count(t) == 2);
    CHECK(knn_slots_rows(t)[0] == 7 && knn_slots_rows(t)[1] == 42);
    /* A second query reuses slots of rows already there (dedup across queries). */
    const int64_t q2[] = {42, 0, 99};
    int32_t e2[3];
    CHECK(knn_slots_encode(t, q2, 3, 100, 20, e2) == 0);
    CHECK(e2[0] == 21 && e2[1] == 22 && e2[2] == 23);
    CHECK(knn_slots_count(t) == 4);
    /* Might not fit (4 in use + 3 spilled entries > 6): refused, nothing changed. */
    const int64_t q3[] = {1, 2, 3};
    int32_t e3[3] = {-7, -7, -7};
    CHECK(knn_slots_encode(t, q3, 3, 100, 20, e3) == -1);
    CHECK(knn_slots_count(t) == 4 && e3[0] == -7);
    /* After a clear it fits, numbering from 0 again. */
    knn_slots_clear(t);
    CHECK(knn_slots_count(t) == 0);
    CHECK(knn_slots_encode(t, q3, 3, 100, 20, e3) == 0);
    CHECK(e3[0] == 20 && e3[1] == 21 && e3[2] == 22);
    CHECK(knn_slots_rows(t)[2] == 3);
    /* Hot-only entries need no room. */
    const int64_t q4[] = {110, 111, 112, 113, 114, 115, 116, 117};
    int32_t e4[8];
    CHECK(knn_slots_encode(t, q4, 8, 100, 20, e4) == 0);
    CHECK(e4[0] == 10 && e4[7] == 17 && knn_slots_count(t) == 3);
    knn_slots_destroy(&t);
    CHECK(t == NULL);
    knn_slots_destroy(&t); /* NULL-safe */

    /* Many rows through a table: each distinct row one slot, found again by the hash. */
    CHECK_RC(knn_slots_create(5000, &t), RC_OK);
    if (!t) return;
    int64_t rows[4000];
    int32_t enc[4000];
    for (int i = 0; i < 4000; i++) rows[i] = (int64_t)(rnd() % 3000) * 977 % 1000003;
    CHECK(knn_slots_encode(t, rows, 4000, 1000003, 0, enc) == 0);
    int bad = 0;
    const int64_t *sr = knn_slots_rows(t);
    for (int i = 0; i < 4000; i++)
        if (enc[i] < 0 || (size_t)enc[i] >= knn_slots_count(t) || sr[enc[i]] != rows[i]) bad++;
    for (size_t a = 0; a < knn_slots_count(t); a++)
        for (size_t b = a + 1; b < knn_slots_count(t); b++) bad += sr[a] == sr[b];
    CHECK_MSG(bad == 0, "%d slot entries wrong or duplicated (%zu slots)", bad, knn_slots_count(t));
    knn_slots_destroy(&t);
}

static void test_budget_option(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    char dir[1100], err[512];
    snprintf(dir, sizeof dir, "%s/tiny-fot", td ? td : "tests/data");
    model_t *m = NULL;
    rc_t rc = model_load(dir, 1, &m, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "model_load(%s): %s", dir, err);
    if (rc) return;
    const model_config_t *c = model_get_config(m);
    /* tiny-fot: 2 memory layers, fp32 memory; a row is keys + values of every layer. */
    const size_t per_row = (size_t)c->n_mem_layers * 2 * (size_t)c->n_kv_heads *
                           (size_t)c->head_dim * sizeof(float);
    const size_t window_bytes = (size_t)c->max_pos * per_row;
    model_stream_opts_t o;
    memset(&o, 0, sizeof o);
    o.gpu_memory_budget = window_bytes - 1;
    err[0] = 0;
    CHECK_RC(model_stream_opts_resolve(m, &o, err, sizeof err), RC_ERR_INVALID);
    CHECK_MSG(strstr(err, "MiB") && strstr(err, "minimum"), "message: %s", err);
    printf("budget one byte short of a window: %s\n", err);
    memset(&o, 0, sizeof o);
    o.gpu_memory_budget = window_bytes;
    CHECK_RC(model_stream_opts_resolve(m, &o, err, sizeof err), RC_OK);
    /* bf16 memory halves the row: half the budget is one window then. */
    memset(&o, 0, sizeof o);
    o.mem_dtype_set = 1;
    o.mem_dtype = DTYPE_BF16;
    o.gpu_memory_budget = window_bytes / 2;
    CHECK_RC(model_stream_opts_resolve(m, &o, err, sizeof err), RC_OK);
    /* A shorter window needs less. */
    memset(&o, 0, sizeof o);
    o.window = c->max_pos / 2;
    o.gpu_memory_budget = window_bytes / 2;
    CHECK_RC(model_stream_opts_resolve(m, &o, err, sizeof err), RC_OK);
    /* 0 is no limit; the CPU backend opens a stream with a budget (and ignores it). */
    memset(&o, 0, sizeof o);
    CHECK_RC(model_stream_opts_resolve(m, &o, err, sizeof err), RC_OK);
    model_stream_t *s = NULL;
    o.memory_knn = 1;
    o.gpu_memory_budget = window_bytes;
    CHECK_RC(model_stream_create(m, &o, &s), RC_OK);
    model_stream_destroy(&s);
    o.gpu_memory_budget = 1;
    CHECK_RC(model_stream_create(m, &o, &s), RC_ERR_INVALID);
    CHECK(s == NULL);
    model_destroy(&m);
}

int main(void)
{
    test_spill_rows();
    test_merge_basic();
    test_merge_random();
    test_slots();
    test_budget_option();
    return check_summary();
}
