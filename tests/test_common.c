/* test_common.c — common/: the size parser every size flag goes through, and the clock.
 *
 * The cases pin the grammar recalld's and recall's flags had before they shared
 * size_parse: units K to T either case, "B" / "iB" after a unit, a bare "B", fractions,
 * "none"; no sign, exponent, hex or spaces; a cap and "less than a byte" told apart. */
#include <stdint.h>

#include "common/clock.h"
#include "common/size.h"
#include "tests/check.h"

#define MAX (1ull << 50)

static void ok(const char *s, uint64_t want)
{
    uint64_t v = 12345;
    rc_t rc = size_parse(s, MAX, &v);
    CHECK_MSG(rc == RC_OK && v == want, "'%s': rc %d, %llu (want %llu)", s, (int)rc,
              (unsigned long long)v, (unsigned long long)want);
}

static void bad(const char *s, rc_t want)
{
    uint64_t v = 12345;
    rc_t rc = size_parse(s, MAX, &v);
    CHECK_MSG(rc == want && v == 12345, "'%s': rc %d (want %d), out %llu", s, (int)rc, (int)want,
              (unsigned long long)v);
}

int main(void)
{
    ok("0", 0);
    ok("none", 0);
    ok("4096", 4096);
    ok("4096B", 4096);
    ok("64K", 64 << 10);
    ok("64k", 64 << 10);
    ok("64KB", 64 << 10);
    ok("64KiB", 64 << 10);
    ok("1M", 1 << 20);
    ok("1.5G", 3ull << 29);
    ok("2T", 2ull << 40);
    ok("2.5", 2); /* rounded down... */
    ok("1.9", 1); /* ...to whole bytes */
    ok("1024T", MAX);

    bad("", RC_ERR_FORMAT);
    bad("lots", RC_ERR_FORMAT);
    bad("-1", RC_ERR_FORMAT);
    bad("+1", RC_ERR_FORMAT);
    bad(" 1", RC_ERR_FORMAT);
    bad("1e3", RC_ERR_FORMAT);
    bad("0x10", RC_ERR_FORMAT);
    bad("inf", RC_ERR_FORMAT);
    bad("nan", RC_ERR_FORMAT);
    bad(".", RC_ERR_FORMAT);
    bad("1iB", RC_ERR_FORMAT);
    bad("1P", RC_ERR_FORMAT);
    bad("1KX", RC_ERR_FORMAT);
    bad("1 K", RC_ERR_FORMAT);
    bad(NULL, RC_ERR_FORMAT);
    bad("1025T", RC_ERR_LIMIT);
    bad("0.1B", RC_ERR_INVALID);
    bad("0.5", RC_ERR_INVALID);

    const double t0 = clock_now_s(), t1 = clock_now_s();
    CHECK(t0 > 0 && t1 >= t0);
    return check_summary();
}
