/* config.c — config.json → model_config_t, with every field checked.
 *
 * A checkpoint's config is the first thing a user gets wrong (a hand-edited field, a
 * checkpoint of an architecture we do not run), so every refusal names the field and the
 * value. JSON syntax and missing or mistyped fields are RC_ERR_FORMAT; values that are
 * well-formed but impossible are RC_ERR_INVALID; valid choices recall does not implement
 * are RC_ERR_UNSUPPORTED. */
#include "model/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_BYTES (16u << 20) /* a config.json is a few KB; refuse anything absurd */

/* Three %s arguments that print a member for a message: "\"value\"" for a string, else
 * "not a string". */
#define STRING_VALUE(v)                                                                            \
    cJSON_IsString(v) ? "\"" : "", cJSON_IsString(v) ? (v)->valuestring : "not a string",          \
        cJSON_IsString(v) ? "\"" : ""

/* A present, non-null member (HF writes null for "use the default"). */
static const cJSON *member(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Reads an integer field. Absent: RC_ERR_FORMAT if required, else *out = def. */
static rc_t get_int(const cJSON *obj, const char *name, int required, int def, int *out, char *err,
                    size_t errlen)
{
    const cJSON *v = member(obj, name);
    if (!v) {
        if (required)
            return rc_errf(RC_ERR_FORMAT, err, errlen, "config.json: required field \"%s\" is missing",
                        name);
        *out = def;
        return RC_OK;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < -2147483648.0 || d > 2147483647.0)
        return rc_errf(RC_ERR_FORMAT, err, errlen, "config.json: field \"%s\" must be an integer",
                    name);
    *out = (int)d;
    return RC_OK;
}

static rc_t get_float(const cJSON *obj, const char *name, float def, float *out, char *err,
                      size_t errlen)
{
    const cJSON *v = member(obj, name);
    if (!v) {
        *out = def;
        return RC_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return rc_errf(RC_ERR_FORMAT, err, errlen, "config.json: field \"%s\" must be a number", name);
    *out = (float)v->valuedouble;
    return RC_OK;
}

static rc_t get_bool(const cJSON *obj, const char *name, int def, int *out, char *err,
                     size_t errlen)
{
    const cJSON *v = member(obj, name);
    if (!v) {
        *out = def;
        return RC_OK;
    }
    if (!cJSON_IsBool(v))
        return rc_errf(RC_ERR_FORMAT, err, errlen, "config.json: field \"%s\" must be true or false",
                    name);
    *out = cJSON_IsTrue(v);
    return RC_OK;
}

/* A dtype string ("bfloat16", "float32", ...). Absent: def. */
static rc_t get_dtype(const cJSON *obj, const char *name, dtype_t def, dtype_t *out, char *err,
                      size_t errlen)
{
    const cJSON *v = member(obj, name);
    if (!v) {
        *out = def;
        return RC_OK;
    }
    if (!cJSON_IsString(v))
        return rc_errf(RC_ERR_FORMAT, err, errlen, "config.json: field \"%s\" must be a string", name);
    if (dtype_parse(v->valuestring, out))
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                    "config.json: field \"%s\" has unknown dtype \"%s\" (float32, float16 or "
                    "bfloat16)",
                    name, v->valuestring);
    return RC_OK;
}

/* BOS/EOS ids may be a number, an array of numbers (Llama 3 style: the first counts) or null. */
static rc_t get_token_id(const cJSON *obj, const char *name, int def, int *out, char *err,
                         size_t errlen)
{
    const cJSON *v = member(obj, name);
    if (v && cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (!v) {
        *out = def;
        return RC_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > 2147483647.0)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "config.json: field \"%s\" must be a non-negative integer token id", name);
    *out = (int)v->valuedouble;
    return RC_OK;
}

static int is_longllama_config(const cJSON *root)
{
    const cJSON *mt = member(root, "model_type");
    if (cJSON_IsString(mt) && !strcmp(mt->valuestring, "longllama")) return 1;
    const cJSON *arch = member(root, "architectures");
    const cJSON *a;
    cJSON_ArrayForEach(a, arch)
    {
        if (cJSON_IsString(a) && !strcmp(a->valuestring, "LongLlamaForCausalLM")) return 1;
    }
    /* A LLaMA config with FoT fields added by hand is a LongLLaMA config too. */
    const cJSON *f;
    for (f = root->child; f; f = f->next)
        if (f->string && !strncmp(f->string, "mem_", 4)) return 1;
    return 0;
}

static rc_t parse_mem_layers(const cJSON *root, model_config_t *c, char *err, size_t errlen)
{
    const cJSON *ml = member(root, "mem_layers");
    c->n_mem_layers = 0;
    if (!ml) return RC_OK;
    if (!cJSON_IsArray(ml))
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "config.json: field \"mem_layers\" must be an array of layer indices");
    int n = cJSON_GetArraySize(ml);
    if (n > MODEL_MAX_MEM_LAYERS)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: field \"mem_layers\" lists %d layers; at most %d are supported",
                    n, MODEL_MAX_MEM_LAYERS);
    const cJSON *e;
    cJSON_ArrayForEach(e, ml)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble))
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                        "config.json: field \"mem_layers\" must hold integer layer indices");
        double d = e->valuedouble;
        if (d < 0 || d >= c->n_layers)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                        "config.json: field \"mem_layers\" has layer %.0f, outside 0..%d "
                        "(num_hidden_layers %d)",
                        d, c->n_layers - 1, c->n_layers);
        int l = (int)d;
        if (c->n_mem_layers > 0 && l <= c->mem_layers[c->n_mem_layers - 1])
            return rc_errf(RC_ERR_INVALID, err, errlen,
                        "config.json: field \"mem_layers\" must be strictly ascending without "
                        "duplicates (%d follows %d)",
                        l, c->mem_layers[c->n_mem_layers - 1]);
        c->mem_layers[c->n_mem_layers++] = l;
    }
    return RC_OK;
}

/* An integer-valued number >= 1 (CLEX writes max_factor and param_factor as ints; a float
 * such as 16.0 is the same value). Required. */
/* "recall_session_defaults": the options recall's own measurements chose for this
 * checkpoint (model_config_t). Anything else in the object is refused, so a typo does not
 * pass silently. */
static rc_t parse_session_defaults(const cJSON *root, model_config_t *c, char *err,
                                   size_t errlen)
{
    c->default_memory[0] = '\0';
    c->default_k = 0;
    const cJSON *d = member(root, "recall_session_defaults");
    if (!d) return RC_OK;
    if (!cJSON_IsObject(d))
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                       "config.json: \"recall_session_defaults\" must be an object");
    for (const cJSON *it = d->child; it; it = it->next)
        if (strcmp(it->string, "memory") && strcmp(it->string, "k"))
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                           "config.json: \"recall_session_defaults\" has \"%s\"; it takes "
                           "\"memory\" (exact or knn) and \"k\"",
                           it->string);
    const cJSON *m = member(d, "memory");
    if (m) {
        if (!cJSON_IsString(m) || (strcmp(m->valuestring, "exact") && strcmp(m->valuestring, "knn")))
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                           "config.json: \"recall_session_defaults\".memory must be \"exact\" "
                           "or \"knn\"");
        snprintf(c->default_memory, sizeof c->default_memory, "%s", m->valuestring);
    }
    rc_t rc = get_int(d, "k", 0, 0, &c->default_k, err, errlen);
    if (rc) return rc;
    if (c->default_k < 0 || c->default_k > 4096)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "config.json: \"recall_session_defaults\".k is %d; it must be 1 .. 4096",
                       c->default_k);
    return RC_OK;
}

static rc_t get_clex_count(const cJSON *rs, const char *name, int *out, char *err, size_t errlen)
{
    const cJSON *v = member(rs, name);
    if (!v)
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                       "config.json: field \"rope_scaling.%s\" is missing (required with "
                       "type \"clex\")",
                       name);
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || !isfinite(d) || d != floor(d))
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                       "config.json: field \"rope_scaling.%s\" must be an integer of at least 1%s",
                       name, cJSON_IsNumber(v) ? " (got a fraction)" : "");
    if (d < 1 || d > 65536)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "config.json: field \"rope_scaling.%s\" is %g; it must be between 1 "
                       "and 65536",
                       name, d);
    *out = (int)d;
    return RC_OK;
}

/* rope_scaling {"type": "clex", "max_factor": M, "param_factor": p, "act": ..., "time_dt":
 * dt} (training also writes "factor": 1, unused). First releases have no act and time_dt:
 * silu and 0.01 then, as their code hard-wired. */
static rc_t parse_clex(const cJSON *rs, model_config_t *c, char *err, size_t errlen)
{
    rc_t rc;
    c->clex = 1;
    if ((rc = get_clex_count(rs, "max_factor", &c->clex_max_factor, err, errlen))) return rc;
    if ((rc = get_clex_count(rs, "param_factor", &c->clex_param_factor, err, errlen))) return rc;
    const cJSON *act = member(rs, "act");
    c->clex_act = CLEX_ACT_SILU;
    if (act) {
        if (cJSON_IsString(act) && !strcmp(act->valuestring, "silu"))
            c->clex_act = CLEX_ACT_SILU;
        else if (cJSON_IsString(act) && !strcmp(act->valuestring, "tanh"))
            c->clex_act = CLEX_ACT_TANH;
        else
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "config.json: field \"rope_scaling.act\" is %s%s%s; CLEX's act is "
                           "\"silu\" or \"tanh\"",
                           STRING_VALUE(act));
    }
    if ((rc = get_float(rs, "time_dt", 0.01f, &c->clex_time_dt, err, errlen))) return rc;
    /* A step that leaves more than ~10^7 grid points is a typo, not a setting. */
    if (!(c->clex_time_dt > 0.0f) || (double)(c->clex_max_factor - 1) / c->clex_time_dt > 1e7)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "config.json: field \"rope_scaling.time_dt\" is %g; it must be positive "
                       "and at least (max_factor - 1) / 1e7",
                       (double)c->clex_time_dt);
    return RC_OK;
}

static rc_t parse_rope_scaling(const cJSON *root, model_config_t *c, char *err, size_t errlen)
{
    c->rope_scaling = ROPE_SCALING_NONE;
    c->rope_factor = 1.0f;
    c->rope_original_max_pos = 0;
    c->clex = 0;
    const cJSON *rs = member(root, "rope_scaling");
    if (!rs) return RC_OK;
    if (!cJSON_IsObject(rs))
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "config.json: field \"rope_scaling\" must be an object or null");
    const cJSON *t = member(rs, "type");
    if (!t) t = member(rs, "rope_type");
    if (!t || !cJSON_IsString(t))
        return rc_errf(RC_ERR_FORMAT, err, errlen,
                    "config.json: field \"rope_scaling.type\" (or rope_type) must be a string");
    const char *s = t->valuestring;
    if (!strcmp(s, "default") || !strcmp(s, "none")) return RC_OK;
    if (!strcmp(s, "clex")) return parse_clex(rs, c, err, errlen);
    if (!strcmp(s, "linear"))
        c->rope_scaling = ROPE_SCALING_LINEAR;
    else if (!strcmp(s, "dynamic"))
        c->rope_scaling = ROPE_SCALING_DYNAMIC;
    else if (!strcmp(s, "yarn"))
        c->rope_scaling = ROPE_SCALING_YARN;
    else if (!strcmp(s, "ntk"))
        c->rope_scaling = ROPE_SCALING_NTK;
    else
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "config.json: field \"rope_scaling.type\" is \"%s\"; supported: linear, "
                       "dynamic, ntk, yarn, clex",
                       s);
    rc_t rc = get_float(rs, "factor", 0.0f, &c->rope_factor, err, errlen);
    if (rc) return rc;
    if (!(c->rope_factor > 0.0f))
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: field \"rope_scaling.factor\" must be a positive number "
                    "(required with type \"%s\")",
                    s);
    rc = get_int(rs, "original_max_position_embeddings", 0, 0, &c->rope_original_max_pos, err,
                 errlen);
    if (rc) return rc;
    if (c->rope_original_max_pos < 0)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: field \"rope_scaling.original_max_position_embeddings\" must "
                    "be positive");
    return RC_OK;
}

static rc_t parse_root(const cJSON *root, model_config_t *c, char *err, size_t errlen)
{
    rc_t rc;
#define INT(name, req, def, dst)                                                                   \
    if ((rc = get_int(root, name, req, def, dst, err, errlen))) return rc
#define POSITIVE(name, v)                                                                          \
    if ((v) <= 0)                                                                                  \
    return rc_errf(RC_ERR_INVALID, err, errlen, "config.json: field \"%s\" must be positive, got %d", \
                name, (v))

    const cJSON *act = member(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "config.json: field \"hidden_act\" is %s%s%s; only \"silu\" (LLaMA) is "
                       "supported",
                       STRING_VALUE(act));

    INT("vocab_size", 1, 0, &c->vocab_size);
    POSITIVE("vocab_size", c->vocab_size);
    INT("hidden_size", 1, 0, &c->hidden);
    POSITIVE("hidden_size", c->hidden);
    INT("num_hidden_layers", 1, 0, &c->n_layers);
    POSITIVE("num_hidden_layers", c->n_layers);
    INT("num_attention_heads", 1, 0, &c->n_heads);
    POSITIVE("num_attention_heads", c->n_heads);
    INT("num_key_value_heads", 0, c->n_heads, &c->n_kv_heads);
    POSITIVE("num_key_value_heads", c->n_kv_heads);
    INT("intermediate_size", 1, 0, &c->ffn);
    POSITIVE("intermediate_size", c->ffn);
    INT("max_position_embeddings", 1, 0, &c->max_pos);
    POSITIVE("max_position_embeddings", c->max_pos);

    if (member(root, "head_dim")) {
        INT("head_dim", 1, 0, &c->head_dim);
        POSITIVE("head_dim", c->head_dim);
    } else {
        if (c->hidden % c->n_heads)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                        "config.json: field \"hidden_size\" (%d) is not divisible by "
                        "\"num_attention_heads\" (%d)",
                        c->hidden, c->n_heads);
        c->head_dim = c->hidden / c->n_heads;
    }
    if (c->head_dim % 2)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: head_dim %d (field \"head_dim\" or hidden_size / "
                    "num_attention_heads) must be even for RoPE",
                    c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: field \"num_attention_heads\" (%d) is not divisible by "
                    "\"num_key_value_heads\" (%d)",
                    c->n_heads, c->n_kv_heads);

    if ((rc = get_float(root, "rms_norm_eps", 1e-6f, &c->rms_eps, err, errlen))) return rc;
    if (!(c->rms_eps > 0.0f))
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: field \"rms_norm_eps\" must be positive");
    if ((rc = get_float(root, "rope_theta", 10000.0f, &c->rope_theta, err, errlen))) return rc;
    if (!(c->rope_theta > 0.0f))
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: field \"rope_theta\" must be positive");
    if ((rc = get_bool(root, "tie_word_embeddings", 0, &c->tie_embeddings, err, errlen))) return rc;
    if ((rc = get_dtype(root, "torch_dtype", DTYPE_F32, &c->torch_dtype, err, errlen))) return rc;
    if ((rc = get_token_id(root, "bos_token_id", 1, &c->bos_id, err, errlen))) return rc;
    if ((rc = get_token_id(root, "eos_token_id", 2, &c->eos_id, err, errlen))) return rc;
    if (c->bos_id >= c->vocab_size || c->eos_id >= c->vocab_size)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                    "config.json: \"bos_token_id\" %d / \"eos_token_id\" %d must be below "
                    "vocab_size %d",
                    c->bos_id, c->eos_id, c->vocab_size);
    if ((rc = parse_rope_scaling(root, c, err, errlen))) return rc;
    if ((rc = get_bool(root, "log_scale", 1, &c->log_scale, err, errlen))) return rc;

    if ((rc = parse_session_defaults(root, c, err, errlen))) return rc;

    /* FoT fields. A plain LLaMA config has none and gets no memory layers. */
    c->is_longllama = is_longllama_config(root);
    c->n_mem_layers = 0;
    c->mem_dtype = DTYPE_BF16;
    c->last_context_length = 0;
    c->mem_positionals = 1;
    c->mem_attention_grouping_set = 0;
    if (!c->is_longllama) return RC_OK;

    if ((rc = parse_mem_layers(root, c, err, errlen))) return rc;
    if ((rc = get_dtype(root, "mem_dtype", DTYPE_BF16, &c->mem_dtype, err, errlen))) return rc;
    if (member(root, "last_context_length")) {
        INT("last_context_length", 1, 0, &c->last_context_length);
        POSITIVE("last_context_length", c->last_context_length);
        if (c->last_context_length > c->max_pos)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                        "config.json: field \"last_context_length\" (%d) exceeds "
                        "\"max_position_embeddings\" (%d)",
                        c->last_context_length, c->max_pos);
    } else {
        /* LongLLaMA's default, cut to the window for configs trained shorter than 1024. */
        c->last_context_length = c->max_pos < 1024 ? c->max_pos : 1024;
    }
    if ((rc = get_bool(root, "mem_positionals", 1, &c->mem_positionals, err, errlen))) return rc;
    if (!c->mem_positionals)
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                    "config.json: mem_positionals=false is not supported (memory keys must be "
                    "stored without positions, as in LongLLaMA's released checkpoints)");
    const cJSON *g = member(root, "mem_attention_grouping");
    if (g) {
        /* [single_batch_size, mem_chunk_size]: only how the reference loops; no effect here. */
        const cJSON *g0 = cJSON_GetArrayItem(g, 0), *g1 = cJSON_GetArrayItem(g, 1);
        if (!cJSON_IsArray(g) || cJSON_GetArraySize(g) != 2 || !cJSON_IsNumber(g0) ||
            !cJSON_IsNumber(g1) || g0->valuedouble < 1 || g1->valuedouble < 1)
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                        "config.json: field \"mem_attention_grouping\" must be null or "
                        "[batch, chunk] with positive integers");
        c->mem_attention_grouping_set = 1;
    }
    int torch_attention;
    if ((rc = get_bool(root, "torch_attention", 0, &torch_attention, err, errlen))) return rc;
#undef INT
#undef POSITIVE
    return RC_OK;
}

rc_t model_config_parse(const char *json, size_t len, model_config_t *out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!json || !out) return rc_errf(RC_ERR_INVALID, err, errlen, "config: no input");
    memset(out, 0, sizeof(*out));
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = (at && at >= json && at <= json + len) ? (size_t)(at - json) : 0;
        return rc_errf(RC_ERR_FORMAT, err, errlen, "config.json: invalid JSON near byte %zu", off);
    }
    rc_t rc;
    model_config_t c = {0};
    if (!cJSON_IsObject(root))
        rc = rc_errf(RC_ERR_FORMAT, err, errlen, "config.json: top level must be a JSON object");
    else
        rc = parse_root(root, &c, err, errlen);
    cJSON_Delete(root);
    if (rc == RC_OK) *out = c;
    return rc;
}

rc_t model_config_load(const char *dir, model_config_t *out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return rc_errf(RC_ERR_INVALID, err, errlen, "checkpoint path too long: %s", dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        return rc_errf(errno == ENOENT ? RC_ERR_NOT_FOUND : RC_ERR_IO, err, errlen,
                    "cannot open %s: %s", path, strerror(errno));
    rc_t rc = RC_OK;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = rc_errf(RC_ERR_IO, err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if ((unsigned long)n > CONFIG_MAX_BYTES) {
        rc =
            rc_errf(RC_ERR_FORMAT, err, errlen, "%s is %ld bytes; a config.json is a few KB", path, n);
        goto done;
    }
    buf = malloc((size_t)n + 1);
    if (!buf) {
        rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory reading %s", path);
        goto done;
    }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        rc = rc_errf(RC_ERR_IO, err, errlen, "cannot read %s", path);
        goto done;
    }
    buf[n] = '\0';
    rc = model_config_parse(buf, (size_t)n, out, err, errlen);
    if (rc && err && errlen) {
        /* Say which checkpoint: "DIR/config.json: field ..." */
        const char *tail = !strncmp(err, "config.json: ", 13) ? err + 13 : err;
        char *msg = strdup(tail);
        if (msg) {
            snprintf(err, errlen, "%s: %s", path, msg);
            free(msg);
        }
    }
done:
    free(buf);
    fclose(f);
    return rc;
}

int model_config_is_mem_layer(const model_config_t *c, int l)
{
    for (int i = 0; i < c->n_mem_layers; i++)
        if (c->mem_layers[i] == l) return 1;
    return 0;
}
