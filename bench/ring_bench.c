/* Ring attention (parallel/sequence/ring.h) on R ranks, forward and backward of one attention
 * layer, for the contiguous and the zigzag split, against raw MPI moving the same blocks:
 *   balance   max / mean over ranks of the block computation's CPU time (thread CPU time, so
 *             ranks sharing the 2 cores do not inflate it) and of the query-key pairs;
 *   traffic   elements each rank sent per pass against (3R - 2) 2 N d / R (N = B T tokens,
 *             d = H hd): R - 1 key/value blocks forward; R - 1 key/value blocks and R
 *             gradient blocks backward;
 *   overlap   raw MPI's time for the same transfers with nothing to overlap (MPI_Sendrecv
 *             round the ring), loom's exposed wait per pass (after the computation; it also
 *             holds the time a neighbour was still computing, so an unbalanced split shows
 *             there), and the share of incoming blocks that had arrived before the computation
 *             they overlapped ended (hidden: posted ahead and progressed during it).
 *
 *   mpirun -np R loom-ring-bench [--context 4096] [--heads 4] [--head-size 32] [--batch 1] [--iters 3]
 * Inputs are random; the kernels' arithmetic does not depend on the values. */
#include <loom.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/sequence/ring.h"

#define BENCH_CHECK(call)                                                                   \
  do {                                                                                     \
    loom_status s_ = (call);                                                               \
    if (s_ != LOOM_OK) {                                                                   \
      fprintf(stderr, "loom-ring-bench: %s: %s\n", #call, loom_error_string());            \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                        \
    }                                                                                      \
  } while (0)

// max / mean over the world of x
static double imbalance(double x, int p) {
  double sum = 0, max = 0;
  MPI_Allreduce(&x, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&x, &max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return sum > 0 ? max / (sum / p) : 1;
}

static double mean(double x, int p) {
  double sum = 0;
  MPI_Allreduce(&x, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return sum / p;
}

// Raw MPI: the transfers of one forward and backward, with nothing to overlap; seconds.
static double raw_mpi_pass(float *a, float *b, size_t block, int p, int rank) {
  int next = (rank + 1) % p, prev = (rank + p - 1) % p, hops = 3 * p - 2;
  MPI_Barrier(MPI_COMM_WORLD);
  double start = MPI_Wtime();
  for (int h = 0; h < hops; h++)
    MPI_Sendrecv(a, (int)block, MPI_FLOAT, next, 1, b, (int)block, MPI_FLOAT, prev, 1,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  double t = MPI_Wtime() - start, max = 0;
  MPI_Allreduce(&t, &max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return max;
}

int main(int argc, char **argv) {
  int T = 4096, H = 4, hd = 32, B = 1, iters = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    int *at = strcmp(argv[i], "--context") == 0 ? &T : strcmp(argv[i], "--heads") == 0 ? &H
            : strcmp(argv[i], "--head-size") == 0 ? &hd : strcmp(argv[i], "--batch") == 0 ? &B
            : strcmp(argv[i], "--iters") == 0 ? &iters : NULL;
    if (!at) {
      fprintf(stderr, "usage: loom-ring-bench [--context 4096] [--heads 4] [--head-size 32] "
                      "[--batch 1] [--iters 3]\n");
      return 2;
    }
    *at = atoi(argv[i + 1]);
  }
  if (T < 1 || H < 1 || hd < 1 || B < 1 || iters < 1) {
    fprintf(stderr, "loom-ring-bench: every option must be positive\n");
    return 2;
  }
  loom_config config = LOOM_CONFIG_INIT;
  loom_ctx *ctx;
  BENCH_CHECK(loom_init(&config, &argc, &argv, &ctx));
  loom_group *world = loom_ctx_world(ctx);
  int p = loom_group_size(world), rank = loom_group_rank(world), d = H * hd;
  BENCH_CHECK(loom_sp_split_check(LOOM_SP_ZIGZAG, T, p));
  int Tl = T / p;
  size_t rows = (size_t)B * Tl, block = rows * 2 * d;
  float *qkv = malloc(sizeof(float) * rows * 3 * d), *out = malloc(sizeof(float) * rows * d);
  float *dout = malloc(sizeof(float) * rows * d), *dqkv = malloc(sizeof(float) * rows * 3 * d);
  float *lse = malloc(sizeof(float) * (size_t)B * H * Tl);
  float *a = malloc(sizeof(float) * block), *b = malloc(sizeof(float) * block);
  if (!qkv || !out || !dout || !dqkv || !lse || !a || !b) BENCH_CHECK(LOOM_ERR_NOMEM);
  uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(rank + 1);
  for (size_t i = 0; i < rows * 3 * d; i++) x = x * 6364136223846793005ull + 1, qkv[i] = (float)((x >> 40) / 16777216.0 - 0.5);
  for (size_t i = 0; i < rows * d; i++) x = x * 6364136223846793005ull + 1, dout[i] = (float)((x >> 40) / 16777216.0 - 0.5);
  for (size_t i = 0; i < block; i++) a[i] = (float)i;
  double raw = INFINITY;
  for (int i = 0; i < iters; i++) raw = fmin(raw, raw_mpi_pass(a, b, block, p, rank));
  if (rank == 0) {
    printf("ring attention, R=%d ranks, B=%d T=%d H=%d hd=%d (%d tokens per rank), forward + backward, "
           "best of %d\n", p, B, T, H, hd, Tl, iters);
    printf("%-11s %9s %10s %9s %11s %12s %12s %9s %9s %8s\n", "split", "cpu max/mn", "pairs max/mn",
           "pass ms", "tokens/s", "sent/pass", "formula", "raw MPI ms", "wait ms", "hidden");
  }
  const loom_sp_split splits[2] = {LOOM_SP_CONTIGUOUS, LOOM_SP_ZIGZAG};
  for (int k = 0; k < 2; k++) {
    loom_ring_params rp = LOOM_RING_PARAMS_INIT;
    rp.group = world, rp.split = splits[k];
    loom_ring_attention *ring;
    BENCH_CHECK(loom_ring_attention_create(&rp, &ring));
    BENCH_CHECK(loom_ring_attention_forward(ring, B, Tl, H, hd, qkv, out, lse)); /* warm-up */
    BENCH_CHECK(loom_ring_attention_backward(ring, B, Tl, H, hd, qkv, out, lse, dout, dqkv));
    double best = INFINITY;
    loom_ring_stats before, after, best_delta = {0};
    for (int i = 0; i < iters; i++) {
      loom_ring_attention_stats(ring, &before);
      BENCH_CHECK(loom_barrier(world));
      double start = loom_now();
      BENCH_CHECK(loom_ring_attention_forward(ring, B, Tl, H, hd, qkv, out, lse));
      BENCH_CHECK(loom_ring_attention_backward(ring, B, Tl, H, hd, qkv, out, lse, dout, dqkv));
      double t = loom_now() - start, slowest = 0;
      MPI_Allreduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      loom_ring_attention_stats(ring, &after);
      if (slowest < best) {
        best = slowest;
        best_delta = (loom_ring_stats){
            .compute_cpu_seconds = after.compute_cpu_seconds - before.compute_cpu_seconds,
            .wait_seconds = after.wait_seconds - before.wait_seconds,
            .elements_sent = after.elements_sent - before.elements_sent,
            .pairs = after.pairs - before.pairs,
            .transfers = after.transfers - before.transfers,
            .transfers_hidden = after.transfers_hidden - before.transfers_hidden};
      }
    }
    double cpu = imbalance(best_delta.compute_cpu_seconds, p), pairs = imbalance(best_delta.pairs, p);
    double wait = mean(best_delta.wait_seconds, p);
    double formula = p > 1 ? (3.0 * p - 2) * 2.0 * B * T * d / p : 0;
    double hidden = best_delta.transfers ? (double)best_delta.transfers_hidden / best_delta.transfers : 1;
    hidden = mean(hidden, p);
    if (rank == 0)
      printf("%-11s %9.3f %10.3f %9.1f %11.0f %12.0f %12.0f %9.2f %9.2f %7.0f%%\n",
             splits[k] == LOOM_SP_ZIGZAG ? "zigzag" : "contiguous", cpu, pairs, best * 1e3,
             B * T / best, best_delta.elements_sent, formula, p > 1 ? raw * 1e3 : 0.0,
             wait * 1e3, 100 * (hidden < 0 ? 0 : hidden));
    loom_ring_attention_destroy(ring);
  }
  free(qkv), free(out), free(dout), free(dqkv), free(lse), free(a), free(b);
  loom_finalize(ctx);
  return 0;
}
