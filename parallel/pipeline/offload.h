/* Activation offload for pipeline stages on the GPU (PipeOffload, Wan et al., 2025): what a
 * stage's forward stashes for its backward goes to pinned host memory on a copy stream right
 * after the forward, and comes back ahead of the backward, so the GPU holds a few stash slots
 * instead of one per micro-batch in flight. The copies overlap the compute of the other
 * micro-batches; the compute stream waits on events only, never the host.
 *
 * A stash is one contiguous device buffer per (chunk, micro-batch) of `stash_bytes`, taken
 * from a pool of `device_slots`: begin_forward hands a slot out, end_forward copies it out
 * and frees the slot once the copy is done, prefetch brings it back into a free slot (the
 * executor calls the stage's prefetch callback one compute ahead), begin_backward orders the
 * compute stream after that copy, end_backward frees the slot after the backward's work.
 * `ratio` chooses how many micro-batches go out (1: all; 0: none, each keeps its slot from
 * forward to backward, the plain case): by default micro-batch j goes when floor((j + 1)
 * ratio) > floor(j ratio), an even spread; loom_offload_plan picks by lifetime instead, as
 * PipeOffload does. Slots needed: the micro-batches kept, plus 3 (one forward, one
 * prefetched, one backward).
 *
 * Split backward (ZB-H1, ZB-V): W reads the stash too, so call end_backward after the W, not
 * the I; the stash then stays on the GPU from its I to its W, and the slots needed grow by
 * the W passes the schedule keeps pending (at most r + 1 on rank r for ZB-H1, pp for ZB-V). */
#ifndef LOOM_PARALLEL_PIPELINE_OFFLOAD_H
#define LOOM_PARALLEL_PIPELINE_OFFLOAD_H

#include <stddef.h>

#include "parallel/pipeline/schedule.h"
#include "runtime/ctx.h"
#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  size_t stash_bytes; /* one micro-batch's stash on one chunk */
  int device_slots;   /* stashes on the GPU at once */
  int microbatches, chunks;
  double ratio;       /* share of the micro-batches offloaded, in [0, 1] */
  /* optional (chunks x microbatches, chunk-major): 1 = offload; NULL: the even spread of
   * `ratio`. loom_offload_plan fills it from a schedule. */
  const unsigned char *plan;
} loom_offload_params;

/* PipeOffload's selection: of this rank's (chunk, micro-batch) stashes, the `ratio` share
 * (rounded to nearest) that live longest, counted in the rank's computes between the forward
 * and the backward (B, or I when split: the copy back must be there by then), gets 1 in
 * plan[chunk x microbatches + microbatch]; ties go to the earlier forward. Those are the
 * stashes whose copies have the most compute to hide behind; one whose backward is the next
 * compute after its forward is never chosen. Pure. */
loom_status loom_offload_plan(const loom_pipeline_schedule *schedule, int rank, double ratio,
                              unsigned char *plan);

typedef struct loom_offload loom_offload;

/* Pools on the context's GPU (device_slots x stash_bytes) and pinned host memory (one stash
 * per offloaded (chunk, micro-batch)). LOOM_ERR_UNSUPPORTED on a CPU context. */
loom_status loom_offload_create(loom_ctx *ctx, const loom_offload_params *params, loom_offload **out);
void loom_offload_destroy(loom_offload *offload);

/* The device stash the forward of (chunk, microbatch) writes; the compute stream is ordered
 * after the slot's previous user. LOOM_ERR_STATE when no slot is free (too few slots). */
loom_status loom_offload_begin_forward(loom_offload *offload, int chunk, int microbatch, void **device);
/* The forward's writes are queued on the compute stream: copy the stash out (offloaded
 * micro-batches) and free the slot after the copy. */
loom_status loom_offload_end_forward(loom_offload *offload, int chunk, int microbatch);
/* Bring an offloaded stash back into a free slot on the copy stream (no-op otherwise, or when
 * already back). */
loom_status loom_offload_prefetch(loom_offload *offload, int chunk, int microbatch);
/* The backward is next: the stash's device address, with the compute stream ordered after
 * its copy back (prefetched now if it was not). */
loom_status loom_offload_begin_backward(loom_offload *offload, int chunk, int microbatch, void **device);
/* The backward's work is queued: the slot is free after it. */
loom_status loom_offload_end_backward(loom_offload *offload, int chunk, int microbatch);

/* Device bytes of the pool (device_slots x stash_bytes), and the most slots in use at once. */
size_t loom_offload_device_bytes(const loom_offload *offload);
int loom_offload_peak_slots(const loom_offload *offload);

#ifdef __cplusplus
}
#endif

#endif
