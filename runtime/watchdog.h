/* The MPI-side failure detector ("Unicron": detect in band, fail fast, let the supervisor heal).
 * A host collective marks itself in flight (loom_watch_begin/end); a watchdog thread started
 * by loom_init checks once per second (or per LOOM_TIMEOUT / 4 when shorter) and, when one
 * has been in flight for longer than LOOM_TIMEOUT, logs the operation, the group and the
 * time, then calls MPI_Abort so that mpirun exits non-zero and loom-run or Slurm restarts the
 * job: a hung or dead peer never becomes a silent hang. (Device collectives have their own
 * timeout: the NCCL backend aborts the communicator.) Private to libloom. */
#ifndef LOOM_RUNTIME_WATCHDOG_H
#define LOOM_RUNTIME_WATCHDOG_H

#include "runtime/ctx.h"

/* Exit status of a job the watchdog aborts. */
enum { LOOM_WATCHDOG_EXIT = 124 };

loom_status loom_watchdog_start(loom_ctx *ctx);
void loom_watchdog_stop(loom_ctx *ctx);
/* `what` and `group` must outlive the call to loom_watch_end (string literals, group names). */
void loom_watch_begin(loom_ctx *ctx, const char *what, const char *group);
void loom_watch_end(loom_ctx *ctx);

#endif
