/* sample.c — greedy, temperature and nucleus sampling with a seeded generator. */
#include "model/sample.h"

#include <math.h>
#include <stdlib.h>

void sampler_init(sampler_t *s, float temperature, float top_p, uint64_t seed)
{
    s->temperature = temperature;
    s->top_p = top_p;
    s->state = seed;
}

/* splitmix64: tiny, seedable with any value (0 included), good enough for sampling. */
static uint64_t next_u64(sampler_t *s)
{
    uint64_t z = (s->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double next_unit(sampler_t *s)
{
    return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
}

typedef struct cand {
    double p;
    int id;
} cand_t;

static int by_prob_desc(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

int sampler_sample(sampler_t *s, const float *logits, int vocab)
{
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (s->temperature <= 0.0f) return best;

    cand_t *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return best; /* out of memory: degrade to greedy rather than fail a reply */
    double mx = logits[best] / s->temperature, sum = 0;
    for (int i = 0; i < vocab; i++) {
        c[i].id = i;
        c[i].p = exp(logits[i] / s->temperature - mx);
        sum += c[i].p;
    }
    int n = vocab;
    if (s->top_p > 0.0f && s->top_p < 1.0f) {
        qsort(c, (size_t)vocab, sizeof *c, by_prob_desc);
        double mass = 0;
        for (n = 0; n < vocab;) {
            mass += c[n++].p / sum;
            if (mass >= s->top_p) break;
        }
        sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].p;
    }
    double r = next_unit(s) * sum, acc = 0;
    int id = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) {
            id = c[i].id;
            break;
        }
    }
    free(c);
    return id;
}
