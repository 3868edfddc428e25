/* crash.h — named crash points for the kill -9 tests.
 *
 * A kill -9 from outside lands wherever the process happens to be; a test that must show
 * "killed during an eviction" or "killed between syncing rows and committing them" needs
 * the kill at that place. crash_point(NAME) marks such a place. With the environment
 * variable RECALL_CRASH_AT="NAME:N" the N-th pass (1-based, counted per process across all
 * threads) through crash_point(NAME) sends the process SIGKILL: the same death as kill -9,
 * no handlers, no flushing, no atexit. Without the variable (every real deployment) a call
 * is one relaxed load and a compare; the variable is read once, at the first call.
 *
 * The names in use are listed where they are placed (grep crash_point); a name that no code
 * passes through never fires, so a test should check that the process did die by SIGKILL. */
#ifndef RECALL_COMMON_CRASH_H
#define RECALL_COMMON_CRASH_H

void crash_point(const char *name);

#endif
