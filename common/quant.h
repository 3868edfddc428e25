/* quant.h — the quantized memory-row formats: fp8 e4m3 and int8 with one scale per head.
 *
 * A session may keep its FoT memory rows (one row per token and memory layer: the n_kv_heads
 * heads of head_dim keys, or values) in one byte per element instead of bf16's two. A row
 * stays a fixed-size record, so the store, its files, the checksums and the tiers treat it
 * as opaque bytes (dtype_row_bytes gives its size):
 *
 *   bytes [0, n_kv*hd)              codes: head h's element d at h*hd + d (uint8 / int8)
 *   bytes [n_kv*hd, n_kv*(hd + 4))  n_kv scales, float32 little-endian, head h at 4*h
 *
 * Element (h, d) decodes to value(code) * scale[h], where value() is
 *   DTYPE_FP8_E4M3  the OCP / NVIDIA e4m3fn number of the byte (torch.float8_e4m3fn): 1 sign,
 *                   4 exponent (bias 7), 3 mantissa bits; subnormals; largest finite ±448;
 *                   no infinities; 0x7f and 0xff are NaN (never written in a row);
 *   DTYPE_I8        the byte as a signed integer in −127..127 (−128 is never written).
 * Encoding a head: amax = max |x| over its finite elements; scale = amax / 448 (fp8) or
 * amax / 127 (int8), so the largest element maps to the largest code; each element is x /
 * scale rounded to the nearest code (ties to even) and saturated to ±448 / ±127. A head of
 * zeros (or with no finite element) has scale 0 and all codes 0. Non-finite inputs are not
 * carried: ±inf becomes the largest code of its sign (±amax), NaN becomes 0 — a row never
 * decodes to NaN or inf.
 *
 * The scales are fp32, not bf16: they cost 4 bytes per 64-128 codes (3-6 %), and a bf16
 * scale would add up to 0.4 % error to every element of the head and could round below
 * amax / 448, pushing the largest element past the top code.
 *
 * All functions are pure, thread-safe and never fail; buffers are the caller's. */
#ifndef RECALL_COMMON_QUANT_H
#define RECALL_COMMON_QUANT_H

#include <stdint.h>

#include "common/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QUANT_E4M3_MAX 448.0f
#define QUANT_I8_MAX 127

/* x to its e4m3fn byte, rounding to nearest even like torch's .to(torch.float8_e4m3fn) for
 * |x| < 448 (and for |x| < 480, which torch also rounds to 448). Unlike torch, larger finite
 * values and ±inf saturate to ±448 (0x7e / 0xfe) instead of becoming NaN; NaN gives 0x7f
 * with x's sign bit (0x7f / 0xff), as torch does. */
uint8_t quant_e4m3_encode(float x);
/* The e4m3fn value of each byte (exact in fp32; NaN for 0x7f and 0xff). */
extern const float quant_e4m3_values[256];
static inline float quant_e4m3_decode(uint8_t c)
{
    return quant_e4m3_values[c];
}

/* Encodes one row of fp32 src [n_kv_heads, head_dim] into dst (dtype_row_bytes(t, n_kv_heads,
 * head_dim) bytes) in row format t (DTYPE_FP8_E4M3 or DTYPE_I8; anything else aborts). */
void quant_row_encode(void *dst, dtype_t t, const float *src, int n_kv_heads, int head_dim);

/* Scale of head h of a row (either row format). */
float quant_row_scale(const void *row, int n_kv_heads, int head_dim, int h);

/* dst [head_dim] = head h of one memory row in any memory dtype, as fp32: a row format is
 * decoded (value(code) * scale), f32/bf16/f16 are widened. row points at the row's first
 * byte (a row is dtype_row_bytes(t, n_kv_heads, head_dim) bytes). */
void quant_row_head_decode(float *dst, const void *row, dtype_t t, int n_kv_heads, int head_dim,
                           int h);

/* dst [n_kv_heads, head_dim] = the whole row as fp32 (quant_row_head_decode of every head). */
void quant_row_decode(float *dst, const void *row, dtype_t t, int n_kv_heads, int head_dim);

/* dst [n, n_kv_heads*head_dim] = n consecutive rows starting at rows, as fp32. */
void quant_rows_decode(float *dst, const void *rows, dtype_t t, size_t n, int n_kv_heads,
                       int head_dim);
/* n consecutive rows of fp32 src [n, n_kv_heads*head_dim] into dst in memory dtype t (a row
 * format, or f32/bf16/f16 converted by dtype_from_f32). */
void quant_rows_encode(void *dst, dtype_t t, const float *src, size_t n, int n_kv_heads,
                       int head_dim);

#ifdef __cplusplus
}
#endif

#endif
