/* stream.c — LongLLaMA's forward pass over a token stream, on the CPU (see stream.h).
 *
 * A stream owns, per layer, a local cache of at most `window` tokens: rotated keys and
 * values for local attention, and for memory layers also the unrotated keys, which is
 * what moves into memory when the window is complete. Positions inside the window start
 * at 0 because the whole cache is dropped at once, never shifted. */
#include "model/stream.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kernels/cpu.h"
#include "model/weights.h"

/* Rows of logits computed at once: bounds the scratch to LOGIT_ROWS × vocab floats. */
#define LOGIT_ROWS 64

typedef struct layer_cache {
    float *k_rot; /* [window, kv_dim] keys rotated at their local position */
    float *k_raw; /* [window, kv_dim] unrotated keys (memory layers only, else NULL) */
    float *v;     /* [window, kv_dim] */
    int mem_layer; /* index into the memory store, or -1 */
} layer_cache_t;

struct model_stream {
    const model_t *model;
    const model_config_t *c;
    const model_weights_t *w;
    model_stream_opts_t o;
    int q_dim, kv_dim;

    memory_store_t *mem;
    layer_cache_t *layers; /* [n_layers] */
    int local;             /* tokens in the local cache */
    uint64_t tokens;       /* tokens fed since creation (or the last rewind's mark) */
    float *inv_freq;       /* [head_dim / 2] */

    /* Scratch for one chunk of up to `window` tokens. */
    float *x;      /* [window, hidden] residual stream */
    float *xn;     /* [window, hidden] normalized */
    float *q;      /* [window, q_dim] */
    float *k;      /* [window, kv_dim] */
    float *v;      /* [window, kv_dim] */
    float *att;    /* [window, q_dim] */
    float *gate;   /* [window, ffn] */
    float *up;     /* [window, ffn] */
    int32_t *pos;  /* [window] */
    float *logits; /* [LOGIT_ROWS, vocab] */
};

rc_t model_stream_opts_resolve(const model_t *m, model_stream_opts_t *o, char *err,
                               size_t errlen)
{
    const model_config_t *c = model_get_config(m);
    if (o->window < 0 || o->last_context < 0) {
        snprintf(err, errlen, "window and last_context must not be negative");
        return RC_ERR_INVALID;
    }
    if (o->window == 0) o->window = c->max_pos;
    if (o->window > c->max_pos) {
        snprintf(err, errlen,
                 "window %d is longer than the model's trained context of %d tokens "
                 "(longer windows need a positional scheme such as self-extend or dca)",
                 o->window, c->max_pos);
        return RC_ERR_INVALID;
    }
    if (o->last_context == 0)
        o->last_context = c->last_context_length > 0 && c->last_context_length <= o->window
                              ? c->last_context_length
                              : o->window;
    if (o->last_context > o->window) {
        snprintf(err, errlen, "last_context %d is longer than the window of %d tokens",
                 o->last_context, o->window);
        return RC_ERR_INVALID;
    }
    if (!o->mem_dtype_set) {
        o->mem_dtype = c->n_mem_layers ? c->mem_dtype : DTYPE_F32;
        o->mem_dtype_set = 1;
    }
    if (err && errlen) err[0] = '\0';
    return RC_OK;
}

rc_t model_stream_create(const model_t *m, const model_stream_opts_t *opts, model_stream_t **out)
{
    *out = NULL;
    char err[256];
    model_stream_opts_t o = *opts;
    rc_t rc = model_stream_opts_resolve(m, &o, err, sizeof err);
    if (rc) {
        log_warn("stream: %s", err);
        return rc;
    }
    const model_config_t *c = model_get_config(m);
    if (c->head_dim > 512 || c->head_dim % 2) return RC_ERR_UNSUPPORTED;

    model_stream_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
    s->model = m;
    s->c = c;
    s->w = model_get_weights(m);
    s->o = o;
    s->q_dim = c->n_heads * c->head_dim;
    s->kv_dim = c->n_kv_heads * c->head_dim;
    const size_t W = (size_t)o.window;

    rc = memory_store_create(c->n_mem_layers, s->kv_dim, o.mem_dtype, &s->mem);
    if (rc) goto fail;
    rc = RC_ERR_NOMEM;
    s->layers = calloc((size_t)c->n_layers, sizeof *s->layers);
    if (!s->layers) goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        layer_cache_t *L = &s->layers[l];
        L->mem_layer = -1;
        for (int i = 0; i < c->n_mem_layers; i++)
            if (c->mem_layers[i] == l) L->mem_layer = i;
        L->k_rot = malloc(W * s->kv_dim * sizeof(float));
        L->v = malloc(W * s->kv_dim * sizeof(float));
        if (!L->k_rot || !L->v) goto fail;
        if (L->mem_layer >= 0) {
            L->k_raw = malloc(W * s->kv_dim * sizeof(float));
            if (!L->k_raw) goto fail;
        }
    }
    s->inv_freq = malloc((size_t)c->head_dim / 2 * sizeof(float));
    s->x = malloc(W * c->hidden * sizeof(float));
    s->xn = malloc(W * c->hidden * sizeof(float));
    s->q = malloc(W * s->q_dim * sizeof(float));
    s->k = malloc(W * s->kv_dim * sizeof(float));
    s->v = malloc(W * s->kv_dim * sizeof(float));
    s->att = malloc(W * s->q_dim * sizeof(float));
    s->gate = malloc(W * c->ffn * sizeof(float));
    s->up = malloc(W * c->ffn * sizeof(float));
    s->pos = malloc(W * sizeof(int32_t));
    s->logits = malloc((size_t)LOGIT_ROWS * c->vocab_size * sizeof(float));
    if (!s->inv_freq || !s->x || !s->xn || !s->q || !s->k || !s->v || !s->att || !s->gate ||
        !s->up || !s->pos || !s->logits)
        goto fail;
    cpu_rope_inv_freq(s->inv_freq, c->head_dim, c->rope_theta);
    *out = s;
    return RC_OK;
fail:
    model_stream_destroy(&s);
    return rc;
}

void model_stream_destroy(model_stream_t **ps)
{
    if (!ps || !*ps) return;
    model_stream_t *s = *ps;
    if (s->layers) {
        for (int l = 0; l < s->c->n_layers; l++) {
            free(s->layers[l].k_rot);
            free(s->layers[l].k_raw);
            free(s->layers[l].v);
        }
    }
    free(s->layers);
    memory_store_destroy(&s->mem);
    free(s->inv_freq);
    free(s->x);
    free(s->xn);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->gate);
    free(s->up);
    free(s->pos);
    free(s->logits);
    free(s);
    *ps = NULL;
}

rc_t model_stream_flush(model_stream_t *s)
{
    if (!s->local) return RC_OK;
    size_t before = memory_store_len(s->mem);
    for (int l = 0; l < s->c->n_layers; l++) {
        layer_cache_t *L = &s->layers[l];
        if (L->mem_layer < 0) continue;
        rc_t rc = memory_store_append_f32(s->mem, L->mem_layer, L->k_raw, L->v, (size_t)s->local);
        if (rc) {
            memory_store_truncate(s->mem, before);
            return rc;
        }
    }
    s->local = 0;
    return RC_OK;
}

/* One layer over a chunk of n tokens already in s->x; the local cache holds s->local tokens
 * before the chunk. */
static void layer_forward(model_stream_t *s, int l, int n)
{
    const model_config_t *c = s->c;
    const model_layer_t *W = &s->w->layers[l];
    layer_cache_t *L = &s->layers[l];
    const int hd = c->head_dim;
    const size_t kvb = (size_t)s->kv_dim * sizeof(float);

    cpu_rmsnorm(s->xn, s->x, W->attn_norm, n, c->hidden, c->rms_eps);
    cpu_matmul_nt(s->q, s->xn, W->wq, n, s->q_dim, c->hidden);
    cpu_matmul_nt(s->k, s->xn, W->wk, n, s->kv_dim, c->hidden);
    cpu_matmul_nt(s->v, s->xn, W->wv, n, s->kv_dim, c->hidden);
    if (L->k_raw) memcpy(L->k_raw + (size_t)s->local * s->kv_dim, s->k, n * kvb);
    cpu_rope(s->q, n, c->n_heads, hd, s->pos, s->inv_freq, 1.0f);
    cpu_rope(s->k, n, c->n_kv_heads, hd, s->pos, s->inv_freq, 1.0f);
    memcpy(L->k_rot + (size_t)s->local * s->kv_dim, s->k, n * kvb);
    memcpy(L->v + (size_t)s->local * s->kv_dim, s->v, n * kvb);

    attn_args_t a = {
        .n_q = n,
        .n_k = s->local + n,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = hd,
        .q_offset = s->local,
        .q = s->q,
        .k = L->k_rot,
        .v = L->v,
        .scale = 1.0f / sqrtf((float)hd),
        .out = s->att,
    };
    if (L->mem_layer >= 0 && !s->o.disable_memory) {
        a.n_mem = memory_store_rows(s->mem, L->mem_layer);
        a.mem_dtype = memory_store_dtype(s->mem);
        a.mem_k = memory_store_keys(s->mem, L->mem_layer);
        a.mem_v = memory_store_values(s->mem, L->mem_layer);
    }
    cpu_attention(&a);
    /* x += att · Woᵀ, through xn as the product's output. */
    cpu_matmul_nt(s->xn, s->att, W->wo, n, c->hidden, s->q_dim);
    for (size_t i = 0; i < (size_t)n * c->hidden; i++) s->x[i] += s->xn[i];

    cpu_rmsnorm(s->xn, s->x, W->ffn_norm, n, c->hidden, c->rms_eps);
    cpu_matmul_nt(s->gate, s->xn, W->w_gate, n, c->ffn, c->hidden);
    cpu_matmul_nt(s->up, s->xn, W->w_up, n, c->ffn, c->hidden);
    cpu_swiglu(s->gate, s->gate, s->up, (size_t)n * c->ffn);
    cpu_matmul_nt(s->xn, s->gate, W->w_down, n, c->hidden, c->ffn);
    for (size_t i = 0; i < (size_t)n * c->hidden; i++) s->x[i] += s->xn[i];
}

/* Runs a chunk of n tokens (s->local + n ≤ window) through every layer. targets[i] is the
 * token after tok[i] (or −1 when unknown): its log-prob goes to logprobs[i]. */
static void chunk_forward(model_stream_t *s, const int32_t *tok, int n, const int32_t *targets,
                          float *logprobs, float *last_logits)
{
    const model_config_t *c = s->c;
    for (int t = 0; t < n; t++) {
        memcpy(s->x + (size_t)t * c->hidden, s->w->tok_emb + (size_t)tok[t] * c->hidden,
               c->hidden * sizeof(float));
        s->pos[t] = s->local + t;
    }
    for (int l = 0; l < c->n_layers; l++) layer_forward(s, l, n);
    s->local += n;
    s->tokens += (uint64_t)n;

    if (!logprobs && !last_logits) return;
    /* Only the rows whose outputs are wanted go through the final norm and lm_head. */
    int first = logprobs ? 0 : n - 1;
    for (int r0 = first; r0 < n; r0 += LOGIT_ROWS) {
        int rows = n - r0 < LOGIT_ROWS ? n - r0 : LOGIT_ROWS;
        float *xr = s->xn + (size_t)r0 * c->hidden;
        cpu_rmsnorm(xr, s->x + (size_t)r0 * c->hidden, s->w->norm, rows, c->hidden, c->rms_eps);
        cpu_matmul_nt(s->logits, xr, s->w->lm_head, rows, c->vocab_size, c->hidden);
        for (int r = 0; r < rows; r++) {
            const float *lg = s->logits + (size_t)r * c->vocab_size;
            int i = r0 + r;
            if (logprobs && targets[i] >= 0) {
                float mx = -INFINITY;
                for (int j = 0; j < c->vocab_size; j++)
                    if (lg[j] > mx) mx = lg[j];
                double sum = 0;
                for (int j = 0; j < c->vocab_size; j++) sum += exp((double)(lg[j] - mx));
                logprobs[i] = (float)((double)(lg[targets[i]] - mx) - log(sum));
            }
            if (last_logits && i == n - 1)
                memcpy(last_logits, lg, c->vocab_size * sizeof(float));
        }
    }
}

rc_t model_stream_feed(model_stream_t *s, const int32_t *tok, size_t n, float *logprobs,
                       float *last_logits)
{
    for (size_t i = 0; i < n; i++)
        if (tok[i] < 0 || tok[i] >= s->c->vocab_size) return RC_ERR_INVALID;
    if (!n) return RC_OK;
    size_t done = 0;
    while (done < n) {
        if (s->local == s->o.window) {
            rc_t rc = model_stream_flush(s);
            if (rc) return rc;
        }
        size_t room = (size_t)(s->o.window - s->local);
        int c = (int)(n - done < room ? n - done : room);
        /* Targets of this chunk: the next token in the input, none after the last one. */
        int32_t *tg = NULL;
        if (logprobs) {
            tg = malloc((size_t)c * sizeof *tg);
            if (!tg) return RC_ERR_NOMEM;
            for (int i = 0; i < c; i++)
                tg[i] = done + i + 1 < n ? tok[done + i + 1] : -1;
        }
        int last = done + (size_t)c == n;
        chunk_forward(s, tok + done, c, tg, logprobs ? logprobs + done : NULL,
                      last ? last_logits : NULL);
        free(tg);
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
    s->local = 0;
    s->tokens = mark.tokens;
}
