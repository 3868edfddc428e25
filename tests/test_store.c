/* The memory store: appends, dtype rounding, truncate, raw round trips. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "memory/store.h"
#include "tests/check.h"

int main(void)
{
    memory_store_t *s = NULL;
    CHECK_RC(memory_store_create(2, 0, DTYPE_F32, &s), RC_ERR_INVALID);
    CHECK(s == NULL);
    CHECK_RC(memory_store_create(2, 8, DTYPE_BF16, &s), RC_OK);
    CHECK(memory_store_len(s) == 0);

    float k[3 * 8], v[3 * 8];
    for (int i = 0; i < 24; i++) k[i] = 1.0f + i / 1000.0f, v[i] = -(float)i;
    CHECK_RC(memory_store_append_f32(s, 0, k, v, 3), RC_OK);
    CHECK(memory_store_rows(s, 0) == 3 && memory_store_rows(s, 1) == 0);
    CHECK(memory_store_len(s) == 0); /* a window is in memory only once every layer has it */
    CHECK_RC(memory_store_append_f32(s, 1, k, v, 3), RC_OK);
    CHECK(memory_store_len(s) == 3);
    CHECK(memory_store_bytes(s) == 2 * 2 * 3 * 8 * 2);
    CHECK_RC(memory_store_append_f32(s, 2, k, v, 1), RC_ERR_INVALID);

    /* bf16 keeps 8 bits of mantissa: 1.001 rounds to 1.0 */
    const uint16_t *kb = memory_store_keys(s, 0);
    CHECK(bf16_to_f32(kb[1]) == 1.0f);
    CHECK(bf16_to_f32(((const uint16_t *)memory_store_values(s, 1))[5]) == -5.0f);

    /* Many appends grow the arrays; values survive reallocations. */
    for (int r = 0; r < 2000; r++) {
        CHECK_RC(memory_store_append_f32(s, 0, k, v, 1), RC_OK);
        CHECK_RC(memory_store_append_f32(s, 1, k, v, 1), RC_OK);
    }
    CHECK(memory_store_len(s) == 2003);
    CHECK(bf16_to_f32(((const uint16_t *)memory_store_values(s, 1))[2002 * 8 + 7]) == -7.0f);

    /* Raw rows copied out and appended into another store are identical. */
    memory_store_t *t = NULL;
    CHECK_RC(memory_store_create(2, 8, DTYPE_BF16, &t), RC_OK);
    for (int l = 0; l < 2; l++)
        CHECK_RC(memory_store_append_raw(t, l, memory_store_keys(s, l), memory_store_values(s, l),
                                         memory_store_rows(s, l)),
                 RC_OK);
    CHECK(memcmp(memory_store_keys(t, 1), memory_store_keys(s, 1), 2003 * 8 * 2) == 0);

    memory_store_truncate(s, 3);
    CHECK(memory_store_len(s) == 3 && memory_store_rows(s, 1) == 3);
    memory_store_truncate(s, 10); /* never grows */
    CHECK(memory_store_len(s) == 3);

    memory_store_destroy(&s);
    memory_store_destroy(&t);
    CHECK(s == NULL && t == NULL);
    memory_store_destroy(&s); /* NULL-safe */

    memory_store_t *z = NULL; /* a plain LLaMA has no memory layers */
    CHECK_RC(memory_store_create(0, 8, DTYPE_F32, &z), RC_OK);
    CHECK(memory_store_len(z) == 0 && memory_store_bytes(z) == 0);
    memory_store_destroy(&z);
    return check_summary();
}
