/* The pipeline executor: runs this rank's action list of a schedule (schedule.h) for one
 * training step, calling the model's stage callbacks and moving activations and gradients
 * between stages with asynchronous point-to-point over the PP group (host buffers: MPI;
 * device buffers: the staged path, pinned host buffers over MPI).
 *
 * Receives are posted ahead: before each compute, the receives of the next two computes are
 * already posted, so a transfer overlaps the compute before the one that needs it (not only
 * the wait for it). Sends are posted right after the compute that produced their data and
 * completed by the end of the step.
 *
 * Buffers: the executor owns, for each micro-batch, the activation and the gradient at each
 * boundary next to one of this rank's stages (boundary b lies between stage b and b + 1).
 * The callbacks read and write them in place; a boundary between two stages of this rank (the
 * turn of ZB-V) is one buffer both stages use, with no transfer.
 *
 * Device buffers go through the staged path (tagged MPI matching); over NCCL, which matches
 * point-to-point by order and holds a stream on an early receive, they are refused for now. */
#ifndef LOOM_PARALLEL_PIPELINE_EXECUTOR_H
#define LOOM_PARALLEL_PIPELINE_EXECUTOR_H

#include <stddef.h>

#include "parallel/pipeline/schedule.h"
#include "runtime/dtype.h"
#include "runtime/group.h"
#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What crosses one boundary per micro-batch (the activation; its gradient has the same shape). */
typedef struct {
  size_t count; /* elements */
  loom_dtype dtype;
} loom_pipeline_tensor;

/* The model's side. `stage` is the global stage (0 .. stages - 1), `microbatch` 0 .. m - 1.
 * Buffers not there are NULL: stage 0 has no input (it reads its own micro-batch), the last
 * stage has no output (it computes the loss) and no output gradient (it starts from its loss);
 * stage 0 has no input gradient to write. */
typedef struct {
  void *user;
  /* output = stage(input); keeps what the backward needs. */
  loom_status (*forward)(void *user, int stage, int microbatch, const loom_buf *input,
                         loom_buf *output);
  /* input_grad from output_grad; with `weights` also accumulates the stage's weight
   * gradients (a whole backward B), else they are left for backward_weight. */
  loom_status (*backward)(void *user, int stage, int microbatch, const loom_buf *output_grad,
                          loom_buf *input_grad, int weights);
  /* Accumulates the stage's weight gradients of `microbatch` after its backward without
   * weights (schedules that split backward: ZB-H1, ZB-V). May be NULL otherwise. */
  loom_status (*backward_weight)(void *user, int stage, int microbatch);
  /* Optional: the stage's weight gradients of this step are complete (its last B or W ran).
   * Where data parallelism starts the stage's gradient reduction over its DP group (async,
   * waited for after the step), so it overlaps the rest of the pipeline. */
  loom_status (*stage_finished)(void *user, int stage);
  /* Optional: the backward (B or I) of (stage, microbatch) is this rank's next compute but one;
   * called before the compute in between, so a stash offloaded to the host (offload.h) comes
   * back while it runs. */
  loom_status (*prefetch)(void *user, int stage, int microbatch);
} loom_pipeline_stage_ops;

typedef struct {
  const loom_pipeline_schedule *schedule; /* kept by pointer: outlives the executor */
  /* (stages - 1) entries: what crosses boundary b. Only the entries next to this rank's
   * stages are read; both sides of a boundary must declare the same. */
  const loom_pipeline_tensor *boundaries;
  int on_device; /* 1: boundary buffers on this rank's GPU, else host memory */
  loom_pipeline_stage_ops ops;
} loom_pipeline_executor_params;
#define LOOM_PIPELINE_EXECUTOR_PARAMS_INIT {.schedule = NULL, .boundaries = NULL, .on_device = 0}

typedef struct loom_pipeline_executor loom_pipeline_executor;

/* Collective over `pp` (its size must equal the schedule's ranks, its rank is this rank's
 * pipeline rank): checks the schedule (loom_pipeline_check), allocates the boundary buffers
 * and checks that neighbouring stages declare the same tensors; any rank's failure fails
 * every rank, a shape mismatch with both stages named. */
loom_status loom_pipeline_executor_create(loom_group *pp, const loom_pipeline_executor_params *params,
                                          loom_pipeline_executor **out);

/* Runs this rank's actions for one step; returns when its sends have completed. A callback's
 * failure is returned as it is (the peers then time out on the missing transfer: LOOM_TIMEOUT). */
loom_status loom_pipeline_executor_step(loom_pipeline_executor *executor);

/* The buffer of boundary b for micro-batch j on this rank (activation, or its gradient), for
 * callers that fill stage 0's input or read the last stage's output themselves; NULL when
 * this rank holds no stage next to b. */
loom_buf *loom_pipeline_executor_buffer(loom_pipeline_executor *executor, int boundary,
                                        int microbatch, int gradient);

void loom_pipeline_executor_destroy(loom_pipeline_executor *executor);

#ifdef __cplusplus
}
#endif

#endif
