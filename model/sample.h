/* sample.h — choosing the next token from logits.
 *
 * temperature <= 0 is greedy (argmax, first index on ties). Otherwise logits are divided by
 * the temperature, softmaxed in double, cut to the smallest set of most likely tokens whose
 * mass reaches top_p (top_p <= 0 or >= 1: no cut), and one token is drawn with the
 * sampler's own seeded generator, so a seed reproduces an answer exactly. */
#ifndef RECALL_MODEL_SAMPLE_H
#define RECALL_MODEL_SAMPLE_H

#include <stdint.h>

typedef struct sampler {
    float temperature;
    float top_p;
    uint64_t state; /* splitmix64 state */
} sampler_t;

void sampler_init(sampler_t *s, float temperature, float top_p, uint64_t seed);

/* Returns a token id in [0, vocab). logits is not modified. */
int sampler_sample(sampler_t *s, const float *logits, int vocab);

#endif
