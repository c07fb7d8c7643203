/* Device collectives: loom (NCCL backend) against raw NCCL calls in the same process, on the
 * same GPU buffers, nccl-tests style: for each size, `iters` back-to-back operations, then one
 * completion wait; time per operation is the median over interleaved rounds (loom then raw,
 * order alternating) of the slowest rank. busbw uses the nccl-tests factors: allreduce
 * 2(n-1)/n, allgather and reduce_scatter (n-1)/n. Added latency = loom - raw per operation.
 *
 *   mpirun -np 4 loom-nccl-bench [--min-bytes 8 --max-bytes 1G --iters 50 --rounds 7] */
#include <cuda_runtime.h>
#include <loom.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_ALLREDUCE, KIND_ALLGATHER, KIND_REDUCE_SCATTER, KIND_COUNT, MAX_ROUNDS = 31,
       MAX_ITERS = 1000 };
static const char *const kind_names[KIND_COUNT] = {"allreduce", "allgather", "reduce_scatter"};

#define DIE_IF(cond, ...)                                                                  \
  do {                                                                                     \
    if (cond) {                                                                            \
      fprintf(stderr, __VA_ARGS__);                                                        \
      fprintf(stderr, "\n");                                                               \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                        \
    }                                                                                      \
  } while (0)
#define LOOM_TRY(call) DIE_IF((call) != LOOM_OK, "%s: %s", #call, loom_error_string())
#define CUDA_TRY(call)                                                                     \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    DIE_IF(e_ != cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));                     \
  } while (0)
#define NCCL_TRY(call)                                                                     \
  do {                                                                                     \
    ncclResult_t r_ = (call);                                                              \
    DIE_IF(r_ != ncclSuccess, "%s: %s", #call, ncclGetErrorString(r_));                     \
  } while (0)

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct {
  loom_group *world;
  ncclComm_t comm;
  cudaStream_t stream;
  float *buf; /* (max_count * size) floats */
  int size, rank;
} bench;

/* `iters` operations of `kind` on `count` floats per rank, then wait. Returns seconds/op. */
static double run_loom(bench *b, int kind, size_t count, int iters, loom_req **reqs) {
  loom_ctx *ctx = loom_group_ctx(b->world);
  size_t n = (size_t)b->size;
  double start = loom_now();
  for (int i = 0; i < iters; i++) {
    loom_buf whole = loom_buf_device(ctx, b->buf, count * (kind == KIND_ALLREDUCE ? 1 : n),
                                     LOOM_FLOAT32);
    loom_buf part = loom_buf_device(ctx, b->buf + (size_t)b->rank * count, count, LOOM_FLOAT32);
    if (kind == KIND_ALLREDUCE) LOOM_TRY(loom_allreduce_async(b->world, whole, whole, LOOM_OP_SUM, &reqs[i]));
    else if (kind == KIND_ALLGATHER) LOOM_TRY(loom_allgather_async(b->world, part, whole, &reqs[i]));
    else LOOM_TRY(loom_reduce_scatter_async(b->world, whole, part, LOOM_OP_SUM, &reqs[i]));
  }
  LOOM_TRY(loom_wait_all(reqs, iters));
  return (loom_now() - start) / iters;
}

static double run_raw(bench *b, int kind, size_t count, int iters) {
  size_t n = (size_t)b->size;
  double start = loom_now();
  for (int i = 0; i < iters; i++) {
    float *part = b->buf + (size_t)b->rank * count;
    if (kind == KIND_ALLREDUCE)
      NCCL_TRY(ncclAllReduce(b->buf, b->buf, count, ncclFloat32, ncclSum, b->comm, b->stream));
    else if (kind == KIND_ALLGATHER)
      NCCL_TRY(ncclAllGather(part, b->buf, count, ncclFloat32, b->comm, b->stream));
    else
      NCCL_TRY(ncclReduceScatter(b->buf, part, count, ncclFloat32, ncclSum, b->comm, b->stream));
  }
  CUDA_TRY(cudaStreamSynchronize(b->stream));
  (void)n;
  return (loom_now() - start) / iters;
}

/* Host time to enqueue `iters` small allreduces, per op (the wait is outside the clock): when it
 * exceeds the GPU time of one op, back-to-back calls are bound by the host. */
static double enqueue_loom(bench *b, size_t count, int iters, loom_req **reqs) {
  loom_ctx *ctx = loom_group_ctx(b->world);
  loom_buf whole = loom_buf_device(ctx, b->buf, count, LOOM_FLOAT32);
  double start = loom_now();
  for (int i = 0; i < iters; i++) LOOM_TRY(loom_allreduce_async(b->world, whole, whole, LOOM_OP_SUM, &reqs[i]));
  double per_op = (loom_now() - start) / iters;
  LOOM_TRY(loom_wait_all(reqs, iters));
  return per_op;
}

static double enqueue_raw(bench *b, size_t count, int iters) {
  double start = loom_now();
  for (int i = 0; i < iters; i++)
    NCCL_TRY(ncclAllReduce(b->buf, b->buf, count, ncclFloat32, ncclSum, b->comm, b->stream));
  double per_op = (loom_now() - start) / iters;
  CUDA_TRY(cudaStreamSynchronize(b->stream));
  return per_op;
}

/* Host time of the stream ordering loom adds per call: an event recorded on the compute stream
 * and waited for by the communication stream, plus the completion event. */
static double enqueue_events(bench *b, int iters) {
  cudaEvent_t ready, done;
  CUDA_TRY(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  CUDA_TRY(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  cudaStream_t compute = (cudaStream_t)loom_ctx_stream(loom_group_ctx(b->world));
  double start = loom_now();
  for (int i = 0; i < iters; i++) {
    CUDA_TRY(cudaEventRecord(ready, compute));
    CUDA_TRY(cudaStreamWaitEvent(b->stream, ready, 0));
    CUDA_TRY(cudaEventRecord(done, b->stream));
  }
  double per_op = (loom_now() - start) / iters;
  CUDA_TRY(cudaStreamSynchronize(b->stream));
  cudaEventDestroy(ready);
  cudaEventDestroy(done);
  return per_op;
}

int main(int argc, char **argv) {
  uint64_t min_bytes = 8, max_bytes = 1ull << 30;
  int iters_small = 50, rounds = 7;
  const loom_option options[] = {
      {"min-bytes", LOOM_OPTION_UINT64, &min_bytes, "smallest size (per-rank buffer bytes)"},
      {"max-bytes", LOOM_OPTION_UINT64, &max_bytes, "largest size"},
      {"iters", LOOM_OPTION_INT, &iters_small, "operations per round at small sizes", NULL, 1, MAX_ITERS},
      {"rounds", LOOM_OPTION_INT, &rounds, "interleaved rounds (median)", NULL, 1, MAX_ROUNDS},
  };
  loom_config config = LOOM_CONFIG_INIT;
  config.device = 2;
  if (loom_config_parse(&config, options, 4, argc, argv) != LOOM_OK) {
    if (loom_launcher_rank() == 0) fprintf(stderr, "loom-nccl-bench: %s\n", loom_error_string());
    return 2;
  }
  loom_ctx *ctx = NULL;
  if (loom_init(&config, &argc, &argv, &ctx) != LOOM_OK) {
    fprintf(stderr, "loom-nccl-bench: %s\n", loom_error_string());
    return 1;
  }
  bench b = {.world = loom_ctx_world(ctx), .size = loom_ctx_size(ctx), .rank = loom_ctx_rank(ctx)};
  ncclUniqueId id;
  if (b.rank == 0) NCCL_TRY(ncclGetUniqueId(&id));
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  NCCL_TRY(ncclCommInitRank(&b.comm, b.size, id, b.rank));
  CUDA_TRY(cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking));
  size_t max_count = max_bytes / sizeof(float);
  /* allgather/reduce_scatter use size x count: keep the largest whole buffer at max_bytes */
  LOOM_TRY(loom_device_alloc(ctx, max_count * sizeof(float), (void **)&b.buf));
  CUDA_TRY(cudaMemset(b.buf, 0, max_count * sizeof(float)));
  loom_req **reqs = calloc(MAX_ITERS, sizeof *reqs);
  char device_name[256] = "?";
  struct cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, loom_ctx_device(ctx).ordinal) == cudaSuccess)
    snprintf(device_name, sizeof device_name, "%s", prop.name);
  int nccl_version = 0;
  ncclGetVersion(&nccl_version);
  if (b.rank == 0)
    printf("# loom-nccl-bench: %d ranks, %s, NCCL %d; time = median of %d rounds (slowest "
           "rank) of back-to-back ops then one wait\n", b.size, device_name, nccl_version, rounds);
  for (int kind = 0; kind < KIND_COUNT; kind++) {
    double factor = kind == KIND_ALLREDUCE ? 2.0 * (b.size - 1) / b.size : (double)(b.size - 1) / b.size;
    if (b.rank == 0)
      printf("\n# %s (float32, sum); bytes = %s\n%12s %6s | %10s %9s | %10s %9s | %7s %9s\n",
             kind_names[kind], kind == KIND_ALLREDUCE ? "buffer" : "whole buffer (all ranks)",
             "bytes", "iters", "loom us", "busbw", "nccl us", "busbw", "ratio", "added us");
    for (uint64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
      size_t whole = bytes / sizeof(float);
      size_t count = kind == KIND_ALLREDUCE ? whole : whole / (size_t)b.size;
      if (count == 0) continue;
      int iters = bytes <= (1u << 20) ? iters_small : bytes <= (64u << 20) ? 20 : 5;
      double loom_t[MAX_ROUNDS], raw_t[MAX_ROUNDS];
      run_loom(&b, kind, count, 2, reqs); /* warm-up, communicator creation */
      run_raw(&b, kind, count, 2);
      for (int r = 0; r < rounds; r++) {
        for (int half = 0; half < 2; half++) {
          int loom_first = (r + half) % 2 == 0;
          MPI_Barrier(MPI_COMM_WORLD);
          double t = loom_first ? run_loom(&b, kind, count, iters, reqs) : run_raw(&b, kind, count, iters);
          MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
          if (loom_first) loom_t[r] = t;
          else raw_t[r] = t;
        }
      }
      qsort(loom_t, (size_t)rounds, sizeof(double), compare);
      qsort(raw_t, (size_t)rounds, sizeof(double), compare);
      double lt = loom_t[rounds / 2], rt = raw_t[rounds / 2];
      size_t measured = count * sizeof(float) * (kind == KIND_ALLREDUCE ? 1 : (size_t)b.size);
      if (b.rank == 0)
        printf("%12zu %6d | %10.2f %9.2f | %10.2f %9.2f | %7.4f %9.2f\n", measured, iters,
               lt * 1e6, measured / lt * factor / 1e9, rt * 1e6, measured / rt * factor / 1e9,
               lt / rt, (lt - rt) * 1e6);
    }
  }
  /* Where the added small-op latency goes: host enqueue time per op, medians of the rounds. */
  for (size_t bytes = 8; bytes <= 65536 && bytes <= max_bytes; bytes *= 8192) {
    size_t count = bytes / sizeof(float) ? bytes / sizeof(float) : 1;
    double loom_e[MAX_ROUNDS], raw_e[MAX_ROUNDS], event_e[MAX_ROUNDS], gpu[MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
      MPI_Barrier(MPI_COMM_WORLD);
      loom_e[r] = enqueue_loom(&b, count, iters_small, reqs);
      MPI_Barrier(MPI_COMM_WORLD);
      raw_e[r] = enqueue_raw(&b, count, iters_small);
      event_e[r] = enqueue_events(&b, iters_small);
      MPI_Barrier(MPI_COMM_WORLD);
      gpu[r] = run_raw(&b, KIND_ALLREDUCE, count, iters_small);
    }
    qsort(loom_e, (size_t)rounds, sizeof(double), compare);
    qsort(raw_e, (size_t)rounds, sizeof(double), compare);
    qsort(event_e, (size_t)rounds, sizeof(double), compare);
    qsort(gpu, (size_t)rounds, sizeof(double), compare);
    if (b.rank == 0)
      printf("%s# host enqueue per allreduce of %zu B (rank 0): loom %.2f us, raw NCCL %.2f us, of "
             "which loom's stream ordering (2 event records + 1 stream wait) %.2f us; raw NCCL "
             "back-to-back time per op %.2f us\n", bytes == 8 ? "\n" : "", bytes,
             loom_e[rounds / 2] * 1e6, raw_e[rounds / 2] * 1e6, event_e[rounds / 2] * 1e6,
             gpu[rounds / 2] * 1e6);
  }
  ncclCommDestroy(b.comm);
  cudaStreamDestroy(b.stream);
  loom_device_free(ctx, b.buf);
  free(reqs);
  loom_finalize(ctx);
  return 0;
}
