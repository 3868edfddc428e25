/* check.h — the assertions every C test uses.
 *
 * CHECK records a failure and goes on, so one run shows every broken case; a test's
 * main ends with `return check_summary();`, which prints "N passed, N failed" and exits
 * non-zero on any failure. GPU tests with no GPU print "skipped: no GPU" and return
 * CHECK_SKIP, which ctest maps to a skip (SKIP_RETURN_CODE 77), never to a pass. */
#ifndef RECALL_TESTS_CHECK_H
#define RECALL_TESTS_CHECK_H

#include <math.h>
#include <stdio.h>

#define CHECK_SKIP 77

static int check_passed_, check_failed_;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (cond) {                                                                            \
            check_passed_++;                                                                   \
        } else {                                                                               \
            check_failed_++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                   \
        }                                                                                      \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                   \
    do {                                                                                       \
        if (cond) {                                                                            \
            check_passed_++;                                                                   \
        } else {                                                                               \
            check_failed_++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                   \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

#define CHECK_RC(expr, want)                                                                   \
    do {                                                                                       \
        int got_ = (int)(expr);                                                                \
        CHECK_MSG(got_ == (int)(want), "%s returned %d, want %d", #expr, got_, (int)(want));  \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                  \
    do {                                                                                       \
        double a_ = (a), b_ = (b);                                                             \
        CHECK_MSG(fabs(a_ - b_) <= (tol), "%s = %g, %s = %g, tol %g", #a, a_, #b, b_,         \
                  (double)(tol));                                                              \
    } while (0)

static inline int check_summary(void)
{
    printf("%d passed, %d failed\n", check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}

#endif
