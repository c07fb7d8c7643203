/* The MPI-side failure detector ("Unicron": detect in band, fail fast, let the supervisor heal).
 * Every outstanding host operation holds one slot (loom_watch_begin/end): a running collective
 * (on its group's lane or inline on the caller's thread) and every point-to-point request from
 * post to completion. A watchdog thread started by loom_init looks at all slots once per second
 * (or per LOOM_TIMEOUT / 4 when shorter). A slot past LOOM_TIMEOUT:
 *   - fatal (a collective blocked inside MPI, which has no way to cancel it): logs the
 *     operation, its group and the time, then calls MPI_Abort so that mpirun exits non-zero
 *     and loom-run or Slurm restarts the job: a hung or dead peer never becomes a silent hang;
 *   - not fatal (point-to-point): the waiter itself returns LOOM_ERR_TIMEOUT naming the
 *     operation, group, peer and tag (runtime/req.c cancels the request); the watchdog only
 *     logs it once, so that a request nobody waits for still shows up.
 * Device operations have their own deadline: the NCCL backend aborts the communicator and the
 * wait returns LOOM_ERR_TIMEOUT. Private to libloom. */
#ifndef LOOM_RUNTIME_WATCHDOG_H
#define LOOM_RUNTIME_WATCHDOG_H

#include "runtime/ctx.h"

/* Exit status of a job the watchdog aborts. */
enum { LOOM_WATCHDOG_EXIT = 124 };

/* One outstanding operation. The strings must outlive loom_watch_end (literals, group names).
 * Owned by the operation (a request, or the stack of a blocking call); linked while watched. */
typedef struct loom_watch {
  double since;      /* loom_now() at loom_watch_begin */
  const char *what;  /* "loom_allreduce", "loom_recv" */
  const char *group; /* group name */
  int peer, tag;     /* group rank and tag of point-to-point; -1 for collectives */
  int fatal;         /* 1: abort the job at the deadline (see above) */
  int reported;      /* the watchdog logged it (non-fatal slots are logged once) */
  struct loom_watch *prev, *next;
} loom_watch;

loom_status loom_watchdog_start(loom_ctx *ctx);
void loom_watchdog_stop(loom_ctx *ctx);
/* Links `slot` (fields what..fatal set by the caller) and starts its clock. Thread-safe. */
void loom_watch_begin(loom_ctx *ctx, loom_watch *slot);
/* Unlinks a slot that loom_watch_begin linked; a slot never begun (since == 0) is ignored. */
void loom_watch_end(loom_ctx *ctx, loom_watch *slot);
/* Slots linked now (for tests and debugging). */
int loom_watch_count(loom_ctx *ctx);

#endif
