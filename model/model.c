/* model.c — loading a checkpoint directory: its tensors as stored, and in fp32 for the CPU
 * backend.
 *
 * Order: config.json (so every later check has something to check against), the
 * safetensors set and tokenizer.model (cheap, so a wrong file fails before any conversion),
 * then each expected tensor with its shape checked against the config (model_check_weights
 * stops there, with a view of each tensor in the map). For fp32 (model_load_weights), F32
 * tensors that the mapping leaves 4-byte aligned are used in place; everything else is
 * converted into buffers this model owns (one allocation per tensor, in parallel with
 * OpenMP, since a bf16 3B checkpoint is billions of elements). */
#include "model/model.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/log.h"
#include "kernels/cpu.h"
#include "model/positional.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"

#define CONVERT_CHUNK ((size_t)1 << 20) /* elements per OpenMP task */

struct model {
    model_config_t config;
    model_weights_t weights; /* points into `st` or into owned[] (fp32 only) */
    model_stored_t stored;   /* views into `st` */
    safetensors_t *st;       /* kept mapped: in-place F32 tensors live in it */
    tokenizer_t *tok;        /* NULL when loaded without one */
    float **owned;           /* [n_owned] converted tensors */
    int n_owned, cap_owned;
    char *dir;
    dtype_t weight_dtype; /* as stored in the file (of the embeddings), for describe */
    int weights_checked;  /* model_check_weights (or model_load_weights) returned RC_OK */
    int weights_loaded;   /* model_load_weights has returned RC_OK: fp32 weights */
    int converting;       /* load_weights is to fill `weights` (fp32) too */
    char describe[512];
};


static void convert(float *dst, const void *src, dtype_t t, size_t n)
{
    /* Chunks rather than elements: each task is a plain loop the compiler vectorizes. */
    long n_chunks = (long)((n + CONVERT_CHUNK - 1) / CONVERT_CHUNK);
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (long c = 0; c < n_chunks; c++) {
        size_t b = (size_t)c * CONVERT_CHUNK;
        size_t m = n - b < CONVERT_CHUNK ? n - b : CONVERT_CHUNK;
        dtype_to_f32(dst + b, (const char *)src + b * dtype_size(t), t, m);
    }
}

/* A buffer the model owns (freed by model_destroy). */
static float *owned_alloc(model_t *m, size_t n)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        float **p = realloc(m->owned, (size_t)cap * sizeof(*p));
        if (!p) return NULL;
        m->owned = p;
        m->cap_owned = cap;
    }
    float *buf = malloc((n ? n : 1) * sizeof(float));
    if (buf) m->owned[m->n_owned++] = buf;
    return buf;
}

/* Finds prefix+name, checks it is [rows] (cols == 0) or [rows, cols], and sets *view to it
 * as stored (view may be NULL) and, when the model is converting (or `always`), *out to it
 * in fp32. */
static rc_t find_tensor(model_t *m, const char *prefix, const char *name, int64_t rows,
                        int64_t cols, const char *why, int always, const float **out,
                        model_tensor_t *view, char *err, size_t errlen)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const st_tensor_t *t = safetensors_find(m->st, full);
    if (!t) return rc_errf(RC_ERR_NOT_FOUND, err, errlen, "%s: missing tensor %s", m->dir, full);
    int64_t want[2] = {rows, cols};
    int want_nd = cols ? 2 : 1;
    int ok = t->ndim == want_nd && t->shape[0] == rows && (want_nd == 1 || t->shape[1] == cols);
    if (!ok) {
        char a[128], b[128];
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s: tensor %s has shape %s, expected %s (%s from config.json)", t->file, full,
                    safetensors_shape_str(t->shape, t->ndim, a, sizeof a),
                    safetensors_shape_str(want, want_nd, b, sizeof b), why);
    }
    if (view) *view = (model_tensor_t){t->data, t->dtype, t->numel};
    if (!m->converting && !always) return RC_OK;
    if (t->dtype == DTYPE_F32 && ((uintptr_t)t->data & 3u) == 0) {
        *out = t->data;
        return RC_OK;
    }
    float *buf = owned_alloc(m, t->numel);
    if (!buf)
        return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory converting %s (%zu elements)",
                       full, t->numel);
    convert(buf, t->data, t->dtype, t->numel);
    *out = buf;
    return RC_OK;
}

/* find_tensor for the decoder's tensors: fp32 only when converting. */
static rc_t get_tensor(model_t *m, const char *prefix, const char *name, int64_t rows, int64_t cols,
                       const char *why, const float **out, model_tensor_t *view, char *err,
                       size_t errlen)
{
    return find_tensor(m, prefix, name, rows, cols, why, 0, out, view, err, errlen);
}

/* A checkpoint with more layers than config.json says would load "fine" and run a
 * different, truncated model; refuse it. */
static rc_t check_no_extra_layers(const model_t *m, const char *prefix, char *err, size_t errlen)
{
    char pat[64];
    snprintf(pat, sizeof pat, "%slayers.", prefix);
    size_t pl = strlen(pat);
    for (size_t i = 0; i < safetensors_count(m->st); i++) {
        const st_tensor_t *t = safetensors_at(m->st, i);
        if (strncmp(t->name, pat, pl)) continue;
        char *end;
        long l = strtol(t->name + pl, &end, 10);
        if (end != t->name + pl && *end == '.' && l >= m->config.n_layers)
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                        "%s: checkpoint has tensor %s but config.json says num_hidden_layers "
                        "is %d",
                        m->dir, t->name, m->config.n_layers);
    }
    return RC_OK;
}

/* CLEX: the ODE's weights and the frequency table for t = 1 … max_factor. The checkpoint's
 * inv_freq is used as stored (row t = 1 is that tensor itself); without one, rope_theta's
 * frequencies stand in, as the released code's buffer would have held them. */
static rc_t load_clex(model_t *m, const char *p, char *err, size_t errlen)
{
    const model_config_t *c = &m->config;
    model_weights_t *w = &m->weights;
    const int64_t h = c->head_dim / 2, pd = (int64_t)c->clex_param_factor * c->head_dim;
    rc_t rc;
    char name[128];
    snprintf(name, sizeof name, "%sclex_layer.inv_freq", p);
    if (safetensors_find(m->st, name)) {
        if ((rc = find_tensor(m, p, "clex_layer.inv_freq", h, 0, "head_dim / 2", 1,
                              &w->clex_inv_freq, NULL, err, errlen)))
            return rc;
        for (int64_t i = 0; i < h; i++)
            if (!(w->clex_inv_freq[i] > 0.0f) || !isfinite(w->clex_inv_freq[i]))
                return rc_errf(RC_ERR_FORMAT, err, errlen,
                               "%s: tensor %s holds %g at index %lld; inverse frequencies must "
                               "be positive and finite",
                               m->dir, name, (double)w->clex_inv_freq[i], (long long)i);
    } else {
        float *f = owned_alloc(m, (size_t)h);
        if (!f) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
        cpu_rope_inv_freq(f, c->head_dim, c->rope_theta);
        w->clex_inv_freq = f;
        log_info("%s: CLEX checkpoint without %s: starting the ODE from rope_theta %g's "
                 "frequencies, as the released code does",
                 m->dir, name, (double)c->rope_theta);
    }
    if ((rc = find_tensor(m, p, "clex_layer.proj_func.ode_up_proj", h, pd,
                          "head_dim / 2 x param_factor*head_dim", 1, &w->clex_up, NULL, err,
                          errlen)))
        return rc;
    if ((rc = find_tensor(m, p, "clex_layer.proj_func.ode_down_proj", pd, h,
                          "param_factor*head_dim x head_dim / 2", 1, &w->clex_down, NULL, err,
                          errlen)))
        return rc;
    float *table = owned_alloc(m, (size_t)c->clex_max_factor * (size_t)h);
    if (!table) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    if ((rc = positional_clex_table(c, w->clex_inv_freq, w->clex_up, w->clex_down, table)))
        return rc_errf(rc, err, errlen,
                       "%s: the CLEX frequency table is not finite (the ODE weights "
                       "model.clex_layer.proj_func.* diverge)",
                       m->dir);
    w->clex_freq = table;
    return RC_OK;
}

static rc_t load_weights(model_t *m, char *err, size_t errlen)
{
    const model_config_t *c = &m->config;
    model_weights_t *w = &m->weights;
    const int64_t H = c->hidden, V = c->vocab_size, F = c->ffn;
    const int64_t QD = (int64_t)c->n_heads * c->head_dim,
                  KVD = (int64_t)c->n_kv_heads * c->head_dim;
    rc_t rc;

    /* HF checkpoints name the decoder "model."; bare LlamaModel saves do not. */
    const char *p = "model.";
    if (!safetensors_find(m->st, "model.embed_tokens.weight") &&
        safetensors_find(m->st, "embed_tokens.weight"))
        p = "";
    model_stored_t *sd = &m->stored;
    if ((rc = check_no_extra_layers(m, p, err, errlen))) return rc;
    if ((rc = get_tensor(m, p, "embed_tokens.weight", V, H, "vocab_size x hidden_size", &w->tok_emb,
                         &sd->tok_emb, err, errlen)))
        return rc;
    if (!w->layers) w->layers = calloc((size_t)c->n_layers, sizeof(*w->layers));
    if (!sd->layers) sd->layers = calloc((size_t)c->n_layers, sizeof(*sd->layers));
    if (!w->layers || !sd->layers) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        model_layer_t *L = &w->layers[l];
        model_stored_layer_t *S = &sd->layers[l];
        char n[128];
#define T(field, suffix, rows, cols, why)                                                          \
    snprintf(n, sizeof n, "layers.%d.%s", l, suffix);                                              \
    if ((rc = get_tensor(m, p, n, rows, cols, why, &L->field, &S->field, err, errlen))) return rc
        T(attn_norm, "input_layernorm.weight", H, 0, "hidden_size");
        T(wq, "self_attn.q_proj.weight", QD, H, "num_attention_heads*head_dim x hidden_size");
        T(wk, "self_attn.k_proj.weight", KVD, H, "num_key_value_heads*head_dim x hidden_size");
        T(wv, "self_attn.v_proj.weight", KVD, H, "num_key_value_heads*head_dim x hidden_size");
        T(wo, "self_attn.o_proj.weight", H, QD, "hidden_size x num_attention_heads*head_dim");
        T(ffn_norm, "post_attention_layernorm.weight", H, 0, "hidden_size");
        T(w_gate, "mlp.gate_proj.weight", F, H, "intermediate_size x hidden_size");
        T(w_up, "mlp.up_proj.weight", F, H, "intermediate_size x hidden_size");
        T(w_down, "mlp.down_proj.weight", H, F, "hidden_size x intermediate_size");
#undef T
    }
    if ((rc = get_tensor(m, p, "norm.weight", H, 0, "hidden_size", &w->norm, &sd->norm, err,
                         errlen)))
        return rc;
    if (c->tie_embeddings) {
        w->lm_head = w->tok_emb; /* HF ties the output to the input embedding */
        sd->lm_head = sd->tok_emb;
    } else if (!safetensors_find(m->st, "lm_head.weight")) {
        return rc_errf(RC_ERR_NOT_FOUND, err, errlen,
                    "%s: missing tensor lm_head.weight (and config.json has no "
                    "tie_word_embeddings: true)",
                    m->dir);
    } else if ((rc = get_tensor(m, "", "lm_head.weight", V, H, "vocab_size x hidden_size",
                                &w->lm_head, &sd->lm_head, err, errlen))) {
        return rc;
    }
    /* The CLEX table once: a conversion pass after a check pass has it already. */
    if (c->clex && !w->clex_freq && (rc = load_clex(m, p, err, errlen))) return rc;
    return RC_OK;
}

static rc_t load_tokenizer(model_t *m, int allow_none, char *err, size_t errlen)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/tokenizer.model", m->dir) >= (int)sizeof path)
        return rc_errf(RC_ERR_INVALID, err, errlen, "checkpoint path too long: %s", m->dir);
    if (access(path, F_OK) != 0) {
        if (allow_none) return RC_OK;
        return rc_errf(RC_ERR_NOT_FOUND, err, errlen,
                    "%s has no tokenizer.model (needed to turn text into tokens)", m->dir);
    }
    rc_t rc = tokenizer_load(path, &m->tok, err, errlen);
    if (rc) return rc;
    int tv = tokenizer_vocab_size(m->tok);
    if (tv > m->config.vocab_size)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "%s has %d pieces but config.json vocab_size is %d: the tokenizer does "
                    "not belong to this checkpoint",
                    path, tv, m->config.vocab_size);
    if (tokenizer_bos_id(m->tok) != m->config.bos_id ||
        tokenizer_eos_id(m->tok) != m->config.eos_id)
        log_warn("%s: tokenizer bos/eos ids %d/%d differ from config.json's %d/%d", m->dir,
                 tokenizer_bos_id(m->tok), tokenizer_eos_id(m->tok), m->config.bos_id,
                 m->config.eos_id);
    return RC_OK;
}

static void make_description(model_t *m)
{
    const model_config_t *c = &m->config;
    char mem[300] = "";
    if (c->is_longllama) {
        size_t o = (size_t)snprintf(mem, sizeof mem, ", mem layers [");
        for (int i = 0; i < c->n_mem_layers && o < sizeof mem; i++)
            o += (size_t)snprintf(mem + o, sizeof mem - o, "%s%d", i ? "," : "", c->mem_layers[i]);
        if (o < sizeof mem) snprintf(mem + o, sizeof mem - o, "] (%s)", dtype_name(c->mem_dtype));
    }
    char clex[64] = "";
    if (c->clex)
        snprintf(clex, sizeof clex, ", clex x%d (p %d, %s%s)", c->clex_max_factor,
                 c->clex_param_factor, c->clex_act == CLEX_ACT_TANH ? "tanh" : "silu",
                 c->log_scale ? ", log scale" : "");
    snprintf(m->describe, sizeof m->describe,
             "%s %d layers, hidden %d, %d heads of %d (%d kv), ffn %d%s%s, vocab %d, %s (%s)",
             c->is_longllama ? "longllama" : "llama", c->n_layers, c->hidden, c->n_heads,
             c->head_dim, c->n_kv_heads, c->ffn, mem, clex, c->vocab_size,
             dtype_name(m->weight_dtype), m->dir);
}

/* The embeddings' stored dtype, for describe (the config's torch_dtype when absent). */
static dtype_t stored_dtype(const model_t *m)
{
    const st_tensor_t *et = safetensors_find(m->st, "model.embed_tokens.weight");
    if (!et) et = safetensors_find(m->st, "embed_tokens.weight");
    return et ? et->dtype : m->config.torch_dtype;
}

rc_t model_open(const char *dir, int allow_no_tokenizer, model_t **out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    *out = NULL;
    rc_t rc;
    model_t *m = calloc(1, sizeof(*m));
    if (!m || !(m->dir = strdup(dir))) {
        rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
        goto fail;
    }
    if ((rc = model_config_load(dir, &m->config, err, errlen))) goto fail;
    if ((rc = safetensors_open_dir(dir, &m->st, err, errlen))) goto fail;
    if ((rc = load_tokenizer(m, allow_no_tokenizer, err, errlen))) goto fail;
    m->weight_dtype = stored_dtype(m);
    make_description(m);
    *out = m;
    return RC_OK;
fail:
    model_destroy(&m);
    return rc;
}

rc_t model_check_weights(model_t *m, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (m->weights_checked) return RC_OK;
    m->converting = 0;
    rc_t rc = load_weights(m, err, errlen);
    if (rc) return rc; /* model_destroy frees what load_weights got to */
    m->weights_checked = 1;
    return RC_OK;
}

rc_t model_load_weights(model_t *m, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (m->weights_loaded) return RC_OK;
    m->converting = 1;
    rc_t rc = load_weights(m, err, errlen);
    m->converting = 0;
    if (rc) return rc;
    m->weights_checked = m->weights_loaded = 1;
    return RC_OK;
}

int model_has_f32_weights(const model_t *m)
{
    return m->weights_loaded;
}

const model_stored_t *model_get_stored(const model_t *m)
{
    return m->weights_checked ? &m->stored : NULL;
}

rc_t model_load(const char *dir, int allow_no_tokenizer, model_t **out, char *err, size_t errlen)
{
    rc_t rc = model_open(dir, allow_no_tokenizer, out, err, errlen);
    if (!rc && (rc = model_load_weights(*out, err, errlen))) model_destroy(out);
    return rc;
}

void model_destroy(model_t **pm)
{
    if (!pm || !*pm) return;
    model_t *m = *pm;
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->weights.layers);
    free(m->stored.layers);
    tokenizer_destroy(&m->tok);
    safetensors_destroy(&m->st);
    free(m->dir);
    free(m);
    *pm = NULL;
}

const model_config_t *model_get_config(const model_t *m)
{
    return &m->config;
}

const model_weights_t *model_get_weights(const model_t *m)
{
    return m->weights_loaded ? &m->weights : NULL;
}

const tokenizer_t *model_get_tokenizer(const model_t *m)
{
    return m->tok;
}

const char *model_describe(const model_t *m)
{
    return m->describe;
}

const float *model_clex_table(const model_t *m, int *rows, int *cols)
{
    if (!m->weights.clex_freq) return NULL;
    *rows = m->config.clex_max_factor;
    *cols = m->config.head_dim / 2;
    return m->weights.clex_freq;
}
