/* log.h — logging to stderr and the abort path for broken invariants.
 *
 * Two failure paths only (STYLE.md): return an rc_t for what a caller can handle; ASSERT
 * for what cannot happen unless the code is wrong. */
#ifndef RECALL_COMMON_LOG_H
#define RECALL_COMMON_LOG_H

#include <stdarg.h>

#ifdef __cplusplus
#define RECALL_NORETURN [[noreturn]]
#else
#define RECALL_NORETURN _Noreturn
#endif

#ifdef __cplusplus
extern "C" {
#endif


typedef enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 } log_level_t;

/* Messages below this level are dropped. Default LOG_INFO; RECALL_LOG=debug|info|warn|error
 * in the environment overrides it at the first call. Set once at start-up. */
void log_set_level(log_level_t level);
log_level_t log_get_level(void);

void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

RECALL_NORETURN void log_abort(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define ASSERT(cond)                                                                           \
    do {                                                                                       \
        if (!(cond)) log_abort(__FILE__, __LINE__, "assertion failed: %s", #cond);            \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif
