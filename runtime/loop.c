/* The training-loop helper (see loop.h). Invariant: `done` counts completed steps and is the
 * value registered as "train.global_step", so a checkpoint taken after step k resumes at k. */
#include "runtime/loop.h"

#include <stdio.h>
#include <stdlib.h>

#include "runtime/fault.h"
#include "runtime/log.h"
#include "runtime/signals.h"

struct loom_loop {
  loom_ctx *ctx;
  loom_loop_params params;
  loom_loop_keeper keeper;
  int has_keeper;
  int64_t done;        /* steps completed (registered as train.global_step) */
  int stopped, requeue;
  double start, last_progress_time;
  int64_t last_progress_step;
  FILE *metrics;
};

loom_status loom_loop_create(loom_ctx *ctx, loom_state *state, const loom_loop_params *params,
                             const loom_loop_keeper *keeper, loom_loop **out) {
  if (!ctx || !params || !out) return loom_error_set(LOOM_ERR_ARG, "loom_loop_create: NULL argument");
  *out = NULL;
  loom_status invalid = LOOM_OK;
  if (params->total_steps <= 0 || params->stop_at_step < 0 || params->progress_every < 0)
    invalid = loom_error_set(LOOM_ERR_ARG, "loom_loop_create: total_steps=%lld must be > 0, "
                             "stop_at_step=%lld and progress_every=%lld >= 0",
                             (long long)params->total_steps, (long long)params->stop_at_step,
                             (long long)params->progress_every);
  loom_loop *loop = invalid < 0 ? NULL : calloc(1, sizeof *loop);
  if (!loop) { /* the keeper was handed over: it goes too */
    if (keeper && keeper->destroy) keeper->destroy(keeper->state);
    return invalid < 0 ? invalid : loom_error_set(LOOM_ERR_NOMEM, "allocating the training loop");
  }
  loop->ctx = ctx;
  loop->params = *params;
  if (keeper) loop->keeper = *keeper, loop->has_keeper = 1;
  loom_status status = LOOM_OK;
  if (state) {
    loom_state_spec scalar = {.dtype = LOOM_INT64, .ndims = 0};
    status = loom_state_register(state, "train.global_step", &scalar,
                                 loom_buf_host(&loop->done, 1, LOOM_INT64));
  }
  if (status == LOOM_OK && keeper && keeper->handles_signals) status = loom_signals_install(ctx);
  if (status == LOOM_OK && params->metrics_path && loom_ctx_rank(ctx) == 0) {
    loop->metrics = fopen(params->metrics_path, "w");
    if (!loop->metrics)
      status = loom_error_set(LOOM_ERR_IO, "cannot write the metrics file %s; check the "
                              "directory exists and is writable", params->metrics_path);
  }
  /* one rank's failure (the metrics file) must not leave the others in the keeper's
   * collectives */
  status = loom_status_agree(loom_ctx_world(ctx), status, "loom_loop_create");
  int resumed = 0;
  if (status == LOOM_OK && keeper && keeper->resume) status = keeper->resume(keeper->state, &resumed);
  if (status == LOOM_OK && loop->done > params->total_steps)
    status = loom_error_set(LOOM_ERR_ARG, "resumed at step %lld, past the run's %lld steps; "
                            "raise the step count or start a fresh run", (long long)loop->done,
                            (long long)params->total_steps);
  if (status < 0) {
    char message[1024];
    snprintf(message, sizeof message, "%s", loom_error_string());
    loom_loop_destroy(loop);
    loom_error_restore(message);
    return status;
  }
  loop->start = loop->last_progress_time = loom_now();
  loop->last_progress_step = loop->done;
  *out = loop;
  return LOOM_OK;
}

int loom_loop_next(loom_loop *loop, int64_t *step) {
  if (!loop || !step || loop->stopped) return 0;
  if (loop->done >= loop->params.total_steps) return 0;
  *step = loop->done;
  return 1;
}

loom_status loom_loop_before_update(loom_loop *loop) {
  if (!loop) return loom_error_set(LOOM_ERR_ARG, "loom_loop_before_update: loop is NULL");
  if (loop->has_keeper && loop->keeper.fence) return loop->keeper.fence(loop->keeper.state);
  return LOOM_OK;
}

static void progress(loom_loop *loop, double loss) {
  double now = loom_now(), seconds = now - loop->last_progress_time;
  int64_t steps = loop->done - loop->last_progress_step;
  double rate = seconds > 0 ? steps * loop->params.items_per_step / seconds : 0;
  double per_step = seconds > 0 && steps > 0 ? seconds / steps : 0;
  double eta = per_step * (double)(loop->params.total_steps - loop->done);
  char mfu[32] = "";
  if (loop->params.flops_per_step > 0 && loop->params.peak_flops > 0 && per_step > 0)
    snprintf(mfu, sizeof mfu, "  MFU %.1f%%", 100.0 * loop->params.flops_per_step / per_step /
             (loop->params.peak_flops * loom_ctx_size(loop->ctx)));
  printf("step %lld/%lld  loss %.6f  %.0f %s/s  ETA %.0f s%s\n", (long long)loop->done,
         (long long)loop->params.total_steps, loss, rate, loop->params.items_name, eta, mfu);
  fflush(stdout);
  loop->last_progress_time = now;
  loop->last_progress_step = loop->done;
}

loom_status loom_loop_end_step(loom_loop *loop, double loss) {
  if (!loop) return loom_error_set(LOOM_ERR_ARG, "loom_loop_end_step: loop is NULL");
  loop->done++;
  int last = loop->done == loop->params.total_steps;
  int stop = loop->params.stop_at_step > 0 && loop->done == loop->params.stop_at_step;
  loom_loop_keeper *k = &loop->keeper;
  if (loop->has_keeper && k->after_step) LOOM_CHECK(k->after_step(k->state, loop->done, last || stop));
  LOOM_CHECK(loom_fault_step(loop->ctx, loop->done)); /* tests: kills, hangs or delays here */
  if (loop->has_keeper && k->handles_signals) {
    int signalled = 0;
    LOOM_CHECK(loom_stop_agreed(loop->ctx, &signalled));
    if (signalled && !stop && !last) {
      if (k->save_now) LOOM_CHECK(k->save_now(k->state, loop->done));
      if (loom_ctx_rank(loop->ctx) == 0)
        printf("stopping at step %lld on a signal (%d): checkpoint written, exit %d to be "
               "requeued\n", (long long)loop->done, loom_stop_signal(), LOOM_EXIT_REQUEUE);
      loop->requeue = 1;
      stop = 1;
    }
  }
  if (stop) loop->stopped = 1;
  if (loom_ctx_rank(loop->ctx) == 0 && loop->params.progress_every > 0 &&
      (loop->done % loop->params.progress_every == 0 || last))
    progress(loop, loss);
  return LOOM_OK;
}

int64_t loom_loop_steps_done(const loom_loop *loop) { return loop ? loop->done : 0; }
int loom_loop_stopped(const loom_loop *loop) { return loop ? loop->stopped : 0; }

loom_status loom_loop_metrics(loom_loop *loop, const char *fields) {
  if (!loop) return loom_error_set(LOOM_ERR_ARG, "loom_loop_metrics: loop is NULL");
  if (!loop->metrics) return LOOM_OK;
  fprintf(loop->metrics, "{\"step\": %lld, \"elapsed_s\": %.3f, \"ranks\": %d%s%s}\n",
          (long long)loop->done, loom_now() - loop->start, loom_ctx_size(loop->ctx),
          fields && *fields ? ", " : "", fields ? fields : "");
  if (fflush(loop->metrics) != 0)
    return loom_error_set(LOOM_ERR_IO, "writing the metrics file %s failed (disk full?)",
                          loop->params.metrics_path);
  return LOOM_OK;
}

loom_status loom_loop_finish(loom_loop *loop, int *exit_code) {
  if (!loop) return loom_error_set(LOOM_ERR_ARG, "loom_loop_finish: loop is NULL");
  if (loop->has_keeper && loop->keeper.finish) LOOM_CHECK(loop->keeper.finish(loop->keeper.state));
  if (exit_code) *exit_code = loop->requeue ? LOOM_EXIT_REQUEUE : 0;
  return LOOM_OK;
}

loom_status loom_loop_destroy(loom_loop *loop) {
  if (!loop) return LOOM_OK;
  if (loop->has_keeper && loop->keeper.destroy) loop->keeper.destroy(loop->keeper.state);
  loom_status status = LOOM_OK;
  if (loop->metrics && fclose(loop->metrics) != 0)
    status = loom_error_set(LOOM_ERR_IO, "closing the metrics file %s failed",
                            loop->params.metrics_path);
  free(loop);
  return status;
}
