/* Fault injection for the fault-tolerance tests: LOOM_FAULT (or --fault) lists faults as
 * "kind:rank:step[:seconds]" separated by commas. At the given global step (the step count
 * after that many optimizer steps) the given world rank:
 *   kill      dies by SIGKILL (a crashed process);
 *   node      removes the in-memory snapshot segments of every rank on its node, and every rank
 *             of that node dies by SIGKILL (a lost node);
 *   hang      sleeps forever (a hung peer; the watchdog or the NCCL timeout must catch it);
 *   delay     sleeps `seconds` (a straggler);
 *   corrupt   flips a byte of its newest in-memory snapshot (checked by the snapshot code);
 *   ckpt-kill dies by SIGKILL in the HDF5 checkpoint of that step, after writing its rank file
 *             and before the checkpoint is published.
 * Training loops call loom_fault_step once per step; the snapshot and checkpoint code ask
 * loom_fault_due for their kinds. */
#ifndef LOOM_RUNTIME_FAULT_H
#define LOOM_RUNTIME_FAULT_H

#include <stdint.h>

#include "runtime/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  LOOM_FAULT_KILL,
  LOOM_FAULT_NODE,
  LOOM_FAULT_HANG,
  LOOM_FAULT_DELAY,
  LOOM_FAULT_CORRUPT,
  LOOM_FAULT_CKPT_KILL,
  LOOM_FAULT_KIND_COUNT
} loom_fault_kind;

typedef struct {
  loom_fault_kind kind;
  int rank;
  int64_t step;
  double seconds; /* delay only */
} loom_fault;

/* Parses `spec` (NULL or "" = no faults) into at most `max` faults. LOOM_ERR_ARG naming the
 * bad entry and the accepted form. Pure. */
loom_status loom_fault_parse(const char *spec, loom_fault *faults, int max, int *count);

/* Applies this rank's kill, node, hang and delay faults due at `step` (see above). Returns
 * LOOM_OK when none is due (or after a delay). */
loom_status loom_fault_step(loom_ctx *ctx, int64_t step);

/* 1 when a fault of `kind` is due for this rank at `step` (node faults: for every rank on the
 * target's node). */
int loom_fault_due(const loom_ctx *ctx, loom_fault_kind kind, int64_t step);

/* "/loom-<job>-<rank>": the POSIX shared-memory name of a rank's snapshot segment. */
void loom_snapshot_segment_name(const char *job, int rank, char *out, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
