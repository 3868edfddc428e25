/* dtype.h — element types of tensors and memory, and exact conversions to and from fp32.
 *
 * bf16 and f16 are stored as uint16_t. Casting fp32 -> bf16 rounds to nearest, ties to
 * even, as torch's .to(torch.bfloat16) does, so a memory written here matches one written
 * by the PyTorch reference bit for bit.
 *
 * Two more types exist only as memory-row formats (common/quant.h): DTYPE_FP8_E4M3 and
 * DTYPE_I8 hold one byte per element plus one fp32 scale per (row, kv head), so an element
 * alone means nothing. dtype_to_f32 / dtype_from_f32 refuse them (abort: a caller that
 * reaches them with a row format has a bug); rows go through quant_row_* instead. */
#ifndef RECALL_COMMON_DTYPE_H
#define RECALL_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif


typedef enum dtype {
    DTYPE_F32 = 0,
    DTYPE_F16 = 1,
    DTYPE_BF16 = 2,
    DTYPE_FP8_E4M3 = 3, /* memory rows only: e4m3fn codes + per-head scales (quant.h) */
    DTYPE_I8 = 4,       /* memory rows only: int8 codes + per-head scales (quant.h) */
} dtype_t;

/* 1 for the scaled one-byte row formats (FP8_E4M3, I8). */
static inline int dtype_is_quant(dtype_t t)
{
    return t == DTYPE_FP8_E4M3 || t == DTYPE_I8;
}

/* Bytes of one element's code: 4, 2, or 1 for the row formats (whose rows also carry
 * scales: size rows with dtype_row_bytes, never with row_dim * dtype_size). */
static inline size_t dtype_size(dtype_t t)
{
    return t == DTYPE_F32 ? 4 : dtype_is_quant(t) ? 1 : 2;
}

/* Bytes of one memory row of n_kv_heads heads of head_dim elements in type t:
 * n_kv_heads * head_dim * dtype_size(t), plus n_kv_heads fp32 scales for the row formats. */
static inline size_t dtype_row_bytes(dtype_t t, int n_kv_heads, int head_dim)
{
    const size_t n = (size_t)n_kv_heads * (size_t)head_dim;
    return dtype_is_quant(t) ? n + (size_t)n_kv_heads * 4 : n * dtype_size(t);
}

/* "f32", "f16", "bf16", "fp8", "int8". */
const char *dtype_name(dtype_t t);

/* Accepts recall's names and torch's ("float32", "float", "float16", "half", "bfloat16",
 * with or without a "torch." prefix) and safetensors' ("F32", "F16", "BF16").
 * Returns 0 and sets *out, or -1 for an unknown name. */
int dtype_parse(const char *s, dtype_t *out);

/* dtype_parse plus the memory-row formats: "fp8" (or "fp8_e4m3", "e4m3", "float8_e4m3fn")
 * and "int8" (or "i8"). For a session's memory dtype only: weights and configs never take
 * them. Returns 0 and sets *out, or -1. */
int dtype_parse_mem(const char *s, dtype_t *out);

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/* Converts n elements of type t (not a row format) at src to fp32 at dst. */
void dtype_to_f32(float *dst, const void *src, dtype_t t, size_t n);
/* Converts n fp32 elements to type t (not a row format; rounding as above). */
void dtype_from_f32(void *dst, dtype_t t, const float *src, size_t n);

#ifdef __cplusplus
}
#endif

#endif
