/* store.c — growable per-layer arrays of key and value rows (see store.h). */
#include "memory/store.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

typedef struct layer_rows {
    char *k, *v;     /* [cap, row_dim] in dtype */
    size_t n, cap;   /* rows used / allocated */
} layer_rows_t;

struct memory_store {
    int n_layers;
    int row_dim;
    dtype_t dtype;
    size_t row_bytes;
    layer_rows_t *layers; /* [n_layers] */
};

rc_t memory_store_create(int n_layers, int row_dim, dtype_t dtype, memory_store_t **out)
{
    *out = NULL;
    if (n_layers < 0 || row_dim <= 0) return RC_ERR_INVALID;
    memory_store_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
    s->n_layers = n_layers;
    s->row_dim = row_dim;
    s->dtype = dtype;
    s->row_bytes = (size_t)row_dim * dtype_size(dtype);
    if (n_layers) {
        s->layers = calloc((size_t)n_layers, sizeof *s->layers);
        if (!s->layers) {
            free(s);
            return RC_ERR_NOMEM;
        }
    }
    *out = s;
    return RC_OK;
}

void memory_store_destroy(memory_store_t **ps)
{
    if (!ps || !*ps) return;
    memory_store_t *s = *ps;
    for (int l = 0; l < s->n_layers; l++) {
        free(s->layers[l].k);
        free(s->layers[l].v);
    }
    free(s->layers);
    free(s);
    *ps = NULL;
}

int memory_store_layers(const memory_store_t *s)
{
    return s->n_layers;
}

int memory_store_row_dim(const memory_store_t *s)
{
    return s->row_dim;
}

dtype_t memory_store_dtype(const memory_store_t *s)
{
    return s->dtype;
}

size_t memory_store_rows(const memory_store_t *s, int layer)
{
    ASSERT(layer >= 0 && layer < s->n_layers);
    return s->layers[layer].n;
}

size_t memory_store_len(const memory_store_t *s)
{
    if (!s->n_layers) return 0;
    size_t n = s->layers[0].n;
    for (int l = 1; l < s->n_layers; l++)
        if (s->layers[l].n < n) n = s->layers[l].n;
    return n;
}

size_t memory_store_bytes(const memory_store_t *s)
{
    size_t b = 0;
    for (int l = 0; l < s->n_layers; l++) b += 2 * s->layers[l].n * s->row_bytes;
    return b;
}

/* Makes room for n more rows, growing by half again so appends stay amortized O(1). */
static rc_t reserve(memory_store_t *s, layer_rows_t *L, size_t n)
{
    if (L->n + n <= L->cap) return RC_OK;
    size_t cap = L->cap ? L->cap : 1024;
    while (cap < L->n + n) cap += cap / 2;
    char *k = realloc(L->k, cap * s->row_bytes);
    if (!k) return RC_ERR_NOMEM;
    L->k = k;
    char *v = realloc(L->v, cap * s->row_bytes);
    if (!v) return RC_ERR_NOMEM;
    L->v = v;
    L->cap = cap;
    return RC_OK;
}

rc_t memory_store_append_f32(memory_store_t *s, int layer, const float *k, const float *v,
                             size_t n)
{
    if (layer < 0 || layer >= s->n_layers) return RC_ERR_INVALID;
    layer_rows_t *L = &s->layers[layer];
    rc_t rc = reserve(s, L, n);
    if (rc) return rc;
    dtype_from_f32(L->k + L->n * s->row_bytes, s->dtype, k, n * (size_t)s->row_dim);
    dtype_from_f32(L->v + L->n * s->row_bytes, s->dtype, v, n * (size_t)s->row_dim);
    L->n += n;
    return RC_OK;
}

rc_t memory_store_append_raw(memory_store_t *s, int layer, const void *k, const void *v, size_t n)
{
    if (layer < 0 || layer >= s->n_layers) return RC_ERR_INVALID;
    layer_rows_t *L = &s->layers[layer];
    rc_t rc = reserve(s, L, n);
    if (rc) return rc;
    memcpy(L->k + L->n * s->row_bytes, k, n * s->row_bytes);
    memcpy(L->v + L->n * s->row_bytes, v, n * s->row_bytes);
    L->n += n;
    return RC_OK;
}

const void *memory_store_keys(const memory_store_t *s, int layer)
{
    ASSERT(layer >= 0 && layer < s->n_layers);
    return s->layers[layer].k;
}

const void *memory_store_values(const memory_store_t *s, int layer)
{
    ASSERT(layer >= 0 && layer < s->n_layers);
    return s->layers[layer].v;
}

void memory_store_truncate(memory_store_t *s, size_t n)
{
    for (int l = 0; l < s->n_layers; l++)
        if (s->layers[l].n > n) s->layers[l].n = n;
}
