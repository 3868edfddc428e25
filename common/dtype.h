/* dtype.h — element types of tensors and memory, and exact conversions to and from fp32.
 *
 * bf16 and f16 are stored as uint16_t. Casting fp32 -> bf16 rounds to nearest, ties to
 * even, as torch's .to(torch.bfloat16) does, so a memory written here matches one written
 * by the PyTorch reference bit for bit. */
#ifndef RECALL_COMMON_DTYPE_H
#define RECALL_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif


typedef enum dtype { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2 } dtype_t;

static inline size_t dtype_size(dtype_t t)
{
    return t == DTYPE_F32 ? 4 : 2;
}

/* "f32", "f16", "bf16". */
const char *dtype_name(dtype_t t);

/* Accepts recall's names and torch's ("float32", "float", "float16", "half", "bfloat16",
 * with or without a "torch." prefix) and safetensors' ("F32", "F16", "BF16").
 * Returns 0 and sets *out, or -1 for an unknown name. */
int dtype_parse(const char *s, dtype_t *out);

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

/* Converts n elements of type t at src to fp32 at dst. */
void dtype_to_f32(float *dst, const void *src, dtype_t t, size_t n);
/* Converts n fp32 elements to type t (rounding as above). */
void dtype_from_f32(void *dst, dtype_t t, const float *src, size_t n);

#ifdef __cplusplus
}
#endif

#endif
