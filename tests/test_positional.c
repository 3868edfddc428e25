/* Positional schemes (model/positional.c, cpu_attention_ext, the CPU backend):
 *   - the position maps against hand-computed values of REFERENCE.md's formulas;
 *   - RoPE scaling frequencies against the formulas evaluated here in double;
 *   - parameter validation: every refusal has a message, and resolving is idempotent;
 *   - cpu_attention_ext against a naive per-pair attention that rotates the raw query and
 *     key at each pair's positions (positional_pair, positional_mem_query);
 *   - on the tiny checkpoints: schemes that reduce to plain RoPE give bit-identical
 *     log-probs, feeding in pieces equals feeding at once, memory is used, and windows up to
 *     4x the trained length run (time printed, not asserted);
 *   - CLEX's row rule, log factor and resolve limits, and its refusal on backends other
 *     than the CPU (the numbers are tests/ref/parity_clex.py's);
 *   - GALI's positions, pieces, coefficient in both modes, defaults and ranges, the GALI
 *     attention layout against a per-pair formula, and its refusal off the CPU (the
 *     log-probs are tests/ref/parity_gali.py's). */
#define _POSIX_C_SOURCE 200809L
#define BACKEND_INTERNAL /* a stand-in backend for the CPU-only refusal (test_cpu_only) */
#define PI 3.14159265358979323846
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "kernels/cpu.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/positional.h"
#include "model/stream.h"
#include "tests/check.h"

static unsigned long long rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void) /* uniform in [-1, 1) */
{
    return (float)((next_u64() >> 11) * (1.0 / 4503599627370496.0)) - 1.0f;
}

static model_config_t config(int max_pos, int head_dim, float theta)
{
    model_config_t c;
    memset(&c, 0, sizeof c);
    c.max_pos = max_pos;
    c.head_dim = head_dim;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.hidden = 4 * head_dim;
    c.rope_theta = theta;
    c.rope_scaling = ROPE_SCALING_NONE;
    c.rope_factor = 1.0f;
    return c;
}

/* ---- position maps ---- */

static void test_dca_llama2_defaults(void)
{
    model_config_t c = config(4096, 128, 1e4f);
    model_stream_opts_t o = {.positional = POSITIONAL_DCA, .window = 16384};
    char err[256];
    CHECK_RC(positional_resolve(&c, &o, err, sizeof err), RC_OK);
    CHECK(o.chunk_size == 3072 && o.local_window == 512);
    positional_params_t p = positional_params(&c, &o);
    CHECK(p.chunk_len == 2560);
    int q, k;
    /* same chunk (chunk 1: 2560..5119) */
    positional_pair(&p, 5000, 4000, &q, &k);
    CHECK(q == 2440 && k == 1440);
    /* the chunk just before: min(2440 + 2560, 3072) */
    positional_pair(&p, 5000, 100, &q, &k);
    CHECK(q == 3072 && k == 100);
    /* i = 5200 in chunk 2: 80 + 2560 = 2640 against chunk 1 */
    positional_pair(&p, 5200, 3000, &q, &k);
    CHECK(q == 2640 && k == 440);
    /* older chunks: S */
    positional_pair(&p, 6000, 100, &q, &k);
    CHECK(q == 3072 && k == 100);
    /* i = 6000 (6000 mod 2560 = 880) against chunk 1: min(3440, 3072) */
    positional_pair(&p, 6000, 3000, &q, &k);
    CHECK(q == 3072 && k == 440);
    positional_pair(&p, 7679, 7679, &q, &k);
    CHECK(q == 2559 && k == 2559);
    positional_pair(&p, 7680, 7679, &q, &k); /* first of chunk 3 against the last of 2 */
    CHECK(q == 2560 && k == 2559);
    /* memory: as against key index 0 */
    CHECK(positional_mem_query(&p, 0) == 0);
    CHECK(positional_mem_query(&p, 2559) == 2559);
    CHECK(positional_mem_query(&p, 2600) == 2600); /* chunk 1: 40 + 2560 */
    CHECK(positional_mem_query(&p, 3500) == 3072); /* chunk 1: min(940 + 2560, 3072) */
    CHECK(positional_mem_query(&p, 6000) == 3072); /* chunk 2 */
    for (int i = 0; i < 12000; i += 37) {
        positional_pair(&p, i, 0, &q, &k);
        CHECK_MSG(positional_mem_query(&p, i) == q && k == 0, "dca mem rule at i=%d", i);
    }
    CHECK(fabsf(positional_dca_scale(16384, 4096) - (float)(0.05 * log(4.0) + 1)) < 1e-7f);
    CHECK(positional_dca_scale(4096, 4096) == 1.0f && positional_dca_scale(100, 4096) == 1.0f);
}

static void test_self_extend_maps(void)
{
    model_config_t c = config(4096, 128, 1e4f);
    model_stream_opts_t o = {
        .positional = POSITIONAL_SELF_EXTEND, .group = 4, .neighbor = 512, .window = 8192};
    char err[256];
    CHECK_RC(positional_resolve(&c, &o, err, sizeof err), RC_OK);
    positional_params_t p = positional_params(&c, &o);
    int q, k;
    positional_pair(&p, 1000, 600, &q, &k); /* distance 400 < 512: ordinary */
    CHECK(q == 1000 && k == 600);
    positional_pair(&p, 1000, 489, &q, &k); /* distance 511 */
    CHECK(q == 1000 && k == 489);
    positional_pair(&p, 1000, 488, &q, &k); /* distance 512: grouped, 250 + 512 - 128 */
    CHECK(q == 634 && k == 122);
    positional_pair(&p, 1003, 400, &q, &k); /* integer division: 250 + 384 */
    CHECK(q == 634 && k == 100);
    CHECK(positional_mem_query(&p, 511) == 511);
    CHECK(positional_mem_query(&p, 512) == 128 + 384);
    CHECK(positional_mem_query(&p, 8191) == 2047 + 384);
    /* G = 3, W = 10: the query formula must use // (float division would give 13.33) */
    CHECK(positional_se_query(20, 3, 10) == 13);
    CHECK(positional_se_key(20, 3) == 6);
    for (int i = 0; i < 9000; i += 41) {
        positional_pair(&p, i, 0, &q, &k);
        CHECK_MSG(positional_mem_query(&p, i) == q && k == 0, "self-extend mem rule at i=%d", i);
    }
    /* The largest window reaches at most position L. */
    positional_pair(&p, 8191, 0, &q, &k);
    CHECK(q <= 4096);

    model_stream_opts_t r = {.positional = POSITIONAL_ROPE};
    CHECK_RC(positional_resolve(&c, &r, err, sizeof err), RC_OK);
    CHECK(r.window == 4096);
    positional_params_t pr = positional_params(&c, &r);
    positional_pair(&pr, 77, 5, &q, &k);
    CHECK(q == 77 && k == 5 && positional_mem_query(&pr, 77) == 77);
}

/* ---- RoPE scalings ---- */

static double max_rel(const float *a, const double *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]) / fabs(b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static void test_scalings(void)
{
    const int d = 16, half = 8;
    model_config_t c = config(64, d, 1e4f);
    float inv[8], ms;
    double want[8];
    const double th = 1e4;

    positional_rope_freqs(&c, ROPE_SCALING_NONE, 1.0f, 64, inv, &ms);
    for (int p = 0; p < half; p++)
        want[p] = pow(th, -2.0 * p / d);
    CHECK(max_rel(inv, want, half) < 1e-6 && ms == 1.0f);
    float plain[8];
    cpu_rope_inv_freq(plain, d, 1e4f);
    CHECK(memcmp(plain, inv, sizeof inv) == 0);

    positional_rope_freqs(&c, ROPE_SCALING_LINEAR, 4.0f, 256, inv, &ms);
    for (int p = 0; p < half; p++)
        want[p] = pow(th, -2.0 * p / d) / 4.0;
    CHECK(max_rel(inv, want, half) < 1e-6 && ms == 1.0f);

    positional_rope_freqs(&c, ROPE_SCALING_NTK, 4.0f, 256, inv, &ms);
    double b = th * pow(4.0, 16.0 / 14.0);
    for (int p = 0; p < half; p++)
        want[p] = 1.0 / pow(b, 2.0 * p / d);
    CHECK(max_rel(inv, want, half) < 1e-6 && ms == 1.0f);

    /* dynamic: n = the window; 4 * 256 / 64 - 3 = 13 */
    positional_rope_freqs(&c, ROPE_SCALING_DYNAMIC, 4.0f, 256, inv, &ms);
    b = th * pow(13.0, 16.0 / 14.0);
    for (int p = 0; p < half; p++)
        want[p] = 1.0 / pow(b, 2.0 * p / d);
    CHECK(max_rel(inv, want, half) < 1e-6 && ms == 1.0f);
    positional_rope_freqs(&c, ROPE_SCALING_DYNAMIC, 4.0f, 64, inv, &ms);
    CHECK(memcmp(plain, inv, sizeof inv) == 0); /* n ≤ L: unchanged */

    /* YaRN with a larger trained length so the ramp lies inside the dimensions:
     * d = 64, orig 2048: low = floor(64 ln(2048 / 64π) / (2 ln 1e4)) = 8,
     * high = ceil(64 ln(2048 / 2π) / (2 ln 1e4)) = 21. */
    model_config_t cy = config(2048, 64, 1e4f);
    float inv64[32];
    double want64[32];
    positional_rope_freqs(&cy, ROPE_SCALING_YARN, 8.0f, 16384, inv64, &ms);
    double lo = floor(64 * log(2048 / (32 * 2 * PI)) / (2 * log(th)));
    double hi = ceil(64 * log(2048 / (1 * 2 * PI)) / (2 * log(th)));
    CHECK(lo == 8 && hi == 21);
    for (int p = 0; p < 32; p++) {
        double ex = pow(th, -2.0 * p / 64), in = ex / 8.0;
        double ramp = fmin(fmax((p - lo) / (hi - lo), 0.0), 1.0);
        want64[p] = in * ramp + ex * (1 - ramp); /* p ≤ 8 extrapolated, ≥ 21 interpolated */
    }
    CHECK(max_rel(inv64, want64, 32) < 1e-6);
    CHECK(fabs(inv64[0] - 1.0) < 1e-7 && fabs(inv64[31] - pow(th, -62.0 / 64) / 8) < 1e-12);
    CHECK(fabsf(ms - (float)(0.1 * log(8.0) + 1.0)) < 1e-7f);
    /* original_max_position_embeddings moves the ramp */
    cy.rope_original_max_pos = 512;
    positional_rope_freqs(&cy, ROPE_SCALING_YARN, 8.0f, 4096, inv64, &ms);
    lo = fmax(floor(64 * log(512 / (32 * 2 * PI)) / (2 * log(th))), 0);
    hi = ceil(64 * log(512 / (2 * PI)) / (2 * log(th)));
    for (int p = 0; p < 32; p++) {
        double ex = pow(th, -2.0 * p / 64), in = ex / 8.0;
        double ramp = fmin(fmax((p - lo) / (hi - lo), 0.0), 1.0);
        want64[p] = in * ramp + ex * (1 - ramp);
    }
    CHECK(max_rel(inv64, want64, 32) < 1e-6);
}

/* ---- validation ---- */

static void expect_invalid(const model_config_t *c, model_stream_opts_t o, const char *word)
{
    char err[256] = "";
    rc_t rc = positional_resolve(c, &o, err, sizeof err);
    CHECK_MSG(rc == RC_ERR_INVALID && strstr(err, word), "want an error naming '%s', got %d '%s'",
              word, (int)rc, err);
}

static void test_validation(void)
{
    model_config_t c = config(64, 16, 1e4f);
    char err[256];
    /* plain rope: window ≤ L */
    expect_invalid(&c, (model_stream_opts_t){.window = 65}, "trained context");
    expect_invalid(&c, (model_stream_opts_t){.window = -1}, "negative");
    /* self-extend */
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_SELF_EXTEND, .neighbor = 8},
                   "group size");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_SELF_EXTEND, .group = 4},
                   "neighbour window");
    expect_invalid(
        &c, (model_stream_opts_t){.positional = POSITIONAL_SELF_EXTEND, .group = 4, .neighbor = 64},
        "shorter than the trained");
    /* (64 − 16) · 4 + 16 = 208 */
    model_stream_opts_t se = {
        .positional = POSITIONAL_SELF_EXTEND, .group = 4, .neighbor = 16, .window = 208};
    CHECK_RC(positional_resolve(&c, &se, err, sizeof err), RC_OK);
    se.window = 209;
    expect_invalid(&c, se, "208");
    se.window = 208;
    se.rope_scaling_set = 1;
    se.rope_scaling = ROPE_SCALING_LINEAR;
    se.rope_factor = 2;
    expect_invalid(&c, se, "cannot be combined");
    /* dca */
    model_stream_opts_t dca = {.positional = POSITIONAL_DCA, .window = 100000};
    CHECK_RC(positional_resolve(&c, &dca, err, sizeof err), RC_OK);
    CHECK(dca.chunk_size == 48 && dca.local_window == 8);
    expect_invalid(
        &c,
        (model_stream_opts_t){.positional = POSITIONAL_DCA, .chunk_size = 32, .local_window = 32},
        "local window w < chunk size S");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_DCA, .chunk_size = 65},
                   "S <= trained");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_DCA, .local_window = -2},
                   "positive");
    model_config_t small = config(4, 16, 1e4f); /* L / 8 = 0: no usable default */
    expect_invalid(&small, (model_stream_opts_t){.positional = POSITIONAL_DCA}, "0 < local");
    /* a config's rope_scaling cannot go with dca unless the session turns it off */
    model_config_t scaled = c;
    scaled.rope_scaling = ROPE_SCALING_YARN;
    scaled.rope_factor = 4;
    expect_invalid(&scaled, (model_stream_opts_t){.positional = POSITIONAL_DCA}, "yarn");
    model_stream_opts_t off = {.positional = POSITIONAL_DCA,
                               .rope_scaling_set = 1,
                               .rope_scaling = ROPE_SCALING_NONE,
                               .window = 256};
    CHECK_RC(positional_resolve(&scaled, &off, err, sizeof err), RC_OK);
    /* scalings: window ≤ f · L, factor ≥ 1 */
    model_stream_opts_t lin = {.window = 256,
                               .rope_scaling_set = 1,
                               .rope_scaling = ROPE_SCALING_LINEAR,
                               .rope_factor = 4};
    CHECK_RC(positional_resolve(&c, &lin, err, sizeof err), RC_OK);
    lin.window = 257;
    expect_invalid(&c, lin, "reaches");
    lin.window = 64;
    lin.rope_factor = 0.5f;
    expect_invalid(&c, lin, "at least 1");
    /* YaRN reaches f · L even when the checkpoint names a shorter original length */
    model_config_t yc = c;
    yc.rope_original_max_pos = 16;
    model_stream_opts_t y = {
        .window = 256, .rope_scaling_set = 1, .rope_scaling = ROPE_SCALING_YARN, .rope_factor = 4};
    CHECK_RC(positional_resolve(&yc, &y, err, sizeof err), RC_OK);
    y.window = 257;
    expect_invalid(&yc, y, "256 tokens");
    /* the config's scaling applies when the session sets none */
    model_stream_opts_t dflt = {.window = 256};
    CHECK_RC(positional_resolve(&scaled, &dflt, err, sizeof err), RC_OK);
    CHECK(dflt.rope_scaling == ROPE_SCALING_YARN && dflt.rope_factor == 4.0f);
    expect_invalid(&c, (model_stream_opts_t){.positional = (positional_t)7}, "unknown");
    /* idempotent */
    model_stream_opts_t a = {.positional = POSITIONAL_DCA, .window = 300};
    CHECK_RC(positional_resolve(&c, &a, err, sizeof err), RC_OK);
    model_stream_opts_t b = a;
    CHECK_RC(positional_resolve(&c, &b, err, sizeof err), RC_OK);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
}

/* ---- cpu_attention_ext against per-pair attention ---- */

/* x rotated at pos as cpu_rope does it (fp32 angle, cos/sin in double), into double. */
/* Memory scores of the rotated query qr [hd] against unrotated memory keys (kv head kh)
 * into dst [n_mem], times mem_scale, clamped; returns the running maximum mx with them. */
static double naive_mem_scores(double *dst, double mx, const double *qr, const float *mk,
                               int n_mem, int kv_row, int kh, int hd, double mem_scale)
{
    for (int m = 0; m < n_mem; m++) {
        const float *kv = mk + (size_t)m * kv_row + kh * hd;
        double s = 0;
        for (int x = 0; x < hd; x++)
            s += qr[x] * kv[x];
        dst[m] = fmax(s * mem_scale, -1e6);
        mx = fmax(mx, dst[m]);
    }
    return mx;
}

/* The naive attention's last step for query i (local index) and kv head kh: softmax over
 * the scores sc[0..i] and sc[nk..nk + n_mem) (maximum mx; sc is overwritten), the weighted
 * values, and the largest difference from the kernel's output row got [hd]. */
static double naive_out_err(double *sc, double mx, int i, int nk, int n_mem, const float *v,
                            const float *mv, int kv_row, int kh, int hd, const float *got)
{
    double sum = 0, err = 0;
    for (int j = 0; j <= i; j++)
        sum += (sc[j] = exp(sc[j] - mx));
    for (int m = 0; m < n_mem; m++)
        sum += (sc[nk + m] = exp(sc[nk + m] - mx));
    for (int x = 0; x < hd; x++) {
        double o = 0;
        for (int j = 0; j <= i; j++)
            o += sc[j] * v[(size_t)j * kv_row + kh * hd + x];
        for (int m = 0; m < n_mem; m++)
            o += sc[nk + m] * mv[(size_t)m * kv_row + kh * hd + x];
        const double d = fabs(o / sum - got[x]);
        if (!(d <= err)) err = d;
    }
    return err;
}

static void rotate(double *out, const float *x, int hd, int pos, const float *inv_freq,
                   double mscale)
{
    const int half = hd / 2;
    for (int p = 0; p < half; p++) {
        float ang = (float)pos * inv_freq[p];
        double c = cos((double)ang) * mscale, s = sin((double)ang) * mscale;
        out[p] = x[p] * c - x[p + half] * s;
        out[p + half] = x[p + half] * c + x[p] * s;
    }
}

static void test_attention_ext(positional_params_t p, int n_heads, int n_kv, int n_q, int q_off,
                               int n_mem, float mscale)
{
    const int hd = 16, nk = q_off + n_q;
    const int q_row = n_heads * hd, kv_row = n_kv * hd;
    float inv_freq[8];
    cpu_rope_inv_freq(inv_freq, hd, 1e4f);
    float *qraw = malloc(sizeof(float) * n_q * q_row);
    float *kraw = malloc(sizeof(float) * nk * kv_row);
    float *v = malloc(sizeof(float) * nk * kv_row);
    float *mk = malloc(sizeof(float) * (n_mem + 1) * kv_row);
    float *mv = malloc(sizeof(float) * (n_mem + 1) * kv_row);
    float *q[4], *k[2], *out = malloc(sizeof(float) * n_q * q_row);
    int32_t *pos = malloc(sizeof(int32_t) * (nk > n_q ? nk : n_q));
    for (int i = 0; i < 4; i++)
        q[i] = malloc(sizeof(float) * n_q * q_row);
    for (int i = 0; i < 2; i++)
        k[i] = malloc(sizeof(float) * nk * kv_row);
    for (int i = 0; i < n_q * q_row; i++)
        qraw[i] = frand() * 2;
    for (int i = 0; i < nk * kv_row; i++)
        kraw[i] = frand() * 2, v[i] = frand();
    for (int i = 0; i < n_mem * kv_row; i++)
        mk[i] = frand() * 2, mv[i] = frand();
    for (int i = 0; i < n_q * q_row; i++)
        out[i] = NAN;

    /* The rotations a backend would make: queries per variant and against memory. */
    attn_ext_args_t e = {.layout = p.kind == POSITIONAL_DCA           ? CPU_ATTN_DCA
                                   : p.kind == POSITIONAL_SELF_EXTEND ? CPU_ATTN_SELF_EXTEND
                                                                      : CPU_ATTN_PLAIN,
                         .neighbor = p.neighbor,
                         .chunk_len = p.chunk_len};
    for (int var = 0; var < 4; var++) {
        memcpy(q[var], qraw, sizeof(float) * n_q * q_row);
        for (int t = 0; t < n_q; t++) {
            int i = q_off + t;
            pos[t] = var == 3                   ? positional_mem_query(&p, i)
                     : p.kind == POSITIONAL_DCA ? (var == 0   ? positional_dca_intra(&p, i)
                                                   : var == 1 ? positional_dca_succ(&p, i)
                                                              : p.chunk_size)
                     : p.kind == POSITIONAL_SELF_EXTEND && var == 1
                         ? positional_se_query(i, p.group, p.neighbor)
                         : i;
        }
        cpu_rope(q[var], n_q, n_heads, hd, pos, inv_freq, mscale);
    }
    for (int var = 0; var < 2; var++) {
        memcpy(k[var], kraw, sizeof(float) * nk * kv_row);
        for (int j = 0; j < nk; j++)
            pos[j] = p.kind == POSITIONAL_DCA                       ? j % p.chunk_len
                     : p.kind == POSITIONAL_SELF_EXTEND && var == 1 ? j / p.group
                                                                    : j;
        cpu_rope(k[var], nk, n_kv, hd, pos, inv_freq, mscale);
    }
    const float scale = 1.0f / sqrtf((float)hd);
    e.a = (attn_args_t){.n_q = n_q,
                        .n_k = nk,
                        .n_heads = n_heads,
                        .n_kv_heads = n_kv,
                        .head_dim = hd,
                        .q_offset = q_off,
                        .q = q[0],
                        .k = k[0],
                        .v = v,
                        .n_mem = (size_t)n_mem,
                        .mem_dtype = DTYPE_F32,
                        .mem_k = mk,
                        .mem_v = mv,
                        .scale = scale,
                        .out = out};
    e.q_alt[0] = q[1];
    e.q_alt[1] = q[2];
    e.k_alt = k[1];
    e.q_mem = q[3];
    e.mem_scale = scale * mscale;
    cpu_attention_ext(&e);

    /* Naive: every pair rotated from the raw vectors at its own positions. */
    double err = 0;
    double *sc = malloc(sizeof(double) * (nk + n_mem));
    double qr[16], kr[16];
    for (int h = 0; h < n_heads; h++) {
        const int kh = h / (n_heads / n_kv);
        for (int t = 0; t < n_q; t++) {
            const int i = q_off + t;
            const float *qv = qraw + (size_t)t * q_row + h * hd;
            double mx = -INFINITY;
            for (int j = 0; j <= i; j++) {
                int qp, kp;
                positional_pair(&p, i, j, &qp, &kp);
                rotate(qr, qv, hd, qp, inv_freq, mscale);
                rotate(kr, kraw + (size_t)j * kv_row + kh * hd, hd, kp, inv_freq, mscale);
                double s = 0;
                for (int x = 0; x < hd; x++)
                    s += qr[x] * kr[x];
                sc[j] = fmax(s * scale, -1e6);
                mx = fmax(mx, sc[j]);
            }
            rotate(qr, qv, hd, positional_mem_query(&p, i), inv_freq, mscale);
            /* a key at index 0: position 0, carrying the cos/sin multiplier */
            mx = naive_mem_scores(sc + nk, mx, qr, mk, n_mem, kv_row, kh, hd, scale * mscale);
            const double d = naive_out_err(sc, mx, i, nk, n_mem, v, mv, kv_row, kh, hd,
                                           out + (size_t)t * q_row + h * hd);
            if (!(d <= err)) err = d;
        }
    }
    CHECK_MSG(err < 5e-5, "attention_ext %s G%d W%d c%d h%d/%d q%d off%d mem%d ms%g: max err %g",
              positional_name(p.kind), p.group, p.neighbor, p.chunk_len, n_heads, n_kv, n_q, q_off,
              n_mem, (double)mscale, err);
    free(sc);
    free(qraw), free(kraw), free(v), free(mk), free(mv), free(out), free(pos);
    for (int i = 0; i < 4; i++)
        free(q[i]);
    for (int i = 0; i < 2; i++)
        free(k[i]);
}

static void test_attention_ext_all(void)
{
    positional_params_t se = {.kind = POSITIONAL_SELF_EXTEND, .group = 3, .neighbor = 10};
    positional_params_t dca = {
        .kind = POSITIONAL_DCA, .chunk_size = 24, .local_window = 4, .chunk_len = 20};
    positional_params_t rope = {.kind = POSITIONAL_ROPE};
    test_attention_ext(se, 4, 4, 150, 0, 0, 1.0f);  /* blocks of 64 across W */
    test_attention_ext(se, 4, 2, 37, 90, 25, 1.0f); /* a chunk after a cache, GQA, memory */
    test_attention_ext(se, 2, 2, 1, 149, 7, 1.0f);  /* one decode step */
    test_attention_ext(dca, 4, 4, 150, 0, 0, 1.0f);
    test_attention_ext(dca, 4, 2, 45, 67, 30, 1.1f); /* with a chunk scale on cos/sin */
    test_attention_ext(dca, 2, 1, 1, 199, 9, 1.07f);
    test_attention_ext(rope, 4, 4, 70, 3, 11, 1.2f); /* plain with a YaRN-like multiplier */
    /* A big block crossing several chunks at once. */
    positional_params_t dca2 = {
        .kind = POSITIONAL_DCA, .chunk_size = 12, .local_window = 5, .chunk_len = 7};
    test_attention_ext(dca2, 2, 2, 100, 10, 5, 1.0f);

    /* The plain layout is cpu_attention, bit for bit. */
    const int hd = 16, nq = 70, nk = 90, nm = 13, row = 4 * hd;
    float *qq = malloc(sizeof(float) * nq * row), *kk = malloc(sizeof(float) * nk * row);
    float *vv = malloc(sizeof(float) * nk * row), *m = malloc(sizeof(float) * nm * row);
    float *o1 = malloc(sizeof(float) * nq * row), *o2 = malloc(sizeof(float) * nq * row);
    for (int i = 0; i < nq * row; i++)
        qq[i] = frand();
    for (int i = 0; i < nk * row; i++)
        kk[i] = frand(), vv[i] = frand();
    for (int i = 0; i < nm * row; i++)
        m[i] = frand();
    attn_args_t a = {.n_q = nq,
                     .n_k = nk,
                     .n_heads = 4,
                     .n_kv_heads = 4,
                     .head_dim = hd,
                     .q_offset = 20,
                     .q = qq,
                     .k = kk,
                     .v = vv,
                     .n_mem = nm,
                     .mem_dtype = DTYPE_F32,
                     .mem_k = m,
                     .mem_v = m,
                     .scale = 0.25f,
                     .out = o1};
    cpu_attention(&a);
    attn_ext_args_t e = {
        .a = a, .layout = CPU_ATTN_SELF_EXTEND, .neighbor = 1000, .k_alt = kk, .q_alt = {qq, NULL}};
    e.a.out = o2;
    cpu_attention_ext(&e); /* a neighbour window wider than everything: plain */
    CHECK(memcmp(o1, o2, sizeof(float) * nq * row) == 0);
    free(qq), free(kk), free(vv), free(m), free(o1), free(o2);
}

/* ---- the tiny checkpoints ---- */

static int32_t *random_tokens(int n, int vocab)
{
    int32_t *t = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++)
        t[i] = 3 + (int32_t)(next_u64() % (uint64_t)(vocab - 3));
    return t;
}

/* Log-probs of tok[1..n) from one stream, fed in pieces of the given sizes (cycled; 0 = all
 * at once). lp[i] = log p(tok[i+1] | ..). */
static rc_t score(model_t *m, const model_stream_opts_t *o, const int32_t *tok, int n,
                  const int *pieces, float *lp)
{
    model_stream_t *s = NULL;
    rc_t rc = model_stream_create(m, o, &s);
    if (rc) return rc;
    const int vocab = model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * vocab), *ls = malloc(sizeof(float) * vocab);
    int done = 0, k = 0;
    while (done < n && !rc) {
        int c = pieces ? pieces[k++ % 8] : n;
        if (c > n - done) c = n - done;
        rc = model_stream_feed(s, tok + done, (size_t)c, lp + done, logits);
        done += c;
        if (!rc && done < n) { /* the piece's last row: its target is the next piece's first */
            cpu_log_softmax(ls, logits, 1, vocab);
            lp[done - 1] = ls[tok[done]];
        }
    }
    free(logits);
    free(ls);
    model_stream_destroy(&s);
    return rc;
}

static double max_diff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static void test_model(const char *dir, int has_memory)
{
    char err[512];
    model_t *m = NULL;
    rc_t rc = model_load(dir, 1, &m, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "load %s: %s", dir, err);
    if (rc) return;
    const model_config_t *c = model_get_config(m);
    const int L = c->max_pos, n = 9 * L + 13;
    int32_t *tok = random_tokens(n, c->vocab_size);
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    static const int pieces[8] = {1, 7, 33, 100, 5, 64, 2, 250};

    /* Schemes that reduce to plain RoPE: bit-identical, memory included. */
    const int c_len = 3 * L / 4 - L / 8;
    model_stream_opts_t rope = {.window = c_len};
    model_stream_opts_t dca_small = {.window = c_len, .positional = POSITIONAL_DCA};
    CHECK_RC(score(m, &rope, tok, n, NULL, a), RC_OK);
    CHECK_RC(score(m, &dca_small, tok, n, NULL, b), RC_OK);
    CHECK_MSG(memcmp(a, b, sizeof(float) * (n - 1)) == 0, "dca, window ≤ c vs rope: %g",
              max_diff(a, b, n - 1));
    model_stream_opts_t rope63 = {.window = L - 1};
    model_stream_opts_t se_wide = {
        .window = L - 1, .positional = POSITIONAL_SELF_EXTEND, .group = 4, .neighbor = L - 1};
    CHECK_RC(score(m, &rope63, tok, n, NULL, a), RC_OK);
    CHECK_RC(score(m, &se_wide, tok, n, NULL, b), RC_OK);
    CHECK_MSG(memcmp(a, b, sizeof(float) * (n - 1)) == 0, "self-extend, W ≥ window vs rope: %g",
              max_diff(a, b, n - 1));
    model_stream_opts_t rope_l = {0};
    model_stream_opts_t dyn_l = {
        .rope_scaling_set = 1, .rope_scaling = ROPE_SCALING_DYNAMIC, .rope_factor = 4};
    CHECK_RC(score(m, &rope_l, tok, n, NULL, a), RC_OK);
    CHECK_RC(score(m, &dyn_l, tok, n, NULL, b), RC_OK);
    CHECK_MSG(memcmp(a, b, sizeof(float) * (n - 1)) == 0, "dynamic ntk, window ≤ L vs rope: %g",
              max_diff(a, b, n - 1));

    /* Windows of 4L: grouping independence for every scheme; each differs from the others. */
    model_stream_opts_t ext[] = {
        {.window = 4 * L, .positional = POSITIONAL_SELF_EXTEND, .group = 8, .neighbor = L / 4},
        {.window = 4 * L, .positional = POSITIONAL_DCA},
        {.window = 4 * L, .positional = POSITIONAL_DCA, .dca_no_scale = 1},
        {.window = 4 * L,
         .rope_scaling_set = 1,
         .rope_scaling = ROPE_SCALING_LINEAR,
         .rope_factor = 4},
        {.window = 4 * L,
         .rope_scaling_set = 1,
         .rope_scaling = ROPE_SCALING_NTK,
         .rope_factor = 4},
        {.window = 4 * L,
         .rope_scaling_set = 1,
         .rope_scaling = ROPE_SCALING_DYNAMIC,
         .rope_factor = 4},
        {.window = 4 * L,
         .rope_scaling_set = 1,
         .rope_scaling = ROPE_SCALING_YARN,
         .rope_factor = 4},
    };
    const int n_ext = (int)(sizeof ext / sizeof ext[0]);
    float *prev = malloc(sizeof(float) * n);
    for (int e = 0; e < n_ext; e++) {
        const char *name = ext[e].positional ? positional_name(ext[e].positional)
                                             : positional_scaling_name(ext[e].rope_scaling);
        double t0 = clock_now_s();
        CHECK_RC(score(m, &ext[e], tok, n, NULL, a), RC_OK);
        double dt = clock_now_s() - t0;
        CHECK_RC(score(m, &ext[e], tok, n, pieces, b), RC_OK);
        double d = max_diff(a, b, n - 1);
        CHECK_MSG(d < 1e-4, "%s window %d: fed in pieces differs by %g", name, 4 * L, d);
        int finite = 1;
        for (int i = 0; i < n - 1; i++)
            finite &= isfinite(a[i]) && a[i] <= 0;
        CHECK_MSG(finite, "%s: log-probs not finite and ≤ 0", name);
        if (e) CHECK_MSG(max_diff(a, prev, n - 1) > 1e-3, "%s equals the scheme before it", name);
        memcpy(prev, a, sizeof(float) * n);
        printf("%s%s: %d tokens (windows of %d) in %.3f s, %.3f s per window\n", name,
               ext[e].dca_no_scale ? " (no scale)" : "", n, 4 * L, dt, dt * 4 * L / n);

        if (has_memory) { /* memory is read under every scheme */
            model_stream_opts_t nm = ext[e];
            nm.disable_memory = 1;
            CHECK_RC(score(m, &nm, tok, n, NULL, b), RC_OK);
            CHECK_MSG(max_diff(a, b, n - 1) > 1e-3, "%s: memory made no difference", name);
        }
    }
    /* Beyond reach: refused at creation. */
    model_stream_t *s = NULL;
    model_stream_opts_t far = {.window = (L - L / 4) * 8 + L / 4 + 1,
                               .positional = POSITIONAL_SELF_EXTEND,
                               .group = 8,
                               .neighbor = L / 4};
    CHECK_RC(model_stream_create(m, &far, &s), RC_ERR_INVALID);
    CHECK(s == NULL);
    free(prev);
    free(tok), free(a), free(b);
    model_destroy(&m);
}

/* ---- CLEX: the row rule, the log factor, resolve's defaults and limits ---- */

static void test_clex_rules(void)
{
    /* t = ceil(n / L), within [1, M] */
    CHECK(positional_clex_t(1, 64, 8) == 1);
    CHECK(positional_clex_t(64, 64, 8) == 1);
    CHECK(positional_clex_t(65, 64, 8) == 2);
    CHECK(positional_clex_t(160, 64, 8) == 3);
    CHECK(positional_clex_t(512, 64, 8) == 8);
    CHECK(positional_clex_t(513, 64, 8) == 8);
    CHECK(positional_clex_log_scale(1, 64) == 0.0f);
    CHECK(positional_clex_log_scale(64, 64) == 1.0f);
    CHECK(fabsf(positional_clex_log_scale(8, 64) - 0.5f) < 1e-7f); /* below L: under 1 */
    CHECK(fabsf(positional_clex_log_scale(4096, 64) - 2.0f) < 1e-6f);

    model_config_t c = config(64, 16, 1e4f);
    c.clex = 1;
    c.clex_max_factor = 4;
    c.clex_param_factor = 1;
    c.clex_time_dt = 0.01f;
    c.log_scale = 1;
    char err[256] = "";
    model_stream_opts_t o = {0}; /* rope, the zero value, is "the default": clex */
    CHECK(positional_resolve(&c, &o, err, sizeof err) == RC_OK);
    CHECK(o.positional == POSITIONAL_CLEX && o.window == 64);
    CHECK(!strcmp(positional_name(o.positional), "clex"));
    CHECK(positional_resolve(&c, &o, err, sizeof err) == RC_OK); /* idempotent */
    CHECK(o.positional == POSITIONAL_CLEX);
    model_stream_opts_t full = {.window = 256, .positional = POSITIONAL_CLEX};
    CHECK(positional_resolve(&c, &full, err, sizeof err) == RC_OK);
    expect_invalid(&c, (model_stream_opts_t){.window = 257}, "max_factor 4");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_DCA}, "trained with CLEX");
    expect_invalid(&c,
                   (model_stream_opts_t){.rope_scaling_set = 1,
                                         .rope_scaling = ROPE_SCALING_YARN,
                                         .rope_factor = 2.0f},
                   "yarn");
    model_config_t plain = config(64, 16, 1e4f);
    expect_invalid(&plain, (model_stream_opts_t){.positional = POSITIONAL_CLEX}, "CLEX checkpoint");
    positional_params_t p = positional_params(&c, &full);
    int qp, kp;
    positional_pair(&p, 200, 3, &qp, &kp); /* positions stay (i, j) */
    CHECK(qp == 200 && kp == 3 && positional_mem_query(&p, 200) == 200);
}

/* CLEX and GALI run on the CPU backend only: a stream of any other backend is refused in
 * generic code (model_stream_create_with), before the backend is asked. A stand-in with the
 * CPU's ops under another name shows it without a GPU. o must run on the CPU. */
static void test_cpu_only(const char *dir, model_stream_opts_t o)
{
    model_t *m = NULL;
    char err[512] = "";
    rc_t rc = model_load(dir, 1, &m, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "%s", err);
    if (rc) return;
    model_stream_t *s = NULL;
    CHECK(model_stream_create(m, &o, &s) == RC_OK && s);
    int32_t tok[3] = {1, 7, 9};
    float lp[3];
    CHECK(s && model_stream_feed(s, tok, 3, lp, NULL) == RC_OK && isfinite(lp[0]));
    model_stream_destroy(&s);
    backend_ops_t other = backend_cpu_ops;
    other.name = "cuda";
    model_backend_t fake = {.ops = &other, .model = m};
    CHECK(other.open(m, 0, &fake.ctx, err, sizeof err) == RC_OK);
    CHECK(model_stream_create_on(&fake, &o, &s) == RC_ERR_UNSUPPORTED && !s);
    other.close(fake.ctx);
    model_destroy(&m);
}

/* GALI (model/positional.h): positions, pieces, coefficient, defaults and ranges. */
static void test_gali_rules(void)
{
    float pos[600];
    positional_gali_positions(10, 64, 8, pos); /* T ≤ L: plain */
    CHECK(pos[0] == 0.0f && pos[9] == 9.0f);
    /* T = 100, L = 64, w = 8: g = ceil(92 / 56) = 2, i = 36 (28 + 72 ≥ 100): the oldest 72
     * at k + m/2, the newest 28 at 36 … 63. */
    positional_gali_positions(100, 64, 8, pos);
    CHECK(pos[0] == 0.0f && pos[1] == 0.5f && pos[71] == 35.5f && pos[72] == 36.0f &&
          pos[99] == 63.0f);
    /* g = 3: spacing float32(1/3); 8x L with w = 0 leaves no integer tail. */
    positional_gali_positions(150, 64, 8, pos);
    CHECK(pos[1] == (float)(1.0 / 3.0) && pos[2] == (float)(2.0 / 3.0) && pos[149] == 63.0f);
    positional_gali_positions(512, 64, 0, pos);
    CHECK(pos[511] == 63.875f && pos[1] == 0.125f);
    for (int T = 65; T <= 600; T++) {
        positional_gali_positions(T, 64, 5, pos);
        int ok = pos[T - 1] == 63.0f && pos[0] == 0.0f;
        for (int j = 1; j < T; j++)
            ok = ok && pos[j] > pos[j - 1];
        CHECK_MSG(ok, "gali positions T=%d increase from 0 to L-1", T);
    }
    /* pieces: up to L while the window is below it, then c */
    CHECK(positional_gali_piece(0, 300, 64, 48) == 64);
    CHECK(positional_gali_piece(10, 300, 64, 48) == 54);
    CHECK(positional_gali_piece(64, 300, 64, 48) == 48);
    CHECK(positional_gali_piece(100, 20, 64, 48) == 20);
    CHECK(positional_gali_piece(10, 5, 64, 48) == 5);
    /* c = (⌈p_q⌉ − p_k) mod 1: fp32 in paper mode, bf16 in reference mode */
    CHECK(positional_gali_coef(10.0f, 3.25f, GALI_MODE_PAPER) == 0.75f);
    CHECK(positional_gali_coef(10.0f, 3.25f, GALI_MODE_REFERENCE) == 0.75f);
    CHECK(positional_gali_coef(10.0f, 3.0f, GALI_MODE_PAPER) == 0.0f);
    const float third = (float)(1.0 / 3.0);
    CHECK(fabsf(positional_gali_coef(10.0f, third, GALI_MODE_PAPER) - 2.0f / 3.0f) < 1e-6f);
    /* bf16(1/3) = 0.333984375; 10 − it = 9.666015625 → bf16 9.6875: c = 0.6875 */
    CHECK(positional_gali_coef(10.0f, third, GALI_MODE_REFERENCE) == 0.6875f);
    /* distance ≥ 128: bf16 keeps no fraction */
    CHECK(positional_gali_coef(200.0f, 3.25f, GALI_MODE_REFERENCE) == 0.0f);
    CHECK(positional_gali_coef(200.0f, 3.25f, GALI_MODE_PAPER) == 0.75f);
    CHECK(positional_gali_coef(300.0f, 130.5f, GALI_MODE_REFERENCE) == 0.0f);
    CHECK(!strcmp(positional_gali_mode_name(GALI_MODE_REFERENCE), "reference"));

    model_config_t c = config(64, 16, 1e4f);
    char err[256] = "";
    model_stream_opts_t o = {.positional = POSITIONAL_GALI, .window = 1000};
    CHECK(positional_resolve(&c, &o, err, sizeof err) == RC_OK);
    CHECK(o.chunk_size == 48 && o.local_window == 8 && o.local_window_set);
    CHECK(positional_resolve(&c, &o, err, sizeof err) == RC_OK); /* idempotent */
    CHECK(o.chunk_size == 48 && o.local_window == 8);
    model_stream_opts_t z = {.positional = POSITIONAL_GALI, .local_window_set = 1};
    CHECK(positional_resolve(&c, &z, err, sizeof err) == RC_OK && z.local_window == 0);
    model_config_t big = config(32768, 16, 1e4f);
    model_stream_opts_t b = {.positional = POSITIONAL_GALI};
    CHECK(positional_resolve(&big, &b, err, sizeof err) == RC_OK);
    CHECK(b.local_window == 128 && b.chunk_size == 24576);
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_GALI, .local_window = 64},
                   "0 to 63");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_GALI, .local_window = -1},
                   "--local-window");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_GALI, .chunk_size = 65},
                   "1 to 64");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_GALI, .chunk_size = -3},
                   "--chunk-size");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_GALI, .gali_mode = 7},
                   "paper or reference");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_GALI, .gali_noise = -1},
                   "--gali-noise");
    expect_invalid(&c, (model_stream_opts_t){.positional = POSITIONAL_GALI, .memory_knn = 1},
                   "knn");
    expect_invalid(&c,
                   (model_stream_opts_t){.positional = POSITIONAL_GALI,
                                         .rope_scaling_set = 1,
                                         .rope_scaling = ROPE_SCALING_LINEAR,
                                         .rope_factor = 2},
                   "RoPE scaling linear");
}

/* cpu_attention_ext's GALI layout against the per-pair formula in double: A with the key
 * at ⌈p_k⌉, B at ⌊p_k⌋, the query at ⌈p_q⌉, A + c·(B − A); memory keys at position 0. */
static void test_attention_gali(int n_heads, int n_kv, int n_q, int q_off, int n_mem, int L,
                                int w, gali_mode_t mode)
{
    const int hd = 16, nk = q_off + n_q;
    const int q_row = n_heads * hd, kv_row = n_kv * hd;
    float inv_freq[8];
    cpu_rope_inv_freq(inv_freq, hd, 1e4f);
    float *qraw = malloc(sizeof(float) * n_q * q_row), *q = malloc(sizeof(float) * n_q * q_row);
    float *kraw = malloc(sizeof(float) * nk * kv_row), *kc = malloc(sizeof(float) * nk * kv_row);
    float *kf = malloc(sizeof(float) * nk * kv_row), *v = malloc(sizeof(float) * nk * kv_row);
    float *mk = malloc(sizeof(float) * (n_mem + 1) * kv_row);
    float *mv = malloc(sizeof(float) * (n_mem + 1) * kv_row);
    float *out = malloc(sizeof(float) * n_q * q_row), *kpos = malloc(sizeof(float) * nk);
    float *qpos = malloc(sizeof(float) * n_q);
    int32_t *ci = malloc(sizeof(int32_t) * nk), *fi = malloc(sizeof(int32_t) * nk);
    for (int i = 0; i < n_q * q_row; i++)
        q[i] = qraw[i] = frand() * 2;
    for (int i = 0; i < nk * kv_row; i++)
        kc[i] = kf[i] = kraw[i] = frand() * 2, v[i] = frand();
    for (int i = 0; i < n_mem * kv_row; i++)
        mk[i] = frand() * 2, mv[i] = frand();
    positional_gali_positions(nk, L, w, kpos);
    int nf = 0;
    for (int j = 0; j < nk; j++) {
        ci[j] = (int32_t)ceilf(kpos[j]), fi[j] = (int32_t)floorf(kpos[j]);
        if (kpos[j] != floorf(kpos[j])) nf = j + 1;
    }
    for (int t = 0; t < n_q; t++)
        qpos[t] = (float)ci[q_off + t];
    cpu_rope(q, n_q, n_heads, hd, ci + q_off, inv_freq, 1.0f);
    cpu_rope(kc, nk, n_kv, hd, ci, inv_freq, 1.0f);
    cpu_rope(kf, nk, n_kv, hd, fi, inv_freq, 1.0f);
    const float scale = 1.0f / sqrtf((float)hd);
    attn_ext_args_t e = {.layout = CPU_ATTN_GALI,
                         .k_alt = kf,
                         .gali_n_frac = nf,
                         .gali_kpos = kpos,
                         .gali_qpos = qpos,
                         .gali_mode = mode == GALI_MODE_REFERENCE};
    e.a = (attn_args_t){.n_q = n_q,
                        .n_k = nk,
                        .n_heads = n_heads,
                        .n_kv_heads = n_kv,
                        .head_dim = hd,
                        .q_offset = q_off,
                        .q = q,
                        .k = kc,
                        .v = v,
                        .n_mem = (size_t)n_mem,
                        .mem_dtype = DTYPE_F32,
                        .mem_k = mk,
                        .mem_v = mv,
                        .scale = scale,
                        .out = out};
    cpu_attention_ext(&e);

    double err = 0, *sc = malloc(sizeof(double) * (nk + n_mem)), qr[16], ka[16], kb[16];
    int mixed = 0;
    for (int h = 0; h < n_heads; h++) {
        const int kh = h / (n_heads / n_kv);
        for (int t = 0; t < n_q; t++) {
            const int i = q_off + t;
            rotate(qr, qraw + (size_t)t * q_row + h * hd, hd, ci[i], inv_freq, 1.0f);
            double mx = -INFINITY;
            for (int j = 0; j <= i; j++) {
                const float *kv = kraw + (size_t)j * kv_row + kh * hd;
                rotate(ka, kv, hd, ci[j], inv_freq, 1.0f);
                rotate(kb, kv, hd, fi[j], inv_freq, 1.0f);
                double A = 0, B = 0;
                for (int x = 0; x < hd; x++)
                    A += qr[x] * ka[x], B += qr[x] * kb[x];
                const double cf = positional_gali_coef((float)ci[i], kpos[j], mode);
                mixed += cf != 0;
                sc[j] = fmax((A + cf * (B - A)) * scale, -1e6);
                mx = fmax(mx, sc[j]);
            }
            mx = naive_mem_scores(sc + nk, mx, qr, mk, n_mem, kv_row, kh, hd, scale);
            const double d = naive_out_err(sc, mx, i, nk, n_mem, v, mv, kv_row, kh, hd,
                                           out + (size_t)t * q_row + h * hd);
            if (!(d <= err)) err = d;
        }
    }
    CHECK_MSG(err < 5e-5 && mixed > 0,
              "attention gali %s h%d/%d q%d off%d mem%d L%d w%d: max err %g, %d mixed pairs",
              positional_gali_mode_name(mode), n_heads, n_kv, n_q, q_off, n_mem, L, w, err,
              mixed);
    free(sc), free(qraw), free(q), free(kraw), free(kc), free(kf), free(v), free(mk), free(mv);
    free(out), free(kpos), free(qpos), free(ci), free(fi);
}

static void test_attention_gali_all(void)
{
    test_attention_gali(4, 4, 150, 0, 0, 64, 8, GALI_MODE_PAPER);   /* blocks of 64 */
    test_attention_gali(4, 2, 37, 130, 25, 64, 8, GALI_MODE_PAPER); /* GQA, memory */
    test_attention_gali(4, 2, 1, 300, 10, 64, 0, GALI_MODE_REFERENCE); /* a decode step */
    test_attention_gali(2, 1, 90, 60, 0, 32, 4, GALI_MODE_REFERENCE);
}

int main(void)
{
    test_clex_rules();
    test_gali_rules();
    test_attention_gali_all();
    test_dca_llama2_defaults();
    test_self_extend_maps();
    test_scalings();
    test_validation();
    test_attention_ext_all();

    const char *data = getenv("RECALL_TEST_DATA");
    if (data) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tiny-fot", data);
        test_model(dir, 1);
        snprintf(dir, sizeof dir, "%s/tiny-llama", data);
        test_model(dir, 0);
        snprintf(dir, sizeof dir, "%s/tiny-clex", data);
        test_cpu_only(dir, (model_stream_opts_t){0}); /* clex, the checkpoint's default */
        snprintf(dir, sizeof dir, "%s/tiny-llama", data);
        test_cpu_only(dir, (model_stream_opts_t){.positional = POSITIONAL_GALI, .window = 256});
    } else {
        printf("RECALL_TEST_DATA not set: model tests skipped\n");
    }
    return check_summary();
}
