/* The watchdog thread (see watchdog.h). One collective is in flight at a time per context
 * (the communication executor is serial), so one slot suffices. */
#include "runtime/watchdog.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "runtime/ctx_impl.h"
#include "runtime/log.h"

struct loom_watchdog {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int stop;
  double since; /* loom_now() when the collective in flight began; 0 = none */
  const char *what, *group;
};

static void *watch_main(void *arg) {
  loom_ctx *ctx = arg;
  loom_watchdog *w = ctx->watchdog;
  double timeout = ctx->config.timeout_seconds;
  double period = timeout / 4 < 1.0 ? timeout / 4 : 1.0;
  pthread_mutex_lock(&w->lock);
  while (!w->stop) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double wake = (double)until.tv_sec + until.tv_nsec * 1e-9 + period;
    until.tv_sec = (time_t)wake;
    until.tv_nsec = (long)((wake - (double)until.tv_sec) * 1e9);
    pthread_cond_timedwait(&w->cond, &w->lock, &until);
    if (w->stop || w->since == 0) continue;
    double waited = loom_now() - w->since;
    if (waited < timeout) continue;
    loom_log(ctx, LOOM_LOG_ERROR, "watchdog: %s on group %s has not completed after %.1f s "
             "(LOOM_TIMEOUT=%g): a peer is hung or dead; aborting the job (exit %d) so that "
             "loom-run or Slurm restarts it from the last snapshot or checkpoint", w->what,
             w->group, waited, timeout, LOOM_WATCHDOG_EXIT);
    MPI_Abort(MPI_COMM_WORLD, LOOM_WATCHDOG_EXIT);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

loom_status loom_watchdog_start(loom_ctx *ctx) {
  loom_watchdog *w = calloc(1, sizeof *w);
  if (!w) return loom_error_set(LOOM_ERR_NOMEM, "watchdog");
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->cond, NULL);
  ctx->watchdog = w;
  if (pthread_create(&w->thread, NULL, watch_main, ctx) != 0) {
    ctx->watchdog = NULL;
    free(w);
    return loom_error_set(LOOM_ERR_STATE, "starting the watchdog thread failed");
  }
  return LOOM_OK;
}

void loom_watchdog_stop(loom_ctx *ctx) {
  loom_watchdog *w = ctx->watchdog;
  if (!w) return;
  pthread_mutex_lock(&w->lock);
  w->stop = 1;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  pthread_join(w->thread, NULL);
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->cond);
  free(w);
  ctx->watchdog = NULL;
}

void loom_watch_begin(loom_ctx *ctx, const char *what, const char *group) {
  loom_watchdog *w = ctx->watchdog;
  if (!w) return;
  pthread_mutex_lock(&w->lock);
  w->since = loom_now();
  w->what = what;
  w->group = group;
  pthread_mutex_unlock(&w->lock);
}

void loom_watch_end(loom_ctx *ctx) {
  loom_watchdog *w = ctx->watchdog;
  if (!w) return;
  pthread_mutex_lock(&w->lock);
  w->since = 0;
  pthread_mutex_unlock(&w->lock);
}
