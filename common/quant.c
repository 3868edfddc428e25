/* quant.c — fp8 e4m3 and int8 memory rows (see quant.h for the format). */
#include "common/quant.h"

#include <math.h>
#include <string.h>

#include "common/log.h"

uint8_t quant_e4m3_encode(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return sign | 0x7f; /* NaN */
    float a;
    memcpy(&a, &u, 4);
    if (a >= QUANT_E4M3_MAX) return sign | 0x7e; /* saturate (inf included) */
    if (a < 0.015625f) {
        /* Below the smallest normal 2^-6 the codes are multiples of 2^-9: code = a * 2^9
         * rounded to nearest even (exact scaling; rintf rounds ties to even). 8 comes out as
         * 0x08, which is 2^-6, the smallest normal: the encodings join up. */
        return sign | (uint8_t)rintf(a * 512.0f);
    }
    /* A normal: keep the top 3 of fp32's 23 mantissa bits, rounding to nearest even; a carry
     * moves into the exponent by itself. Rebias the exponent from 127 to 7. */
    const uint32_t r = (u + 0x7ffffu + ((u >> 20) & 1u)) >> 20; /* exp8 | man3, fp32 bias */
    uint32_t c = r - ((127u - 7u) << 3);
    if (c > 0x7e) c = 0x7e; /* only a round-up from just under 448 could pass it */
    return sign | (uint8_t)c;
}

/* Every code's value, computed at compile time from the definition: magnitude (1 + m/8) *
 * 2^(e - 7) for exponent field e > 0, m/8 * 2^-6 for e = 0; the top bit negates; 0x7f and
 * 0xff are NaN. A table because the attention decodes every memory element it reads. */
#define P2(e)                                                                                  \
    ((e) == 0    ? 0.015625f                                                                   \
     : (e) == 1  ? 0.015625f                                                                   \
     : (e) == 2  ? 0.03125f                                                                    \
     : (e) == 3  ? 0.0625f                                                                     \
     : (e) == 4  ? 0.125f                                                                      \
     : (e) == 5  ? 0.25f                                                                       \
     : (e) == 6  ? 0.5f                                                                        \
     : (e) == 7  ? 1.0f                                                                        \
     : (e) == 8  ? 2.0f                                                                        \
     : (e) == 9  ? 4.0f                                                                        \
     : (e) == 10 ? 8.0f                                                                        \
     : (e) == 11 ? 16.0f                                                                       \
     : (e) == 12 ? 32.0f                                                                       \
     : (e) == 13 ? 64.0f                                                                       \
     : (e) == 14 ? 128.0f                                                                      \
                 : 256.0f)
#define MAG(c)                                                                                 \
    (((c) & 0x7f) == 0x7f ? NAN                                                                \
     : (((c) >> 3) & 15) == 0                                                                  \
         ? (float)((c) & 7) / 8.0f * P2(0)                                                     \
         : (1.0f + (float)((c) & 7) / 8.0f) * P2(((c) >> 3) & 15))
#define VAL(c) ((c) & 0x80 ? -MAG(c) : MAG(c))
#define V4(c) VAL(c), VAL((c) + 1), VAL((c) + 2), VAL((c) + 3)
#define V16(c) V4(c), V4((c) + 4), V4((c) + 8), V4((c) + 12)
#define V64(c) V16(c), V16((c) + 16), V16((c) + 32), V16((c) + 48)
const float quant_e4m3_values[256] = {V64(0), V64(64), V64(128), V64(192)};
#undef V64
#undef V16
#undef V4
#undef VAL
#undef MAG
#undef P2

float quant_row_scale(const void *row, int n_kv_heads, int head_dim, int h)
{
    float s;
    memcpy(&s, (const uint8_t *)row + (size_t)n_kv_heads * head_dim + (size_t)h * 4, 4);
    return s;
}

void quant_row_encode(void *dst, dtype_t t, const float *src, int n_kv_heads, int head_dim)
{
    if (!dtype_is_quant(t))
        log_abort(__FILE__, __LINE__, "quant_row_encode on %s", dtype_name(t));
    uint8_t *codes = dst;
    uint8_t *scales = codes + (size_t)n_kv_heads * head_dim;
    const float top = t == DTYPE_I8 ? (float)QUANT_I8_MAX : QUANT_E4M3_MAX;
    for (int h = 0; h < n_kv_heads; h++) {
        const float *x = src + (size_t)h * head_dim;
        uint8_t *c = codes + (size_t)h * head_dim;
        float amax = 0.0f;
        for (int d = 0; d < head_dim; d++) {
            const float a = fabsf(x[d]);
            if (isfinite(a) && a > amax) amax = a;
        }
        const float scale = amax / top;
        memcpy(scales + (size_t)h * 4, &scale, 4);
        for (int d = 0; d < head_dim; d++) {
            float q;
            if (isnan(x[d]) || scale == 0.0f)
                q = isinf(x[d]) && scale != 0.0f ? x[d] : 0.0f;
            else
                q = x[d] / scale; /* ±inf stays ±inf and saturates below */
            if (t == DTYPE_I8) {
                q = rintf(q);
                if (q > top) q = top;
                if (q < -top) q = -top;
                c[d] = (uint8_t)(int8_t)q;
            } else {
                c[d] = quant_e4m3_encode(q);
            }
        }
    }
}

void quant_row_head_decode(float *dst, const void *row, dtype_t t, int n_kv_heads, int head_dim,
                           int h)
{
    if (!dtype_is_quant(t)) {
        dtype_to_f32(dst, (const char *)row + (size_t)h * head_dim * dtype_size(t), t,
                     (size_t)head_dim);
        return;
    }
    const uint8_t *c = (const uint8_t *)row + (size_t)h * head_dim;
    const float s = quant_row_scale(row, n_kv_heads, head_dim, h);
    if (t == DTYPE_I8) {
        for (int d = 0; d < head_dim; d++) dst[d] = (float)(int8_t)c[d] * s;
    } else {
        for (int d = 0; d < head_dim; d++) dst[d] = quant_e4m3_values[c[d]] * s;
    }
}

void quant_row_decode(float *dst, const void *row, dtype_t t, int n_kv_heads, int head_dim)
{
    for (int h = 0; h < n_kv_heads; h++)
        quant_row_head_decode(dst + (size_t)h * head_dim, row, t, n_kv_heads, head_dim, h);
}

void quant_rows_decode(float *dst, const void *rows, dtype_t t, size_t n, int n_kv_heads,
                       int head_dim)
{
    const size_t rb = dtype_row_bytes(t, n_kv_heads, head_dim), rd = (size_t)n_kv_heads * head_dim;
    for (size_t i = 0; i < n; i++)
        quant_row_decode(dst + i * rd, (const char *)rows + i * rb, t, n_kv_heads, head_dim);
}

void quant_rows_encode(void *dst, dtype_t t, const float *src, size_t n, int n_kv_heads,
                       int head_dim)
{
    const size_t rd = (size_t)n_kv_heads * head_dim;
    if (!dtype_is_quant(t)) {
        dtype_from_f32(dst, t, src, n * rd);
        return;
    }
    const size_t rb = dtype_row_bytes(t, n_kv_heads, head_dim);
    for (size_t i = 0; i < n; i++)
        quant_row_encode((char *)dst + i * rb, t, src + i * rd, n_kv_heads, head_dim);
}
