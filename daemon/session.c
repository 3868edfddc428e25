/* session.c — the session table, session options, records and loading at start-up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "daemon/daemon.h"

const char SESSION_NAME_RULE[] =
    "a session name is 1 to 128 bytes of letters, digits and . _ - : @ + and does not "
    "start with '.'";

const char *session_name_problem(const char *name)
{
    if (!name || !name[0]) return "the session name is empty";
    size_t n = strlen(name);
    if (n > SESSION_NAME_MAX) return "the session name is longer than 128 bytes";
    if (name[0] == '.') return "the session name starts with '.'";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
        if (strchr("._-:@+", c)) continue;
        if (c == '/' || c == '\\') return "the session name contains a path separator";
        if (c < 0x20 || c == 0x7f) return "the session name contains a control character";
        return "the session name contains a character outside letters, digits and ._-:@+";
    }
    return "";
}

Recall__SessionOptions session_opts_with_defaults(const daemon_t *d,
                                                  const Recall__SessionOptions *in)
{
    const Recall__SessionOptions *df = &d->cfg.defaults;
    Recall__SessionOptions o;
    if (in)
        o = *in;
    else
        recall__session_options__init(&o);
#define TAKE_NUM(f)                                                                            \
    if (!o.f) o.f = df->f
#define TAKE_STR(f)                                                                            \
    if ((!o.f || !o.f[0]) && df->f && df->f[0]) o.f = df->f
    TAKE_NUM(window);
    TAKE_NUM(group);
    TAKE_NUM(neighbor);
    TAKE_NUM(chunk_size);
    TAKE_NUM(local_window);
    TAKE_NUM(k);
    TAKE_NUM(last_context);
    TAKE_NUM(rope_factor);
    TAKE_NUM(no_chunk_scale);
    TAKE_STR(positional);
    TAKE_STR(memory);
    TAKE_STR(mem_dtype);
    TAKE_STR(rope_scaling);
    TAKE_NUM(gpu_memory_budget);
    /* The daemon's kNN tuning is for knn sessions; an exact one asking for nothing must not
     * be refused for carrying it. */
    if (o.memory && !strcmp(o.memory, "knn")) {
        TAKE_NUM(knn_nlist);
        TAKE_NUM(knn_nprobe);
    }
#undef TAKE_NUM
#undef TAKE_STR
    return o;
}

rc_t session_opts_resolve(daemon_t *d, const Recall__SessionOptions *in, model_stream_opts_t *o,
                          char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    if (in) {
        const char *pos = in->positional ? in->positional : "";
        if (!pos[0] || !strcmp(pos, "rope")) {
            o->positional = POSITIONAL_ROPE;
        } else if (!strcmp(pos, "self-extend")) {
            o->positional = POSITIONAL_SELF_EXTEND;
        } else if (!strcmp(pos, "dca")) {
            o->positional = POSITIONAL_DCA;
        } else {
            snprintf(err, errlen, "unknown positional scheme '%s' (use rope, self-extend or dca)",
                     pos);
            return RC_ERR_INVALID;
        }
        if (in->group > 1u << 30 || in->neighbor > 1u << 30 || in->chunk_size > 1u << 30 ||
            in->local_window > 1u << 30) {
            snprintf(err, errlen, "a positional size is absurdly large");
            return RC_ERR_INVALID;
        }
        o->group = (int)in->group;
        o->neighbor = (int)in->neighbor;
        o->chunk_size = (int)in->chunk_size;
        o->local_window = (int)in->local_window;
        o->dca_no_scale = in->no_chunk_scale;
        if (in->rope_scaling && in->rope_scaling[0]) {
            static const struct {
                const char *name;
                rope_scaling_type_t t;
            } sc[] = {{"none", ROPE_SCALING_NONE},       {"linear", ROPE_SCALING_LINEAR},
                      {"ntk", ROPE_SCALING_NTK},         {"dynamic", ROPE_SCALING_DYNAMIC},
                      {"yarn", ROPE_SCALING_YARN}};
            size_t i = 0;
            while (i < sizeof sc / sizeof sc[0] && strcmp(sc[i].name, in->rope_scaling)) i++;
            if (i == sizeof sc / sizeof sc[0]) {
                snprintf(err, errlen,
                         "unknown rope_scaling '%s' (use none, linear, ntk, dynamic or yarn)",
                         in->rope_scaling);
                return RC_ERR_INVALID;
            }
            o->rope_scaling_set = 1;
            o->rope_scaling = sc[i].t;
            o->rope_factor = in->rope_factor;
        } else if (in->rope_factor != 0.0f) {
            snprintf(err, errlen, "rope_factor needs rope_scaling");
            return RC_ERR_INVALID;
        }
        const char *mem = in->memory ? in->memory : "";
        if (mem[0] && strcmp(mem, "exact") != 0 && strcmp(mem, "knn") != 0) {
            snprintf(err, errlen, "unknown memory mode '%s' (use \"exact\" or \"knn\")", mem);
            return RC_ERR_INVALID;
        }
        if (in->k > 1u << 20) {
            snprintf(err, errlen, "k %u is absurdly large", in->k);
            return RC_ERR_INVALID;
        }
        o->memory_knn = strcmp(mem, "knn") == 0;
        o->knn_k = o->memory_knn ? (int)in->k : 0; /* 0: the default, 128 */
        if (!o->memory_knn && (in->knn_nlist || in->knn_nprobe)) {
            snprintf(err, errlen,
                     "nlist and nprobe tune the kNN index, and this session's memory is exact: "
                     "add memory \"knn\" (--memory knn) or leave them out");
            return RC_ERR_INVALID;
        }
        if (in->knn_nlist > SESSION_KNN_LISTS_MAX || in->knn_nprobe > SESSION_KNN_LISTS_MAX) {
            int nl = in->knn_nlist > SESSION_KNN_LISTS_MAX;
            snprintf(err, errlen, "%s %u is absurdly large (at most %d lists)",
                     nl ? "nlist" : "nprobe", nl ? in->knn_nlist : in->knn_nprobe,
                     SESSION_KNN_LISTS_MAX);
            return RC_ERR_INVALID;
        }
        if (in->knn_nlist && in->knn_nprobe > in->knn_nlist) {
            snprintf(err, errlen,
                     "nprobe %u is more than nlist %u: a query can probe at most every list",
                     in->knn_nprobe, in->knn_nlist);
            return RC_ERR_INVALID;
        }
        o->knn_nlist = (int)in->knn_nlist;
        o->knn_nprobe = (int)in->knn_nprobe;
        if (in->gpu_memory_budget != SESSION_BUDGET_NONE &&
            in->gpu_memory_budget > SESSION_BUDGET_MAX) {
            snprintf(err, errlen,
                     "gpu_memory_budget %llu bytes is absurdly large (more than 1 PiB); use "
                     "\"none\" for no limit",
                     (unsigned long long)in->gpu_memory_budget);
            return RC_ERR_INVALID;
        }
        o->gpu_memory_budget = in->gpu_memory_budget == SESSION_BUDGET_NONE
                                   ? 0
                                   : (size_t)in->gpu_memory_budget;
        if (in->window > 1u << 30 || in->last_context > 1u << 30) {
            snprintf(err, errlen, "window or last_context is absurdly large");
            return RC_ERR_INVALID;
        }
        o->window = (int)in->window;
        o->last_context = (int)in->last_context;
        if (in->mem_dtype && in->mem_dtype[0]) {
            if (dtype_parse(in->mem_dtype, &o->mem_dtype) != 0) {
                snprintf(err, errlen, "unknown mem_dtype '%s' (use f32, bf16 or f16)",
                         in->mem_dtype);
                return RC_ERR_INVALID;
            }
            o->mem_dtype_set = 1;
        }
    }
    return model_stream_opts_resolve(d->model, o, err, errlen);
}

void session_opts_to_wire(const model_stream_opts_t *o, Recall__SessionOptions *out)
{
    static const char *const pos[] = {"rope", "self-extend", "dca"};
    static const char *const scal[] = {"none", "linear", "ntk", "dynamic", "yarn"};
    recall__session_options__init(out);
    out->window = (uint32_t)o->window;
    out->positional = (char *)pos[o->positional];
    out->group = (uint32_t)o->group;
    out->neighbor = (uint32_t)o->neighbor;
    out->chunk_size = (uint32_t)o->chunk_size;
    out->local_window = (uint32_t)o->local_window;
    out->no_chunk_scale = o->dca_no_scale != 0;
    if (o->rope_scaling_set) {
        out->rope_scaling = (char *)scal[o->rope_scaling];
        out->rope_factor = o->rope_factor;
    }
    out->memory = (char *)(o->memory_knn ? "knn" : "exact");
    out->k = o->memory_knn ? (uint32_t)o->knn_k : 0;
    out->knn_nlist = o->memory_knn ? (uint32_t)o->knn_nlist : 0;
    out->knn_nprobe = o->memory_knn ? (uint32_t)o->knn_nprobe : 0;
    out->gpu_memory_budget = (uint64_t)o->gpu_memory_budget;
    out->last_context = (uint32_t)o->last_context;
    out->mem_dtype = (char *)dtype_name(o->mem_dtype);
}

void session_info_fill(const session_t *s, Recall__SessionInfo *info,
                       Recall__SessionOptions *opts)
{
    recall__session_info__init(info);
    session_opts_to_wire(&s->opts, opts);
    info->name = (char *)s->name;
    info->options = opts;
    info->tokens = s->n_tokens;
    info->windows = s->windows;
    info->pending_tokens = s->n_tokens - s->windows * (uint64_t)s->window;
    info->memory_tokens = s->mem_tokens;
    /* The host store is the durable copy; a GPU backend holds all of it on the device, or
     * under a gpu memory budget its newest part (as of the session's last chunk). */
    info->memory_bytes_device = s->mem_bytes_device;
    info->memory_bytes_host = s->mem_bytes_host;
    info->memory_bytes_disk = s->disk_bytes;
    info->last_seq = s->last_seq;
    info->created_unix = s->created_unix;
    info->ingest_chunks = s->ingest_chunks;
}

session_t *session_find(daemon_t *d, const char *name)
{
    for (size_t i = 0; i < d->n_sessions; i++)
        if (strcmp(d->sessions[i]->name, name) == 0) return d->sessions[i];
    return NULL;
}

rc_t session_new(daemon_t *d, const char *name, const model_stream_opts_t *o, session_t **out)
{
    *out = NULL;
    session_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->opts = *o;
    s->window = o->window;
    s->refs = 1;
    s->created_unix = (int64_t)time(NULL);
    rc_t rc = model_stream_create_on(d->backend, o, &s->stream);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return RC_OK;
}

void session_free(session_t *s)
{
    if (!s) return;
    model_stream_destroy(&s->stream);
    free(s->tokens);
    free(s);
}

void session_unref_locked(session_t *s, session_t **to_free)
{
    *to_free = NULL;
    if (--s->refs == 0) *to_free = s;
}

void session_unref(daemon_t *d, session_t *s)
{
    if (!s) return;
    session_t *f;
    pthread_mutex_lock(&d->mu);
    session_unref_locked(s, &f);
    pthread_mutex_unlock(&d->mu);
    session_free(f); /* outside the lock: freeing a large memory takes a while */
}

rc_t session_table_add(daemon_t *d, session_t *s)
{
    if (d->n_sessions == d->cap_sessions) {
        size_t nc = d->cap_sessions ? 2 * d->cap_sessions : 16;
        session_t **ns = realloc(d->sessions, nc * sizeof *ns);
        if (!ns) return RC_ERR_NOMEM;
        d->sessions = ns;
        d->cap_sessions = nc;
    }
    d->sessions[d->n_sessions++] = s;
    return RC_OK;
}

void session_table_remove(daemon_t *d, session_t *s)
{
    for (size_t i = 0; i < d->n_sessions; i++)
        if (d->sessions[i] == s) {
            d->sessions[i] = d->sessions[--d->n_sessions];
            return;
        }
}

rc_t session_record_pack(daemon_t *d, const session_t *s, uint64_t n_tokens, uint64_t windows,
                         uint64_t last_seq, uint64_t ingest_chunks, uint64_t next_chunk,
                         uint8_t **buf, size_t *len)
{
    Recall__SessionRecord r = RECALL__SESSION_RECORD__INIT;
    Recall__SessionInfo info;
    Recall__SessionOptions opts;
    session_info_fill(s, &info, &opts);
    info.tokens = n_tokens;
    info.windows = windows;
    info.pending_tokens = n_tokens - windows * (uint64_t)s->window;
    info.last_seq = last_seq;
    info.ingest_chunks = ingest_chunks;
    info.memory_tokens = 0;
    info.memory_bytes_host = info.memory_bytes_disk = info.memory_bytes_device = 0;
    r.version = SESSION_RECORD_VERSION;
    r.info = &info;
    r.next_chunk = next_chunk;
    r.model_fingerprint = (char *)d->fingerprint;
    r.row_dim = (uint32_t)d->row_dim;
    size_t n = recall__session_record__get_packed_size(&r);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return RC_ERR_NOMEM;
    recall__session_record__pack(&r, b);
    *buf = b;
    *len = n;
    return RC_OK;
}

/* ---- loading ------------------------------------------------------------------------- */

typedef struct load_ctx {
    memory_store_t *mem;
    int layer;
    size_t want_bytes;
} load_ctx_t;

static rc_t load_window_cb(void *ctx, const void *keys, const void *values, size_t bytes)
{
    load_ctx_t *c = ctx;
    if (bytes != c->want_bytes) return RC_ERR_FORMAT;
    size_t rows =
        bytes / ((size_t)memory_store_row_dim(c->mem) * dtype_size(memory_store_dtype(c->mem)));
    return memory_store_append_raw(c->mem, c->layer, keys, values, rows);
}

/* A knn session's indexes as saved at the last shutdown. They are derived from the stored
 * keys, so any problem only costs time: the index is rebuilt when next needed. */
static void session_index_restore(daemon_t *d, session_t *s)
{
    memory_store_t *mem = model_stream_memory(s->stream);
    for (int l = 0; l < memory_store_layers(mem); l++) {
        void *buf = NULL;
        size_t len = 0;
        uint64_t rows = 0;
        rc_t rc = memory_db_get_index(d->db, s->name, (uint32_t)l, &rows, &buf, &len);
        if (rc == RC_OK) rc = model_stream_index_load(s->stream, l, buf, len, (size_t)rows);
        free(buf);
        if (rc == RC_ERR_NOT_FOUND)
            log_info("session '%s': no saved kNN index for memory layer %d; it will be built "
                     "from the stored keys",
                     s->name, l);
        else if (rc)
            log_warn("session '%s': the saved kNN index of memory layer %d failed to load (%s); "
                     "rebuilding it from the stored keys",
                     s->name, l, rc_strerror(rc));
    }
}

void session_index_save(daemon_t *d, session_t *s)
{
    if (!s->opts.memory_knn || !s->stream) return;
    memory_store_t *mem = model_stream_memory(s->stream);
    for (int l = 0; l < memory_store_layers(mem); l++) {
        void *buf = NULL;
        size_t len = 0, rows = 0;
        char err[256];
        rc_t rc = model_stream_index_save(s->stream, l, &buf, &len, &rows);
        if (rc == RC_OK && rows > 0)
            rc = memory_db_put_index(d->db, s->name, (uint32_t)l, rows, buf, len, err, sizeof err);
        else if (rc == RC_OK)
            snprintf(err, sizeof err, "empty");
        else
            snprintf(err, sizeof err, "%s", rc_strerror(rc));
        free(buf);
        if (rc)
            log_warn("session '%s': kNN index of memory layer %d not saved: %s", s->name, l, err);
        else if (rows)
            log_info("session '%s': kNN index of memory layer %d saved (%zu rows, %zu bytes)",
                     s->name, l, rows, len);
    }
}

static rc_t load_one(daemon_t *d, const memory_db_record_t *rec, char *err, size_t errlen)
{
    const char *bad = session_name_problem(rec->name);
    if (bad[0]) {
        snprintf(err, errlen, "the database holds a session with an unsafe name: %s", bad);
        return RC_ERR_FORMAT;
    }
    Recall__SessionRecord *r =
        recall__session_record__unpack(NULL, rec->len, (const uint8_t *)rec->data);
    if (!r || !r->info) {
        if (r) recall__session_record__free_unpacked(r, NULL);
        snprintf(err, errlen, "session '%s': its record in the database is malformed", rec->name);
        return RC_ERR_FORMAT;
    }
    rc_t rc = RC_OK;
    session_t *s = NULL;
    int32_t *toks = NULL;
    if (r->version != SESSION_RECORD_VERSION) {
        snprintf(err, errlen, "session '%s': record version %u is not %d", rec->name, r->version,
                 SESSION_RECORD_VERSION);
        rc = RC_ERR_FORMAT;
        goto out;
    }
    if (strcmp(r->model_fingerprint, d->fingerprint) != 0 || (int)r->row_dim != d->row_dim) {
        snprintf(err, errlen,
                 "session '%s' was built with another model (%s); the loaded model is %s. "
                 "Start recalld with that model or use another --data directory",
                 rec->name, r->model_fingerprint, d->fingerprint);
        rc = RC_ERR_FORMAT;
        goto out;
    }
    model_stream_opts_t o;
    char oerr[256];
    rc = session_opts_resolve(d, r->info->options, &o, oerr, sizeof oerr);
    if (rc) {
        snprintf(err, errlen, "session '%s': its options no longer resolve: %s", rec->name, oerr);
        goto out;
    }
    rc = session_new(d, rec->name, &o, &s);
    if (rc) {
        snprintf(err, errlen, "session '%s': cannot create its stream: %s", rec->name,
                 rc_strerror(rc));
        goto out;
    }
    size_t n = 0;
    uint64_t chunks = 0, next = 0;
    rc = memory_db_load_tokens(d->db, rec->name, &toks, &n, &chunks, &next);
    if (rc || n != r->info->tokens || r->info->windows * (uint64_t)o.window > n) {
        snprintf(err, errlen,
                 "session '%s': the database holds %zu tokens but its record says %llu "
                 "(with %llu windows of %d)",
                 rec->name, n, (unsigned long long)r->info->tokens,
                 (unsigned long long)r->info->windows, o.window);
        if (!rc) rc = RC_ERR_FORMAT;
        goto out;
    }
    s->tokens = toks;
    s->tokens_cap = n;
    toks = NULL;
    s->n_tokens = n;
    s->windows = r->info->windows;
    s->last_seq = r->info->last_seq;
    s->ingest_chunks = r->info->ingest_chunks;
    s->next_chunk = r->next_chunk > next ? r->next_chunk : next;
    s->created_unix = r->info->created_unix;

    /* Memory rows as they were computed: no forward pass at start-up. */
    memory_store_t *mem = model_stream_memory(s->stream);
    int layers = memory_store_layers(mem);
    load_ctx_t lc = {mem, 0,
                     (size_t)o.window * (size_t)memory_store_row_dim(mem) *
                         dtype_size(memory_store_dtype(mem))};
    for (uint64_t w = 0; w < s->windows; w++) {
        for (int l = 0; l < layers; l++) {
            lc.layer = l;
            rc = memory_db_read_window(d->db, rec->name, (uint32_t)l, w, load_window_cb, &lc);
            if (rc) {
                snprintf(err, errlen, "session '%s': memory window %llu of memory layer %d is %s",
                         rec->name, (unsigned long long)w, l,
                         rc == RC_ERR_NOT_FOUND ? "missing" : "unreadable or of the wrong size");
                goto out;
            }
        }
    }
    s->mem_tokens = memory_store_len(mem);
    s->mem_bytes_host = memory_store_bytes(mem);
    s->mem_bytes_device = model_stream_device_bytes(s->stream);
    if (o.memory_knn) session_index_restore(d, s);
    memory_db_session_bytes(d->db, rec->name, &s->disk_bytes);
    s->record_bytes = rec->len;
    rc = session_table_add(d, s);
    if (rc) goto out;
    log_info("session '%s': %llu tokens, %llu windows, last seq %llu", s->name,
             (unsigned long long)s->n_tokens, (unsigned long long)s->windows,
             (unsigned long long)s->last_seq);
    s = NULL;
out:
    free(toks);
    session_free(s);
    recall__session_record__free_unpacked(r, NULL);
    return rc;
}

rc_t session_load_all(daemon_t *d, char *err, size_t errlen)
{
    memory_db_record_t *recs;
    size_t n;
    rc_t rc = memory_db_list(d->db, &recs, &n);
    if (rc) {
        snprintf(err, errlen, "cannot list sessions in the database: %s", rc_strerror(rc));
        return rc;
    }
    for (size_t i = 0; i < n && !rc; i++)
        rc = load_one(d, &recs[i], err, errlen);
    memory_db_records_free(recs, n);
    return rc;
}
