/* clock.h — the project's one clock for measuring durations.
 *
 * Monotonic: it never jumps with the wall clock, so differences are durations (uptime,
 * prefill and decode times, timeouts, benchmark figures). Not a date: for a timestamp to
 * store or show use time(2). Thread-safe; never fails; never blocks. */
#ifndef RECALL_COMMON_CLOCK_H
#define RECALL_COMMON_CLOCK_H

#ifdef __cplusplus
extern "C" {
#endif

/* Seconds since an arbitrary fixed point (CLOCK_MONOTONIC), to the nanosecond. */
double clock_now_s(void);

#ifdef __cplusplus
}
#endif

#endif
