/* test_cuda_positional.c — Self-Extend, DCA and YaRN on the GPU against the CPU reference.
 *
 * 1. Kernel: cuda_attention_fast with a positional layout (kernels/cuda.h) against
 *    cpu_attention_ext (kernels/cpu.h) on fresh random inputs (the seed is printed;
 *    RECALL_SEED=N repeats a run). Every query variant (q, q_alt[0], q_alt[1], q_mem) and
 *    Self-Extend's second key set are drawn independently, so a pair that takes its score
 *    from the wrong variant, a wrong threshold or a wrong memory factor moves the output by
 *    1e-1 or more, far above the tolerance. Inputs are rounded to bf16 first and the
 *    reference gets the rounded values (fp32 memory: exact, the kernel rounds it while
 *    staging). Each case runs without a workspace, with the planned one (split key range)
 *    and with half of it, into an output poisoned with NaN; a second run must give the same
 *    bits. Tolerance on ‖out − ref‖ / ‖ref‖: 5e-3, as tests/test_cuda_attention_mma.c.
 * 2. Whole model: the CUDA backend against the CPU backend (model_stream API) on small head
 *    dim 64 checkpoints made with tools/make_test_model.py, with windows 4× the trained
 *    length: Self-Extend (several G, W), DCA (default and custom S, w; with and without
 *    ChunkLlama's scale), YaRN; FoT memory in f32 and bf16; grouped-query heads; chunked
 *    feeding (uneven chunks, so forwards start at local > 0) and one-token decode. Tolerance
 *    as tests/test_cuda_model.c (max |Δ logprob| 0.08, mean 0.02).
 *
 * With no GPU (CI) it prints "skipped: no GPU" and exits 77. RECALL_POS_KERNEL_ONLY=1 runs
 * part 1 only (for compute-sanitizer). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "common/log.h"
#include "kernels/cpu.h"
#include "kernels/cuda.h"
#include "memory/store.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"
#include "tests/check.h"
#include "tests/gpu_pair.h"
#include "tests/gpu_ops.h"

#define TOL_LP 0.08
#define TOL_LP_MEAN 0.02
#define GREEDY_MARGIN 0.3
#define GEN_TOKENS 16

/* n normal values rounded to dtype t (bf16: what the device will hold). */
static float *rand_t(size_t n, dtype_t t)
{
    float *x = malloc((n ? n : 1) * sizeof(float));
    if (!x) abort();
    for (size_t i = 0; i < n; i++) {
        x[i] = rng_normal();
        if (t == DTYPE_BF16) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
    }
    return x;
}

static double worst_err;

static void compare(const char *desc, const uint16_t *raw, const float *ref, size_t n)
{
    const double err = gpu_compare_raw("attention_pos", desc, raw, DTYPE_BF16, ref, n,
                                       GPU_TOL_BF16);
    if (raw && err > worst_err) worst_err = err;
}

/* Waits for the device and reads n bf16 values back raw. */
static uint16_t *host_raw(const void *d, size_t n)
{
    uint16_t *raw = gpu_xmalloc(n * 2);
    if (gpu_fetch(raw, d, n * 2)) {
        free(raw);
        return NULL;
    }
    return raw;
}

typedef struct pcase {
    int head_dim, n_q, n_k, q_offset, n_heads, n_kv_heads;
    size_t n_mem;
    int layout;      /* cuda_attn_layout_t (same values as cpu_attn_layout_t) */
    int param;       /* self-extend W, dca c */
    int q_mem;       /* memory queries of their own */
    float mem_mult;  /* mem_scale = scale · mem_mult; 0: default */
    dtype_t mem_t;
} pcase_t;

static const char *layout_name(int l)
{
    return l == CUDA_ATTN_SELF_EXTEND ? "self-extend" : l == CUDA_ATTN_DCA ? "dca" : "plain";
}

static void kernel_case(const pcase_t *c)
{
    const int hd = c->head_dim;
    const dtype_t B = DTYPE_BF16;
    const size_t nq = (size_t)c->n_q * c->n_heads * hd;
    const size_t nk = (size_t)c->n_k * c->n_kv_heads * hd;
    const size_t nm = c->n_mem * c->n_kv_heads * hd;
    const int n_alt = c->layout == CUDA_ATTN_DCA ? 2 : c->layout == CUDA_ATTN_SELF_EXTEND;
    float *q = rand_t(nq, B), *k = rand_t(nk, B), *v = rand_t(nk, B);
    float *qa[2] = {n_alt > 0 ? rand_t(nq, B) : NULL, n_alt > 1 ? rand_t(nq, B) : NULL};
    float *ka = c->layout == CUDA_ATTN_SELF_EXTEND ? rand_t(nk, B) : NULL;
    float *qm = c->q_mem ? rand_t(nq, B) : NULL;
    float *mk = rand_t(nm, c->mem_t), *mv = rand_t(nm, c->mem_t);
    void *h_mk = malloc((nm ? nm : 1) * dtype_size(c->mem_t));
    void *h_mv = malloc((nm ? nm : 1) * dtype_size(c->mem_t));
    float *ref = malloc(nq * sizeof(float));
    if (!h_mk || !h_mv || !ref) abort();
    dtype_from_f32(h_mk, c->mem_t, mk, nm);
    dtype_from_f32(h_mv, c->mem_t, mv, nm);
    const float scale = 1.0f / sqrtf((float)hd);
    const float mem_scale = c->mem_mult != 0.0f ? scale * c->mem_mult : 0.0f;

    attn_ext_args_t e = {
        .a = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads,
              .head_dim = hd, .q_offset = c->q_offset, .q = q, .k = k, .v = v,
              .n_mem = c->n_mem, .mem_dtype = c->mem_t, .mem_k = h_mk, .mem_v = h_mv,
              .scale = scale, .out = ref},
        .layout = (cpu_attn_layout_t)c->layout,
        .neighbor = c->param,
        .chunk_len = c->param,
        .q_alt = {qa[0], qa[1]},
        .k_alt = ka,
        .q_mem = qm,
        .mem_scale = mem_scale,
    };
    cpu_attention_ext(&e);

    cuda_attn_args_t a = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = c->n_heads,
                          .n_kv_heads = c->n_kv_heads, .head_dim = hd, .q_offset = c->q_offset,
                          .dtype = B, .n_mem = c->n_mem, .mem_dtype = c->mem_t, .scale = scale,
                          .layout = c->layout, .neighbor = c->param, .chunk_len = c->param,
                          .mem_scale = mem_scale};
    a.q = gpu_upload(q, nq, B);
    a.k = gpu_upload(k, nk, B);
    a.v = gpu_upload(v, nk, B);
    a.q_alt[0] = gpu_upload(qa[0], nq, B);
    a.q_alt[1] = gpu_upload(qa[1], nq, B);
    a.k_alt = gpu_upload(ka, nk, B);
    a.q_mem = gpu_upload(qm, nq, B);
    if (nm) {
        a.mem_k = gpu_upload(mk, nm, c->mem_t);
        a.mem_v = gpu_upload(mv, nm, c->mem_t);
    }
    size_t ws_bytes = 0;
    void *ws = NULL;
    CHECK_RC(cuda_attention_fast_workspace(&a, &ws_bytes), RC_OK);
    if (ws_bytes) CHECK_RC(cuda_alloc(&ws, ws_bytes), RC_OK);
    for (int use_ws = 0; use_ws <= (ws_bytes ? 2 : 0); use_ws++) {
        void *o = NULL;
        if (cuda_alloc(&o, nq * 2) || cuda_memset(o, 0xFF, nq * 2, NULL))
            gpu_setup_failed("the output buffer");
        a.out = o;
        a.workspace = use_ws ? ws : NULL;
        a.workspace_bytes = use_ws == 1 ? ws_bytes : use_ws == 2 ? ws_bytes / 2 : 0;
        if (!gpu_setup_failures()) {
            CHECK_RC(cuda_attention_fast(&a, NULL), RC_OK);
            uint16_t *out = host_raw(a.out, nq);
            char desc[220];
            snprintf(desc, sizeof desc, "%s %d d%d q%d k%d off%d h%d/%d mem %zu%s%s%s%s",
                     layout_name(c->layout), c->param, hd, c->n_q, c->n_k, c->q_offset,
                     c->n_heads, c->n_kv_heads, c->n_mem,
                     nm ? (c->mem_t == DTYPE_F32 ? " f32" : " bf16") : "",
                     c->q_mem ? " q_mem" : "", c->mem_mult != 0.0f ? " mem_scale" : "",
                     use_ws == 1 ? " split" : use_ws == 2 ? " split/2" : "");
            compare(desc, out, ref, nq);
            if (use_ws == 0 && out) {
                CHECK_RC(cuda_memset(o, 0xFF, nq * 2, NULL), RC_OK);
                CHECK_RC(cuda_attention_fast(&a, NULL), RC_OK);
                uint16_t *again = host_raw(a.out, nq);
                CHECK_MSG(again && !memcmp(again, out, nq * 2),
                          "%s: a second run gave different bits (a race?)", desc);
                free(again);
            }
            free(out);
        }
        cuda_free(&o);
    }

    /* Refusals: a layout the kernel does not know, a missing operand, a bad size. */
    cuda_attn_args_t bad = a;
    bad.layout = 3;
    CHECK_RC(cuda_attention_fast(&bad, NULL), RC_ERR_INVALID);
    if (c->layout != CUDA_ATTN_PLAIN) {
        bad = a;
        bad.q_alt[n_alt - 1] = NULL;
        CHECK_RC(cuda_attention_fast(&bad, NULL), RC_ERR_INVALID);
        bad = a;
        bad.neighbor = bad.chunk_len = 0;
        CHECK_RC(cuda_attention_fast(&bad, NULL), RC_ERR_INVALID);
        bad = a;
        bad.dtype = DTYPE_F32; /* the FMA kernel cannot do it: refused, not ignored */
        CHECK_RC(cuda_attention_fast(&bad, NULL), RC_ERR_UNSUPPORTED);
    }

    void *bufs[] = {(void *)a.q, (void *)a.k, (void *)a.v, (void *)a.q_alt[0],
                    (void *)a.q_alt[1], (void *)a.k_alt, (void *)a.q_mem, (void *)a.mem_k,
                    (void *)a.mem_v, ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cuda_free(&bufs[i]);
    float *host[] = {q, k, v, qa[0], qa[1], ka, qm, mk, mv, ref};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(h_mk);
    free(h_mv);
}

static void kernel_cases(void)
{
    const int SE = CUDA_ATTN_SELF_EXTEND, DCA = CUDA_ATTN_DCA, P = CUDA_ATTN_PLAIN;
    const dtype_t B = DTYPE_BF16, F = DTYPE_F32;
    static const pcase_t cases[] = {
        /* d   n_q   n_k   off  h  kv  mem   layout W/c  q_mem mem_mult mem_t */
        {64, 300, 300, 0, 4, 4, 0, SE, 16, 0, 0, B},
        {100, 130, 700, 570, 8, 2, 300, SE, 100, 1, 1.3f, B},
        {128, 64, 1000, 936, 4, 1, 0, SE, 1, 0, 0, B},       /* all grouped but the diagonal */
        {128, 1, 2048, 2047, 8, 8, 1000, SE, 512, 1, 0, F},  /* decode */
        {64, 257, 257, 0, 2, 2, 77, SE, 300, 1, 0, F},       /* W past the window: plain */
        {100, 500, 3000, 2500, 4, 4, 0, SE, 1024, 0, 0, B},
        {64, 70, 70, 0, 4, 4, 0, SE, 7, 0, 0, B},            /* band inside one tile */
        {64, 300, 300, 0, 4, 2, 0, DCA, 40, 0, 0, B},
        {100, 200, 1000, 800, 4, 4, 500, DCA, 250, 1, 1.1f, F},
        {128, 100, 1500, 1400, 8, 2, 0, DCA, 96, 0, 0, B},
        {128, 1, 3000, 2999, 4, 4, 2000, DCA, 700, 1, 1.2f, B}, /* decode */
        {100, 33, 33, 0, 4, 4, 1000, DCA, 7, 1, 0, B},       /* chunks shorter than a warp */
        {64, 130, 900, 770, 2, 1, 64, DCA, 64, 1, 0, F},     /* tile-aligned chunks */
        {100, 100, 300, 200, 4, 2, 500, P, 0, 1, 1.2f, B},   /* YaRN-like memory */
        {128, 80, 200, 120, 4, 4, 300, P, 0, 0, 1.25f, F},   /* memory factor only */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) kernel_case(&cases[i]);
}

/* ---- whole model ---------------------------------------------------------------------- */

static double worst_max, worst_mean;

static uint32_t rng_u32(void)
{
    return (uint32_t)(rng_next() >> 11);
}

static void compare_logprobs(const char *name, model_backend_t *cpu, model_backend_t *gpu,
                             const model_stream_opts_t *o, const int32_t *tok, size_t n)
{
    double mx = 0, mean = 0;
    pair_compare_logprobs(name, cpu, gpu, o, tok, n, TOL_LP, TOL_LP_MEAN, &mx, &mean);
    if (mx > worst_max) worst_max = mx;
    if (mean > worst_mean) worst_mean = mean;
}

/* Greedy continuation on the GPU one token at a time (decode); the CPU replays it and must
 * rank each GPU token within GREEDY_MARGIN of its best logit. */
static void compare_greedy(const char *name, model_backend_t *cpu, model_backend_t *gpu,
                           const model_stream_opts_t *o, const int32_t *prompt, size_t n)
{
    const int vocab = model_get_config(model_backend_model(cpu))->vocab_size;
    float *lc = malloc((size_t)vocab * sizeof *lc), *lg = malloc((size_t)vocab * sizeof *lg);
    int32_t gen[GEN_TOKENS];
    model_stream_t *sc = NULL, *sg = NULL;
    if (!lc || !lg || pair_stream(cpu, o, &sc) || pair_stream(gpu, o, &sg)) goto done;
    if (pair_feed_uneven(sg, prompt, n - 1, NULL, NULL) ||
        model_stream_feed(sg, prompt + n - 1, 1, NULL, lg)) {
        CHECK_MSG(0, "%s: feeding the GPU stream failed", name);
        goto done;
    }
    for (int i = 0; i < GEN_TOKENS; i++) {
        gen[i] = cpu_argmax(lg, vocab);
        CHECK_RC(model_stream_feed(sg, &gen[i], 1, NULL, lg), RC_OK);
    }
    CHECK_RC(model_stream_feed(sc, prompt, n, NULL, lc), RC_OK);
    double worst = 0;
    int agree = 0, diverged = 0;
    for (int i = 0; i < GEN_TOKENS; i++) {
        const int best = cpu_argmax(lc, vocab);
        const double gap = (double)lc[best] - lc[gen[i]];
        if (!(gap <= worst)) worst = gap;
        if (!diverged && best == gen[i])
            agree++;
        else
            diverged = 1;
        CHECK_RC(model_stream_feed(sc, &gen[i], 1, NULL, lc), RC_OK);
    }
    printf("%-44s greedy %d tokens: %d identical before the first difference; worst CPU "
           "logit gap of a GPU token %.4f\n",
           name, GEN_TOKENS, agree, worst);
    CHECK_MSG(worst <= GREEDY_MARGIN, "%s: a GPU greedy token is %.3f below the CPU's best", name,
              worst);
done:
    model_stream_destroy(&sc);
    model_stream_destroy(&sg);
    free(lc);
    free(lg);
}

static int32_t *random_tokens(size_t n, int vocab)
{
    int32_t *t = malloc(n * sizeof *t);
    if (t)
        for (size_t i = 0; i < n; i++) t[i] = 3 + (int32_t)(rng_u32() % (uint32_t)(vocab - 3));
    return t;
}

static model_stream_opts_t opts_se(int window, int g, int w, dtype_t mt)
{
    model_stream_opts_t o;
    memset(&o, 0, sizeof o);
    o.window = window;
    o.positional = POSITIONAL_SELF_EXTEND;
    o.group = g;
    o.neighbor = w;
    o.mem_dtype_set = 1;
    o.mem_dtype = mt;
    return o;
}

static model_stream_opts_t opts_dca(int window, int S, int w, int no_scale, dtype_t mt)
{
    model_stream_opts_t o;
    memset(&o, 0, sizeof o);
    o.window = window;
    o.positional = POSITIONAL_DCA;
    o.chunk_size = S;
    o.local_window = w;
    o.dca_no_scale = no_scale;
    o.mem_dtype_set = 1;
    o.mem_dtype = mt;
    return o;
}

/* FoT layout (memory layers 1, 2), trained length 64, windows of 256 (4×): three full
 * windows go to memory, so the last one attends to 768 memory rows with its scheme's
 * memory positions. */
static void case_fot(const char *dir)
{
    pair_t p;
    if (pair_open(dir, &p)) goto done;
    const model_config_t *c = model_get_config(p.m);
    const int L = c->max_pos, window = 4 * L;
    const size_t n = (size_t)window * 3 + 90;
    int32_t *tok = random_tokens(n, c->vocab_size);
    if (!tok) goto done;
    const dtype_t B = DTYPE_BF16, F = DTYPE_F32;
    model_stream_opts_t o;
    char name[120];
    snprintf(name, sizeof name, "fot-d64 self-extend G8 W16 win%d f32", window);
    o = opts_se(window, 8, 16, F);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    snprintf(name, sizeof name, "fot-d64 self-extend G6 W24 win%d bf16", window);
    o = opts_se(window, 6, 24, B);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    compare_greedy(name, p.cpu, p.gpu, &o, tok, (size_t)window + 40);
    snprintf(name, sizeof name, "fot-d64 self-extend G16 W40 win%d bf16", window);
    o = opts_se(window, 16, 40, B);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    snprintf(name, sizeof name, "fot-d64 dca default win%d bf16", window);
    o = opts_dca(window, 0, 0, 0, B);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    compare_greedy(name, p.cpu, p.gpu, &o, tok, (size_t)window + 40);
    snprintf(name, sizeof name, "fot-d64 dca S56 w16 win%d f32", window);
    o = opts_dca(window, 56, 16, 0, F);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    snprintf(name, sizeof name, "fot-d64 dca default no-scale win%d f32", window);
    o = opts_dca(window, 0, 0, 1, F);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    snprintf(name, sizeof name, "fot-d64 yarn x4 win%d bf16", window);
    memset(&o, 0, sizeof o);
    o.window = window;
    o.rope_scaling_set = 1;
    o.rope_scaling = ROPE_SCALING_YARN;
    o.rope_factor = 4.0f;
    o.mem_dtype_set = 1;
    o.mem_dtype = B;
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    compare_greedy(name, p.cpu, p.gpu, &o, tok, (size_t)window + 40);
    free(tok);
done:
    pair_close(&p);
}

/* Plain LLaMA, grouped-query heads (4 on 2), trained length 128, windows of 512. */
static void case_llama(const char *dir)
{
    pair_t p;
    if (pair_open(dir, &p)) goto done;
    const model_config_t *c = model_get_config(p.m);
    const int L = c->max_pos, window = 4 * L;
    const size_t n = (size_t)window * 2 + 100;
    int32_t *tok = random_tokens(n, c->vocab_size);
    if (!tok) goto done;
    model_stream_opts_t o;
    char name[120];
    snprintf(name, sizeof name, "llama-d64 gqa self-extend G8 W32 win%d", window);
    o = opts_se(window, 8, 32, DTYPE_F32);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    snprintf(name, sizeof name, "llama-d64 gqa dca default win%d", window);
    o = opts_dca(window, 0, 0, 0, DTYPE_F32);
    compare_logprobs(name, p.cpu, p.gpu, &o, tok, n);
    compare_greedy(name, p.cpu, p.gpu, &o, tok, (size_t)window / 2);
    free(tok);
done:
    pair_close(&p);
}

static const pair_model_t models[] = {
    {"pos-fot-d64", "--kind longllama --layers 3 --hidden 128 --heads 2 --ffn 352 --vocab 512 "
                    "--max-pos 64 --mem-layers 1,2 --last-context 32 --mem-dtype float32 "
                    "--dtype float32 --seed 12"},
    {"pos-llama-d64", "--kind llama --layers 2 --hidden 256 --heads 4 --kv-heads 2 --ffn 704 "
                      "--vocab 512 --max-pos 128 --dtype float32 --seed 13"},
};

int main(void)
{
    const int skip = gpu_ops_begin("test_cuda_positional", 1);
    if (skip) return skip;
    log_set_level(LOG_WARN);

    kernel_cases();
    printf("attention_pos worst rel_err %.2e (tolerance %.0e)\n", worst_err, GPU_TOL_BF16);
    CHECK_MSG(gpu_setup_failures() == 0, "%d device buffers could not be set up",
              gpu_setup_failures());
    const char *ko = getenv("RECALL_POS_KERNEL_ONLY");
    if (ko && atoi(ko)) return check_summary();

    char data[1024];
    const char *mdir = getenv("RECALL_GPU_TEST_MODELS"), *build = getenv("RECALL_BUILD_DIR");
    if (mdir && *mdir)
        snprintf(data, sizeof data, "%s", mdir);
    else
        snprintf(data, sizeof data, "%s/tests/data-gpu", build ? build : ".");
    char cmd[1200], dir[1200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", data);
    if (system(cmd) != 0 || pair_make_models(data, models, sizeof models / sizeof models[0])) {
        CHECK_MSG(0, "cannot make the test models in %s", data);
        return check_summary();
    }
    snprintf(dir, sizeof dir, "%s/pos-fot-d64", data);
    case_fot(dir);
    snprintf(dir, sizeof dir, "%s/pos-llama-d64", data);
    case_llama(dir);
    printf("model worst over all cases: max|dlp| %.5f  mean|dlp| %.6f  (tolerances %.3f, %.3f)\n",
           worst_max, worst_mean, TOL_LP, TOL_LP_MEAN);
    return check_summary();
}
