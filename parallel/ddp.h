/* Data parallelism with overlapped, bucketed gradient reduction (PyTorch DDP, Li et al.,
 * VLDB'20). The user registers parameters with their gradient buffers, then in each step's
 * backward marks each gradient ready; gradients are packed into buckets (reverse
 * registration order, the order backward produces them) and each full bucket is reduced
 * asynchronously over the group while backward goes on. loom_ddp_finish waits and leaves the
 * averaged gradients in place. Buckets are posted strictly in bucket order on every rank, so
 * ranks that finish gradients in different orders still match their collectives.
 * Gradients may live on the GPU (all of them): buckets are then packed and unpacked on the
 * context's compute stream and reduced through NCCL, each bucket's reduction ordered after
 * its packing by events, so backward kernels and reductions overlap on the GPU. */
#ifndef LOOM_PARALLEL_DDP_H
#define LOOM_PARALLEL_DDP_H

#include <stddef.h>

#include "collectives/coll.h"
#include "runtime/req.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  size_t bucket_bytes; /* gradient bytes per bucket (default 25 MiB); a larger tensor gets its own */
  int overlap;         /* 1: reduce buckets as they fill; 0: reduce all at finish (baseline) */
  loom_op op;          /* LOOM_OP_AVG (mean over replicas) or LOOM_OP_SUM */
} loom_ddp_params;

#define LOOM_DDP_PARAMS_INIT {.bucket_bytes = 25u << 20, .overlap = 1, .op = LOOM_OP_AVG}

typedef struct loom_ddp loom_ddp;

/* Reduction over `group` (usually the mesh's GRAD group). */
loom_status loom_ddp_create(loom_group *group, const loom_ddp_params *params, loom_ddp **out);
/* Drains any reduction in flight, then frees. */
void loom_ddp_destroy(loom_ddp *ddp);

/* Registers a gradient buffer under a unique name (any order, before the first step);
 * returns its index for loom_ddp_grad_ready. Gradients of one bucket share a dtype. */
loom_status loom_ddp_register(loom_ddp *ddp, const char *name, loom_buf grad, int *index);

/* Starts a step (a micro-batch). sync = 0: gradients are only accumulated by the user
 * (no communication, finish returns at once); sync = 1: this micro-batch's gradients are
 * reduced. Gradient accumulation = N-1 steps with sync 0, then one with sync 1. */
loom_status loom_ddp_begin(loom_ddp *ddp, int sync);

/* The gradient `index` is final for this step: when its bucket is full, the bucket is packed
 * and its reduction posted (in bucket order). The gradient buffer must not change until
 * loom_ddp_finish returns. Marking a gradient twice in one step is an error. */
loom_status loom_ddp_grad_ready(loom_ddp *ddp, int index);

/* Host gradients: waits for every bucket and writes the reduced gradients back. Device
 * gradients: enqueues the copies back on the compute stream, ordered after every bucket's
 * reduction, and returns without a host wait (a failure of those reductions is reported by
 * the next loom_ddp_begin). A gradient never marked ready fails with LOOM_ERR_STATE naming it
 * (and no reduction is left in flight). */
loom_status loom_ddp_finish(loom_ddp *ddp);

/* Debug counters of the last synced step, for tests and benchmarks: per bucket, when it was
 * posted and when a group's lane thread started and completed it (loom_now() seconds);
 * and when the last gradient was marked ready (end of backward) and when finish returned. */
typedef struct {
  int bucket_count;
  const loom_req_times *buckets; /* (bucket_count), valid until the next step */
  double backward_end;           /* time of the last loom_ddp_grad_ready */
  double finish_end;
  double wait_seconds;           /* time spent inside loom_ddp_finish */
} loom_ddp_stats;
loom_status loom_ddp_get_stats(const loom_ddp *ddp, loom_ddp_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
