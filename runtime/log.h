/* Rank-prefixed log lines with elapsed time: "[loom r3 +1.234s] info: message".
 * The level comes from the context's configuration (LOOM_LOG / --log). */
#ifndef LOOM_RUNTIME_LOG_H
#define LOOM_RUNTIME_LOG_H

#include "runtime/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_ctx loom_ctx;

/* Seconds on a monotonic clock. */
double loom_now(void);

/* Writes one line to stderr if `level` is enabled for `ctx`; ctx may be NULL (rank "?"). */
void loom_log(const loom_ctx *ctx, loom_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int loom_log_enabled(const loom_ctx *ctx, loom_log_level level);

#define LOOM_LOG_ERROR_MSG(ctx, ...) loom_log((ctx), LOOM_LOG_ERROR, __VA_ARGS__)
#define LOOM_LOG_WARN_MSG(ctx, ...) loom_log((ctx), LOOM_LOG_WARN, __VA_ARGS__)
#define LOOM_LOG_INFO_MSG(ctx, ...) loom_log((ctx), LOOM_LOG_INFO, __VA_ARGS__)
#define LOOM_LOG_DEBUG_MSG(ctx, ...) loom_log((ctx), LOOM_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
