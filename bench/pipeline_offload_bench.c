/* Activation offload in a GPU pipeline (parallel/pipeline/offload.h, PipeOffload): ranks
 * sharing one GPU (the staged path) run 1F1B over a chain of linear layers (fp32 cuBLAS, no
 * TF32), once keeping every stash on the GPU and once offloading all of them to pinned host
 * memory with 2 device slots. Prints, for rank 0 (the most micro-batches in flight), the
 * device memory held for stashes at the peak and the step time of each, and checks that the
 * weight gradients of both runs are identical bit for bit on every rank (exit 1 otherwise).
 *
 *   mpirun -np 4 -x LOOM_DEVICE=cuda -x LOOM_SHARE_GPUS=1 -x LOOM_DEVICE_COMM=staged \
 *     loom-pipeline-offload-bench [--rows 1024] [--width 8192] [--layers 4] [--microbatches 8]
 *                                 [--slots 2] [--steps 3] [--ratio 1]
 * Stage model: K layers x_{k+1} = x_k W_k, stash x_0 .. x_K ((K + 1) N d floats per micro-batch);
 * the last stage's loss is |x_K|^2 / 2. Exit 77 without a GPU. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <loom.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/offload.h"

typedef struct {
  loom_ctx *ctx;
  cublasHandle_t blas;
  cudaStream_t stream;
  int rows, width, layers, stages;
  float *weights, *grads; /* (layers) x (width x width) on the device, column-major */
  float *temp[2];         /* (rows x width) gradients between layers */
  float *inputs;          /* stage 0: (microbatches) x (rows x width), made once */
  loom_offload *offload;
} chain;

static size_t matrix(const chain *c) { return (size_t)c->rows * c->width; }

#define BENCH_CHECK(call)                                                                   \
  do {                                                                                     \
    loom_status s_ = (call);                                                               \
    if (s_ != LOOM_OK) {                                                                   \
      fprintf(stderr, "loom-pipeline-offload-bench: %s: %s\n", #call, loom_error_string()); \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                        \
    }                                                                                      \
  } while (0)

static loom_status blas_check(cublasStatus_t s, const char *what) {
  return s == CUBLAS_STATUS_SUCCESS ? LOOM_OK : loom_error_set(LOOM_ERR_CUDA, "cuBLAS %s: status %d", what, (int)s);
}

static loom_status cuda_check(cudaError_t e, const char *what) {
  return e == cudaSuccess ? LOOM_OK : loom_error_set(LOOM_ERR_CUDA, "%s: %s", what, cudaGetErrorString(e));
}

// stage 0's inputs of every micro-batch: a fixed pattern, on the device once
static loom_status make_inputs(chain *c, int microbatches) {
  size_t n = matrix(c) * (size_t)microbatches;
  float *host = malloc(sizeof(float) * n);
  if (!host) return loom_error_set(LOOM_ERR_NOMEM, "inputs");
  for (size_t i = 0; i < n; i++) host[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
  loom_status s = loom_device_alloc(c->ctx, sizeof(float) * n, (void **)&c->inputs);
  if (s == LOOM_OK) s = loom_device_upload(c->ctx, c->inputs, host, sizeof(float) * n);
  free(host);
  return s;
}

static loom_status on_forward(void *user, int stage, int j, const loom_buf *input, loom_buf *output) {
  chain *c = user;
  float *x;
  LOOM_CHECK(loom_offload_begin_forward(c->offload, 0, j, (void **)&x));
  size_t n = matrix(c);
  const void *from = input ? input->ptr : c->inputs + n * (size_t)j;
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(x, from, sizeof(float) * n, cudaMemcpyDeviceToDevice, c->stream), "input copy"));
  const float one = 1, zero = 0;
  for (int k = 0; k < c->layers; k++)
    LOOM_CHECK(blas_check(cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, c->rows, c->width, c->width, &one,
                                      x + n * k, c->rows, c->weights + (size_t)k * c->width * c->width,
                                      c->width, &zero, x + n * (k + 1), c->rows), "forward"));
  if (output) LOOM_CHECK(cuda_check(cudaMemcpyAsync(output->ptr, x + n * c->layers, sizeof(float) * n,
                                                    cudaMemcpyDeviceToDevice, c->stream), "output copy"));
  (void)stage;
  return loom_offload_end_forward(c->offload, 0, j);
}

static loom_status on_backward(void *user, int stage, int j, const loom_buf *output_grad,
                               loom_buf *input_grad, int weights) {
  chain *c = user;
  float *x;
  LOOM_CHECK(loom_offload_begin_backward(c->offload, 0, j, (void **)&x));
  size_t n = matrix(c);
  const float *dy = output_grad ? output_grad->ptr : x + n * c->layers; /* d(|y|^2 / 2) = y */
  const float one = 1, zero = 0;
  for (int k = c->layers - 1; k >= 0; k--) {
    const float *W = c->weights + (size_t)k * c->width * c->width;
    if (weights)
      LOOM_CHECK(blas_check(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, c->width, c->width, c->rows, &one,
                                        x + n * k, c->rows, dy, c->rows, &one,
                                        c->grads + (size_t)k * c->width * c->width, c->width), "weight gradient"));
    float *dx = (k == 0 && input_grad) ? input_grad->ptr : c->temp[k % 2];
    if (k > 0 || input_grad)
      LOOM_CHECK(blas_check(cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, c->rows, c->width, c->width, &one,
                                        dy, c->rows, W, c->width, &zero, dx, c->rows), "input gradient"));
    dy = dx;
  }
  (void)stage;
  return loom_offload_end_backward(c->offload, 0, j);
}

static loom_status on_prefetch(void *user, int stage, int j) {
  (void)stage;
  return loom_offload_prefetch(((chain *)user)->offload, 0, j);
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// One mode: `steps` timed steps after a warm-up; fills the gradients of the last step (host).
static void run_mode(chain *c, loom_group *world, const loom_pipeline_schedule *schedule, int slots,
                     double ratio, int steps, float *grads_out, double *step_ms, size_t *peak_bytes) {
  int m = loom_pipeline_schedule_microbatches(schedule), S = loom_pipeline_schedule_stages(schedule);
  size_t stash = sizeof(float) * matrix(c) * ((size_t)c->layers + 1);
  unsigned char *plan = malloc((size_t)m); /* PipeOffload's pick: the longest-lived go */
  if (!plan) BENCH_CHECK(LOOM_ERR_NOMEM);
  BENCH_CHECK(loom_offload_plan(schedule, loom_group_rank(world), ratio, plan));
  loom_offload_params op = {.stash_bytes = stash, .device_slots = slots, .microbatches = m,
                            .chunks = 1, .ratio = ratio, .plan = plan};
  BENCH_CHECK(loom_offload_create(c->ctx, &op, &c->offload));
  free(plan); /* read at creation */
  loom_pipeline_tensor *boundaries = malloc(sizeof *boundaries * (size_t)S);
  for (int b = 0; b < S - 1; b++) boundaries[b] = (loom_pipeline_tensor){matrix(c), LOOM_FLOAT32};
  loom_pipeline_executor_params params = LOOM_PIPELINE_EXECUTOR_PARAMS_INIT;
  params.schedule = schedule, params.boundaries = boundaries, params.on_device = 1;
  params.ops = (loom_pipeline_stage_ops){.user = c, .forward = on_forward, .backward = on_backward,
                                         .prefetch = on_prefetch};
  loom_pipeline_executor *exec;
  BENCH_CHECK(loom_pipeline_executor_create(world, &params, &exec));
  double best = 1e30;
  size_t wbytes = sizeof(float) * (size_t)c->layers * c->width * c->width;
  for (int step = 0; step <= steps; step++) {
    BENCH_CHECK(cuda_check(cudaMemsetAsync(c->grads, 0, wbytes, c->stream), "zeroing gradients"));
    BENCH_CHECK(cuda_check(cudaStreamSynchronize(c->stream), "zeroing gradients"));
    BENCH_CHECK(loom_barrier(world));
    double start = now_seconds();
    BENCH_CHECK(loom_pipeline_executor_step(exec));
    BENCH_CHECK(cuda_check(cudaStreamSynchronize(c->stream), "the step"));
    double local = now_seconds() - start, slowest;
    MPI_Allreduce(&local, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (step > 0 && slowest < best) best = slowest;
  }
  BENCH_CHECK(cuda_check(cudaMemcpy(grads_out, c->grads, wbytes, cudaMemcpyDeviceToHost), "gradients out"));
  *step_ms = 1e3 * best;
  *peak_bytes = stash * (size_t)loom_offload_peak_slots(c->offload);
  loom_pipeline_executor_destroy(exec);
  loom_offload_destroy(c->offload);
  c->offload = NULL;
  free(boundaries);
}

int main(int argc, char **argv) {
  int rows = 1024, width = 8192, layers = 4, microbatches = 8, slots = 2, steps = 3;
  double ratio = 1.0;
  const loom_option table[] = {
      {"rows", LOOM_OPTION_INT, &rows, "rows N of every activation", NULL, 1, 1 << 20},
      {"width", LOOM_OPTION_INT, &width, "layer width D (weights D x D)", NULL, 1, 1 << 16},
      {"layers", LOOM_OPTION_INT, &layers, "layers K per stage", NULL, 1, 64},
      {"microbatches", LOOM_OPTION_INT, &microbatches, "micro-batches per step", NULL, 1, 1024},
      {"slots", LOOM_OPTION_INT, &slots, "device stash slots when offloading", NULL, 1, 1024},
      {"steps", LOOM_OPTION_INT, &steps, "timed steps (after one warm-up)", NULL, 1, 1000},
      {"ratio", LOOM_OPTION_DOUBLE, &ratio, "share of the micro-batches offloaded", NULL, 0, 1},
  };
  loom_config config = LOOM_CONFIG_INIT;
  if (loom_config_parse(&config, table, (int)(sizeof table / sizeof table[0]), argc, argv) != LOOM_OK) {
    fprintf(stderr, "loom-pipeline-offload-bench: %s\n", loom_error_string());
    return 2;
  }
  loom_ctx *ctx;
  loom_status st = loom_init(&config, &argc, &argv, &ctx);
  if (st == LOOM_ERR_UNSUPPORTED) {
    fprintf(stderr, "skipped: %s\n", loom_error_string());
    return 77;
  }
  BENCH_CHECK(st);
  if (loom_ctx_device(ctx).kind != LOOM_DEVICE_CUDA) {
    fprintf(stderr, "skipped: needs --device cuda (LOOM_DEVICE=cuda) on a GPU\n");
    loom_finalize(ctx);
    return 77;
  }
  loom_group *world = loom_ctx_world(ctx);
  int p = loom_group_size(world), rank = loom_group_rank(world);
  chain c = {.ctx = ctx, .rows = rows, .width = width, .layers = layers, .stream = (cudaStream_t)loom_ctx_stream(ctx)};
  size_t wcount = (size_t)layers * width * width;
  BENCH_CHECK(blas_check(cublasCreate(&c.blas), "create"));
  BENCH_CHECK(blas_check(cublasSetStream(c.blas, c.stream), "stream"));
  BENCH_CHECK(loom_device_alloc(ctx, sizeof(float) * wcount, (void **)&c.weights));
  BENCH_CHECK(loom_device_alloc(ctx, sizeof(float) * wcount, (void **)&c.grads));
  BENCH_CHECK(loom_device_alloc(ctx, sizeof(float) * matrix(&c), (void **)&c.temp[0]));
  BENCH_CHECK(loom_device_alloc(ctx, sizeof(float) * matrix(&c), (void **)&c.temp[1]));
  float *host = malloc(sizeof(float) * wcount), *grads[2] = {malloc(sizeof(float) * wcount), malloc(sizeof(float) * wcount)};
  if (!host || !grads[0] || !grads[1]) BENCH_CHECK(LOOM_ERR_NOMEM);
  /* scaled so activations stay O(1) through the chain: entries in +-1 / sqrt(width) */
  for (size_t i = 0; i < wcount; i++)
    host[i] = (float)((double)((i * 2246822519u + (size_t)rank * 3266489917u) % 2001) / 1000.0 - 1.0) / (float)sqrt((double)width) * 1.7f;
  BENCH_CHECK(loom_device_upload(ctx, c.weights, host, sizeof(float) * wcount));
  loom_pipeline_schedule *schedule;
  BENCH_CHECK(loom_pipeline_schedule_create(LOOM_PIPELINE_1F1B, p, microbatches, 0, &schedule));
  c.stages = loom_pipeline_schedule_stages(schedule);
  if (rank == 0) BENCH_CHECK(make_inputs(&c, microbatches));
  double ms[2];
  size_t peak[2];
  run_mode(&c, world, schedule, microbatches, 0.0, steps, grads[0], &ms[0], &peak[0]);
  run_mode(&c, world, schedule, slots, ratio, steps, grads[1], &ms[1], &peak[1]);
  long differ = 0;
  for (size_t i = 0; i < wcount; i++) differ += memcmp(&grads[0][i], &grads[1][i], sizeof(float)) != 0;
  long all_differ;
  MPI_Allreduce(&differ, &all_differ, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    printf("activation offload, 1F1B pp=%d (ranks sharing a GPU), %d micro-batches, %d layers of "
           "%d x %d, rows %d: stash %.1f MB per micro-batch\n", p, microbatches, layers, width,
           width, rows, sizeof(float) * matrix(&c) * (layers + 1) / 1e6);
    printf("%-28s %14s %10s\n", "mode", "stash MB peak", "ms/step");
    printf("%-28s %14.1f %10.1f\n", "on the GPU", peak[0] / 1e6, ms[0]);
    char mode[64];
    snprintf(mode, sizeof mode, "offloaded %.0f%% (%d slots)", 100 * ratio, slots);
    printf("%-28s %14.1f %10.1f\n", mode, peak[1] / 1e6, ms[1]);
    printf("memory %.2fx, step time %+.1f%%; gradients %s (%ld of %zu elements differ)\n",
           (double)peak[1] / (double)peak[0], 100 * (ms[1] / ms[0] - 1),
           all_differ ? "DIFFER" : "identical bit for bit", all_differ, wcount * (size_t)p);
  }
  loom_pipeline_schedule_destroy(schedule);
  cublasDestroy(c.blas);
  loom_device_free(ctx, c.weights), loom_device_free(ctx, c.grads);
  loom_device_free(ctx, c.temp[0]), loom_device_free(ctx, c.temp[1]);
  if (c.inputs) loom_device_free(ctx, c.inputs);
  free(host), free(grads[0]), free(grads[1]);
  loom_finalize(ctx);
  return all_differ ? 1 : 0;
}
