/* knn_tiers.c — where a GPU knn stream's memory splits, and merging the two tiers' lists
 * (see knn_tiers.h). */
#include "model/knn_tiers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* ---- merging ------------------------------------------------------------------------- */

typedef struct cand {
    float sc;
    int64_t row;
} cand_t;

/* a ranks before b: higher score, then lower row. */
static int before(const cand_t *a, const cand_t *b)
{
    return a->sc > b->sc || (a->sc == b->sc && a->row < b->row);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const cand_t *a = pa, *b = pb;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* Sorts c[0..n) best first unless it already is (the usual case: both tiers list best
 * first; only an exact "every row" list comes in row order). */
static void sort_cands(cand_t *c, size_t n)
{
    for (size_t i = 1; i < n; i++)
        if (before(&c[i], &c[i - 1])) {
            qsort(c, n, sizeof *c, cand_cmp);
            return;
        }
}

static float clean_score(float s)
{
    return isnan(s) ? -INFINITY : s;
}

rc_t knn_tiers_merge(size_t n_lists, int k, const int64_t *sp_idx, const float *sp_sc, int k_sp,
                     const int32_t *hot_idx, const float *hot_sc, int k_hot, int64_t hot_base,
                     int64_t *out, float *out_sc)
{
    if (k < 1 || k_sp < 0 || k_hot < 0) return RC_ERR_INVALID;
    const size_t ka = (size_t)k_sp, kb = (size_t)k_hot, kk = (size_t)k;
    cand_t *a = malloc((ka + kb + 1) * sizeof *a), *b = a ? a + ka : NULL;
    if (!a) return RC_ERR_NOMEM;
    for (size_t l = 0; l < n_lists; l++) {
        size_t na = 0, nb = 0;
        for (size_t j = 0; j < ka; j++) {
            const int64_t r = sp_idx[l * ka + j];
            if (r >= 0) a[na++] = (cand_t){clean_score(sp_sc[l * ka + j]), r};
        }
        for (size_t j = 0; j < kb; j++) {
            const int32_t r = hot_idx[l * kb + j];
            if (r >= 0) b[nb++] = (cand_t){clean_score(hot_sc[l * kb + j]), hot_base + r};
        }
        sort_cands(a, na);
        sort_cands(b, nb);
        size_t ia = 0, ib = 0;
        int64_t *o = out + l * kk;
        float *os = out_sc ? out_sc + l * kk : NULL;
        for (size_t j = 0; j < kk; j++) {
            const cand_t *pick = NULL;
            if (ia < na && (ib >= nb || before(&a[ia], &b[ib])))
                pick = &a[ia++];
            else if (ib < nb)
                pick = &b[ib++];
            o[j] = pick ? pick->row : -1;
            if (os) os[j] = pick ? pick->sc : -INFINITY;
        }
    }
    free(a);
    return RC_OK;
}

/* ---- the slot table ------------------------------------------------------------------ */

/* Open addressing over a power-of-two table at most half full: row -> slot. */
struct knn_slots {
    size_t cap, count;
    size_t mask;      /* table size − 1 */
    int64_t *key;     /* [mask + 1] row, or −1 for empty */
    int32_t *val;     /* [mask + 1] slot */
    int64_t *rows;    /* [cap] row of each slot */
    size_t *where;    /* [cap] table position of each slot, for an O(count) clear */
};

rc_t knn_slots_create(size_t cap, knn_slots_t **out)
{
    *out = NULL;
    if (cap < 1 || cap > INT32_MAX / 4) return RC_ERR_INVALID;
    knn_slots_t *t = calloc(1, sizeof *t);
    if (!t) return RC_ERR_NOMEM;
    size_t size = 16;
    while (size < 2 * cap) size *= 2;
    t->cap = cap;
    t->mask = size - 1;
    t->key = malloc(size * sizeof *t->key);
    t->val = malloc(size * sizeof *t->val);
    t->rows = malloc(cap * sizeof *t->rows);
    t->where = malloc(cap * sizeof *t->where);
    if (!t->key || !t->val || !t->rows || !t->where) {
        knn_slots_destroy(&t);
        return RC_ERR_NOMEM;
    }
    for (size_t i = 0; i < size; i++) t->key[i] = -1;
    *out = t;
    return RC_OK;
}

void knn_slots_destroy(knn_slots_t **pt)
{
    if (!pt || !*pt) return;
    knn_slots_t *t = *pt;
    free(t->key);
    free(t->val);
    free(t->rows);
    free(t->where);
    free(t);
    *pt = NULL;
}

void knn_slots_clear(knn_slots_t *t)
{
    for (size_t s = 0; s < t->count; s++) t->key[t->where[s]] = -1;
    t->count = 0;
}

size_t knn_slots_count(const knn_slots_t *t)
{
    return t->count;
}

size_t knn_slots_cap(const knn_slots_t *t)
{
    return t->cap;
}

const int64_t *knn_slots_rows(const knn_slots_t *t)
{
    return t->rows;
}

/* The slot of row, added if new (the caller checked there is room). */
static int32_t slot_of(knn_slots_t *t, int64_t row)
{
    size_t h = (size_t)((uint64_t)row * 0x9E3779B97F4A7C15ull >> 20) & t->mask;
    while (t->key[h] != -1) {
        if (t->key[h] == row) return t->val[h];
        h = (h + 1) & t->mask;
    }
    const size_t s = t->count++;
    t->key[h] = row;
    t->val[h] = (int32_t)s;
    t->rows[s] = row;
    t->where[s] = h;
    return (int32_t)s;
}

int knn_slots_encode(knn_slots_t *t, const int64_t *rows, size_t n, int64_t spill_rows,
                     int64_t n_hot, int32_t *out)
{
    size_t spilled = 0;
    for (size_t i = 0; i < n; i++) spilled += rows[i] >= 0 && rows[i] < spill_rows;
    if (t->count + spilled > t->cap) return -1;
    for (size_t i = 0; i < n; i++) {
        const int64_t r = rows[i];
        if (r < 0) {
            out[i] = -1;
        } else if (r < spill_rows) {
            out[i] = (int32_t)(n_hot + slot_of(t, r));
        } else {
            ASSERT(r - spill_rows < n_hot);
            out[i] = (int32_t)(r - spill_rows);
        }
    }
    return 0;
}
