/* bench.c — synthetic text for `recall bench` (bench.h). */
#include "clients/bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char BENCH_QUESTION[] = "\nIn one sentence, what is the text above about?";

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#define PICK(s, list) list[splitmix64(s) % (sizeof list / sizeof list[0])]

static const char *const subjects[] = {
    "The old miller", "A young engineer", "The river pilot", "Her grandmother",
    "The night clerk", "A tired courier", "The village doctor", "Our new neighbour",
    "The ship's cook", "A travelling merchant", "The head librarian", "His younger brother"};
static const char *const verbs[] = {"counted",  "carried", "painted",  "repaired", "sold",
                                    "measured", "found",   "ordered",  "packed",   "lost",
                                    "borrowed", "planted", "delivered", "sorted"};
static const char *const things[] = {"barrels of apples", "copper kettles",  "wooden chairs",
                                     "letters",           "maps of the coast", "lanterns",
                                     "sacks of flour",    "old coins",       "pine seedlings",
                                     "glass bottles",     "wool blankets",   "iron nails"};
static const char *const places[] = {"near the harbour",   "behind the station", "in the market",
                                     "along the north road", "at the mill",       "by the bridge",
                                     "in the east quarter", "under the clock tower"};
static const char *const times[] = {"on Monday",      "before dawn",     "in the spring of",
                                    "late in autumn", "after the storm", "during the fair",
                                    "in the year",    "on the morning of day"};
static const char *const remarks[] = {
    "Nobody remembered why.",          "It rained for most of the day.",
    "The price had doubled since May.", "Everyone agreed it was a fair trade.",
    "The ledger shows a small error.", "Then the wind turned west.",
    "It took longer than expected.",   "The work was finished by noon."};

/* One sentence (or two) into buf; returns its length. */
static int sentence(uint64_t *s, char *buf, size_t n)
{
    unsigned a = (unsigned)(splitmix64(s) % 997) + 2, b = (unsigned)(splitmix64(s) % 2024) + 1;
    switch (splitmix64(s) % 4) {
    case 0:
        return snprintf(buf, n, "%s %s %u %s %s. ", PICK(s, subjects), PICK(s, verbs), a,
                        PICK(s, things), PICK(s, places));
    case 1:
        return snprintf(buf, n, "%s %u, %s %s %u %s. ", PICK(s, times), b,
                        PICK(s, subjects), PICK(s, verbs), a, PICK(s, things));
    case 2:
        return snprintf(buf, n, "%s %s %u %s; %s ", PICK(s, subjects), PICK(s, verbs), a,
                        PICK(s, things), PICK(s, remarks));
    default:
        return snprintf(buf, n, "Entry %u: %u %s, %s. ", b, a, PICK(s, things), PICK(s, places));
    }
}

rc_t bench_text(size_t bytes, uint64_t seed, char **out)
{
    *out = NULL;
    if (bytes == 0) return RC_ERR_INVALID;
    char *t = malloc(bytes + 1);
    if (!t) return RC_ERR_NOMEM;
    uint64_t s = seed;
    size_t at = 0;
    char line[2048]; /* 8 sentences of at most ~120 bytes */
    while (at < bytes) {
        /* A line is a paragraph of 3 to 8 sentences. */
        int len = 0, n_sent = 3 + (int)(splitmix64(&s) % 6);
        for (int i = 0; i < n_sent; i++)
            len += sentence(&s, line + len, sizeof line - (size_t)len - 2);
        line[len - 1] = '\n'; /* replaces the last sentence's trailing space */
        size_t m = (size_t)len < bytes - at ? (size_t)len : bytes - at;
        memcpy(t + at, line, m);
        at += m;
    }
    t[bytes] = 0;
    *out = t;
    return RC_OK;
}
