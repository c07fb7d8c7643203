/* The watchdog thread (see watchdog.h): a doubly linked list of the slots of every outstanding
 * host operation, guarded by one mutex; begin/end are O(1), the thread scans the list. */
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
  loom_watch *slots; /* head of the list of linked slots */
  int count;
};

/* Checks every slot once; called with the lock held. */
static void scan(loom_ctx *ctx, loom_watchdog *w, double timeout) {
  double now = loom_now();
  for (loom_watch *slot = w->slots; slot; slot = slot->next) {
    double waited = now - slot->since;
    if (waited < timeout) continue;
    if (slot->fatal) {
      loom_log(ctx, LOOM_LOG_ERROR, "watchdog: %s on group %s has not completed after %.1f s "
               "(LOOM_TIMEOUT=%g): a peer is hung or dead; aborting the job (exit %d) so that "
               "loom-run or Slurm restarts it from the last snapshot or checkpoint", slot->what,
               slot->group, waited, timeout, LOOM_WATCHDOG_EXIT);
      MPI_Abort(MPI_COMM_WORLD, LOOM_WATCHDOG_EXIT);
    }
    if (!slot->reported) {
      slot->reported = 1;
      loom_log(ctx, LOOM_LOG_WARN, "watchdog: %s with peer %d (tag %d) on group %s outstanding "
               "for %.1f s (LOOM_TIMEOUT=%g); its wait reports LOOM_ERR_TIMEOUT", slot->what,
               slot->peer, slot->tag, slot->group, waited, timeout);
    }
  }
}

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
    if (!w->stop) scan(ctx, w, timeout);
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

void loom_watch_begin(loom_ctx *ctx, loom_watch *slot) {
  loom_watchdog *w = ctx->watchdog;
  slot->since = loom_now();
  slot->reported = 0;
  slot->prev = NULL;
  if (!w) {
    slot->since = 0;
    return;
  }
  pthread_mutex_lock(&w->lock);
  slot->next = w->slots;
  if (w->slots) w->slots->prev = slot;
  w->slots = slot;
  w->count++;
  pthread_mutex_unlock(&w->lock);
}

void loom_watch_end(loom_ctx *ctx, loom_watch *slot) {
  loom_watchdog *w = ctx->watchdog;
  if (!w || slot->since == 0) return;
  pthread_mutex_lock(&w->lock);
  if (slot->prev) slot->prev->next = slot->next;
  else w->slots = slot->next;
  if (slot->next) slot->next->prev = slot->prev;
  w->count--;
  pthread_mutex_unlock(&w->lock);
  slot->since = 0;
  slot->prev = slot->next = NULL;
}

int loom_watch_count(loom_ctx *ctx) {
  loom_watchdog *w = ctx->watchdog;
  if (!w) return 0;
  pthread_mutex_lock(&w->lock);
  int count = w->count;
  pthread_mutex_unlock(&w->lock);
  return count;
}
