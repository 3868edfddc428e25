/* test_dtype — fp32 <-> bf16 / f16 conversions: exhaustive round trips and rounding against
 * hand-computed bit patterns (round to nearest, ties to even, as torch does). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/dtype.h"
#include "tests/check.h"

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_bf16_values(void)
{
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(-2.0f) == 0xc000);
    CHECK(f32_to_bf16(0.0f) == 0x0000);
    CHECK(f32_to_bf16(-0.0f) == 0x8000);
    CHECK(f32_to_bf16(from_bits(0x40490fdb)) == 0x4049); /* pi: below half, rounds down */
    CHECK(f32_to_bf16(from_bits(0x3f808000)) == 0x3f80); /* tie, even stays */
    CHECK(f32_to_bf16(from_bits(0x3f818000)) == 0x3f82); /* tie, odd rounds up */
    CHECK(f32_to_bf16(from_bits(0x3f808001)) == 0x3f81); /* just above the tie */
    CHECK(f32_to_bf16(from_bits(0x3f807fff)) == 0x3f80); /* just below the tie */
    CHECK(f32_to_bf16(from_bits(0xbf818000)) == 0xbf82); /* sign does not change rounding */
    CHECK(f32_to_bf16(from_bits(0x7f7fffff)) == 0x7f80); /* FLT_MAX overflows to inf */
    CHECK(f32_to_bf16(INFINITY) == 0x7f80);
    CHECK(f32_to_bf16(-INFINITY) == 0xff80);
    CHECK(f32_to_bf16(from_bits(0x00000001)) == 0x0000); /* tiny subnormal to zero */
    CHECK(f32_to_bf16(from_bits(0x00018000)) == 0x0002); /* subnormal tie to even (up) */
    uint16_t qn = f32_to_bf16(NAN);
    CHECK((qn & 0x7f80) == 0x7f80 && (qn & 0x7f) != 0);
    /* A NaN whose payload sits only in the low 16 bits must stay NaN, not become inf. */
    uint16_t ln = f32_to_bf16(from_bits(0x7f800001));
    CHECK((ln & 0x7f80) == 0x7f80 && (ln & 0x7f) != 0);
    CHECK(bf16_to_f32(0x3f80) == 1.0f);
    CHECK(bf16_to_f32(0xc049) == -3.140625f);
    CHECK(isinf(bf16_to_f32(0xff80)) && bf16_to_f32(0xff80) < 0);
}

static void test_bf16_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = bf16_to_f32((uint16_t)h);
        uint16_t back = f32_to_bf16(f);
        if (isnan(f)) {
            if (!isnan(bf16_to_f32(back))) bad++;
        } else if (back != h) {
            bad++;
        }
        /* Every fp32 between two bf16 neighbours rounds to the nearer one. */
        if (!isnan(f) && !isinf(f) && (h & 0x7fff) < 0x7f7f) {
            float just_below_mid = from_bits(bits(f) + 0x7fff);
            float just_above_mid = from_bits(bits(f) + 0x8001);
            if (f32_to_bf16(just_below_mid) != h) bad++;
            if (f32_to_bf16(just_above_mid) != (uint16_t)(h + 1)) bad++;
        }
    }
    CHECK_MSG(bad == 0, "%d bf16 values failed the round trip", bad);
}

static void test_f16_values(void)
{
    CHECK(f32_to_f16(1.0f) == 0x3c00);
    CHECK(f32_to_f16(-2.0f) == 0xc000);
    CHECK(f32_to_f16(0.1f) == 0x2e66);
    CHECK(f32_to_f16(65504.0f) == 0x7bff); /* largest finite */
    CHECK(f32_to_f16(65519.0f) == 0x7bff); /* below the tie to inf */
    CHECK(f32_to_f16(65520.0f) == 0x7c00); /* tie rounds to even: inf */
    CHECK(f32_to_f16(1e6f) == 0x7c00);
    CHECK(f32_to_f16(-INFINITY) == 0xfc00);
    CHECK(f32_to_f16(ldexpf(1.0f, -24)) == 0x0001);        /* smallest subnormal */
    CHECK(f32_to_f16(ldexpf(1.0f, -25)) == 0x0000);        /* tie between 0 and 1 ulp: even = 0 */
    CHECK(f32_to_f16(ldexpf(3.0f, -26)) == 0x0001);        /* 0.75 ulp rounds up */
    CHECK(f32_to_f16(ldexpf(3.0f, -25)) == 0x0002);        /* 1.5 ulp: tie to even = 2 */
    CHECK(f32_to_f16(ldexpf(1.0f, -14)) == 0x0400);        /* smallest normal */
    CHECK(f32_to_f16(1.0f + ldexpf(1.0f, -11)) == 0x3c00); /* tie, even stays */
    CHECK(f32_to_f16(1.0f + ldexpf(3.0f, -11)) == 0x3c02); /* tie, odd rounds up */
    CHECK(f32_to_f16(ldexpf(2047.0f, -25)) == 0x0400);     /* subnormal carries to normal */
    uint16_t qn = f32_to_f16(NAN);
    CHECK((qn & 0x7c00) == 0x7c00 && (qn & 0x3ff) != 0);
    CHECK(f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
    CHECK(f16_to_f32(0x7bff) == 65504.0f);
    CHECK(f16_to_f32(0x8000) == 0.0f && signbit(f16_to_f32(0x8000)));
    CHECK(isinf(f16_to_f32(0x7c00)));
    CHECK(isnan(f16_to_f32(0x7e00)));
}

static void test_f16_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        uint16_t back = f32_to_f16(f);
        if (isnan(f)) {
            if (!isnan(f16_to_f32(back))) bad++;
        } else if (back != h) {
            bad++;
        }
        /* Midpoints between neighbours go to the even one. */
        if (!isnan(f) && (h & 0x7fff) < 0x7bff) {
            float a = f, b = f16_to_f32((uint16_t)(h + 1));
            float mid = (float)(((double)a + (double)b) / 2); /* exact in fp32 */
            uint16_t want = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            if (f32_to_f16(mid) != want) bad++;
            if (f32_to_f16(nextafterf(mid, a)) != h) bad++;
            if (f32_to_f16(nextafterf(mid, b)) != (uint16_t)(h + 1)) bad++;
        }
    }
    CHECK_MSG(bad == 0, "%d f16 values failed the round trip / midpoint checks", bad);
}

static void test_arrays_and_names(void)
{
    float src[5] = {1.0f, -0.5f, 3.140625f, 0.0f, 1024.0f}, dst[5];
    uint16_t h[5];
    for (int t = 0; t < 3; t++) {
        dtype_from_f32(h, DTYPE_BF16, src, 5);
        dtype_to_f32(dst, h, DTYPE_BF16, 5);
        CHECK(memcmp(src, dst, sizeof src) == 0);
        dtype_from_f32(h, DTYPE_F16, src, 5);
        dtype_to_f32(dst, h, DTYPE_F16, 5);
        CHECK(memcmp(src, dst, sizeof src) == 0);
        float f32[5];
        dtype_from_f32(f32, DTYPE_F32, src, 5);
        dtype_to_f32(dst, f32, DTYPE_F32, 5);
        CHECK(memcmp(src, dst, sizeof src) == 0);
    }
    dtype_t t;
    CHECK(dtype_parse("bfloat16", &t) == 0 && t == DTYPE_BF16);
    CHECK(dtype_parse("torch.float16", &t) == 0 && t == DTYPE_F16);
    CHECK(dtype_parse("F32", &t) == 0 && t == DTYPE_F32);
    CHECK(dtype_parse("BF16", &t) == 0 && t == DTYPE_BF16);
    CHECK(dtype_parse("int8", &t) == -1);
    CHECK(dtype_parse(NULL, &t) == -1);
    CHECK(dtype_size(DTYPE_F32) == 4 && dtype_size(DTYPE_BF16) == 2 && dtype_size(DTYPE_F16) == 2);
    CHECK(!strcmp(dtype_name(DTYPE_BF16), "bf16"));
}

int main(void)
{
    test_bf16_values();
    test_bf16_exhaustive();
    test_f16_values();
    test_f16_exhaustive();
    test_arrays_and_names();
    return check_summary();
}
