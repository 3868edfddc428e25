/* test_rng.h — the GPU tests' deterministic random numbers (xorshift64, a fixed seed), one
 * copy per test program: each includes this once, so each draws the same sequence as before
 * and as its CPU reference. */
#ifndef RECALL_TESTS_TEST_RNG_H
#define RECALL_TESTS_TEST_RNG_H

#include <math.h>
#include <stdint.h>

static uint64_t rng = 88172645463325252ull;

static inline uint64_t rng_next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* [0, 1) with 24 bits. */
static inline float rng_unit(void)
{
    return (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}

/* Standard normal (Box-Muller). */
static inline float rng_normal(void)
{
    float u = rng_unit(), v = rng_unit();
    if (u < 1e-7f) u = 1e-7f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

#endif
