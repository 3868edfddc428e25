/* tiers.c — the budgets' books and the least-recently-used choice (see tiers.h). */
#include "memory/tiers.h"

#include <stdlib.h>

struct memory_tiers {
    size_t host_budget, gpu_budget;
    tiers_slot_t **slots; /* [n] */
    size_t n, cap;
    uint64_t clock;
};

rc_t memory_tiers_create(size_t host_budget, size_t gpu_budget, memory_tiers_t **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return RC_ERR_NOMEM;
    (*out)->host_budget = host_budget;
    (*out)->gpu_budget = gpu_budget;
    return RC_OK;
}

void memory_tiers_destroy(memory_tiers_t **pt)
{
    if (!pt || !*pt) return;
    free((*pt)->slots);
    free(*pt);
    *pt = NULL;
}

size_t memory_tiers_host_budget(const memory_tiers_t *t)
{
    return t->host_budget;
}

size_t memory_tiers_gpu_budget(const memory_tiers_t *t)
{
    return t->gpu_budget;
}

void memory_tiers_set_gpu_budget(memory_tiers_t *t, size_t gpu_budget)
{
    t->gpu_budget = gpu_budget;
}

rc_t memory_tiers_track(memory_tiers_t *t, tiers_slot_t *s)
{
    if (s->tracked) return RC_OK;
    if (t->n == t->cap) {
        size_t nc = t->cap ? 2 * t->cap : 16;
        tiers_slot_t **p = realloc(t->slots, nc * sizeof *p);
        if (!p) return RC_ERR_NOMEM;
        t->slots = p;
        t->cap = nc;
    }
    t->slots[t->n++] = s;
    s->tracked = 1;
    s->last_use = ++t->clock;
    return RC_OK;
}

void memory_tiers_untrack(memory_tiers_t *t, tiers_slot_t *s)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->slots[i] == s) {
            t->slots[i] = t->slots[--t->n];
            break;
        }
    s->tracked = 0;
}

void memory_tiers_touch(memory_tiers_t *t, tiers_slot_t *s)
{
    s->last_use = ++t->clock;
}

void memory_tiers_pin(tiers_slot_t *s)
{
    s->pins++;
}

void memory_tiers_unpin(tiers_slot_t *s)
{
    if (s->pins) s->pins--;
}

void memory_tiers_set(memory_tiers_t *t, tiers_slot_t *s, size_t host_bytes, size_t gpu_bytes)
{
    (void)t;
    s->host_bytes = host_bytes;
    s->gpu_bytes = gpu_bytes;
}

void memory_tiers_used(const memory_tiers_t *t, size_t *host_bytes, size_t *gpu_bytes)
{
    size_t h = 0, g = 0;
    for (size_t i = 0; i < t->n; i++) {
        h += t->slots[i]->host_bytes;
        g += t->slots[i]->gpu_bytes;
    }
    if (host_bytes) *host_bytes = h;
    if (gpu_bytes) *gpu_bytes = g;
}

size_t memory_tiers_count(const memory_tiers_t *t)
{
    return t->n;
}

static int by_last_use(const void *a, const void *b)
{
    const tiers_slot_t *x = *(tiers_slot_t *const *)a, *y = *(tiers_slot_t *const *)b;
    return x->last_use < y->last_use ? -1 : x->last_use > y->last_use;
}

size_t memory_tiers_plan(const memory_tiers_t *t, const tiers_slot_t *self, size_t host_need,
                         size_t gpu_need, tiers_move_t *moves, size_t cap, int *fits)
{
    size_t host = 0, gpu = 0, nm = 0;
    memory_tiers_used(t, &host, &gpu);
    if (self && self->tracked) {
        host -= self->host_bytes;
        gpu -= self->gpu_bytes;
    }
    host += host_need;
    gpu += gpu_need;
    tiers_slot_t **order = t->n ? malloc(t->n * sizeof *order) : NULL;
    size_t n = 0;
    for (size_t i = 0; order && i < t->n; i++)
        if (t->slots[i] != self && !t->slots[i]->pins) order[n++] = t->slots[i];
    if (order) qsort(order, n, sizeof *order, by_last_use);
    /* The GPU budget first: dropping a device copy is the cheaper move (the map stays). */
    for (size_t i = 0; t->gpu_budget && gpu > t->gpu_budget && i < n && nm < cap; i++) {
        if (!order[i]->gpu_bytes) continue;
        moves[nm++] = (tiers_move_t){order[i], TIERS_HOST};
        gpu -= order[i]->gpu_bytes;
    }
    for (size_t i = 0; t->host_budget && host > t->host_budget && i < n && nm < cap; i++) {
        if (!order[i]->host_bytes) continue;
        /* A slot already moving to host goes to disk instead: one move per slot. */
        size_t j = 0;
        while (j < nm && moves[j].slot != order[i]) j++;
        if (j < nm) {
            moves[j].to = TIERS_DISK;
        } else {
            moves[nm++] = (tiers_move_t){order[i], TIERS_DISK};
            gpu -= order[i]->gpu_bytes; /* its device copy goes with it */
        }
        host -= order[i]->host_bytes;
    }
    free(order);
    if (fits)
        *fits = (!t->gpu_budget || gpu <= t->gpu_budget) && (!t->host_budget || host <= t->host_budget);
    return nm;
}

size_t memory_tiers_spill_rows(size_t rows, size_t hot_cap, size_t window)
{
    if (rows <= hot_cap) return 0;
    if (window < 1) window = 1;
    size_t step = hot_cap / 2 / window * window;
    if (step < window) step = window;
    const size_t need = rows - hot_cap; /* at least this many must leave the device */
    size_t spill = (need + step - 1) / step * step;
    /* Only reachable with hot_cap < window (a budget the options check refuses). */
    if (spill > rows) spill = rows;
    return spill;
}
