#include "common/log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static log_level_t level = LOG_INFO;
static int level_from_env_done;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void level_from_env(void)
{
    if (level_from_env_done) return;
    level_from_env_done = 1;
    const char *e = getenv("RECALL_LOG");
    if (!e) return;
    if (!strcmp(e, "debug")) level = LOG_DEBUG;
    else if (!strcmp(e, "info")) level = LOG_INFO;
    else if (!strcmp(e, "warn")) level = LOG_WARN;
    else if (!strcmp(e, "error")) level = LOG_ERROR;
}

void log_set_level(log_level_t l)
{
    level_from_env_done = 1;
    level = l;
}

log_level_t log_get_level(void)
{
    level_from_env();
    return level;
}

void log_msg(log_level_t l, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    level_from_env();
    if (l < level) return;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&lock);
    fprintf(stderr, "%s %s: ", stamp, names[l]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    pthread_mutex_unlock(&lock);
    va_end(ap);
}

RECALL_NORETURN void log_abort(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fatal: %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}
