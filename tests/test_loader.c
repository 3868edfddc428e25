/* test_loader — checkpoint loading: the tiny checkpoints load with the right numbers, odd
 * but valid layouts (shards, tied embeddings, no "model." prefix, misaligned F32) load to
 * the same weights, and every broken checkpoint is refused with a status and a message
 * naming the tensor or field, leaking no memory, descriptor or mapping.
 *
 *   test_loader           tiny checkpoints and the broken variants (tiny_models fixture)
 *   test_loader --real    2-layer bf16 checkpoints of the exact LongLLaMA-3B, Code-7B and
 *                         Llama-2-7B widths, made in a temp dir and deleted after */
#include <dirent.h>
#include <math.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/dtype.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "tests/check.h"

static const char *data_dir, *src_dir, *python;

static int run(const char *cmd)
{
    int st = system(cmd);
    CHECK_MSG(st == 0, "command failed (%d): %s", st, cmd);
    return st;
}

/* Calls fn(ptr, numel, name) for every weight tensor of a loaded model. */
typedef void (*tensor_fn)(const float *a, const float *b, size_t n, const char *name, void *ctx);

static void for_each_pair(const model_t *ma, const model_t *mb, tensor_fn fn, void *ctx)
{
    const model_config_t *c = model_get_config(ma);
    const model_weights_t *a = model_get_weights(ma), *b = model_get_weights(mb);
    size_t H = (size_t)c->hidden, V = (size_t)c->vocab_size, F = (size_t)c->ffn;
    size_t Q = (size_t)c->n_heads * (size_t)c->head_dim,
           KV = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    fn(a->tok_emb, b->tok_emb, V * H, "tok_emb", ctx);
    fn(a->norm, b->norm, H, "norm", ctx);
    fn(a->lm_head, b->lm_head, V * H, "lm_head", ctx);
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer_t *x = &a->layers[l], *y = &b->layers[l];
        fn(x->attn_norm, y->attn_norm, H, "attn_norm", ctx);
        fn(x->wq, y->wq, Q * H, "wq", ctx);
        fn(x->wk, y->wk, KV * H, "wk", ctx);
        fn(x->wv, y->wv, KV * H, "wv", ctx);
        fn(x->wo, y->wo, H * Q, "wo", ctx);
        fn(x->ffn_norm, y->ffn_norm, H, "ffn_norm", ctx);
        fn(x->w_gate, y->w_gate, F * H, "w_gate", ctx);
        fn(x->w_up, y->w_up, F * H, "w_up", ctx);
        fn(x->w_down, y->w_down, H * F, "w_down", ctx);
    }
}

static void same_fn(const float *a, const float *b, size_t n, const char *name, void *ctx)
{
    (void)ctx;
    CHECK_MSG(a && b && !memcmp(a, b, n * sizeof(float)), "tensor %s differs", name);
}

/* b must be a rounded to bf16 (same seed, stored as bf16). */
static void bf16_fn(const float *a, const float *b, size_t n, const char *name, void *ctx)
{
    (void)ctx;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (bf16_to_f32(f32_to_bf16(a[i])) != b[i]) bad++;
    CHECK_MSG(bad == 0, "tensor %s: %zu of %zu elements are not the bf16 rounding", name, bad, n);
}

static model_t *load_ok(const char *dir, int allow_no_tok)
{
    model_t *m = NULL;
    char err[1024];
    rc_t rc = model_load(dir, allow_no_tok, &m, err, sizeof err);
    CHECK_MSG(rc == RC_OK && m, "loading %s: %d %s", dir, rc, err);
    return m;
}

static void test_tiny(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tiny-llama", data_dir);
    model_t *ll = load_ok(dir, 0);
    snprintf(dir, sizeof dir, "%s/tiny-fot", data_dir);
    model_t *fot = load_ok(dir, 0);
    snprintf(dir, sizeof dir, "%s/tiny-fot-bf16", data_dir);
    model_t *bf = load_ok(dir, 0);
    if (!ll || !fot || !bf) goto done;

    const model_config_t *c = model_get_config(ll);
    CHECK(!c->is_longllama && c->n_mem_layers == 0 && c->n_layers == 2 && c->hidden == 64);
    CHECK(c->n_heads == 4 && c->head_dim == 16 && c->ffn == 176 && c->vocab_size == 512);
    CHECK(c->max_pos == 128 && c->torch_dtype == DTYPE_F32);
    CHECK(strstr(model_describe(ll), "llama 2 layers, hidden 64") == model_describe(ll));
    c = model_get_config(fot);
    CHECK(c->is_longllama && c->n_mem_layers == 2 && c->mem_layers[0] == 1 &&
          c->mem_layers[1] == 2);
    CHECK(c->last_context_length == 32 && c->mem_dtype == DTYPE_F32 && c->max_pos == 64);
    CHECK(strstr(model_describe(fot), "mem layers [1,2]") != NULL);
    CHECK(strstr(model_describe(fot), "tiny-fot") != NULL);
    printf("%s\n%s\n%s\n", model_describe(ll), model_describe(fot), model_describe(bf));
    c = model_get_config(bf);
    CHECK(c->mem_dtype == DTYPE_BF16 && c->torch_dtype == DTYPE_BF16);

    const tokenizer_t *tok = model_get_tokenizer(fot);
    CHECK(tok && tokenizer_vocab_size(tok) == 512);

    /* Weights equal the file's bytes (F32) and the bf16 model is its rounding. */
    snprintf(dir, sizeof dir, "%s/tiny-llama/model.safetensors", data_dir);
    safetensors_t *st = NULL;
    char err[512];
    CHECK_RC(safetensors_open(dir, &st, err, sizeof err), RC_OK);
    if (st) {
        CHECK(safetensors_count(st) == 2 * 9 + 3);
        for (size_t i = 1; i < safetensors_count(st); i++)
            CHECK(strcmp(safetensors_at(st, i - 1)->name, safetensors_at(st, i)->name) < 0);
        CHECK(safetensors_at(st, safetensors_count(st)) == NULL);
        const st_tensor_t *t = safetensors_find(st, "model.layers.1.mlp.down_proj.weight");
        CHECK(t && t->dtype == DTYPE_F32 && t->ndim == 2 && t->shape[0] == 64 &&
              t->shape[1] == 176 && t->numel == 64 * 176 && t->nbytes == 64 * 176 * 4);
        const model_weights_t *w = model_get_weights(ll);
        CHECK(t && !memcmp(t->data, w->layers[1].w_down, t->nbytes));
        t = safetensors_find(st, "model.embed_tokens.weight");
        CHECK(t && !memcmp(t->data, w->tok_emb, t->nbytes));
        CHECK(safetensors_find(st, "model.layers.2.mlp.down_proj.weight") == NULL);
        CHECK(w->lm_head != w->tok_emb);
        /* Norm weights are 1 + 0.1 N(0,1): near one, not all equal. */
        CHECK(w->norm[0] > 0.5f && w->norm[0] < 1.5f && w->norm[0] != w->norm[1]);
    }
    safetensors_destroy(&st);
    CHECK(st == NULL);
    safetensors_destroy(&st);
    for_each_pair(fot, bf, bf16_fn, NULL);

done:
    model_destroy(&ll);
    model_destroy(&fot);
    model_destroy(&bf);
    CHECK(ll == NULL);
    model_destroy(NULL);
}

/* Variants that load, and what they must equal. */
static void test_valid_variants(const char *vdir)
{
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/tiny-llama", data_dir);
    model_t *ref = load_ok(dir, 0);
    static const char *same[] = {"sharded", "no_prefix", "unaligned"};
    for (int i = 0; i < 3; i++) {
        snprintf(dir, sizeof dir, "%s/%s", vdir, same[i]);
        model_t *m = load_ok(dir, 0);
        if (m && ref) for_each_pair(ref, m, same_fn, NULL);
        model_destroy(&m);
    }
    snprintf(dir, sizeof dir, "%s/tied", vdir);
    model_t *m = load_ok(dir, 0);
    if (m) {
        const model_weights_t *w = model_get_weights(m);
        CHECK(w->lm_head == w->tok_emb && model_get_config(m)->tie_embeddings);
        CHECK(!memcmp(w->tok_emb, model_get_weights(ref)->tok_emb, 512 * 64 * sizeof(float)));
    }
    model_destroy(&m);
    snprintf(dir, sizeof dir, "%s/no_tokenizer", vdir);
    m = load_ok(dir, 1);
    CHECK(m && model_get_tokenizer(m) == NULL);
    model_destroy(&m);
    model_destroy(&ref);
}

static void f16_fn(const float *a, const float *b, size_t n, const char *name, void *ctx)
{
    (void)ctx;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (f16_to_f32(f32_to_f16(a[i])) != b[i]) bad++;
    CHECK_MSG(bad == 0, "tensor %s: %zu of %zu elements are not the f16 rounding", name, bad, n);
}

/* tools/make_test_model.py options: the same seed gives the same weights in any dtype. */
static void test_maker_variants(const char *vdir)
{
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/maker_f32", vdir);
    model_t *a = load_ok(dir, 0);
    snprintf(dir, sizeof dir, "%s/maker_f16", vdir);
    model_t *b = load_ok(dir, 0);
    if (a && b) {
        const model_config_t *c = model_get_config(b);
        CHECK(c->n_kv_heads == 2 && c->n_heads == 4 && c->tie_embeddings && c->n_layers == 3);
        CHECK(c->n_mem_layers == 2 && c->mem_layers[0] == 0 && c->mem_layers[1] == 2);
        CHECK(c->rope_theta == 500000.0f && c->torch_dtype == DTYPE_F16);
        CHECK(model_get_weights(b)->lm_head == model_get_weights(b)->tok_emb);
        for_each_pair(a, b, f16_fn, NULL);
        /* --qk-gain 2 vs --gain 0.5 at fan-in 64: q weights have 4x the spread of v. */
        const model_layer_t *L = &model_get_weights(a)->layers[0];
        double sq = 0, sv = 0;
        for (int i = 0; i < 32 * 64; i++)
            sq += L->wq[i] * L->wq[i], sv += L->wv[i] * L->wv[i];
        CHECK_MSG(sq / sv > 10 && sq / sv < 22, "q/v energy ratio %g, want about 16", sq / sv);
    }
    model_destroy(&a);
    model_destroy(&b);
    snprintf(dir, sizeof dir, "%s/maker_no_tok", vdir);
    model_t *m = load_ok(dir, 1);
    CHECK(m && model_get_tokenizer(m) == NULL && !model_get_config(m)->is_longllama);
    model_destroy(&m);
}

typedef struct bad_case {
    const char *name;
    rc_t want;
    const char *needle1, *needle2;
} bad_case_t;

static const bad_case_t BAD[] = {
    {"missing_tensor", RC_ERR_NOT_FOUND, "model.layers.1.mlp.up_proj.weight", "missing"},
    {"misshaped", RC_ERR_FORMAT, "model.layers.0.self_attn.k_proj.weight",
     "[32, 128], expected [64, 64]"},
    {"rank3", RC_ERR_FORMAT, "model.norm.weight", "[1, 1, 64]"},
    {"dtype_i8", RC_ERR_UNSUPPORTED, "model.norm.weight", "I8"},
    {"dtype_f64", RC_ERR_UNSUPPORTED, "model.norm.weight", "F64"},
    {"offsets_out_of_range", RC_ERR_FORMAT, "lm_head.weight", "data_offsets"},
    {"size_mismatch", RC_ERR_FORMAT, "model.norm.weight", "bytes"},
    {"overlap", RC_ERR_FORMAT, "overlap", "layernorm.weight"},
    {"bad_json", RC_ERR_FORMAT, "header", "model.safetensors"},
    {"duplicate_name", RC_ERR_FORMAT, "model.embed_tokens.weight", "twice"},
    {"truncated", RC_ERR_FORMAT, "truncated", "model.safetensors"},
    {"truncated_header", RC_ERR_FORMAT, "truncated", "model.safetensors"},
    {"header_len_too_big", RC_ERR_FORMAT, "header length", "model.safetensors"},
    {"config_more_layers", RC_ERR_NOT_FOUND, "model.layers.2.", "missing"},
    {"config_fewer_layers", RC_ERR_FORMAT, "num_hidden_layers", "model.layers.1."},
    {"config_ffn", RC_ERR_FORMAT, "mlp.gate_proj.weight", "intermediate_size"},
    {"config_kv_heads", RC_ERR_FORMAT, "self_attn.k_proj.weight", "num_key_value_heads"},
    {"config_vocab", RC_ERR_FORMAT, "model.embed_tokens.weight", "[512, 64], expected [1024, 64]"},
    {"config_vocab_small", RC_ERR_FORMAT, "512 pieces", "vocab_size is 256"},
    {"config_mem_positionals", RC_ERR_UNSUPPORTED, "mem_positionals=false", "config.json"},
    {"config_mem_layer_range", RC_ERR_INVALID, "mem_layers", "config.json"},
    {"no_config", RC_ERR_NOT_FOUND, "config.json", "no_config"},
    {"no_tokenizer", RC_ERR_NOT_FOUND, "tokenizer.model", "no_tokenizer"},
    {"bad_tokenizer", RC_ERR_FORMAT, "tokenizer.model", "SentencePiece"},
    {"no_weights", RC_ERR_NOT_FOUND, "model.safetensors", "convert_longllama"},
    {"no_lm_head", RC_ERR_NOT_FOUND, "lm_head.weight", "tie_word_embeddings"},
    {"tokenizer_too_big", RC_ERR_FORMAT, "vocab_size is 400", "512 pieces"},
    {"sharded_missing_file", RC_ERR_NOT_FOUND, "model-00003-of-00003.safetensors", "cannot open"},
    {"sharded_wrong_map", RC_ERR_FORMAT, "model.norm.weight", "model-00001-of-00002.safetensors"},
    {"sharded_bad_name", RC_ERR_FORMAT, "model.norm.weight", "file name"},
    {"does_not_exist", RC_ERR_NOT_FOUND, "config.json", "does_not_exist"},
};

static void run_bad_cases(const char *vdir, int verbose)
{
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        char dir[2048], err[1024] = "";
        snprintf(dir, sizeof dir, "%s/%s", vdir, BAD[i].name);
        model_t *m = (model_t *)1;
        rc_t rc = model_load(dir, 0, &m, err, sizeof err);
        if (verbose) printf("  %-24s rc %3d  %s\n", BAD[i].name, rc, err);
        CHECK_MSG(rc == BAD[i].want, "%s: rc %d, want %d (%s)", BAD[i].name, rc, BAD[i].want, err);
        CHECK_MSG(m == NULL, "%s: *out not NULL after failure", BAD[i].name);
        CHECK_MSG(strstr(err, BAD[i].needle1) && strstr(err, BAD[i].needle2),
                  "%s: error \"%s\" lacks \"%s\" or \"%s\"", BAD[i].name, err, BAD[i].needle1,
                  BAD[i].needle2);
        if (rc == RC_OK) model_destroy(&m);
        /* The same problem found by the check alone (what a GPU daemon runs: no fp32). */
        char err2[1024] = "";
        m = NULL;
        rc_t rc2 = model_open(dir, 0, &m, err2, sizeof err2);
        if (rc2 == RC_OK) rc2 = model_check_weights(m, err2, sizeof err2);
        CHECK_MSG(rc2 == rc && (rc != RC_OK || model_get_stored(m)) &&
                      (rc == RC_OK || !strcmp(err2, err)),
                  "%s: open + check gave rc %d \"%s\", load rc %d \"%s\"", BAD[i].name, rc2, err2,
                  rc, err);
        model_destroy(&m);
    }
}

static long count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long n = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    long n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void test_bad_variants(const char *vdir)
{
    /* First pass warms one-time allocations (OpenMP pools, sentencepiece statics). */
    run_bad_cases(vdir, 1);
    struct mallinfo2 a = mallinfo2();
    long maps = count_lines("/proc/self/maps"), fds = count_fds();
    for (int k = 0; k < 3; k++)
        run_bad_cases(vdir, 0);
    struct mallinfo2 b = mallinfo2();
#if !defined(__SANITIZE_ADDRESS__)
    /* Under ASan, mallinfo2 and the mappings belong to its allocator (LeakSanitizer checks
     * the heap instead). */
    CHECK_MSG(a.uordblks == b.uordblks && a.hblkhd == b.hblkhd,
              "heap in use changed over failing loads: %zu+%zu -> %zu+%zu bytes", a.uordblks,
              a.hblkhd, b.uordblks, b.hblkhd);
    CHECK_MSG(count_lines("/proc/self/maps") == maps, "mappings leaked: %ld -> %ld", maps,
              count_lines("/proc/self/maps"));
#else
    (void)a;
    (void)b;
    (void)maps;
#endif
    CHECK_MSG(count_fds() == fds, "descriptors leaked: %ld -> %ld", fds, count_fds());

    /* Successful loads and destroys leak nothing either. */
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/sharded", vdir);
    model_t *m = load_ok(dir, 0);
    model_destroy(&m);
    a = mallinfo2();
    maps = count_lines("/proc/self/maps");
    for (int k = 0; k < 3; k++) {
        m = load_ok(dir, 0);
        model_destroy(&m);
    }
    b = mallinfo2();
#if !defined(__SANITIZE_ADDRESS__)
    CHECK_MSG(a.uordblks == b.uordblks && a.hblkhd == b.hblkhd,
              "heap in use changed over load/destroy: %zu -> %zu", a.uordblks, b.uordblks);
    CHECK(count_lines("/proc/self/maps") == maps);
#else
    (void)b;
#endif
}

/* tools/convert_longllama.py: tiny-fot-bf16 saved by torch as pytorch_model.bin (single and
 * two shards), converted back, must load to exactly the same weights. */
static void test_converter(const char *vdir)
{
    char ref_dir[1024], cmd[8192];
    snprintf(ref_dir, sizeof ref_dir, "%s/tiny-fot-bf16", data_dir);
    model_t *ref = load_ok(ref_dir, 0);
    for (int shards = 1; shards <= 2; shards++) {
        char bin[2048], conv[2048];
        snprintf(bin, sizeof bin, "%s/torchbin%d", vdir, shards);
        snprintf(conv, sizeof conv, "%s/converted%d", vdir, shards);
        snprintf(cmd, sizeof cmd,
                 "'%s' '%s/tests/loader_shapes.py' torchbin '%s' '%s' %d && "
                 "'%s' '%s/tools/convert_longllama.py' '%s' '%s' 2>/dev/null",
                 python, src_dir, ref_dir, bin, shards, python, src_dir, bin, conv);
        if (run(cmd)) continue;
        /* The .bin directory itself is refused with a pointer to the converter. */
        model_t *m = NULL;
        char err[1024];
        CHECK_RC(model_load(bin, 0, &m, err, sizeof err), RC_ERR_NOT_FOUND);
        CHECK(strstr(err, "convert_longllama.py") != NULL);
        m = load_ok(conv, 0);
        if (m && ref) {
            for_each_pair(ref, m, same_fn, NULL);
            CHECK(model_get_config(m)->torch_dtype == DTYPE_BF16);
        }
        model_destroy(&m);
    }
    model_destroy(&ref);
}

/* model_check_weights: the tensors as stored, no fp32 until model_load_weights, which then
 * widens exactly those bytes. */
static void test_stored(void)
{
    char dir[1024], err[1024] = "";
    snprintf(dir, sizeof dir, "%s/tiny-fot-bf16", data_dir);
    model_t *m = NULL;
    CHECK_RC(model_open(dir, 0, &m, err, sizeof err), RC_OK);
    if (!m) return;
    CHECK(model_get_stored(m) == NULL && model_get_weights(m) == NULL);
    CHECK_RC(model_check_weights(m, err, sizeof err), RC_OK);
    const model_stored_t *sd = model_get_stored(m);
    const model_config_t *c = model_get_config(m);
    CHECK(sd && model_get_weights(m) == NULL && !model_has_f32_weights(m));
    if (!sd) goto done;
    CHECK(sd->tok_emb.dtype == DTYPE_BF16 &&
          sd->tok_emb.numel == (size_t)c->vocab_size * (size_t)c->hidden);
    CHECK(sd->layers[1].wk.numel == (size_t)c->n_kv_heads * c->head_dim * (size_t)c->hidden);
    CHECK_RC(model_check_weights(m, err, sizeof err), RC_OK); /* once done, a no-op */
    CHECK(model_get_stored(m) == sd);
    CHECK_RC(model_load_weights(m, err, sizeof err), RC_OK);
    const model_weights_t *w = model_get_weights(m);
    CHECK(w && model_has_f32_weights(m) && model_get_stored(m) == sd);
    if (!w) goto done;
    const struct {
        const model_tensor_t *t;
        const float *f;
    } pairs[] = {{&sd->tok_emb, w->tok_emb},           {&sd->lm_head, w->lm_head},
                 {&sd->layers[0].wq, w->layers[0].wq}, {&sd->layers[1].w_down, w->layers[1].w_down},
                 {&sd->norm, w->norm}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        size_t bad = 0;
        const uint16_t *h = pairs[i].t->data;
        for (size_t k = 0; k < pairs[i].t->numel; k++) bad += bf16_to_f32(h[k]) != pairs[i].f[k];
        CHECK_MSG(bad == 0, "pair %zu: %zu elements differ from the stored bf16", i, bad);
    }
done:
    model_destroy(&m);
}

static int tiny_main(void)
{
    char vdir[] = "/tmp/recall_test_loader_XXXXXX", cmd[4096];
    if (!mkdtemp(vdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_tiny();
    test_stored();
    snprintf(cmd, sizeof cmd, "'%s' '%s/tests/loader_shapes.py' variants '%s/tiny-llama' '%s/v'",
             python, src_dir, data_dir, vdir);
    if (run(cmd) == 0) {
        char v[1100];
        snprintf(v, sizeof v, "%s/v", vdir);
        test_valid_variants(v);
        test_maker_variants(v);
        test_bad_variants(v);
        test_converter(v);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", vdir);
    run(cmd);
    return check_summary();
}

/* ---- real shapes ---------------------------------------------------------------------- */

static void check_against_file(const model_t *m, const char *dir)
{
    /* The loader's fp32 must be exactly the file's bf16, widened. Embeddings, one layer and
     * the head cover every kind of tensor without re-reading the whole file twice. */
    safetensors_t *st = NULL;
    char err[512];
    CHECK_RC(safetensors_open_dir(dir, &st, err, sizeof err), RC_OK);
    if (!st) return;
    const model_weights_t *w = model_get_weights(m);
    struct {
        const char *name;
        const float *p;
    } ts[] = {{"model.embed_tokens.weight", w->tok_emb},
              {"lm_head.weight", w->lm_head},
              {"model.norm.weight", w->norm},
              {"model.layers.1.self_attn.q_proj.weight", w->layers[1].wq},
              {"model.layers.1.self_attn.k_proj.weight", w->layers[1].wk},
              {"model.layers.1.self_attn.v_proj.weight", w->layers[1].wv},
              {"model.layers.1.self_attn.o_proj.weight", w->layers[1].wo},
              {"model.layers.1.mlp.gate_proj.weight", w->layers[1].w_gate},
              {"model.layers.1.mlp.up_proj.weight", w->layers[1].w_up},
              {"model.layers.1.mlp.down_proj.weight", w->layers[1].w_down},
              {"model.layers.1.input_layernorm.weight", w->layers[1].attn_norm},
              {"model.layers.1.post_attention_layernorm.weight", w->layers[1].ffn_norm}};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        const st_tensor_t *t = safetensors_find(st, ts[i].name);
        CHECK_MSG(t && t->dtype == DTYPE_BF16, "%s missing or not bf16", ts[i].name);
        if (!t) continue;
        const uint16_t *h = t->data;
        size_t bad = 0, nonfinite = 0;
        for (size_t k = 0; k < t->numel; k++) {
            if (bf16_to_f32(h[k]) != ts[i].p[k]) bad++;
            if (!isfinite(ts[i].p[k])) nonfinite++;
        }
        CHECK_MSG(bad == 0 && nonfinite == 0, "%s: %zu elements differ, %zu not finite", ts[i].name,
                  bad, nonfinite);
    }
    safetensors_destroy(&st);
}

static int real_main(void)
{
    static const struct {
        const char *kind;
        int hidden, heads, head_dim, ffn, vocab, max_pos, last_ctx, n_mem;
        float theta;
    } R[] = {
        {"longllama-3b", 3200, 32, 100, 8640, 32000, 2048, 1024, 1, 1e4f},
        {"code-7b", 4096, 32, 128, 11008, 32016, 4096, 3072, 1, 1e6f},
        {"llama2-7b", 4096, 32, 128, 11008, 32000, 4096, 0, 0, 1e4f},
    };
    char tok[1024];
    snprintf(tok, sizeof tok, "%s/tiny-fot/tokenizer.model", data_dir);
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++) {
        const char *tmp = getenv("TMPDIR");
        char dir[1024], cmd[4096];
        snprintf(dir, sizeof dir, "%s/recall_real_%s_XXXXXX", tmp && *tmp ? tmp : "/tmp",
                 R[i].kind);
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            return 1;
        }
        snprintf(cmd, sizeof cmd, "'%s' '%s/tests/loader_shapes.py' real '%s/ckpt' %s '%s'", python,
                 src_dir, dir, R[i].kind, tok);
        double t0 = clock_now_s();
        if (run(cmd) == 0) {
            double t1 = clock_now_s();
            char ck[1100];
            snprintf(ck, sizeof ck, "%s/ckpt", dir);
            model_t *m = load_ok(ck, 0);
            double t2 = clock_now_s();
            if (m) {
                const model_config_t *c = model_get_config(m);
                CHECK(c->n_layers == 2 && c->hidden == R[i].hidden && c->n_heads == R[i].heads);
                CHECK(c->head_dim == R[i].head_dim && c->ffn == R[i].ffn);
                CHECK(c->vocab_size == R[i].vocab && c->max_pos == R[i].max_pos);
                CHECK(c->last_context_length == R[i].last_ctx && c->n_mem_layers == R[i].n_mem);
                CHECK(c->rope_theta == R[i].theta && c->torch_dtype == DTYPE_BF16);
                CHECK(c->is_longllama == (R[i].n_mem > 0));
                CHECK(R[i].n_mem == 0 || (c->mem_layers[0] == 1 && c->mem_dtype == DTYPE_BF16));
                CHECK(tokenizer_vocab_size(model_get_tokenizer(m)) <= c->vocab_size);
                check_against_file(m, ck);
                printf("%-13s made in %5.1fs, loaded in %5.2fs: %s\n", R[i].kind, t1 - t0, t2 - t1,
                       model_describe(m));
            }
            model_destroy(&m);
        }
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        run(cmd);
    }
    return check_summary();
}

int main(int argc, char **argv)
{
    /* glibc's per-thread caches hold freed chunks that mallinfo2 counts as in use; without
     * them the heap figure is exact and the leak checks above can demand equality. */
    const char *tun = getenv("GLIBC_TUNABLES");
    if (!tun || !strstr(tun, "glibc.malloc.tcache_count=0")) {
        setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0", 1);
        execv("/proc/self/exe", argv);
        perror("re-exec with GLIBC_TUNABLES"); /* go on: the heap check may then be noisy */
    }
    data_dir = getenv("RECALL_TEST_DATA");
    src_dir = getenv("RECALL_SOURCE_DIR");
    python = getenv("RECALL_PYTHON");
    if (!python || !*python) python = "/usr/bin/python3";
    if (!data_dir || !src_dir) {
        fprintf(stderr, "test_loader: RECALL_TEST_DATA and RECALL_SOURCE_DIR must be set "
                        "(run through ctest)\n");
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "--real")) return real_main();
    return tiny_main();
}
