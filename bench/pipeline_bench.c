/* Pipeline bubble per schedule, measured by the executor on real ranks against the textbook
 * figure and the checker's simulation. Stage costs are timed waits (nanosleep) of fixed
 * length, so the bubble is the schedule's, not the 2 cores' (the ranks sleep, they do not
 * compute). A stage of an interleaved or ZB-V schedule is 1 / chunks of a rank's layers, so its
 * waits are 1 / chunks as long: every schedule does the same work per rank.
 *
 *   mpirun -np P loom-pipeline-bench [--stage-ms 6] [--steps 3] [--count 4096]
 * Prints one row per (schedule, micro-batches): step time (the fastest of --steps, after a
 * warm-up step), measured bubble = step time / busiest rank's time in callbacks - 1, the
 * checker's bubble at the same costs, the theory, and how far the measured bubble is from
 * theory: in percent of the theory's bubble, and in percent of the theory's step time. */
#include <loom.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/pipeline/check.h"
#include "parallel/pipeline/executor.h"

typedef struct {
  double wait_seconds; // per pass of one stage (chunk)
  double busy;         // seconds spent in callbacks this step
} timed_stages;

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void timed_wait(timed_stages *t) {
  double start = now_seconds();
  struct timespec d = {.tv_sec = 0, .tv_nsec = (long)(t->wait_seconds * 1e9)};
  nanosleep(&d, NULL);
  t->busy += now_seconds() - start;
}

static loom_status on_forward(void *user, int stage, int microbatch, const loom_buf *in, loom_buf *out) {
  (void)stage, (void)microbatch, (void)in, (void)out;
  timed_wait(user);
  return LOOM_OK;
}

static loom_status on_backward(void *user, int stage, int microbatch, const loom_buf *out_grad,
                               loom_buf *in_grad, int weights) {
  (void)stage, (void)microbatch, (void)out_grad, (void)in_grad;
  timed_wait(user);
  if (weights) timed_wait(user);
  return LOOM_OK;
}

static loom_status on_backward_weight(void *user, int stage, int microbatch) {
  (void)stage, (void)microbatch;
  timed_wait(user);
  return LOOM_OK;
}

#define BENCH_CHECK(call)                                                                   \
  do {                                                                                     \
    loom_status s_ = (call);                                                               \
    if (s_ != LOOM_OK) {                                                                   \
      fprintf(stderr, "loom-pipeline-bench: %s: %s\n", #call, loom_error_string());        \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                        \
    }                                                                                      \
  } while (0)

int main(int argc, char **argv) {
  double stage_ms = 6;
  int steps = 3, count = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--stage-ms") == 0) stage_ms = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--count") == 0) count = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "usage: loom-pipeline-bench [--stage-ms 6] [--steps 3] [--count 4096]\n");
      return 2;
    }
  }
  if (stage_ms <= 0 || steps < 1 || count < 1) {
    fprintf(stderr, "loom-pipeline-bench: --stage-ms, --steps and --count must be positive\n");
    return 2;
  }
  loom_config config = LOOM_CONFIG_INIT;
  loom_ctx *ctx;
  BENCH_CHECK(loom_init(&config, &argc, &argv, &ctx));
  loom_group *world = loom_ctx_world(ctx);
  int p = loom_group_size(world), rank = loom_group_rank(world);
  if (rank == 0) {
    printf("pipeline bubble, pp=%d, F = I = W = %.1f ms per rank's layers, %d floats per transfer\n",
           p, stage_ms, count);
    printf("%-12s %4s %6s %10s %10s %10s %10s %11s %9s\n", "schedule", "m", "chunks", "step ms",
           "bubble", "simulated", "theory", "bubble off", "step off");
  }
  const int microbatches[] = {4, 8, 16};
  for (int k = 0; k < LOOM_PIPELINE_KIND_COUNT; k++)
    for (int mi = 0; mi < 3; mi++) {
      int m = microbatches[mi];
      loom_pipeline_schedule *schedule;
      if (loom_pipeline_schedule_create((loom_pipeline_kind)k, p, m, 0, &schedule) != LOOM_OK) {
        if (rank == 0)
          printf("%-12s %4d %6s refused: %s\n", loom_pipeline_kind_name((loom_pipeline_kind)k), m, "-",
                 loom_error_string());
        continue;
      }
      int chunks = loom_pipeline_schedule_chunks(schedule), S = loom_pipeline_schedule_stages(schedule);
      timed_stages stages = {.wait_seconds = stage_ms * 1e-3 / chunks};
      loom_pipeline_tensor *boundaries = malloc(sizeof *boundaries * (size_t)(S > 1 ? S - 1 : 1));
      for (int b = 0; b < S - 1; b++) boundaries[b] = (loom_pipeline_tensor){(size_t)count, LOOM_FLOAT32};
      loom_pipeline_executor_params params = LOOM_PIPELINE_EXECUTOR_PARAMS_INIT;
      params.schedule = schedule, params.boundaries = boundaries;
      params.ops = (loom_pipeline_stage_ops){.user = &stages, .forward = on_forward,
                                             .backward = on_backward, .backward_weight = on_backward_weight};
      loom_pipeline_executor *exec;
      BENCH_CHECK(loom_pipeline_executor_create(world, &params, &exec));
      double best_step = INFINITY, best_busy = 0;
      for (int step = 0; step <= steps; step++) {
        stages.busy = 0;
        BENCH_CHECK(loom_barrier(world));
        double start = now_seconds();
        BENCH_CHECK(loom_pipeline_executor_step(exec));
        double local[2] = {now_seconds() - start, stages.busy}, worst[2];
        MPI_Allreduce(local, worst, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (step > 0 && worst[0] < best_step) best_step = worst[0], best_busy = worst[1];
      }
      loom_pipeline_costs costs = {.forward = stages.wait_seconds, .backward_input = stages.wait_seconds,
                                   .backward_weight = stages.wait_seconds, .transfer = 0};
      loom_pipeline_report report = {0};
      BENCH_CHECK(loom_pipeline_check(schedule, &costs, &report));
      double bubble = best_step / best_busy - 1, theory;
      loom_pipeline_theory((loom_pipeline_kind)k, p, m, chunks, &theory, NULL);
      if (rank == 0)
        printf("%-12s %4d %6d %10.1f %10.4f %10.4f %10.4f %10.1f%% %8.1f%%%s\n",
               loom_pipeline_kind_name((loom_pipeline_kind)k), m, chunks, 1e3 * best_step, bubble,
               report.bubble, theory, theory > 0 ? 100 * fabs(bubble - theory) / theory : 0.0,
               100 * fabs(bubble - theory) / (1 + theory), m < p ? "  (m < pp: theory assumes m >= pp)" : "");
      loom_pipeline_executor_destroy(exec);
      loom_pipeline_schedule_destroy(schedule);
      free(boundaries);
    }
  loom_finalize(ctx);
  return 0;
}
