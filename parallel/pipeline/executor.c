/* The pipeline executor (see executor.h). One step walks this rank's action list once:
 * transfers become loom_send_async / loom_recv_async on the PP group, computes call the
 * stage callbacks on the boundary buffers. Invariant: a receive is posted before the compute
 * two computes ahead of the one that consumes it, and every request of a step is complete
 * when the step returns LOOM_OK. Tags: (micro-batch x boundaries + boundary) x 2 + gradient,
 * unique within a step, so transfers of one pair of ranks match whatever order they are
 * posted in (MPI, the staged path). */
#include "parallel/pipeline/executor.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "collectives/coll.h"
#include "parallel/pipeline/check.h"
#include "runtime/device.h"
#include "runtime/req.h"

// How many computes ahead the receives are posted.
enum { kPostAhead = 2 };

struct loom_pipeline_executor {
  loom_group *pp;
  loom_ctx *ctx;
  const loom_pipeline_schedule *schedule;
  loom_pipeline_stage_ops ops;
  int rank, stages, microbatches, on_device, failed;
  loom_buf *buffers;   // (stages - 1) x microbatches x 2 (activation, gradient); ptr NULL if not held
  void *memory;        // every held buffer, in one allocation (host or device)
  const loom_pipeline_action *actions;
  int count;           // actions of this rank
  loom_req **requests; // (count) the request of each transfer action of the current step
  int posted_upto;     // receives before this action index are posted
  int *weight_passes;  // (chunks) B or W passes run this step, per chunk
};

static loom_buf *buffer_at(loom_pipeline_executor *e, int boundary, int microbatch, int gradient) {
  return &e->buffers[((size_t)boundary * e->microbatches + microbatch) * 2 + gradient];
}

loom_buf *loom_pipeline_executor_buffer(loom_pipeline_executor *e, int boundary, int microbatch,
                                        int gradient) {
  if (!e || boundary < 0 || boundary >= e->stages - 1 || microbatch < 0 ||
      microbatch >= e->microbatches)
    return NULL;
  loom_buf *b = buffer_at(e, boundary, microbatch, gradient != 0);
  return b->ptr ? b : NULL;
}

// 1 when one of this rank's stages is next to boundary b (stage b or b + 1).
static int holds_boundary(const loom_pipeline_executor *e, int b) {
  return loom_pipeline_stage_rank(e->schedule, b) == e->rank ||
         loom_pipeline_stage_rank(e->schedule, b + 1) == e->rank;
}

static int tag_of(const loom_pipeline_executor *e, int boundary, int microbatch, int gradient) {
  return ((microbatch * (e->stages - 1)) + boundary) * 2 + gradient;
}

// Boundary, buffer kind and tag of a transfer action.
static loom_buf *transfer_buffer(loom_pipeline_executor *e, const loom_pipeline_action *a, int *tag) {
  int gradient = a->op == LOOM_PIPELINE_SEND_GRADIENT || a->op == LOOM_PIPELINE_RECV_GRADIENT;
  int boundary = loom_pipeline_transfer_boundary(a);
  *tag = tag_of(e, boundary, a->microbatch, gradient);
  return buffer_at(e, boundary, a->microbatch, gradient);
}

static int is_receive(loom_pipeline_op op) {
  return op == LOOM_PIPELINE_RECV_ACTIVATION || op == LOOM_PIPELINE_RECV_GRADIENT;
}

static int is_compute(loom_pipeline_op op) { return op <= LOOM_PIPELINE_BACKWARD_WEIGHT; }

static loom_status post_transfer(loom_pipeline_executor *e, int index) {
  const loom_pipeline_action *a = &e->actions[index];
  int tag;
  loom_buf *b = transfer_buffer(e, a, &tag);
  return is_receive(a->op) ? loom_recv_async(e->pp, *b, a->peer, tag, &e->requests[index])
                           : loom_send_async(e->pp, *b, a->peer, tag, &e->requests[index]);
}

// Posts every receive before the (kPostAhead + 1)-th compute from `at` on.
static loom_status post_ahead(loom_pipeline_executor *e, int at) {
  int limit = at, computes = 0;
  for (; limit < e->count; limit++)
    if (is_compute(e->actions[limit].op) && ++computes > kPostAhead) break;
  for (int i = e->posted_upto; i < limit; i++)
    if (is_receive(e->actions[i].op)) LOOM_CHECK(post_transfer(e, i));
  if (limit > e->posted_upto) e->posted_upto = limit;
  return LOOM_OK;
}

static loom_status compute(loom_pipeline_executor *e, const loom_pipeline_action *a) {
  int s = a->stage, j = a->microbatch, last = e->stages - 1;
  const loom_pipeline_stage_ops *ops = &e->ops;
  switch (a->op) {
  case LOOM_PIPELINE_FORWARD:
    return ops->forward(ops->user, s, j, s > 0 ? buffer_at(e, s - 1, j, 0) : NULL,
                        s < last ? buffer_at(e, s, j, 0) : NULL);
  case LOOM_PIPELINE_BACKWARD_INPUT:
    return ops->backward(ops->user, s, j, s < last ? buffer_at(e, s, j, 1) : NULL,
                         s > 0 ? buffer_at(e, s - 1, j, 1) : NULL, 0);
  case LOOM_PIPELINE_BACKWARD:
    LOOM_CHECK(ops->backward(ops->user, s, j, s < last ? buffer_at(e, s, j, 1) : NULL,
                             s > 0 ? buffer_at(e, s - 1, j, 1) : NULL, 1));
    break;
  default:
    LOOM_CHECK(ops->backward_weight(ops->user, s, j));
    break;
  }
  // the stage's weight gradients are complete after its last micro-batch's B or W
  if (ops->stage_finished && ++e->weight_passes[a->chunk] == e->microbatches)
    return ops->stage_finished(ops->user, s);
  return LOOM_OK;
}

// The stage's prefetch for the next compute after `at`, when it is a backward.
static loom_status prefetch_next(loom_pipeline_executor *e, int at) {
  if (!e->ops.prefetch) return LOOM_OK;
  for (int k = at + 1; k < e->count; k++) {
    const loom_pipeline_action *a = &e->actions[k];
    if (!is_compute(a->op)) continue;
    if (a->op == LOOM_PIPELINE_BACKWARD || a->op == LOOM_PIPELINE_BACKWARD_INPUT)
      return e->ops.prefetch(e->ops.user, a->stage, a->microbatch);
    return LOOM_OK;
  }
  return LOOM_OK;
}

static loom_status run_step(loom_pipeline_executor *e) {
  LOOM_CHECK(post_ahead(e, 0));
  for (int i = 0; i < e->count; i++) {
    const loom_pipeline_action *a = &e->actions[i];
    if (is_compute(a->op)) {
      LOOM_CHECK(post_ahead(e, i));
      LOOM_CHECK(prefetch_next(e, i));
      loom_status status = compute(e, a);
      if (status != LOOM_OK) {
        char what[400];
        snprintf(what, sizeof what, "%s", loom_error_string());
        return loom_error_set(status, "pipeline rank %d, %s of micro-batch %d on stage %d: %s",
                              e->rank, loom_pipeline_op_name(a->op), a->microbatch, a->stage, what);
      }
    } else if (is_receive(a->op)) {
      if (i >= e->posted_upto) LOOM_CHECK(post_transfer(e, i)); // not reached: posted ahead
      LOOM_CHECK(loom_wait(&e->requests[i]));
    } else {
      LOOM_CHECK(post_transfer(e, i));
    }
  }
  return loom_wait_all(e->requests, e->count);
}

loom_status loom_pipeline_executor_step(loom_pipeline_executor *e) {
  if (!e) return loom_error_set(LOOM_ERR_ARG, "loom_pipeline_executor_step: executor is NULL");
  if (e->failed)
    return loom_error_set(LOOM_ERR_STATE, "pipeline rank %d: an earlier step failed; its "
                          "transfers may still be in flight, so destroy the executor and "
                          "resume from a checkpoint", e->rank);
  e->posted_upto = 0;
  memset(e->weight_passes, 0, sizeof *e->weight_passes * (size_t)loom_pipeline_schedule_chunks(e->schedule));
  loom_status status = run_step(e);
  if (status != LOOM_OK) e->failed = 1;
  return status;
}

// What this rank declares per boundary: (count, dtype), or (-1, -1) where it holds no stage
// next to it; every rank's list is gathered and each shared boundary compared.
static loom_status check_boundaries(loom_pipeline_executor *e, const loom_pipeline_tensor *tensors) {
  int S = e->stages, size = loom_group_size(e->pp), B = S - 1;
  if (B == 0) return LOOM_OK;
  int64_t *mine = malloc(sizeof(int64_t) * 2 * (size_t)B);
  int64_t *all = malloc(sizeof(int64_t) * 2 * (size_t)B * (size_t)size);
  loom_status status = mine && all ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, "pipeline shapes");
  for (int b = 0; status == LOOM_OK && b < B; b++) {
    int held = holds_boundary(e, b);
    mine[2 * b] = held ? (int64_t)tensors[b].count : -1;
    mine[2 * b + 1] = held ? (int64_t)tensors[b].dtype : -1;
  }
  status = loom_status_agree(e->pp, status, "gathering pipeline boundary shapes");
  if (status == LOOM_OK)
    status = loom_allgather(e->pp, loom_buf_host(mine, 2 * (size_t)B, LOOM_INT64),
                            loom_buf_host(all, 2 * (size_t)B * size, LOOM_INT64));
  for (int b = 0; status == LOOM_OK && b < B; b++) {
    int from = loom_pipeline_stage_rank(e->schedule, b), to = loom_pipeline_stage_rank(e->schedule, b + 1);
    const int64_t *p = &all[(size_t)from * 2 * B + 2 * b], *c = &all[(size_t)to * 2 * B + 2 * b];
    if (p[0] != c[0] || p[1] != c[1])
      status = loom_error_set(LOOM_ERR_ARG, "pipeline boundary %d: stage %d (pipeline rank %d) "
                              "sends %lld x %s, stage %d (pipeline rank %d) expects %lld x %s; "
                              "declare the same tensor on both sides", b, b, from, (long long)p[0],
                              loom_dtype_name((loom_dtype)p[1]), b + 1, to, (long long)c[0],
                              loom_dtype_name((loom_dtype)c[1]));
  }
  free(mine), free(all);
  return status;
}

// Allocates the buffers of the boundaries next to this rank's stages (local checks first).
static loom_status allocate_buffers(loom_pipeline_executor *e, const loom_pipeline_tensor *tensors) {
  int S = e->stages, m = e->microbatches;
  e->buffers = calloc((size_t)(S > 1 ? S - 1 : 1) * m * 2, sizeof *e->buffers);
  if (!e->buffers) return loom_error_set(LOOM_ERR_NOMEM, "pipeline buffers");
  size_t total_bytes = 0;
  for (int pass = 0; pass < 2; pass++) { // 0: check and size, 1: carve
    size_t at = 0;
    for (int b = 0; b < S - 1; b++) {
      if (!holds_boundary(e, b)) continue;
      const loom_pipeline_tensor *t = &tensors[b];
      if (pass == 0 && (t->count == 0 || t->count > (size_t)INT_MAX || t->dtype < 0 || t->dtype >= LOOM_DTYPE_COUNT))
        return loom_error_set(LOOM_ERR_ARG, "pipeline boundary %d (after stage %d): %zu elements of "
                              "dtype %d; need 1 .. 2^31-1 elements of a loom_dtype", b, b, t->count,
                              (int)t->dtype);
      size_t bytes = (t->count * loom_dtype_size(t->dtype) + 255) / 256 * 256;
      for (int j = 0; j < m; j++)
        for (int g = 0; g < 2; g++, at += bytes) {
          if (pass == 0) continue;
          void *ptr = (char *)e->memory + at;
          *buffer_at(e, b, j, g) = e->on_device ? loom_buf_device(e->ctx, ptr, t->count, t->dtype)
                                                : loom_buf_host(ptr, t->count, t->dtype);
        }
    }
    if (pass == 0) {
      total_bytes = at;
      if (total_bytes == 0) return LOOM_OK;
      if (e->on_device) {
        LOOM_CHECK(loom_device_alloc(e->ctx, total_bytes, &e->memory));
      } else if (!(e->memory = calloc(1, total_bytes))) {
        return loom_error_set(LOOM_ERR_NOMEM, "pipeline rank %d: %zu bytes of boundary buffers",
                              e->rank, total_bytes);
      }
    }
  }
  return LOOM_OK;
}

// What this rank can tell about its own arguments before talking to the others.
static loom_status check_params(loom_group *pp, const loom_pipeline_executor_params *params) {
  const loom_pipeline_schedule *s = params->schedule;
  if (!s || !params->ops.forward || !params->ops.backward)
    return loom_error_set(LOOM_ERR_ARG, "loom_pipeline_executor_create: needs a schedule and "
                          "forward and backward callbacks");
  if (loom_pipeline_kind_splits_backward(loom_pipeline_schedule_kind(s)) && !params->ops.backward_weight)
    return loom_error_set(LOOM_ERR_ARG, "%s schedule splits backward: backward_weight is needed",
                          loom_pipeline_kind_name(loom_pipeline_schedule_kind(s)));
  if (loom_group_size(pp) != loom_pipeline_schedule_ranks(s))
    return loom_error_set(LOOM_ERR_ARG, "pipeline executor: the PP group has %d ranks, the %s "
                          "schedule was built for pp=%d", loom_group_size(pp),
                          loom_pipeline_kind_name(loom_pipeline_schedule_kind(s)),
                          loom_pipeline_schedule_ranks(s));
  if (loom_pipeline_schedule_stages(s) > 1 && !params->boundaries)
    return loom_error_set(LOOM_ERR_ARG, "pipeline executor: %d stages need %d boundary tensors",
                          loom_pipeline_schedule_stages(s), loom_pipeline_schedule_stages(s) - 1);
  if (params->on_device && !loom_ctx_device_staged(loom_group_ctx(pp)))
    /* NCCL matches point-to-point by order and an early receive holds the stream it is on:
     * receives posted ahead could wait behind each other's sends. Not built yet. */
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "pipeline executor on rank %d: device buffers "
                          "over NCCL are not supported yet; run the ranks with "
                          "LOOM_DEVICE_COMM=staged (--device-comm staged), or keep the boundary "
                          "buffers on the host", loom_group_rank(pp));
  int flag = 0, *tag_ub = NULL;
  if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag) != MPI_SUCCESS)
    return loom_error_set(LOOM_ERR_MPI, "pipeline executor: reading MPI_TAG_UB failed");
  long long tags = 2LL * loom_pipeline_schedule_microbatches(s) * loom_pipeline_schedule_stages(s);
  if (flag && tags > *tag_ub)
    return loom_error_set(LOOM_ERR_ARG, "pipeline executor: %d micro-batches x %d stages need "
                          "%lld message tags, MPI allows %d; use fewer micro-batches or stages",
                          loom_pipeline_schedule_microbatches(s), loom_pipeline_schedule_stages(s),
                          tags, *tag_ub);
  /* the schedule itself: a hand-made one may break a rule the executor relies on */
  return loom_pipeline_check(s, NULL, NULL);
}

loom_status loom_pipeline_executor_create(loom_group *pp, const loom_pipeline_executor_params *params,
                                          loom_pipeline_executor **out) {
  *out = NULL;
  if (!pp || !params)
    return loom_error_set(LOOM_ERR_ARG, "loom_pipeline_executor_create: the PP group and the "
                          "parameters are needed");
  loom_pipeline_executor *e = calloc(1, sizeof *e);
  loom_status status = e ? check_params(pp, params) : loom_error_set(LOOM_ERR_NOMEM, "pipeline executor");
  if (status == LOOM_OK) {
    const loom_pipeline_schedule *s = params->schedule;
    e->pp = pp, e->ctx = loom_group_ctx(pp), e->schedule = s, e->ops = params->ops;
    e->rank = loom_group_rank(pp), e->stages = loom_pipeline_schedule_stages(s);
    e->microbatches = loom_pipeline_schedule_microbatches(s), e->on_device = params->on_device;
    e->actions = loom_pipeline_actions(s, e->rank, &e->count);
    e->requests = calloc((size_t)(e->count > 0 ? e->count : 1), sizeof *e->requests);
    e->weight_passes = calloc((size_t)loom_pipeline_schedule_chunks(s), sizeof *e->weight_passes);
    if (!e->requests || !e->weight_passes) status = loom_error_set(LOOM_ERR_NOMEM, "pipeline requests");
  }
  if (status == LOOM_OK) status = allocate_buffers(e, params->boundaries);
  /* every rank takes the same path, so none waits in the shape check for one that gave up */
  status = loom_status_agree(pp, status, "setting up the pipeline executor");
  if (status == LOOM_OK) status = check_boundaries(e, params->boundaries);
  if (status != LOOM_OK) {
    loom_pipeline_executor_destroy(e);
    return status;
  }
  *out = e;
  return LOOM_OK;
}

void loom_pipeline_executor_destroy(loom_pipeline_executor *e) {
  if (!e) return;
  if (e->requests) loom_wait_all(e->requests, e->count); // a failed step's leftovers (bounded by LOOM_TIMEOUT)
  if (e->memory) {
    if (e->on_device) loom_device_free(e->ctx, e->memory);
    else free(e->memory);
  }
  free(e->buffers), free(e->requests), free(e->weight_passes), free(e);
}
