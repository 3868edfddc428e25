/* crash.c — see crash.h. */
#include "common/crash.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int armed;        /* RECALL_CRASH_AT parsed and valid */
static char target[64];  /* its NAME */
static long at;          /* its N */
static long passes;      /* passes through crash_point(target) so far */

static void arm(void)
{
    const char *v = getenv("RECALL_CRASH_AT");
    if (!v || !v[0]) return;
    const char *colon = strrchr(v, ':');
    size_t n = colon ? (size_t)(colon - v) : strlen(v);
    long k = colon ? strtol(colon + 1, NULL, 10) : 1;
    if (n == 0 || n >= sizeof target || k < 1) {
        fprintf(stderr, "RECALL_CRASH_AT='%s' is not NAME:N (N >= 1); ignored\n", v);
        return;
    }
    memcpy(target, v, n);
    target[n] = '\0';
    at = k;
    __atomic_store_n(&armed, 1, __ATOMIC_RELEASE);
}

void crash_point(const char *name)
{
    pthread_once(&once, arm);
    if (!__atomic_load_n(&armed, __ATOMIC_ACQUIRE) || strcmp(name, target) != 0) return;
    if (__atomic_add_fetch(&passes, 1, __ATOMIC_ACQ_REL) == at) {
        fprintf(stderr, "crash point %s:%ld: SIGKILL\n", name, at);
        kill(getpid(), SIGKILL);
        pause(); /* SIGKILL cannot be caught; this thread goes with the process */
    }
}
