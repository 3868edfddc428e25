/* store.c — growable per-layer arrays of key and value rows (see store.h). */
#include "memory/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/quant.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels answer EINVAL, which is harmless */
#endif

/* Row arrays live in their own anonymous mappings, grown with mremap (the kernel moves page
 * tables, nothing is copied) and populated ahead of use with huge pages: a session's memory
 * grows by gigabytes, and first-touch page faults on 4 KiB pages ran at 1-2 GB/s where
 * populated huge pages run at ~10 GB/s (measured on the dev machine; the GPU host's ingest
 * spent most of its host time there). Both madvise calls are hints; failures are ignored. */
#define REGION_ALIGN ((size_t)2 << 20)

static size_t region_round(size_t bytes)
{
    return (bytes + REGION_ALIGN - 1) & ~(REGION_ALIGN - 1);
}

static void region_prepare(char *base, size_t from, size_t to)
{
    if (to <= from) return;
    madvise(base + from, to - from, MADV_HUGEPAGE);
    madvise(base + from, to - from, MADV_POPULATE_WRITE);
}

/* Grows (or creates, when p is NULL) a region of old_bytes to new_bytes (both rounded). */
static char *region_grow(char *p, size_t old_bytes, size_t new_bytes)
{
    void *q;
    if (!p)
        q = mmap(NULL, new_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    else
        q = mremap(p, old_bytes, new_bytes, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) return NULL;
    region_prepare(q, old_bytes, new_bytes);
    return q;
}

static void region_free(char *p, size_t bytes)
{
    if (p) munmap(p, bytes);
}

typedef struct layer_rows {
    char *k, *v;            /* [cap] rows of row_bytes in dtype */
    size_t k_bytes, v_bytes; /* mapping sizes (whole regions; may exceed cap rows) */
    size_t n, cap;           /* rows used / allocated (files: mapped) */
    int kfd, vfd;            /* files backing: the keys and values files; else -1 */
} layer_rows_t;

struct memory_store {
    int n_layers;
    int row_dim;
    int n_kv_heads, head_dim; /* row_dim = n_kv_heads * head_dim (the row formats' scales) */
    dtype_t dtype;
    size_t row_bytes;         /* dtype_row_bytes */
    int files;            /* rows live in files (memory_store_open_files) */
    layer_rows_t *layers; /* [n_layers] */
    char *scratch;        /* files: one append's rows converted to dtype */
    size_t scratch_bytes;
};

rc_t memory_store_create(int n_layers, int row_dim, dtype_t dtype, memory_store_t **out)
{
    return memory_store_create_heads(n_layers, 1, row_dim, dtype, out);
}

rc_t memory_store_create_heads(int n_layers, int n_kv_heads, int head_dim, dtype_t dtype,
                               memory_store_t **out)
{
    *out = NULL;
    if (n_layers < 0 || n_kv_heads <= 0 || head_dim <= 0 || dtype < DTYPE_F32 ||
        dtype > DTYPE_I8)
        return RC_ERR_INVALID;
    memory_store_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
    s->n_layers = n_layers;
    s->row_dim = n_kv_heads * head_dim;
    s->n_kv_heads = n_kv_heads;
    s->head_dim = head_dim;
    s->dtype = dtype;
    s->row_bytes = dtype_row_bytes(dtype, n_kv_heads, head_dim);
    if (n_layers) {
        s->layers = calloc((size_t)n_layers, sizeof *s->layers);
        if (!s->layers) {
            free(s);
            return RC_ERR_NOMEM;
        }
        for (int l = 0; l < n_layers; l++) s->layers[l].kfd = s->layers[l].vfd = -1;
    }
    *out = s;
    return RC_OK;
}

void memory_store_destroy(memory_store_t **ps)
{
    if (!ps || !*ps) return;
    memory_store_t *s = *ps;
    for (int l = 0; l < s->n_layers; l++) {
        region_free(s->layers[l].k, s->layers[l].k_bytes);
        region_free(s->layers[l].v, s->layers[l].v_bytes);
        if (s->layers[l].kfd >= 0) close(s->layers[l].kfd);
        if (s->layers[l].vfd >= 0) close(s->layers[l].vfd);
    }
    free(s->layers);
    free(s->scratch);
    free(s);
    *ps = NULL;
}

/* ---- the files backing --------------------------------------------------------------- */

/* Maps (or re-maps larger) a read-only shared view of fd. The view may reach past the
 * file's end: those pages are never read (only rows below n are), and rows appended later
 * appear in it without a new mapping, because the page cache is the same one pwrite fills. */
static char *file_map(int fd, char *old, size_t old_bytes, size_t new_bytes)
{
    void *q = old ? mremap(old, old_bytes, new_bytes, MREMAP_MAYMOVE)
                  : mmap(NULL, new_bytes, PROT_READ, MAP_SHARED, fd, 0);
    return q == MAP_FAILED ? NULL : q;
}

/* Mapped room for `rows` rows in layer L (maps grow by half again, in 2 MiB steps). */
static rc_t file_reserve(memory_store_t *s, layer_rows_t *L, size_t rows)
{
    if (rows <= L->cap && L->k) return RC_OK;
    size_t want = L->cap + L->cap / 2;
    if (want < rows) want = rows;
    size_t bytes = region_round(want * s->row_bytes);
    if (bytes == 0) bytes = REGION_ALIGN;
    char *k = file_map(L->kfd, L->k, L->k_bytes, bytes);
    if (!k) return RC_ERR_NOMEM;
    L->k = k;
    L->k_bytes = bytes;
    char *v = file_map(L->vfd, L->v, L->v_bytes, bytes);
    if (!v) return RC_ERR_NOMEM; /* keys stay mapped larger: harmless */
    L->v = v;
    L->v_bytes = bytes;
    L->cap = bytes / s->row_bytes;
    return RC_OK;
}

static int write_all(int fd, const void *buf, size_t n, off_t off)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* Writes n rows (already in dtype) after the layer's last row, keys then values; on a
 * failed write both files are cut back and the layer is unchanged. */
static rc_t file_append(memory_store_t *s, layer_rows_t *L, const void *k, const void *v,
                        size_t n)
{
    const off_t off = (off_t)(L->n * s->row_bytes);
    const size_t bytes = n * s->row_bytes;
    rc_t rc = file_reserve(s, L, L->n + n);
    if (rc) return rc;
    if (write_all(L->kfd, k, bytes, off) || write_all(L->vfd, v, bytes, off)) {
        int e = errno;
        if (ftruncate(L->kfd, off) || ftruncate(L->vfd, off))
            log_warn("memory store: cannot cut a failed append back: %s", strerror(errno));
        log_warn("memory store: writing %zu rows failed: %s", n, strerror(e));
        return RC_ERR_IO;
    }
    L->n += n;
    return RC_OK;
}

static rc_t open_one(const char *dir, int layer, const char *what, size_t want_bytes,
                     size_t row_bytes, int create, int *fd_out, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/L%d.%s", dir, layer, what);
    int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0644);
    if (fd < 0)
        return rc_errf(errno == ENOENT ? RC_ERR_NOT_FOUND : RC_ERR_IO, err, errlen,
                       "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return rc_errf(RC_ERR_IO, err, errlen, "cannot stat %s: %s", path, strerror(errno));
    }
    size_t have = (size_t)st.st_size;
    if (have < want_bytes) {
        close(fd);
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                       "%s is truncated: %zu bytes (%zu rows) where the committed windows "
                       "need %zu (%zu rows)",
                       path, have, have / row_bytes, want_bytes, want_bytes / row_bytes);
    }
    /* Rows past the committed ones were written by a commit that never finished. */
    if (have > want_bytes && ftruncate(fd, (off_t)want_bytes) != 0) {
        close(fd);
        return rc_errf(RC_ERR_IO, err, errlen, "cannot cut %s back to its committed %zu bytes: %s",
                       path, want_bytes, strerror(errno));
    }
    *fd_out = fd;
    return RC_OK;
}

rc_t memory_store_open_files(int n_layers, int row_dim, dtype_t dtype, const char *dir,
                             size_t rows, int create, memory_store_t **out, char *err,
                             size_t errlen)
{
    return memory_store_open_heads(n_layers, 1, row_dim, dtype, dir, rows, create, out, err,
                                   errlen);
}

rc_t memory_store_open_heads(int n_layers, int n_kv_heads, int head_dim, dtype_t dtype,
                             const char *dir, size_t rows, int create, memory_store_t **out,
                             char *err, size_t errlen)
{
    *out = NULL;
    memory_store_t *s = NULL;
    rc_t rc = memory_store_create_heads(n_layers, n_kv_heads, head_dim, dtype, &s);
    if (rc) return rc_errf(rc, err, errlen, "cannot create a memory store: %s", rc_strerror(rc));
    s->files = 1;
    for (int l = 0; l < n_layers; l++) {
        layer_rows_t *L = &s->layers[l];
        const size_t want = rows * s->row_bytes;
        rc = open_one(dir, l, "keys", want, s->row_bytes, create, &L->kfd, err, errlen);
        if (!rc) rc = open_one(dir, l, "values", want, s->row_bytes, create, &L->vfd, err, errlen);
        if (!rc && file_reserve(s, L, rows ? rows : 1))
            rc = rc_errf(RC_ERR_NOMEM, err, errlen, "cannot map the rows of %s", dir);
        if (rc) {
            memory_store_destroy(&s);
            return rc;
        }
        L->n = rows;
    }
    *out = s;
    return RC_OK;
}

int memory_store_is_files(const memory_store_t *s)
{
    return s->files;
}

rc_t memory_store_sync(memory_store_t *s, char *err, size_t errlen)
{
    for (int l = 0; s->files && l < s->n_layers; l++)
        if (fdatasync(s->layers[l].kfd) != 0 || fdatasync(s->layers[l].vfd) != 0)
            return rc_errf(RC_ERR_IO, err, errlen, "syncing memory layer %d's rows failed: %s", l,
                           strerror(errno));
    return RC_OK;
}

void memory_store_prefetch(const memory_store_t *s, size_t from, size_t to)
{
    for (int l = 0; l < s->n_layers; l++) {
        const layer_rows_t *L = &s->layers[l];
        size_t hi = to < L->n ? to : L->n;
        if (from >= hi || !L->k) continue;
        /* madvise wants a page-aligned start. */
        size_t a = from * s->row_bytes & ~(size_t)4095, b = hi * s->row_bytes;
        madvise(L->k + a, b - a, MADV_WILLNEED);
        madvise(L->v + a, b - a, MADV_WILLNEED);
    }
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

int memory_store_n_kv_heads(const memory_store_t *s)
{
    return s->n_kv_heads;
}

int memory_store_head_dim(const memory_store_t *s)
{
    return s->head_dim;
}

size_t memory_store_row_bytes(const memory_store_t *s)
{
    return s->row_bytes;
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

/* Makes room for n more rows, growing by half again so appends stay amortized O(1). The
 * capacity is whole 2 MiB regions' worth of rows. */
static rc_t reserve(memory_store_t *s, layer_rows_t *L, size_t n)
{
    if (L->n + n <= L->cap) return RC_OK;
    size_t want = L->cap ? L->cap + L->cap / 2 : 1024;
    if (want < L->n + n) want = L->n + n;
    size_t new_bytes = region_round(want * s->row_bytes);
    /* Keys may end up grown while values fail: harmless, the next call grows values only. */
    if (L->k_bytes < new_bytes) {
        char *k = region_grow(L->k, L->k_bytes, new_bytes);
        if (!k) return RC_ERR_NOMEM;
        L->k = k;
        L->k_bytes = new_bytes;
    }
    if (L->v_bytes < new_bytes) {
        char *v = region_grow(L->v, L->v_bytes, new_bytes);
        if (!v) return RC_ERR_NOMEM;
        L->v = v;
        L->v_bytes = new_bytes;
    }
    L->cap = new_bytes / s->row_bytes;
    return RC_OK;
}

rc_t memory_store_append_f32(memory_store_t *s, int layer, const float *k, const float *v,
                             size_t n)
{
    if (layer < 0 || layer >= s->n_layers) return RC_ERR_INVALID;
    layer_rows_t *L = &s->layers[layer];
    if (s->files) {
        /* Keys and values converted one after the other into one scratch of 2n rows. */
        size_t need = 2 * n * s->row_bytes;
        if (need > s->scratch_bytes) {
            char *p = realloc(s->scratch, need);
            if (!p) return RC_ERR_NOMEM;
            s->scratch = p;
            s->scratch_bytes = need;
        }
        quant_rows_encode(s->scratch, s->dtype, k, n, s->n_kv_heads, s->head_dim);
        quant_rows_encode(s->scratch + n * s->row_bytes, s->dtype, v, n, s->n_kv_heads,
                          s->head_dim);
        return file_append(s, L, s->scratch, s->scratch + n * s->row_bytes, n);
    }
    rc_t rc = reserve(s, L, n);
    if (rc) return rc;
    quant_rows_encode(L->k + L->n * s->row_bytes, s->dtype, k, n, s->n_kv_heads, s->head_dim);
    quant_rows_encode(L->v + L->n * s->row_bytes, s->dtype, v, n, s->n_kv_heads, s->head_dim);
    L->n += n;
    return RC_OK;
}

rc_t memory_store_append_raw(memory_store_t *s, int layer, const void *k, const void *v, size_t n)
{
    if (layer < 0 || layer >= s->n_layers) return RC_ERR_INVALID;
    layer_rows_t *L = &s->layers[layer];
    if (s->files) return file_append(s, L, k, v, n);
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
    for (int l = 0; l < s->n_layers; l++) {
        layer_rows_t *L = &s->layers[l];
        if (L->n <= n) continue;
        L->n = n;
        /* A failed cut leaves bytes past n that nothing reads: the next append overwrites
         * them, and opening cuts files back to the committed rows. */
        if (s->files && (ftruncate(L->kfd, (off_t)(n * s->row_bytes)) ||
                         ftruncate(L->vfd, (off_t)(n * s->row_bytes))))
            log_warn("memory store: cannot cut layer %d back to %zu rows: %s", l, n,
                     strerror(errno));
    }
}
