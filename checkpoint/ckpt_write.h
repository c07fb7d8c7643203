/* Writing one checkpoint from staged slices: the part shared by the synchronous save
 * (ckpt.c) and the writer thread of asynchronous saves (async.c). Private to checkpoint/. */
#ifndef LOOM_CHECKPOINT_CKPT_WRITE_H
#define LOOM_CHECKPOINT_CKPT_WRITE_H

#include "checkpoint/catalog.h"
#include "checkpoint/ckpt.h"

/* What one rank did in a save: bytes written and the seconds until its rank file was
 * written and synced (the data phase; publishing and pruning come after). */
typedef struct {
  double bytes, data_seconds;
} ckpt_write_report;

/* Writes `root`/step-<step>/ (rank files from sources[i] = host copy of local entry i, read
 * only where catalog->local_writes[i]), publishes it through `latest`, prunes; collective over
 * `comm` (ranks numbered as the mesh). Every rank returns the same status. `report` may be
 * NULL. HDF5 error printing is silenced inside. */
loom_status ckpt_write_checkpoint(loom_state *state, const ckpt_catalog *catalog, MPI_Comm comm,
                                  const char *root, int64_t step, const loom_ckpt_params *params,
                                  void *const *sources, ckpt_write_report *report);

/* Every rank learns the worst status over `comm`; the failing rank keeps its message, the
 * others get one saying another rank failed. */
loom_status ckpt_agree(MPI_Comm comm, loom_status mine);

/* Removes the temporary directories (".step-<n>.tmp") failed saves left in `root`. Rank 0
 * only, when no save of this job is in flight. */
void ckpt_remove_stale(const char *root);

/* Checks params (ranges named in the message). */
loom_status ckpt_check_params(const loom_ckpt_params *params);

#endif
