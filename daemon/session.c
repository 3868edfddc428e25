/* session.c — the session table, session options, records and the catalogue at start-up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "daemon/daemon.h"
#include "model/positional.h"

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
    if (!o.local_window_set) TAKE_NUM(local_window);
    TAKE_NUM(k);
    TAKE_NUM(last_context);
    TAKE_NUM(rope_factor);
    TAKE_NUM(no_chunk_scale);
    TAKE_STR(positional);
    TAKE_STR(memory);
    TAKE_STR(mem_dtype);
    TAKE_STR(rope_scaling);
    /* gpu_memory_budget has no daemon default: --gpu-memory-budget bounds all sessions
     * together (daemon_stream_gpu_budget), not each one. */
    /* The daemon's kNN tuning is for knn sessions; an exact one asking for nothing must not
     * be refused for carrying it. */
    if (o.memory && !strcmp(o.memory, "knn")) {
        TAKE_NUM(knn_nlist);
        TAKE_NUM(knn_nprobe);
    }
    /* Likewise the daemon's GALI settings are for gali sessions. */
    if (o.positional && !strcmp(o.positional, "gali")) {
        if (!o.local_window_set && !o.local_window) o.local_window_set = df->local_window_set;
        TAKE_STR(gali_mode);
        TAKE_NUM(gali_noise);
        TAKE_NUM(gali_seed);
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
        } else if (!strcmp(pos, "clex")) {
            o->positional = POSITIONAL_CLEX;
        } else if (!strcmp(pos, "gali")) {
            o->positional = POSITIONAL_GALI;
        } else {
            snprintf(err, errlen,
                     "unknown positional scheme '%s' (use rope, self-extend, dca, clex or gali)",
                     pos);
            return RC_ERR_INVALID;
        }
        const char *gm = in->gali_mode ? in->gali_mode : "";
        if (o->positional != POSITIONAL_GALI &&
            (gm[0] || in->gali_noise != 0.0f || in->gali_seed || in->local_window_set)) {
            snprintf(err, errlen,
                     "gali_mode, gali_noise, seed and local_window_set apply to positional "
                     "gali only");
            return RC_ERR_INVALID;
        }
        if (!gm[0] || !strcmp(gm, "paper")) {
            o->gali_mode = GALI_MODE_PAPER;
        } else if (!strcmp(gm, "reference")) {
            o->gali_mode = GALI_MODE_REFERENCE;
        } else {
            snprintf(err, errlen, "unknown gali_mode '%s' (use paper or reference)", gm);
            return RC_ERR_INVALID;
        }
        o->gali_noise = in->gali_noise;
        o->gali_seed = in->gali_seed;
        o->local_window_set = in->local_window_set;
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
            if (dtype_parse_mem(in->mem_dtype, &o->mem_dtype) != 0) {
                snprintf(err, errlen,
                         "unknown memory dtype '%s' (use f32, bf16, f16, fp8 or int8)",
                         in->mem_dtype);
                return RC_ERR_INVALID;
            }
            o->mem_dtype_set = 1;
            /* Only the CPU kernels decode the quantized rows (common/quant.h). Refused here,
             * at create (and for the daemon's defaults at start-up), not at the first window. */
            if (dtype_is_quant(o->mem_dtype) && daemon_memory_on_device(d)) {
                snprintf(err, errlen,
                         "memory dtype %s is CPU-only in this build (this recalld runs on %s; "
                         "use bf16 or f32, or recalld --device cpu)",
                         dtype_name(o->mem_dtype), model_backend_describe(d->backend));
                return RC_ERR_UNSUPPORTED;
            }
        }
    }
    return model_stream_opts_resolve(d->model, o, err, errlen);
}

void session_opts_to_wire(const model_stream_opts_t *o, Recall__SessionOptions *out)
{
    static const char *const pos[] = {"rope", "self-extend", "dca", "clex", "gali"};
    static const char *const scal[] = {"none", "linear", "ntk", "dynamic", "yarn"};
    recall__session_options__init(out);
    out->window = (uint32_t)o->window;
    out->positional = (char *)pos[o->positional];
    out->group = (uint32_t)o->group;
    out->neighbor = (uint32_t)o->neighbor;
    out->chunk_size = (uint32_t)o->chunk_size;
    out->local_window = (uint32_t)o->local_window;
    out->no_chunk_scale = o->dca_no_scale != 0;
    if (o->positional == POSITIONAL_GALI) {
        out->gali_mode = (char *)positional_gali_mode_name(o->gali_mode);
        out->gali_noise = o->gali_noise;
        out->gali_seed = o->gali_seed;
        out->local_window_set = o->local_window_set != 0;
    }
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
    info->tier = (char *)session_tier(s);
    info->problem = (char *)s->problem;
    info->owner = (char *)(s->owner[0] ? s->owner : CLIENT_LOCAL);
}

const char *session_tier(const session_t *s)
{
    return s->problem[0] ? "unavailable" : s->tier ? s->tier : "disk";
}

void session_mark_unavailable(session_t *s, const char *why)
{
    snprintf(s->problem, sizeof s->problem, "%s", why);
}

session_t *session_find(daemon_t *d, const char *name)
{
    for (size_t i = 0; i < d->n_sessions; i++)
        if (strcmp(d->sessions[i]->name, name) == 0) return d->sessions[i];
    return NULL;
}

rc_t session_new(daemon_t *d, const char *name, const model_stream_opts_t *o, uint64_t windows,
                 session_t **out)
{
    *out = NULL;
    session_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->opts = *o;
    s->window = o->window;
    s->refs = 1;
    s->created_unix = (int64_t)time(NULL);
    snprintf(s->owner, sizeof s->owner, "%s", CLIENT_LOCAL); /* the creator sets its own */
    s->tier = "disk";
    session_memory_shape_t shape = {.n_layers = d->mc->n_mem_layers,
                                    .row_dim = d->row_dim,
                                    .dtype = o->mem_dtype,
                                    .window = o->window,
                                    .head_dim = d->mc->head_dim,
                                    .knn = o->memory_knn,
                                    .knn_opts = {.nlist = o->knn_nlist, .nprobe = o->knn_nprobe}};
    rc_t rc = session_memory_open(d->db, d->rows_root, name, &shape, windows, &s->mem);
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
    model_stream_destroy(&s->stream); /* before the store it reads */
    session_memory_close(&s->mem);
    free(s->tokens);
    free(s);
}

void session_unref_locked(daemon_t *d, session_t *s, session_t **to_free)
{
    *to_free = NULL;
    if (--s->refs == 0) {
        if (d->tiers) memory_tiers_untrack(d->tiers, &s->slot);
        *to_free = s;
    }
}

void session_unref(daemon_t *d, session_t *s)
{
    if (!s) return;
    session_t *f;
    pthread_mutex_lock(&d->mu);
    session_unref_locked(d, s, &f);
    pthread_mutex_unlock(&d->mu);
    session_free(f); /* outside the lock: unmapping a large memory takes a while */
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
    rc_t rc = d->tiers ? memory_tiers_track(d->tiers, &s->slot) : RC_OK;
    if (rc) return rc;
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

/* ---- the catalogue at start-up ------------------------------------------------------ */

/* An entry for a session that cannot be served: listed, with the reason, and nothing else. */
static rc_t add_unavailable(daemon_t *d, const char *name, const char *why)
{
    session_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->refs = 1;
    session_mark_unavailable(s, why);
    log_warn("session '%s' is unavailable: %s", name, why);
    rc_t rc = session_table_add(d, s);
    if (rc) free(s);
    return rc;
}

/* One record: checks that it decodes, belongs to this model and resolves, and makes the
 * session's entry (nothing else is read: tokens and rows come in on first use). Returns a
 * status only for what stops the daemon (out of memory); a bad record makes an unavailable
 * entry. */
static rc_t open_one(daemon_t *d, const memory_db_record_t *rec)
{
    char why[512];
    const char *bad = session_name_problem(rec->name);
    if (bad[0]) {
        /* Not listed: a name that is not a safe key cannot be asked about or dropped. */
        log_warn("the catalogue holds a session with an unsafe name, skipped: %s", bad);
        return RC_OK;
    }
    Recall__SessionRecord *r =
        recall__session_record__unpack(NULL, rec->len, (const uint8_t *)rec->data);
    if (!r || !r->info) {
        if (r) recall__session_record__free_unpacked(r, NULL);
        return add_unavailable(d, rec->name, "its record in the catalogue is malformed");
    }
    rc_t rc = RC_OK;
    session_t *s = NULL;
    model_stream_opts_t o;
    char oerr[256];
    if (r->version != SESSION_RECORD_VERSION) {
        snprintf(why, sizeof why, "its record has version %u; this recalld reads version %d",
                 r->version, SESSION_RECORD_VERSION);
        rc = add_unavailable(d, rec->name, why);
    } else if (strcmp(r->model_fingerprint, d->fingerprint) != 0 || (int)r->row_dim != d->row_dim) {
        snprintf(why, sizeof why,
                 "it was built with another model (%s); the loaded model is %s. Start recalld "
                 "with that model (or another --data directory) to use it",
                 r->model_fingerprint, d->fingerprint);
        rc = add_unavailable(d, rec->name, why);
    } else if (session_opts_resolve(d, r->info->options, &o, oerr, sizeof oerr)) {
        snprintf(why, sizeof why, "its options no longer resolve: %s", oerr);
        rc = add_unavailable(d, rec->name, why);
    } else if (r->info->windows * (uint64_t)o.window > r->info->tokens) {
        snprintf(why, sizeof why,
                 "its record is inconsistent: %llu windows of %d tokens but %llu tokens",
                 (unsigned long long)r->info->windows, o.window,
                 (unsigned long long)r->info->tokens);
        rc = add_unavailable(d, rec->name, why);
    } else if ((rc = session_new(d, rec->name, &o, r->info->windows, &s)) == RC_OK) {
        s->n_tokens = r->info->tokens;
        s->windows = r->info->windows;
        s->last_seq = r->info->last_seq;
        s->ingest_chunks = r->info->ingest_chunks;
        s->next_chunk = r->next_chunk;
        s->created_unix = r->info->created_unix;
        /* Records from before owners were kept have none: they were made by local clients. */
        if (r->info->owner[0]) snprintf(s->owner, sizeof s->owner, "%s", r->info->owner);
        s->mem_tokens = s->windows * (uint64_t)s->window;
        s->record_bytes = rec->len;
        s->disk_bytes = session_memory_disk_bytes(s->mem) + s->n_tokens * 4 + rec->len;
        rc = session_table_add(d, s);
        if (rc) session_free(s);
    }
    recall__session_record__free_unpacked(r, NULL);
    return rc;
}

static int known_session(void *ctx, const char *name)
{
    daemon_t *d = ctx;
    return session_find(d, name) != NULL;
}

rc_t session_open_all(daemon_t *d, char *err, size_t errlen)
{
    memory_db_record_t *recs;
    size_t n;
    rc_t rc = memory_db_list(d->db, &recs, &n);
    if (rc) {
        snprintf(err, errlen, "cannot list sessions in the catalogue: %s", rc_strerror(rc));
        return rc;
    }
    for (size_t i = 0; i < n && !rc; i++) rc = open_one(d, &recs[i]);
    memory_db_records_free(recs, n);
    if (rc) {
        snprintf(err, errlen, "cannot open the catalogue's sessions: %s", rc_strerror(rc));
        return rc;
    }
    /* Rows of sessions whose drop stopped between the catalogue and the files. */
    session_memory_sweep(d->rows_root, known_session, d);
    return RC_OK;
}
