/* positional.c — position maps, RoPE scalings and their parameter checks (positional.h). */
#include "model/positional.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cpu.h"

static rc_t fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static rc_t fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return RC_ERR_INVALID;
}

const char *positional_name(positional_t kind)
{
    switch (kind) {
    case POSITIONAL_ROPE:
        return "rope";
    case POSITIONAL_SELF_EXTEND:
        return "self-extend";
    case POSITIONAL_DCA:
        return "dca";
    case POSITIONAL_CLEX:
        return "clex";
    case POSITIONAL_GALI:
        return "gali";
    }
    return "unknown";
}

const char *positional_gali_mode_name(gali_mode_t mode)
{
    return mode == GALI_MODE_REFERENCE ? "reference" : "paper";
}

const char *positional_scaling_name(rope_scaling_type_t type)
{
    switch (type) {
    case ROPE_SCALING_NONE:
        return "none";
    case ROPE_SCALING_LINEAR:
        return "linear";
    case ROPE_SCALING_NTK:
        return "ntk";
    case ROPE_SCALING_DYNAMIC:
        return "dynamic";
    case ROPE_SCALING_YARN:
        return "yarn";
    }
    return "unknown";
}

/* The length a scaled RoPE reaches: factor times the trained length L (the config's
 * max_position_embeddings, also for YaRN checkpoints that name an original length: recall's
 * rule), never less than L. */
static int64_t scaled_reach(const model_config_t *c, float factor)
{
    double r = floor((double)factor * (double)c->max_pos);
    if (r > (double)INT32_MAX) r = (double)INT32_MAX;
    return (int64_t)r > c->max_pos ? (int64_t)r : c->max_pos;
}

rc_t positional_resolve(const model_config_t *c, model_stream_opts_t *o, char *err, size_t errlen)
{
    const int L = c->max_pos;
    if (o->window < 0) return fail(err, errlen, "window must not be negative (got %d)", o->window);
    if (o->window == 0) o->window = L;

    if (!o->rope_scaling_set) {
        o->rope_scaling = c->rope_scaling;
        o->rope_factor = c->rope_factor;
        o->rope_scaling_set = 1;
    }
    if (o->rope_scaling < ROPE_SCALING_NONE || o->rope_scaling > ROPE_SCALING_YARN)
        return fail(err, errlen, "unknown RoPE scaling type %d", (int)o->rope_scaling);
    if (o->rope_scaling == ROPE_SCALING_NONE) {
        o->rope_factor = 1.0f;
    } else if (!(o->rope_factor >= 1.0f) || !isfinite(o->rope_factor)) {
        return fail(err, errlen, "RoPE scaling %s needs a factor of at least 1 (got %g)",
                    positional_scaling_name(o->rope_scaling), (double)o->rope_factor);
    }
    const char *scaling = positional_scaling_name(o->rope_scaling);

    /* A CLEX checkpoint is fine-tuned with its learned frequencies: clex is its scheme
     * (rope, the zero value, means "the default"), and other schemes would run it at
     * frequencies it was not trained with. */
    if (c->clex && o->positional == POSITIONAL_ROPE) o->positional = POSITIONAL_CLEX;
    if (c->clex && o->positional != POSITIONAL_CLEX &&
        (o->positional == POSITIONAL_SELF_EXTEND || o->positional == POSITIONAL_DCA ||
         o->positional == POSITIONAL_GALI))
        return fail(err, errlen,
                    "this checkpoint is trained with CLEX (config.json rope_scaling type "
                    "\"clex\"): its positional scheme is clex, not %s",
                    positional_name(o->positional));

    switch (o->positional) {
    case POSITIONAL_ROPE: {
        if (o->rope_scaling == ROPE_SCALING_NONE) {
            if (o->window > L)
                return fail(err, errlen,
                            "window %d is longer than the model's trained context of %d tokens "
                            "(longer windows need a positional scheme such as self-extend or "
                            "dca, or a RoPE scaling)",
                            o->window, L);
            break;
        }
        int64_t reach = scaled_reach(c, o->rope_factor);
        if (o->window > reach)
            return fail(err, errlen,
                        "window %d is longer than RoPE scaling %s with factor %g reaches "
                        "(%lld tokens)",
                        o->window, scaling, (double)o->rope_factor, (long long)reach);
        break;
    }
    case POSITIONAL_SELF_EXTEND: {
        if (o->rope_scaling != ROPE_SCALING_NONE)
            return fail(err, errlen,
                        "self-extend cannot be combined with RoPE scaling %s (set the RoPE "
                        "scaling to none)",
                        scaling);
        if (o->group < 1 || o->neighbor < 1)
            return fail(err, errlen,
                        "self-extend needs a group size G >= 1 and a neighbour window W >= 1 "
                        "(got G=%d, W=%d)",
                        o->group, o->neighbor);
        if (o->neighbor >= L)
            return fail(err, errlen,
                        "self-extend neighbour window W=%d must be shorter than the trained "
                        "context of %d tokens",
                        o->neighbor, L);
        int64_t reach = (int64_t)(L - o->neighbor) * o->group + o->neighbor;
        if (o->window > reach)
            return fail(err, errlen,
                        "window %d is longer than self-extend with G=%d, W=%d reaches: "
                        "(L - W) * G + W = %lld tokens for L=%d",
                        o->window, o->group, o->neighbor, (long long)reach, L);
        break;
    }
    case POSITIONAL_DCA: {
        if (o->rope_scaling != ROPE_SCALING_NONE)
            return fail(err, errlen,
                        "dca cannot be combined with RoPE scaling %s (set the RoPE scaling to "
                        "none)",
                        scaling);
        if (o->chunk_size < 0 || o->local_window < 0)
            return fail(err, errlen,
                        "dca chunk size and local window must be positive (got S=%d, w=%d)",
                        o->chunk_size, o->local_window);
        if (o->chunk_size == 0) o->chunk_size = 3 * L / 4;
        if (o->local_window == 0) o->local_window = L / 8;
        if (o->local_window < 1 || o->chunk_size > L || o->local_window >= o->chunk_size)
            return fail(err, errlen,
                        "dca needs 0 < local window w < chunk size S <= trained context L "
                        "(got S=%d, w=%d, L=%d)",
                        o->chunk_size, o->local_window, L);
        break;
    }
    case POSITIONAL_CLEX: {
        if (!c->clex)
            return fail(err, errlen,
                        "positional scheme clex needs a CLEX checkpoint (config.json "
                        "rope_scaling type \"clex\" and the model.clex_layer.* weights it was "
                        "fine-tuned with); this checkpoint has none: use rope, self-extend or "
                        "dca");
        if (o->rope_scaling != ROPE_SCALING_NONE)
            return fail(err, errlen,
                        "clex cannot be combined with RoPE scaling %s (CLEX scales the "
                        "frequencies itself; set the RoPE scaling to none)",
                        scaling);
        if (c->log_scale && L < 2)
            return fail(err, errlen,
                        "clex with log_scale needs a trained context of at least 2 tokens "
                        "(ln L divides; got L=%d)",
                        L);
        int64_t reach = (int64_t)c->clex_max_factor * L;
        if (o->window > reach)
            return fail(err, errlen,
                        "window %d is longer than CLEX reaches: max_factor %d x trained context "
                        "%d = %lld tokens",
                        o->window, c->clex_max_factor, L, (long long)reach);
        break;
    }
    case POSITIONAL_GALI: {
        if (o->rope_scaling != ROPE_SCALING_NONE)
            return fail(err, errlen,
                        "gali cannot be combined with RoPE scaling %s (set the RoPE scaling to "
                        "none)",
                        scaling);
        if (o->memory_knn)
            return fail(err, errlen,
                        "gali cannot be combined with knn memory yet (use --memory exact)");
        if (o->chunk_size == 0) o->chunk_size = 3 * L / 4 > 0 ? 3 * L / 4 : 1;
        if (!o->local_window_set && o->local_window == 0)
            o->local_window = L / 8 < 128 ? L / 8 : 128;
        o->local_window_set = 1;
        if (o->local_window < 0 || o->local_window >= L)
            return fail(err, errlen,
                        "gali --local-window must be in 0 <= w < L, here 0 to %d (trained "
                        "context L=%d); got %d",
                        L - 1, L, o->local_window);
        if (o->chunk_size < 1 || o->chunk_size > L)
            return fail(err, errlen,
                        "gali --chunk-size must be in 1 <= c <= L, here 1 to %d (trained "
                        "context L=%d); got %d",
                        L, L, o->chunk_size);
        if (o->gali_mode != GALI_MODE_PAPER && o->gali_mode != GALI_MODE_REFERENCE)
            return fail(err, errlen, "unknown gali mode %d (use paper or reference)",
                        (int)o->gali_mode);
        if (!(o->gali_noise >= 0.0f) || !isfinite(o->gali_noise))
            return fail(err, errlen,
                        "gali --gali-noise must be a finite number >= 0 (0: off); got %g",
                        (double)o->gali_noise);
        break;
    }
    default:
        return fail(err, errlen, "unknown positional scheme %d", (int)o->positional);
    }
    o->dca_no_scale = o->dca_no_scale != 0;
    return RC_OK;
}

positional_params_t positional_params(const model_config_t *c, const model_stream_opts_t *o)
{
    positional_params_t p = {
        .kind = o->positional,
        .trained = c->max_pos,
        .window = o->window,
        .group = o->group,
        .neighbor = o->neighbor,
        .chunk_size = o->chunk_size,
        .local_window = o->local_window,
        .chunk_len = o->chunk_size - o->local_window,
        .clex_max = c->clex ? c->clex_max_factor : 0,
        .gali_mode = o->gali_mode,
    };
    return p;
}

int positional_se_query(int i, int group, int neighbor)
{
    return i / group + neighbor - neighbor / group;
}

int positional_se_key(int j, int group)
{
    return j / group;
}

int positional_dca_intra(const positional_params_t *p, int i)
{
    return i % p->chunk_len;
}

int positional_dca_succ(const positional_params_t *p, int i)
{
    int q = i % p->chunk_len + p->chunk_len;
    return q < p->chunk_size ? q : p->chunk_size;
}

void positional_pair(const positional_params_t *p, int i, int j, int *qpos, int *kpos)
{
    switch (p->kind) {
    case POSITIONAL_SELF_EXTEND:
        if (i - j < p->neighbor) {
            *qpos = i;
            *kpos = j;
        } else {
            *qpos = positional_se_query(i, p->group, p->neighbor);
            *kpos = positional_se_key(j, p->group);
        }
        return;
    case POSITIONAL_DCA: {
        const int c = p->chunk_len, ci = i / c, cj = j / c;
        *kpos = j % c;
        *qpos = cj == ci       ? positional_dca_intra(p, i)
                : cj == ci - 1 ? positional_dca_succ(p, i)
                               : p->chunk_size;
        return;
    }
    case POSITIONAL_ROPE:
    default:
        *qpos = i;
        *kpos = j;
        return;
    }
}

int positional_mem_query(const positional_params_t *p, int i)
{
    switch (p->kind) {
    case POSITIONAL_SELF_EXTEND:
        return i < p->neighbor ? i : positional_se_query(i, p->group, p->neighbor);
    case POSITIONAL_DCA: {
        const int ci = i / p->chunk_len;
        return ci == 0   ? positional_dca_intra(p, i)
               : ci == 1 ? positional_dca_succ(p, i)
                         : p->chunk_size;
    }
    case POSITIONAL_ROPE:
    default:
        return i;
    }
}

float positional_dca_scale(int n, int trained)
{
    if (n <= trained) return 1.0f;
    return (float)(0.05 * log((double)n / trained) + 1.0);
}

/* YaRN's find_correction_dim: the dimension whose wavelength makes `rotations` turns over
 * the original context. */
static double yarn_correction_dim(double rotations, int dim, double base, int max_pos)
{
    return dim * log(max_pos / (rotations * 2.0 * 3.14159265358979323846)) / (2.0 * log(base));
}

void positional_rope_freqs(const model_config_t *c, rope_scaling_type_t type, float factor,
                           int window, float *inv_freq, float *mscale)
{
    const int d = c->head_dim, L = c->max_pos;
    const double f = factor;
    *mscale = 1.0f;
    switch (type) {
    case ROPE_SCALING_LINEAR:
        cpu_rope_inv_freq(inv_freq, d, c->rope_theta);
        for (int p = 0; p < d / 2; p++)
            inv_freq[p] = (float)(inv_freq[p] / f);
        return;
    case ROPE_SCALING_NTK: {
        double base = c->rope_theta * pow(f, (double)d / (d - 2));
        for (int p = 0; p < d / 2; p++)
            inv_freq[p] = (float)(1.0 / pow(base, 2.0 * p / d));
        return;
    }
    case ROPE_SCALING_DYNAMIC: {
        if (window <= L) {
            cpu_rope_inv_freq(inv_freq, d, c->rope_theta);
            return;
        }
        double base = c->rope_theta * pow(f * window / L - (f - 1.0), (double)d / (d - 2));
        for (int p = 0; p < d / 2; p++)
            inv_freq[p] = (float)(1.0 / pow(base, 2.0 * p / d));
        return;
    }
    case ROPE_SCALING_YARN: {
        const double base = c->rope_theta;
        const int orig = c->rope_original_max_pos > 0 ? c->rope_original_max_pos : L;
        double low = floor(yarn_correction_dim(32.0, d, base, orig));
        double high = ceil(yarn_correction_dim(1.0, d, base, orig));
        if (low < 0) low = 0;
        if (high > d - 1) high = d - 1;
        if (low == high) high += 0.001; /* as HF: avoid a zero-width ramp */
        for (int p = 0; p < d / 2; p++) {
            double extra = 1.0 / pow(base, 2.0 * p / d);
            double inter = extra / f;
            double ramp = (p - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            /* ramp 0: high-frequency dims keep their frequency; 1: interpolated. */
            inv_freq[p] = (float)(inter * ramp + extra * (1.0 - ramp));
        }
        *mscale = f > 1.0 ? (float)(0.1 * log(f) + 1.0) : 1.0f;
        return;
    }
    case ROPE_SCALING_NONE:
    default:
        cpu_rope_inv_freq(inv_freq, d, c->rope_theta);
        return;
    }
}

/* ---- CLEX ---------------------------------------------------------------------------- */

int positional_clex_t(int n, int trained, int max_factor)
{
    int t = (int)(((int64_t)n + trained - 1) / trained);
    if (t < 1) t = 1;
    if (t > max_factor) t = max_factor;
    return t;
}

float positional_clex_log_scale(int n, int trained)
{
    return (float)(log((double)n) / log((double)trained));
}

typedef struct clex_ode {
    int d, h, pd;
    clex_act_t act;
    const float *up, *down; /* [h, pd], [pd, h] */
    double *pre;            /* [pd] scratch */
} clex_ode_t;

/* dz/dt at time t (see positional.h). */
static void clex_rhs(const clex_ode_t *o, double t, const double *z, double *dz)
{
    const int d = o->d, h = o->h, pd = o->pd;
    const double alpha = t < 1.0 ? 1.0 : 2.0 * t - 1.0;
    /* ln ν_i = −(2i/d) · ln(10000 · α^(d/(d−2))) */
    const double lbase = log(10000.0) + (double)d / (d - 2) * log(alpha);
    for (int k = 0; k < pd; k++)
        o->pre[k] = 0.0;
    for (int i = 0; i < h; i++) {
        const double x = z[i] - (2.0 * i / d) * lbase;
        const float *u = o->up + (size_t)i * pd;
        for (int k = 0; k < pd; k++)
            o->pre[k] += x * u[k];
    }
    for (int k = 0; k < pd; k++) {
        const double a = o->pre[k];
        o->pre[k] = o->act == CLEX_ACT_TANH ? tanh(a) : a / (1.0 + exp(-a));
    }
    for (int i = 0; i < h; i++)
        dz[i] = -4.0 * i / ((double)(d - 2) * alpha);
    for (int k = 0; k < pd; k++) {
        const float *dn = o->down + (size_t)k * h;
        for (int i = 0; i < h; i++)
            dz[i] += o->pre[k] * dn[i];
    }
}

rc_t positional_clex_table(const model_config_t *c, const float *inv_freq, const float *up,
                           const float *down, float *table)
{
    const int d = c->head_dim, h = d / 2, M = c->clex_max_factor;
    const int pd = c->clex_param_factor * d;
    for (int i = 0; i < h; i++)
        table[i] = inv_freq[i]; /* t = 1: the tensor itself */
    if (M == 1) return RC_OK;
    if (d <= 2) return RC_ERR_FORMAT; /* d − 2 divides */

    /* torchdiffeq's grid, in float32 as it builds it from a float32 time tensor:
     * n = ceil((t_end − t_start) / dt + 1), points k · dt + t_start, the last set to t_end. */
    const float dtf = c->clex_time_dt;
    volatile float span = (float)(M - 1) / dtf; /* volatile: keep each float rounding */
    volatile float span1 = span + 1.0f;
    const long n_grid = (long)ceilf(span1);

    double *buf = malloc((size_t)(8 * h + pd) * sizeof(double));
    if (!buf) return RC_ERR_NOMEM;
    double *y0 = buf, *y1 = buf + h, *k1 = buf + 2 * h, *k2 = buf + 3 * h, *k3 = buf + 4 * h,
           *k4 = buf + 5 * h, *tmp = buf + 6 * h, *yi = buf + 7 * h;
    clex_ode_t o = {
        .d = d, .h = h, .pd = pd, .act = c->clex_act, .up = up, .down = down, .pre = buf + 8 * h};
    for (int i = 0; i < h; i++)
        y0[i] = log((double)inv_freq[i]);

    int next = 2; /* the next integer t to fill */
    volatile float g0 = 1.0f;
    for (long k = 0; k + 1 < n_grid && next <= M; k++) {
        volatile float g1 = (float)(k + 1) * dtf;
        g1 = g1 + 1.0f;
        if (k + 2 == n_grid) g1 = (float)M;
        const double t0 = g0, t1 = g1, dt = t1 - t0;
        /* RK4, 3/8 rule (torchdiffeq's rk4_alt_step_func). */
        clex_rhs(&o, t0, y0, k1);
        for (int i = 0; i < h; i++)
            tmp[i] = y0[i] + dt * k1[i] / 3.0;
        clex_rhs(&o, t0 + dt / 3.0, tmp, k2);
        for (int i = 0; i < h; i++)
            tmp[i] = y0[i] + dt * (k2[i] - k1[i] / 3.0);
        clex_rhs(&o, t0 + dt * 2.0 / 3.0, tmp, k3);
        for (int i = 0; i < h; i++)
            tmp[i] = y0[i] + dt * (k1[i] - k2[i] + k3[i]);
        clex_rhs(&o, t1, tmp, k4);
        for (int i = 0; i < h; i++)
            y1[i] = y0[i] + (k1[i] + 3.0 * (k2[i] + k3[i]) + k4[i]) * dt * 0.125;
        /* Linear interpolation onto each integer t this step reaches. */
        while (next <= M && t1 >= (double)next) {
            const double t = next;
            for (int i = 0; i < h; i++)
                yi[i] = t == t0   ? y0[i]
                        : t == t1 ? y1[i]
                                  : y0[i] + (t - t0) / (t1 - t0) * (y1[i] - y0[i]);
            float *row = table + (size_t)(next - 1) * h;
            for (int i = 0; i < h; i++)
                row[i] = (float)exp(yi[i]);
            next++;
        }
        for (int i = 0; i < h; i++)
            y0[i] = y1[i];
        g0 = g1;
    }
    free(buf);
    if (next <= M) return RC_ERR_FORMAT; /* cannot happen: the grid ends at M */
    for (size_t i = 0; i < (size_t)M * h; i++)
        if (!(table[i] > 0.0f) || !isfinite(table[i])) return RC_ERR_FORMAT;
    return RC_OK;
}

/* ---- GALI ---------------------------------------------------------------------------- */

void positional_gali_positions(int T, int trained, int local_window, float *pos)
{
    const int L = trained, w = local_window;
    if (T <= L) {
        for (int j = 0; j < T; j++)
            pos[j] = (float)j;
        return;
    }
    const int64_t g = ((int64_t)T - w + (L - w) - 1) / (L - w); /* ≥ 2 since T > L */
    const int64_t i = ((int64_t)T - L + g - 2) / (g - 1);       /* L − i + g·i ≥ T */
    const int64_t n_old = (int64_t)T - (L - i);                 /* ≤ g · i */
    const double step = 1.0 / (double)g;
    for (int64_t m = 0; m < n_old; m++)
        pos[m] = (float)((double)(m / g) + step * (double)(m % g));
    for (int64_t m = n_old; m < T; m++)
        pos[m] = (float)(i + (m - n_old));
}

int positional_gali_piece(int local, int n, int trained, int chunk_size)
{
    const int room = local < trained ? trained - local : chunk_size;
    return n < room ? n : room;
}

float positional_gali_coef(float qceil, float pk, gali_mode_t mode)
{
    return cpu_gali_coef(qceil, pk, mode == GALI_MODE_REFERENCE);
}
