/* stream.c — LongLLaMA's window and memory semantics over a token stream (see stream.h).
 *
 * This file decides what happens; a backend (backend.h) does the arithmetic. Input is cut
 * at window boundaries counted from the stream's first token; a full local cache moves
 * into memory before the next token is processed, never shifted, so positions inside a
 * window always start at 0. */
#define BACKEND_INTERNAL
#include "model/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "memory/knn.h"
#include "model/backend.h"
#include "model/positional.h"

struct model_stream {
    const model_t *model;
    const model_config_t *c;
    model_backend_t *owned_backend; /* set when created without one (CPU) */
    const model_backend_t *b;
    backend_stream_t *bs;
    model_stream_opts_t o;
    memory_store_t *mem;
    int owns_mem;    /* mem was created here (not model_stream_create_with's) */
    memory_knn_t *knn; /* knn mode: the index over mem's keys, else NULL */
    int owns_knn;      /* knn was created here */
    int local;       /* tokens in the local cache */
    uint64_t tokens; /* tokens fed since creation (or the last rewind's mark) */
};

rc_t model_stream_opts_resolve(const model_t *m, model_stream_opts_t *o, char *err,
                               size_t errlen)
{
    const model_config_t *c = model_get_config(m);
    if (o->window < 0 || o->last_context < 0) {
        snprintf(err, errlen, "window and last_context must not be negative");
        return RC_ERR_INVALID;
    }
    /* The window's default and the length each positional scheme can reach. */
    rc_t rc = positional_resolve(c, o, err, errlen);
    if (rc) return rc;
    if (o->last_context == 0)
        o->last_context = c->last_context_length > 0 && c->last_context_length <= o->window
                              ? c->last_context_length
                              : o->window;
    if (o->last_context > o->window) {
        snprintf(err, errlen, "last_context %d is longer than the window of %d tokens",
                 o->last_context, o->window);
        return RC_ERR_INVALID;
    }
    if (o->memory_knn) {
        if (o->knn_k == 0) o->knn_k = 128;
        if (o->knn_k < 1 || o->knn_nlist < 0 || o->knn_nprobe < 0) {
            snprintf(err, errlen, "knn memory needs k >= 1 (got %d) and non-negative nlist, nprobe",
                     o->knn_k);
            return RC_ERR_INVALID;
        }
    }
    if (!o->mem_dtype_set) {
        o->mem_dtype = c->n_mem_layers ? c->mem_dtype : DTYPE_F32;
        o->mem_dtype_set = 1;
    }
    /* A GPU hot tier must hold at least the window being written (a flush moves a whole
     * window onto the device before any of it can spill). Checked on every backend so a
     * session's options mean the same wherever it runs. */
    const size_t row_bytes = (size_t)c->n_mem_layers * 2 *
                             dtype_row_bytes(o->mem_dtype, c->n_kv_heads, c->head_dim);
    if (o->gpu_memory_budget > 0 && row_bytes > 0 &&
        o->gpu_memory_budget / row_bytes < (size_t)o->window) {
        const double mib = 1024.0 * 1024.0;
        snprintf(err, errlen,
                 "gpu memory budget %.2f MiB is below one window of memory (%d rows x %zu bytes: "
                 "keys and values of %d memory layers); the minimum is %.2f MiB",
                 (double)o->gpu_memory_budget / mib, o->window, row_bytes, c->n_mem_layers,
                 (double)o->window * (double)row_bytes / mib);
        return RC_ERR_INVALID;
    }
    if (err && errlen) err[0] = '\0';
    return RC_OK;
}

rc_t model_stream_create_on(const model_backend_t *b, const model_stream_opts_t *opts,
                            model_stream_t **out)
{
    char err[256] = "";
    rc_t rc = model_stream_create_with(b, opts, NULL, NULL, out, err, sizeof err);
    if (rc) log_warn("stream: %s", err);
    return rc;
}

rc_t model_stream_create_with(const model_backend_t *b, const model_stream_opts_t *opts,
                              memory_store_t *mem, memory_knn_t *knn, model_stream_t **out,
                              char *err, size_t errlen)
{
    *out = NULL;
    const model_t *m = model_backend_model(b);
    const model_config_t *c = model_get_config(m);
    model_stream_opts_t o = *opts;
    rc_t rc = model_stream_opts_resolve(m, &o, err, errlen);
    if (rc) return rc;
    /* CLEX and GALI run on the CPU backend only so far: refuse them here, for every other
     * backend, rather than let one run a session at the wrong positions or frequencies. */
    if ((o.positional == POSITIONAL_CLEX || o.positional == POSITIONAL_GALI) &&
        strcmp(b->ops->name, "cpu") != 0)
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "positional scheme %s is not supported on %s yet (use the cpu device)",
                       positional_name(o.positional), b->ops->name);
    /* Likewise the quantized memory rows (common/quant.h): only the CPU kernels decode them;
     * a GPU kernel would read the codes and scales as bf16. */
    if (c->n_mem_layers && dtype_is_quant(o.mem_dtype) && strcmp(b->ops->name, "cpu") != 0)
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "memory dtype %s is CPU-only in this build (use bf16 or f32 on %s, or the "
                       "cpu device)",
                       dtype_name(o.mem_dtype), b->ops->name);
    const int want_knn = c->n_mem_layers && o.memory_knn;
    if (knn && (!want_knn || !memory_knn_fits(knn, c->n_mem_layers, c->n_kv_heads, c->head_dim)))
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       want_knn ? "the kNN index given does not match the model's memory layers"
                                : "a kNN index was given to a stream whose memory is not knn");
    if (knn && !mem)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "a kNN index was given without the memory store it indexes");
    model_stream_t *s = calloc(1, sizeof *s);
    if (!s) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    s->model = m;
    s->c = c;
    s->b = b;
    s->o = o;
    if (mem) {
        if (memory_store_layers(mem) != s->c->n_mem_layers ||
            memory_store_row_dim(mem) != s->c->n_kv_heads * s->c->head_dim ||
            (s->c->n_mem_layers && memory_store_dtype(mem) != o.mem_dtype) ||
            (dtype_is_quant(memory_store_dtype(mem)) &&
             memory_store_head_dim(mem) != s->c->head_dim)) {
            rc = rc_errf(RC_ERR_INVALID, err, errlen,
                         "the memory store given does not match the model or mem_dtype");
            goto fail;
        }
        s->mem = mem;
    } else {
        rc = memory_store_create_heads(s->c->n_mem_layers, s->c->n_kv_heads, s->c->head_dim,
                                       o.mem_dtype, &s->mem);
        if (rc) {
            rc_errf(rc, err, errlen, "cannot create the memory store: %s", rc_strerror(rc));
            goto fail;
        }
        s->owns_mem = 1;
    }
    if (knn) {
        s->knn = knn;
    } else if (want_knn) {
        memory_knn_opts_t ko = {.nlist = o.knn_nlist, .nprobe = o.knn_nprobe};
        rc = memory_knn_create(c->n_mem_layers, c->n_kv_heads, c->head_dim, &ko, &s->knn);
        if (rc) {
            rc_errf(rc, err, errlen, "cannot create the kNN index: %s", rc_strerror(rc));
            goto fail;
        }
        s->owns_knn = 1;
    }
    rc = b->ops->stream_create(b->ctx, &s->o, s->mem, s->knn, &s->bs, err, errlen);
    if (rc) goto fail;
    *out = s;
    return RC_OK;
fail:
    model_stream_destroy(&s);
    return rc;
}

rc_t model_stream_create(model_t *m, const model_stream_opts_t *o, model_stream_t **out)
{
    char err[256];
    model_backend_t *b = NULL;
    rc_t rc = model_backend_open(m, "cpu", &b, err, sizeof err);
    if (rc) return rc;
    rc = model_stream_create_on(b, o, out);
    if (rc) {
        model_backend_close(&b);
        return rc;
    }
    (*out)->owned_backend = b;
    return RC_OK;
}

void model_stream_destroy(model_stream_t **ps)
{
    if (!ps || !*ps) return;
    model_stream_t *s = *ps;
    if (s->bs) s->b->ops->stream_destroy(s->bs);
    if (s->owns_knn) memory_knn_destroy(&s->knn);
    if (s->owns_mem) memory_store_destroy(&s->mem);
    model_backend_close(&s->owned_backend);
    free(s);
    *ps = NULL;
}

rc_t model_stream_flush(model_stream_t *s)
{
    if (!s->local) return RC_OK;
    rc_t rc = s->b->ops->flush(s->bs, s->local);
    if (rc) return rc;
    s->local = 0;
    return RC_OK;
}

rc_t model_stream_feed(model_stream_t *s, const int32_t *tok, size_t n, float *logprobs,
                       float *last_logits)
{
    for (size_t i = 0; i < n; i++)
        if (tok[i] < 0 || tok[i] >= s->c->vocab_size) return RC_ERR_INVALID;
    size_t done = 0;
    while (done < n) {
        if (s->local == s->o.window) {
            rc_t rc = model_stream_flush(s);
            if (rc) return rc;
        }
        size_t room = (size_t)(s->o.window - s->local);
        int c = (int)(n - done < room ? n - done : room);
        /* Each row's target is the next input token; the last row has none yet. */
        int32_t *tg = NULL;
        if (logprobs) {
            tg = malloc((size_t)c * sizeof *tg);
            if (!tg) return RC_ERR_NOMEM;
            for (int i = 0; i < c; i++) tg[i] = done + i + 1 < n ? tok[done + i + 1] : -1;
        }
        int last = done + (size_t)c == n;
        rc_t rc = s->b->ops->forward(s->bs, tok + done, c, s->local, tg,
                                     logprobs ? logprobs + done : NULL, last ? last_logits : NULL);
        free(tg);
        if (rc) return rc;
        s->local += c;
        s->tokens += (uint64_t)c;
        done += (size_t)c;
    }
    return RC_OK;
}

size_t model_stream_local_len(const model_stream_t *s)
{
    return (size_t)s->local;
}

uint64_t model_stream_tokens(const model_stream_t *s)
{
    return s->tokens;
}

int model_stream_window(const model_stream_t *s)
{
    return s->o.window;
}

size_t model_stream_device_bytes(const model_stream_t *s)
{
    return s->b->ops->device_bytes ? s->b->ops->device_bytes(s->bs) : 0;
}

memory_knn_t *model_stream_index(model_stream_t *s)
{
    return s->knn;
}

memory_store_t *model_stream_memory(model_stream_t *s)
{
    return s->mem;
}

model_stream_mark_t model_stream_get_mark(const model_stream_t *s)
{
    ASSERT(s->local == 0);
    model_stream_mark_t m = {memory_store_len(s->mem), s->tokens};
    return m;
}

void model_stream_rewind(model_stream_t *s, model_stream_mark_t mark)
{
    memory_store_truncate(s->mem, mark.mem_rows);
    s->b->ops->memory_truncated(s->bs, mark.mem_rows);
    s->local = 0;
    s->tokens = mark.tokens;
}
