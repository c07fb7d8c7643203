/* Graceful stop on a scheduler's signal: with `sbatch --signal=B:USR1@120` Slurm warns the
 * batch script before the time limit or a preemption, the script forwards the signal to mpirun,
 * and mpirun to the ranks. loom_signals_install sets a flag on SIGUSR1 and SIGTERM; the
 * training loop asks loom_stop_agreed once per step, which agrees over the world (any rank
 * signalled = all stop at the same step), then writes a checkpoint and exits with
 * LOOM_EXIT_REQUEUE, which the sbatch template (slurm/) turns into `scontrol requeue`. */
#ifndef LOOM_RUNTIME_SIGNALS_H
#define LOOM_RUNTIME_SIGNALS_H

#include "runtime/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exit status of a run that stopped on a signal after writing its checkpoint: requeue me. */
enum { LOOM_EXIT_REQUEUE = 85 };

/* Installs the SIGUSR1 / SIGTERM handlers (flag only; async-signal-safe). */
loom_status loom_signals_install(loom_ctx *ctx);
/* *stop = 1 on every rank when any rank received SIGUSR1 or SIGTERM; one small allreduce.
 * Collective over the world. */
loom_status loom_stop_agreed(loom_ctx *ctx, int *stop);
/* The signal received (0 = none), for messages. */
int loom_stop_signal(void);

#ifdef __cplusplus
}
#endif
#endif
