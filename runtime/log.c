/* Log lines: one fprintf per line so lines of concurrent ranks do not interleave mid-line. */
#include "runtime/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "runtime/ctx_impl.h"

double loom_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int loom_log_enabled(const loom_ctx *ctx, loom_log_level level) {
  int threshold = ctx ? ctx->config.log_level : LOOM_LOG_WARN;
  return (int)level <= threshold;
}

void loom_log(const loom_ctx *ctx, loom_log_level level, const char *fmt, ...) {
  if (!loom_log_enabled(ctx, level)) return;
  static const char *const names[] = {"error", "warn", "info", "debug"};
  char text[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  if (ctx)
    fprintf(stderr, "[loom r%d +%.3fs] %s: %s\n", ctx->rank, loom_now() - ctx->start_seconds,
            names[level], text);
  else
    fprintf(stderr, "[loom r? ] %s: %s\n", names[level], text);
}
