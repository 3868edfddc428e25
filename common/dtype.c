#include "common/dtype.h"

#include <strings.h>

#include "common/log.h"

const char *dtype_name(dtype_t t)
{
    switch (t) {
    case DTYPE_F32: return "f32";
    case DTYPE_F16: return "f16";
    case DTYPE_BF16: return "bf16";
    case DTYPE_FP8_E4M3: return "fp8";
    case DTYPE_I8: return "int8";
    }
    return "?";
}

int dtype_parse(const char *s, dtype_t *out)
{
    if (!s) return -1;
    if (!strncmp(s, "torch.", 6)) s += 6;
    if (!strcasecmp(s, "f32") || !strcasecmp(s, "float32") || !strcasecmp(s, "float") ||
        !strcasecmp(s, "fp32")) {
        *out = DTYPE_F32;
        return 0;
    }
    if (!strcasecmp(s, "f16") || !strcasecmp(s, "float16") || !strcasecmp(s, "half") ||
        !strcasecmp(s, "fp16")) {
        *out = DTYPE_F16;
        return 0;
    }
    if (!strcasecmp(s, "bf16") || !strcasecmp(s, "bfloat16")) {
        *out = DTYPE_BF16;
        return 0;
    }
    return -1;
}

int dtype_parse_mem(const char *s, dtype_t *out)
{
    if (!dtype_parse(s, out)) return 0;
    if (!s) return -1;
    if (!strncmp(s, "torch.", 6)) s += 6;
    if (!strcasecmp(s, "fp8") || !strcasecmp(s, "fp8_e4m3") || !strcasecmp(s, "e4m3") ||
        !strcasecmp(s, "float8_e4m3fn")) {
        *out = DTYPE_FP8_E4M3;
        return 0;
    }
    if (!strcasecmp(s, "int8") || !strcasecmp(s, "i8")) {
        *out = DTYPE_I8;
        return 0;
    }
    return -1;
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    int32_t exp = (int32_t)((u >> 23) & 0xff);
    uint32_t man = u & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
    int32_t e = exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = 1u << (shift - 1);
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++; /* may carry into exponent: ok */
    return (uint16_t)(sign | r);
}

void dtype_to_f32(float *dst, const void *src, dtype_t t, size_t n)
{
    const uint16_t *h = src;
    switch (t) {
    case DTYPE_F32: memcpy(dst, src, n * 4); break;
    case DTYPE_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(h[i]);
        break;
    case DTYPE_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(h[i]);
        break;
    case DTYPE_FP8_E4M3:
    case DTYPE_I8: log_abort(__FILE__, __LINE__, "dtype_to_f32 on row format %s", dtype_name(t));
    }
}

void dtype_from_f32(void *dst, dtype_t t, const float *src, size_t n)
{
    uint16_t *h = dst;
    switch (t) {
    case DTYPE_F32: memcpy(dst, src, n * 4); break;
    case DTYPE_BF16:
        for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
        break;
    case DTYPE_F16:
        for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(src[i]);
        break;
    case DTYPE_FP8_E4M3:
    case DTYPE_I8: log_abort(__FILE__, __LINE__, "dtype_from_f32 on row format %s", dtype_name(t));
    }
}
