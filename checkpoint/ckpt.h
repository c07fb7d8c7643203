/* Checkpoints of the state registry in HDF5 (DESIGN.md, "Checkpoints on disk"): every rank
 * writes the slices it owns to its own file, and rank 0 writes index.h5, one virtual dataset
 * per tensor mapping the whole tensor onto the hyperslabs of the rank files, so a rank of any
 * other mesh reads exactly the hyperslab it needs (universal checkpoint, Wan et al.,
 * "Universal Checkpointing", 2024), and h5py/h5dump see whole tensors. A checkpoint is
 * written into a temporary directory, synced, renamed, and only then named by `latest`.
 *
 * Tensors may live in host or device memory, and ranks may register different tensors (each
 * pipeline stage its own); a tensor registered on several ranks must have the same spec there.
 *
 * Asynchronous saves (loom_ckpt_save_async) follow DataStates-LLM (Maurya et al., HPDC'24):
 * the state is copied lazily to pinned host memory (device tensors on a side stream, behind
 * the compute stream's pending work) while training goes on, and a background thread writes
 * the files; training blocks only when it is about to overwrite state still being copied. */
#ifndef LOOM_CHECKPOINT_CKPT_H
#define LOOM_CHECKPOINT_CKPT_H

#include <stdint.h>

#include "runtime/req.h"
#include "runtime/state.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What loom_ckpt_save_async does while the previous asynchronous save is still in flight. */
typedef enum {
  LOOM_CKPT_BUSY_SKIP, /* skip this save, logged as a warning: overhead stays bounded when
                        * saves come faster than the disk takes them (the default) */
  LOOM_CKPT_BUSY_WAIT  /* wait for the previous save, then start this one: no save lost */
} loom_ckpt_busy_policy;

typedef struct {
  int keep_last;     /* checkpoints kept after a save, the new one included; 0 = keep all */
  int deflate_level; /* 0 = none, 1..9 = HDF5 deflate (gzip) level of the rank files */
  loom_ckpt_busy_policy busy; /* asynchronous saves only */
} loom_ckpt_params;
#define LOOM_CKPT_PARAMS_INIT {.keep_last = 0, .deflate_level = 0, .busy = LOOM_CKPT_BUSY_SKIP}

/* Writes `root`/step-<step>/ and points `root`/latest at it, then removes checkpoints beyond
 * params->keep_last (oldest first; never the new one) and any temporary directory a failed
 * earlier save left behind. params may be NULL (defaults). Collective over the world.
 * Returns when the checkpoint is complete on disk. */
loom_status loom_ckpt_save_with(loom_state *state, const char *root, int64_t step,
                                const loom_ckpt_params *params);
/* loom_ckpt_save_with and default parameters. */
loom_status loom_ckpt_save(loom_state *state, const char *root, int64_t step);

/* An asynchronous checkpointer of `state` into `root` (its own communicator, pinned staging
 * buffers, a side stream and a background writer: a serial executor of its own). Create it after every tensor is registered;
 * the registry must not change while it lives. Collective over the world. */
typedef struct loom_ckpt loom_ckpt;
loom_status loom_ckpt_create(loom_state *state, const char *root, const loom_ckpt_params *params,
                             loom_ckpt **out);
/* Starts saving the registered state as of now as checkpoint `step`, and returns at once: call
 * it right after an optimizer step. Device tensors are copied on a side stream once the
 * compute stream's work enqueued so far is done; host tensors are copied by the writer; the
 * writer then writes and publishes the checkpoint as loom_ckpt_save_with does.
 * Before anything modifies registered tensors (the next optimizer step), call loom_ckpt_fence.
 * While a previous save is in flight, params.busy decides (all ranks decide alike).
 * *req (may be NULL): the save's request, complete when the checkpoint is published (its
 * status is the save's), or NULL when the save was skipped; the caller waits for or tests it
 * (before or after loom_ckpt_wait). With req == NULL the checkpointer reaps it itself.
 * Collective over the world. */
loom_status loom_ckpt_save_async(loom_ckpt *ckpt, int64_t step, loom_req **req);
/* Makes the next writes to registered tensors safe: the compute stream waits (on the GPU, no
 * host wait) for the side-stream copies, and the caller waits for the copies of host tensors,
 * which are usually done long before. Cheap when nothing is being copied. */
loom_status loom_ckpt_fence(loom_ckpt *ckpt);
/* Waits until the save in flight (if any) is on disk; returns its status (every rank the same).
 * Collective over the world when a save is in flight. */
loom_status loom_ckpt_wait(loom_ckpt *ckpt);
typedef struct {
  int saves_started, saves_skipped;
  double last_copy_seconds;  /* staging copy of the last save (wall time, writer's view) */
  double last_write_seconds; /* files written, synced and published (this rank's view) */
  double last_data_seconds;  /* of which: this rank's file written and synced */
  double last_bytes;         /* bytes this rank wrote in the last save */
  double total_write_seconds, total_data_seconds, total_bytes; /* over all saves */
} loom_ckpt_stats;
loom_status loom_ckpt_get_stats(const loom_ckpt *ckpt, loom_ckpt_stats *stats);
/* Waits for the save in flight and frees everything; returns that save's status if nobody
 * had asked for it. Collective when a save is in flight. */
loom_status loom_ckpt_destroy(loom_ckpt *ckpt);

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
