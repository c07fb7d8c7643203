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
#include "runtime/params.h"
#include "runtime/req.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One bucket as its reducer sees it: its place in the posting order, the packed gradients and
 * where each member gradient lies in them. Valid from the reducer's post to the step's end. */
typedef struct {
  int index;             /* bucket index: buckets are posted in this order on every rank */
  loom_buf flat;         /* (count) the bucket's gradients, packed; reduced in place */
  const int *members;    /* (member_count) DDP indices of its gradients, in layout order */
  const size_t *offsets; /* (member_count) element offset of each member in `flat` */
  int member_count;
} loom_ddp_bucket_view;

/* How buckets are combined over the group. `post` starts one bucket's reduction and returns a
 * request; `finish` (may be NULL) runs once every bucket of a synced step has completed, before
 * the reduced gradients are copied back. The default reducer is the all-reduce (sum or mean,
 * in place). The same two calls carry a reduce-scatter into buckets laid out by shard (each
 * rank keeps the slice it updates: a sharded optimizer) and an aggregation that drops or
 * decodes contributions (backup workers, gradient coding): post sees the bucket's index,
 * layout and buffer; finish may rewrite buffers before they are unpacked. */
typedef struct {
  const char *name;
  void *state; /* the reducer's own; passed back to both calls */
  loom_status (*post)(void *state, loom_group *group, loom_op op,
                      const loom_ddp_bucket_view *bucket, loom_req **req);
  loom_status (*finish)(void *state, loom_group *group, int bucket_count);
} loom_ddp_reducer;

/* The all-reduce reducer (what a NULL `reducer` means). */
const loom_ddp_reducer *loom_ddp_allreduce_reducer(void);

typedef struct {
  size_t bucket_bytes; /* gradient bytes per bucket (default 25 MiB); a larger tensor gets its own */
  int overlap;         /* 1: reduce buckets as they fill; 0: reduce all at finish (baseline) */
  loom_op op;          /* LOOM_OP_AVG (mean over replicas) or LOOM_OP_SUM */
  const loom_ddp_reducer *reducer; /* NULL: the all-reduce; borrowed, outlives the DDP */
} loom_ddp_params;
#define LOOM_DDP_PARAMS_INIT {.bucket_bytes = 25u << 20, .overlap = 1, .op = LOOM_OP_AVG, .reducer = NULL}

typedef struct loom_ddp loom_ddp;

/* Reduction over `group` (usually the mesh's GRAD group). */
loom_status loom_ddp_create(loom_group *group, const loom_ddp_params *params, loom_ddp **out);
/* Drains any reduction in flight, then frees; returns the first failure of those reductions. */
loom_status loom_ddp_destroy(loom_ddp *ddp);

/* Registers a gradient buffer under a unique name (any order, before the first step);
 * returns its index for loom_ddp_grad_ready. Gradients of one bucket share a dtype. */
loom_status loom_ddp_register(loom_ddp *ddp, const char *name, loom_buf grad, int *index);

/* Registers, from the parameter table, the gradient of every parameter whose reduce axis is
 * `axis` (the axis of this DDP's group: GRAD for dense parameters, EDP for experts), in table
 * order. Mark them ready with loom_ddp_param_ready and the table's indices. */
loom_status loom_ddp_add_params(loom_ddp *ddp, const loom_params *params, loom_axis axis);
/* loom_ddp_grad_ready for parameter `param_index` of the table given to loom_ddp_add_params;
 * a parameter of another axis (not registered here) is ignored. */
loom_status loom_ddp_param_ready(loom_ddp *ddp, int param_index);
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
