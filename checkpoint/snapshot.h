/* In-memory, erasure-coded snapshots of the state registry ("Reliable and Efficient In-Memory
 * Fault Tolerance of Large Language Model Pretraining": snapshots in host memory that outlive
 * the training process, Reed-Solomon parity against lost nodes).
 *
 * Every rank keeps its share of its registered slices (1/R of a slice that R ranks hold
 * identically, as data parallelism replicates) in a POSIX shared-memory segment
 * "/loom-<job>-<rank>" (mode 0600) that survives a crashed process on a healthy host. The
 * segment holds two slots (double buffering): a snapshot is written into the older slot and
 * only then marked valid with its step and checksum (snapshot_sum.h), so a crash during a
 * snapshot leaves the previous one whole.
 *
 * Erasure coding (params.parity = m > 0): ranks with the same local rank on different nodes
 * form a column; a column of N nodes is cut into groups of k data members (k the largest
 * divisor of N with k <= N - m), and the m members of the next nodes hold the group's parity,
 * so a group's k + m fragments sit on k + m distinct nodes. Member j encodes byte-slice j of
 * the group's padded snapshots (the work is spread), and the parity is kept in the holders'
 * segments. Any m lost nodes leave every group at least k fragments: the lost snapshots are
 * rebuilt on restore. */
#ifndef LOOM_CHECKPOINT_SNAPSHOT_H
#define LOOM_CHECKPOINT_SNAPSHOT_H

#include <stdint.h>

#include "runtime/req.h"
#include "runtime/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int parity; /* m: parity fragments per group; 0 = own segments only (a crashed process is
               * covered, a lost node is not) */
} loom_snapshot_params;
#define LOOM_SNAPSHOT_PARAMS_INIT {.parity = 1}

typedef struct loom_snapshot loom_snapshot;

/* Opens (or creates) this rank's segment for `state` (fixed from now on) under the context's
 * job id (loom_ctx_job_id), and forms the erasure groups. A rank keeps a share of each slice:
 * of R ranks holding an identical slice (replicas: data parallelism), each keeps 1/R of its
 * elements, so a replicated model costs each rank 1/R of its bytes per snapshot, and restore
 * gathers the slices from the replicas' shares. A segment of another layout is replaced.
 * Collective over the world. */
loom_status loom_snapshot_create(loom_state *state, const loom_snapshot_params *params,
                                 loom_snapshot **out);
/* Copies the registered state into the older slot, computes its parity across the group, then
 * marks the slot valid at `step`. Collective over the world. */
loom_status loom_snapshot_take(loom_snapshot *snap, int64_t step);
/* Finds the newest step every rank can restore (its own valid slot, or rebuilt from its group's
 * surviving fragments), rebuilds what is lost, and loads it into the registered tensors:
 * *restored = 1 and *step set. *restored = 0 when no step is restorable (then nothing was
 * loaded; the log says why). Every rank returns the same. Collective over the world. */
loom_status loom_snapshot_restore(loom_snapshot *snap, int64_t *step, int *restored);
/* Asynchronous form for device state (the GPU model): right after an optimizer step, enqueues
 * a device-side copy of the state and a copy from it into the segment on a side stream, and
 * returns; a worker thread checksums, encodes the parity and publishes the slot. Call
 * loom_snapshot_fence before the next optimizer step (the compute stream waits on the GPU for
 * the device-side copy only). While a snapshot is in flight a request is skipped on every rank
 * alike (*req = NULL; the first skip is logged, all are counted): the snapshot interval then
 * adapts to what copying and publishing take. Host tensors are copied at the call. *req (may
 * be NULL): the publication's request, complete when the slot is valid (its status is the
 * snapshot's); the caller waits for or tests it, before or after loom_snapshot_wait. A failure
 * of the previous snapshot is also returned by the next call. Collective over the world. */
loom_status loom_snapshot_take_async(loom_snapshot *snap, int64_t step, loom_req **req);
loom_status loom_snapshot_fence(loom_snapshot *snap);
/* Waits for the snapshot in flight; returns its outcome (the same on every rank). */
loom_status loom_snapshot_wait(loom_snapshot *snap);
/* What this rank's asynchronous snapshots cost, for monitoring and benchmarks. Times are
 * seconds from the request to the state being in the segment (copied) and to the slot being
 * valid (published), summed over the published snapshots. */
typedef struct {
  int published, skipped;
  double copy_seconds, publish_seconds;
} loom_snapshot_stats;
loom_snapshot_stats loom_snapshot_get_stats(const loom_snapshot *snap);
/* Bytes of state this rank keeps per snapshot: its shares (see loom_snapshot_create), without
 * padding and parity. */
uint64_t loom_snapshot_share_bytes(const loom_snapshot *snap);
/* Unmaps; the segment stays for a restart. Waits for a snapshot in flight. */
/* Waits for a snapshot in flight and frees everything; returns its outcome if nobody had asked
 * for it. Requests of loom_snapshot_take_async may still be waited for afterwards. */
loom_status loom_snapshot_destroy(loom_snapshot *snap);
/* Removes this host's segments of `job` (after a successful run). Returns how many. */
int loom_snapshot_remove_job(const char *job);

#ifdef __cplusplus
}
#endif
#endif
