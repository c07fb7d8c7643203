/* Checkpoints of the state registry in HDF5 (DESIGN.md, "Checkpoints on disk"): every rank
 * writes the slices it owns to its own file, and rank 0 writes index.h5, one virtual dataset
 * per tensor mapping the whole tensor onto the hyperslabs of the rank files, so a rank of any
 * other mesh reads exactly the hyperslab it needs (universal checkpoint, Wan et al.,
 * "Universal Checkpointing", 2024), and h5py/h5dump see whole tensors. A checkpoint is
 * written into a temporary directory, synced, renamed, and only then named by `latest`.
 *
 * This first version is synchronous, host tensors only, and expects every rank to register
 * the same tensor names (asynchronous saves, device tensors, per-stage tensors, retention and
 * the loom-ckpt tool come next). */
#ifndef LOOM_CHECKPOINT_CKPT_H
#define LOOM_CHECKPOINT_CKPT_H

#include <stdint.h>

#include "runtime/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int keep_last;     /* checkpoints kept after a save, the new one included; 0 = keep all */
  int deflate_level; /* 0 = none, 1..9 = HDF5 deflate (gzip) level of the rank files */
} loom_ckpt_params;
#define LOOM_CKPT_PARAMS_INIT {.keep_last = 0, .deflate_level = 0}

/* Writes `root`/step-<step>/ and points `root`/latest at it, then removes checkpoints beyond
 * params->keep_last (oldest first; never the new one) and any temporary directory a failed
 * earlier save left behind. params may be NULL (defaults). Collective over the world.
 * Returns when the checkpoint is complete on disk. */
loom_status loom_ckpt_save_with(loom_state *state, const char *root, int64_t step,
                                const loom_ckpt_params *params);
/* loom_ckpt_save_with and default parameters. */
loom_status loom_ckpt_save(loom_state *state, const char *root, int64_t step);

/* Loads every registered tensor's slice from the checkpoint `root`/latest names (or from
 * `root` itself when it holds an index.h5), after verifying every shard's checksum; *step
 * gets its step (may be NULL). LOOM_ERR_IO when there is no checkpoint, LOOM_ERR_CORRUPT (file
 * and tensor named) for a damaged one, LOOM_ERR_ARG for one of another model (a tensor
 * missing, extra, or of another shape or dtype). All ranks return the same status. After a
 * failure the registered tensors may hold partly loaded values: do not train on them.
 * Collective over the world. */
loom_status loom_ckpt_load(loom_state *state, const char *root, int64_t *step);

#ifdef __cplusplus
}
#endif
#endif
