/* loom_loop: the bookkeeping of a training loop behind straight-line code.
 *
 *   while (loom_loop_next(loop, &step)) {
 *     ...forward, backward (DDP), clip...
 *     LOOM_CHECK(loom_loop_before_update(loop));   // fences of background saves
 *     ...optimizer step...
 *     LOOM_CHECK(loom_loop_end_step(loop, loss));
 *   }
 *   LOOM_CHECK(loom_loop_finish(loop, &exit_code));
 *
 * The loop owns the global step (registered in the state registry as "train.global_step", so a
 * resume continues it), the stop at `stop_at_step`, fault injection (LOOM_FAULT, once per
 * step), the scheduler's signals (SIGUSR1/SIGTERM: every rank stops after the same step, the
 * keeper saves, the exit code asks for a requeue), a progress line on rank 0 (step, loss,
 * items per second, ETA) and JSON-lines metrics. What persists the state, and when, is the
 * keeper's: checkpoint/keeper.h gives the HDF5 checkpoint and in-memory snapshot cadence;
 * a loop without a keeper keeps nothing. */
#ifndef LOOM_RUNTIME_LOOP_H
#define LOOM_RUNTIME_LOOP_H

#include <stdint.h>

#include "runtime/ctx.h"
#include "runtime/state.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Persistence policy of a loop, implemented above the runtime (checkpoint/keeper.h). Every
 * function may be NULL; each returns a status the loop passes on. */
typedef struct {
  void *state;
  /* Once, at loom_loop_create: restores the newest saved state (the registry, the step in it);
   * *resumed = 1 when it did. */
  loom_status (*resume)(void *state, int *resumed);
  /* Before each optimizer step: background copies of the state must be done. */
  loom_status (*fence)(void *state);
  /* After step `step` (1-based count of steps done); `last`: the run ends after it. */
  loom_status (*after_step)(void *state, int64_t step, int last);
  /* A signal stops the run after `step`: save now, completely. */
  loom_status (*save_now)(void *state, int64_t step);
  /* The run ends: wait for background saves. */
  loom_status (*finish)(void *state);
  /* 1 when the loop should handle the scheduler's signals (there is something to save). */
  int handles_signals;
  void (*destroy)(void *state);
} loom_loop_keeper;

typedef struct {
  int64_t total_steps;      /* steps of the whole run (> 0) */
  int64_t stop_at_step;     /* stop (after the keeper's save) at this step; 0: run to the end */
  int64_t progress_every;   /* progress line every this many steps on rank 0; 0: none */
  double items_per_step;    /* samples or tokens per step over all ranks, for the rate */
  const char *items_name;   /* "samples", "tokens" */
  const char *metrics_path; /* JSON lines written by rank 0 (loom_loop_metrics); NULL: none */
  double flops_per_step;    /* model FLOPs of one step over all ranks; with peak_flops, the   */
  double peak_flops;        /* progress line shows MFU = achieved / (peak per rank x ranks)   */
} loom_loop_params;
#define LOOM_LOOP_PARAMS_INIT                                                              \
  {.total_steps = 0, .stop_at_step = 0, .progress_every = 0, .items_per_step = 0,          \
   .items_name = "samples", .metrics_path = NULL, .flops_per_step = 0, .peak_flops = 0}

typedef struct loom_loop loom_loop;

/* Registers the step in `state` (may be NULL: nothing is kept), takes the keeper (copied; may
 * be NULL; destroyed with the loop, or here when this fails), installs the signal handlers
 * when the keeper handles them, opens the metrics file, and resumes through the keeper.
 * Collective over the world: every rank succeeds, or every rank fails. */
loom_status loom_loop_create(loom_ctx *ctx, loom_state *state, const loom_loop_params *params,
                             const loom_loop_keeper *keeper, loom_loop **out);
/* 1 and *step = the 0-based index of the next step while the run goes on; 0 at the end (the
 * last step done, stop_at_step reached, or a signal). Failures are returned by the calls that
 * meet them (loom_loop_end_step), never hidden here. */
int loom_loop_next(loom_loop *loop, int64_t *step);
/* Before the optimizer step (fences the keeper's background saves). */
loom_status loom_loop_before_update(loom_loop *loop);
/* The step is done with mean loss `loss` (NaN: unknown): counts it, lets the keeper save,
 * injects faults, agrees on signals, prints progress. */
loom_status loom_loop_end_step(loom_loop *loop, double loss);
/* Steps done so far (after a resume: including the resumed ones). */
int64_t loom_loop_steps_done(const loom_loop *loop);
/* 1 when the run stopped early (stop_at_step or a signal). */
int loom_loop_stopped(const loom_loop *loop);
/* A metrics line on rank 0: {"step": ..., "elapsed_s": ..., <fields>} where `fields` is JSON
 * members without braces ("\"test_accuracy\": 0.89"); no-op without a metrics file. */
loom_status loom_loop_metrics(loom_loop *loop, const char *fields);
/* Ends the run: the keeper's final waits; *exit_code = LOOM_EXIT_REQUEUE after a signal, else
 * 0. */
loom_status loom_loop_finish(loom_loop *loop, int *exit_code);
loom_status loom_loop_destroy(loom_loop *loop);

#ifdef __cplusplus
}
#endif
#endif
