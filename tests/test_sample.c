/* Sampling: greedy picks the argmax, seeds reproduce, top-p cuts the tail, and the
 * empirical distribution follows softmax(logits / T). */
#include <math.h>

#include "model/sample.h"
#include "tests/check.h"

int main(void)
{
    float logits[5] = {0.5f, 2.0f, 1.0f, 2.0f, -1.0f};
    sampler_t s;
    sampler_init(&s, 0.0f, 0.0f, 1);
    CHECK(sampler_sample(&s, logits, 5) == 1); /* first of the tied maxima */

    int a[50], b[50], same = 1, distinct = 0;
    sampler_init(&s, 1.0f, 0.0f, 42);
    for (int i = 0; i < 50; i++) a[i] = sampler_sample(&s, logits, 5);
    sampler_init(&s, 1.0f, 0.0f, 42);
    for (int i = 0; i < 50; i++) b[i] = sampler_sample(&s, logits, 5), same &= a[i] == b[i];
    CHECK(same);
    for (int i = 1; i < 50; i++) distinct |= a[i] != a[0];
    CHECK(distinct);

    /* top_p 0.5: only the two tokens of logit 2.0 (≈ 0.33 each) can reach the mass. */
    sampler_init(&s, 1.0f, 0.5f, 7);
    int ok = 1;
    for (int i = 0; i < 500; i++) {
        int t = sampler_sample(&s, logits, 5);
        ok &= t == 1 || t == 3;
    }
    CHECK(ok);

    /* Frequencies at T = 2 match softmax(logits / 2) within sampling noise. */
    int count[5] = {0};
    const int N = 200000;
    sampler_init(&s, 2.0f, 0.0f, 3);
    for (int i = 0; i < N; i++) count[sampler_sample(&s, logits, 5)]++;
    double z = 0, p[5];
    for (int i = 0; i < 5; i++) z += p[i] = exp(logits[i] / 2.0);
    for (int i = 0; i < 5; i++) CHECK_NEAR(count[i] / (double)N, p[i] / z, 0.01);
    return check_summary();
}
