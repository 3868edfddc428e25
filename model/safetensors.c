/* safetensors.c — mapping and checking .safetensors files (format in safetensors.h).
 *
 * The header is untrusted input: a truncated download or a hand-made file must give an
 * error naming the tensor, never a pointer past the mapping. So every entry is validated
 * before the set is returned, and the checks are done in 64-bit arithmetic with overflow
 * guards. */
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_MAX_BYTES (100u << 20) /* the reference implementation's own limit */

typedef struct st_map {
    char *path;
    void *base; /* [size] bytes, PROT_READ */
    size_t size;
} st_map_t;

struct safetensors {
    st_map_t *maps; /* [n_maps] */
    int n_maps;
    st_tensor_t *tensors; /* [n], sorted by name; names malloc'ed */
    size_t n;
};


const char *safetensors_shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
    size_t o = 0;
    if (!len) return buf;
    buf[0] = '\0';
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

static void free_tensors(st_tensor_t *t, size_t n)
{
    if (!t) return;
    for (size_t i = 0; i < n; i++)
        free((char *)t[i].name);
    free(t);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor_t *)a)->name, ((const st_tensor_t *)b)->name);
}

static int cmp_begin(const void *a, const void *b)
{
    const st_tensor_t *x = *(st_tensor_t *const *)a, *y = *(st_tensor_t *const *)b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

/* Maps path read-only; the descriptor is closed at once (the mapping keeps the file). */
static rc_t map_file(const char *path, st_map_t *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof(*m));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rc_errf(errno == ENOENT ? RC_ERR_NOT_FOUND : RC_ERR_IO, err, errlen,
                    "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return rc_errf(RC_ERR_IO, err, errlen, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size < 8) {
        close(fd);
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s is not a safetensors file: %lld bytes, shorter than the 8-byte header "
                    "length (truncated?)",
                    path, (long long)sb.st_size);
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot map %s: %s", path, strerror(e));
    /* Weights are read once, front to back, when converted or first used. */
    madvise(p, (size_t)sb.st_size, MADV_SEQUENTIAL);
    m->path = strdup(path);
    if (!m->path) {
        munmap(p, (size_t)sb.st_size);
        return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    }
    m->base = p;
    m->size = (size_t)sb.st_size;
    return RC_OK;
}

static void unmap(st_map_t *m)
{
    if (m->base) munmap(m->base, m->size);
    free(m->path);
    memset(m, 0, sizeof(*m));
}

static int parse_dtype(const char *s, dtype_t *t)
{
    if (!strcmp(s, "F32"))
        *t = DTYPE_F32;
    else if (!strcmp(s, "F16"))
        *t = DTYPE_F16;
    else if (!strcmp(s, "BF16"))
        *t = DTYPE_BF16;
    else
        return -1;
    return 0;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d != floor(d) || d > 9007199254740992.0) return -1;
    *out = (uint64_t)d;
    return 0;
}

/* Validates one header entry and fills t (name not set). */
static rc_t parse_entry(const st_map_t *m, const cJSON *e, const char *data, uint64_t data_len,
                        st_tensor_t *t, char *err, size_t errlen)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return rc_errf(RC_ERR_FORMAT, err, errlen, "%s: header entry for tensor '%s' is not an object",
                    m->path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return rc_errf(RC_ERR_FORMAT, err, errlen, "%s: tensor '%s' has no \"dtype\" string", m->path,
                    name);
    if (parse_dtype(dt->valuestring, &t->dtype))
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                    "%s: tensor '%s' has dtype %s; recall reads only F32, F16 and BF16 "
                    "checkpoints",
                    m->path, name, dt->valuestring);
    if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > SAFETENSORS_MAX_DIMS)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s: tensor '%s' needs a \"shape\" array of at most %d dimensions", m->path,
                    name, SAFETENSORS_MAX_DIMS);
    t->ndim = 0;
    uint64_t numel = 1;
    int overflow = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh)
    {
        uint64_t v;
        if (json_u64(d, &v))
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                        "%s: tensor '%s' has a shape entry that is not a non-negative integer",
                        m->path, name);
        if (v && numel > UINT64_MAX / 8 / v) overflow = 1;
        numel *= v;
        t->shape[t->ndim++] = (int64_t)v;
    }
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        json_u64(cJSON_GetArrayItem(off, 0), &b) || json_u64(cJSON_GetArrayItem(off, 1), &en) ||
        b > en)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s: tensor '%s' needs \"data_offsets\": [begin, end] with begin <= end",
                    m->path, name);
    char shp[128];
    uint64_t want = numel * dtype_size(t->dtype);
    if (overflow || en - b != want)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s: tensor '%s' (%s %s) needs %llu bytes but its data_offsets [%llu, %llu] "
                    "span %llu",
                    m->path, name, dt->valuestring,
                    safetensors_shape_str(t->shape, t->ndim, shp, sizeof shp),
                    (unsigned long long)want, (unsigned long long)b, (unsigned long long)en,
                    (unsigned long long)(en - b));
    if (en > data_len)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s: tensor '%s' data_offsets [%llu, %llu] run past the end of the data "
                    "section (%llu bytes): file truncated or header corrupt",
                    m->path, name, (unsigned long long)b, (unsigned long long)en,
                    (unsigned long long)data_len);
    t->numel = (size_t)numel;
    t->nbytes = (size_t)want;
    t->data = data + b;
    t->file = m->path;
    return RC_OK;
}

/* Reads and validates the header of a mapped file into a name-sorted tensor array. */
static rc_t parse_file(const st_map_t *m, st_tensor_t **out, size_t *out_n, char *err,
                       size_t errlen)
{
    const unsigned char *p = m->base;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > m->size - 8 || hlen > HEADER_MAX_BYTES || hlen < 2)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s: header length %llu does not fit the file (%zu bytes): truncated or not "
                    "a safetensors file",
                    m->path, (unsigned long long)hlen, m->size);
    const char *data = (const char *)p + 8 + hlen;
    uint64_t data_len = m->size - 8 - hlen;

    rc_t rc = RC_OK;
    st_tensor_t *ts = NULL;
    st_tensor_t **by_off = NULL;
    size_t n = 0;
    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        rc = rc_errf(RC_ERR_FORMAT, err, errlen, "%s: header is not a JSON object", m->path);
        goto fail;
    }
    size_t cap = (size_t)cJSON_GetArraySize(root);
    ts = calloc(cap ? cap : 1, sizeof(*ts));
    if (!ts) {
        rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory reading %s", m->path);
        goto fail;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (!strcmp(e->string, "__metadata__")) continue;
        if ((rc = parse_entry(m, e, data, data_len, &ts[n], err, errlen))) goto fail;
        if (!(ts[n].name = strdup(e->string))) {
            rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory reading %s", m->path);
            goto fail;
        }
        n++;
    }
    qsort(ts, n, sizeof(*ts), cmp_name);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(ts[i - 1].name, ts[i].name)) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen, "%s: tensor '%s' appears twice in the header",
                      m->path, ts[i].name);
            goto fail;
        }
    /* Two tensors sharing bytes would be a corrupt (or malicious) header. */
    by_off = malloc((n ? n : 1) * sizeof(*by_off));
    if (!by_off) {
        rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory reading %s", m->path);
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        by_off[i] = &ts[i];
    qsort(by_off, n, sizeof(*by_off), cmp_begin);
    for (size_t i = 1; i < n; i++) {
        const char *prev_end = (const char *)by_off[i - 1]->data + by_off[i - 1]->nbytes;
        if (by_off[i]->nbytes && (const char *)by_off[i]->data < prev_end) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen,
                      "%s: tensors '%s' and '%s' overlap in the data section", m->path,
                      by_off[i - 1]->name, by_off[i]->name);
            goto fail;
        }
    }
    free(by_off);
    cJSON_Delete(root);
    *out = ts;
    *out_n = n;
    return RC_OK;
fail:
    free(by_off);
    free_tensors(ts, n);
    cJSON_Delete(root);
    return rc;
}

rc_t safetensors_open(const char *path, safetensors_t **out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    *out = NULL;
    safetensors_t *st = calloc(1, sizeof(*st));
    rc_t rc;
    if (!st || !(st->maps = calloc(1, sizeof(*st->maps)))) {
        rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
        goto fail;
    }
    if ((rc = map_file(path, &st->maps[0], err, errlen))) goto fail;
    st->n_maps = 1;
    if ((rc = parse_file(&st->maps[0], &st->tensors, &st->n, err, errlen))) goto fail;
    *out = st;
    return RC_OK;
fail:
    safetensors_destroy(&st);
    return rc;
}

/* A shard name from the index must be a plain file name inside the checkpoint directory. */
static int safe_file_name(const char *s)
{
    return s[0] && s[0] != '.' && !strchr(s, '/') && strlen(s) < 1024;
}

static rc_t open_sharded(const char *dir, const char *index_path, safetensors_t *st, char *err,
                         size_t errlen)
{
    rc_t rc = RC_OK;
    char *text = NULL;
    cJSON *root = NULL;
    st_tensor_t **shard_ts = NULL; /* [n_maps] per-shard tensor arrays */
    size_t *shard_n = NULL;
    const char **shard_names = NULL; /* borrowed from root */
    int n_files = 0;

    FILE *f = fopen(index_path, "rb");
    if (!f) return rc_errf(RC_ERR_IO, err, errlen, "cannot open %s: %s", index_path, strerror(errno));
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0) len = ftell(f);
    if (len < 0 || len > (long)HEADER_MAX_BYTES || fseek(f, 0, SEEK_SET) != 0 ||
        !(text = malloc((size_t)len + 1)) || fread(text, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        rc = rc_errf(RC_ERR_IO, err, errlen, "cannot read %s", index_path);
        goto done;
    }
    fclose(f);
    root = cJSON_ParseWithLength(text, (size_t)len);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        rc = rc_errf(RC_ERR_FORMAT, err, errlen, "%s: not JSON with a \"weight_map\" object",
                  index_path);
        goto done;
    }
    size_t n_entries = (size_t)cJSON_GetArraySize(wm);
    shard_names = calloc(n_entries ? n_entries : 1, sizeof(*shard_names));
    st->maps = calloc(n_entries ? n_entries : 1, sizeof(*st->maps));
    shard_ts = calloc(n_entries ? n_entries : 1, sizeof(*shard_ts));
    shard_n = calloc(n_entries ? n_entries : 1, sizeof(*shard_n));
    st->tensors = calloc(n_entries ? n_entries : 1, sizeof(*st->tensors));
    if (!shard_names || !st->maps || !shard_ts || !shard_n || !st->tensors) {
        rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
        goto done;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || !safe_file_name(e->valuestring)) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen,
                      "%s: weight_map entry for tensor '%s' must be a file name in the "
                      "checkpoint directory",
                      index_path, e->string);
            goto done;
        }
        int k = 0;
        while (k < n_files && strcmp(shard_names[k], e->valuestring))
            k++;
        if (k == n_files) {
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", dir, e->valuestring) >= (int)sizeof path) {
                rc = rc_errf(RC_ERR_INVALID, err, errlen, "checkpoint path too long: %s", dir);
                goto done;
            }
            shard_names[n_files] = e->valuestring;
            if ((rc = map_file(path, &st->maps[n_files], err, errlen))) goto done;
            st->n_maps = ++n_files;
            if ((rc = parse_file(&st->maps[k], &shard_ts[k], &shard_n[k], err, errlen))) goto done;
        }
        st_tensor_t key = {.name = e->string};
        const st_tensor_t *t = bsearch(&key, shard_ts[k], shard_n[k], sizeof(key), cmp_name);
        if (!t) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen,
                      "%s lists tensor '%s' in %s, but that file has no such tensor", index_path,
                      e->string, e->valuestring);
            goto done;
        }
        st->tensors[st->n] = *t;
        if (!(st->tensors[st->n].name = strdup(t->name))) {
            rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
            goto done;
        }
        st->n++;
    }
    qsort(st->tensors, st->n, sizeof(*st->tensors), cmp_name);
    for (size_t i = 1; i < st->n; i++)
        if (!strcmp(st->tensors[i - 1].name, st->tensors[i].name)) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen, "%s: tensor '%s' is listed twice", index_path,
                      st->tensors[i].name);
            goto done;
        }
done:
    if (shard_ts)
        for (int k = 0; k < n_files; k++)
            free_tensors(shard_ts[k], shard_n[k]);
    free(shard_ts);
    free(shard_n);
    free(shard_names);
    cJSON_Delete(root);
    free(text);
    return rc;
}

rc_t safetensors_open_dir(const char *dir, safetensors_t **out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    *out = NULL;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir) >= (int)sizeof path)
        return rc_errf(RC_ERR_INVALID, err, errlen, "checkpoint path too long: %s", dir);
    if (access(path, F_OK) != 0) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0) {
            char bin[4096];
            snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
            int has_bin = access(bin, F_OK) == 0;
            snprintf(bin, sizeof bin, "%s/pytorch_model.bin.index.json", dir);
            has_bin |= access(bin, F_OK) == 0;
            return rc_errf(RC_ERR_NOT_FOUND, err, errlen,
                        "%s has no model.safetensors or model.safetensors.index.json%s", dir,
                        has_bin ? " (it has pytorch_model.bin: convert it with "
                                  "tools/convert_longllama.py)"
                                : "");
        }
        return safetensors_open(path, out, err, errlen);
    }
    safetensors_t *st = calloc(1, sizeof(*st));
    if (!st) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    rc_t rc = open_sharded(dir, path, st, err, errlen);
    if (rc) {
        safetensors_destroy(&st);
        return rc;
    }
    *out = st;
    return RC_OK;
}

void safetensors_destroy(safetensors_t **pst)
{
    if (!pst || !*pst) return;
    safetensors_t *st = *pst;
    free_tensors(st->tensors, st->n);
    if (st->maps)
        for (int i = 0; i < st->n_maps; i++)
            unmap(&st->maps[i]);
    free(st->maps);
    free(st);
    *pst = NULL;
}

const st_tensor_t *safetensors_find(const safetensors_t *st, const char *name)
{
    if (!st || !name || !st->n) return NULL;
    st_tensor_t key = {.name = name};
    return bsearch(&key, st->tensors, st->n, sizeof(key), cmp_name);
}

size_t safetensors_count(const safetensors_t *st)
{
    return st ? st->n : 0;
}

const st_tensor_t *safetensors_at(const safetensors_t *st, size_t i)
{
    return (st && i < st->n) ? &st->tensors[i] : NULL;
}
