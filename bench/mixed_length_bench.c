/* Mixed-length batches (parallel/sequence/mixed.h, after ByteScale): a batch with a long tail
 * (a few long sequences, many short ones) through one attention layer with its QKV projection
 * W (d, 3d), forward and backward, under three plans: the balanced planner (long sequences
 * ring-parallel over blocks of ranks in proportion to their cost, short ones whole on the
 * least loaded rank), plain data parallelism by count, and a static SP group of all ranks.
 *
 * Each rank computes, for its parts, qkv = x W, ring attention over the sequence's ranks
 * (zigzag), and dW += x^T dqkv for the upstream gradient r / N (N tokens in the batch): the
 * gradient of the token-mean loss sum(out . r) / N, so summing dW over the world gives the
 * whole batch's gradient whatever the plan; --verify checks it against one rank computing the
 * whole batch (within 1e-5 of the largest element).
 *
 * Per rank, work = CPU seconds of the block computation and of the projections (thread CPU
 * time: the 2 cores' sharing and the time spent waiting for peers are left out, so it is the
 * rank's step time on a core of its own with the communication hidden). The table gives its
 * max / mean, the plan's estimate of it, the step's wall time and the elements each rank sent.
 * The cost model is the flop count: 14 d per query-key pair (4 d forward, 10 d backward) and
 * 12 d^2 per token (the projection forward and its weight gradient).
 *
 *   mpirun -np P loom-mixed-bench [--long 2 --long-length 4096 --short 48 --short-length 256
 *                                  --width 32 --heads 2 --iters 1 --verify 0|1] */
#include <loom.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/sequence/mixed.h"
#include "parallel/sequence/ring.h"

#define BENCH_CHECK(call)                                                                   \
  do {                                                                                     \
    loom_status s_ = (call);                                                               \
    if (s_ != LOOM_OK) {                                                                   \
      fprintf(stderr, "loom-mixed-bench: %s: %s\n", #call, loom_error_string());           \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                        \
    }                                                                                      \
  } while (0)

typedef struct {
  int d, H, n, total_tokens, *lengths;
  const float *W; /* (d, 3d) */
} batch;

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// A value in [-0.5, 0.5) for (what, sequence, position, channel).
static float value(int what, int seq, int pos, int c) {
  uint64_t h = ((uint64_t)what << 58) ^ ((uint64_t)seq << 40) ^ ((uint64_t)pos << 16) ^ (uint64_t)c;
  h *= 0x9e3779b97f4a7c15ull, h ^= h >> 31, h *= 0xbf58476d1ce4e5b9ull, h ^= h >> 29;
  return (float)((double)(h >> 11) / 9007199254740992.0 - 0.5);
}

// This rank's part of sequence i over `ring` (Tl tokens): dW += x^T dqkv; *linear += the CPU
// seconds of the projections.
static void run_part(const batch *b, int i, loom_ring_attention *ring, float *dW, double *linear) {
  int d = b->d, L = b->lengths[i], R = loom_ring_attention_size(ring), Tl = L / R;
  int *pos = malloc(sizeof(int) * (size_t)Tl);
  float *x = malloc(sizeof(float) * (size_t)Tl * d * 9);
  float *qkv = x + (size_t)Tl * d, *out = qkv + (size_t)Tl * 3 * d, *dout = out + (size_t)Tl * d;
  float *dqkv = dout + (size_t)Tl * d, *lse = malloc(sizeof(float) * (size_t)b->H * Tl);
  loom_sp_split_positions(R > 1 ? LOOM_SP_ZIGZAG : LOOM_SP_CONTIGUOUS, L, R, loom_ring_attention_position(ring), pos);
  for (int t = 0; t < Tl; t++)
    for (int c = 0; c < d; c++) {
      x[(size_t)t * d + c] = value(0, i, pos[t], c);
      dout[(size_t)t * d + c] = value(1, i, pos[t], c) / (float)b->total_tokens;
    }
  double start = cpu_now();
  for (int t = 0; t < Tl; t++)
    for (int o = 0; o < 3 * d; o++) {
      float sum = 0;
      for (int c = 0; c < d; c++) sum += x[(size_t)t * d + c] * b->W[(size_t)c * 3 * d + o];
      qkv[(size_t)t * 3 * d + o] = sum;
    }
  *linear += cpu_now() - start;
  BENCH_CHECK(loom_ring_attention_forward(ring, 1, Tl, b->H, d / b->H, qkv, out, lse));
  BENCH_CHECK(loom_ring_attention_backward(ring, 1, Tl, b->H, d / b->H, qkv, out, lse, dout, dqkv));
  start = cpu_now();
  for (int c = 0; c < d; c++)
    for (int t = 0; t < Tl; t++) {
      float xc = x[(size_t)t * d + c];
      const float *g = dqkv + (size_t)t * 3 * d;
      float *row = dW + (size_t)c * 3 * d;
      for (int o = 0; o < 3 * d; o++) row[o] += xc * g[o];
    }
  *linear += cpu_now() - start;
  free(pos), free(x), free(lse);
}

typedef struct {
  double work, wall, sent; /* this rank */
} run_result;

// One step of `plan`: dW (3 d^2, summed over the world), this rank's figures.
static run_result run_plan(loom_group *world, const batch *b, const loom_mixed_plan *plan,
                           float *dW) {
  int rank = loom_group_rank(world), d = b->d;
  memset(dW, 0, sizeof(float) * (size_t)d * 3 * d);
  run_result res = {0};
  double linear = 0;
  loom_ring_stats total = {0};
  BENCH_CHECK(loom_barrier(world));
  double start = loom_now();
  for (int i = 0; i < b->n; i++) { /* every rank in sequence order: rings never wait on each other */
    if (rank < plan->first[i] || rank >= plan->first[i] + plan->count[i]) continue;
    int order[1024];
    for (int k = 0; k < plan->count[i]; k++) order[k] = plan->first[i] + k;
    loom_ring_params rp = LOOM_RING_PARAMS_INIT;
    rp.group = world, rp.size = plan->count[i], rp.order = order;
    if (plan->count[i] == 1) rp.split = LOOM_SP_CONTIGUOUS; /* whole: any length */
    loom_ring_attention *ring;
    BENCH_CHECK(loom_ring_attention_create(&rp, &ring));
    run_part(b, i, ring, dW, &linear);
    loom_ring_stats s;
    loom_ring_attention_stats(ring, &s);
    total.compute_cpu_seconds += s.compute_cpu_seconds, total.elements_sent += s.elements_sent;
    loom_ring_attention_destroy(ring);
  }
  res.wall = loom_now() - start;
  BENCH_CHECK(loom_allreduce(world, loom_buf_host(dW, (size_t)d * 3 * d, LOOM_FLOAT32),
                             loom_buf_host(dW, (size_t)d * 3 * d, LOOM_FLOAT32), LOOM_OP_SUM));
  res.work = total.compute_cpu_seconds + linear, res.sent = total.elements_sent;
  return res;
}

static void max_mean(double x, double *max, double *mean, int p) {
  MPI_Allreduce(&x, max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(&x, mean, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  *mean /= p;
}

int main(int argc, char **argv) {
  int n_long = 2, long_length = 4096, n_short = 48, short_length = 256, d = 32, H = 2, iters = 1, verify = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    int *at = strcmp(argv[i], "--long") == 0 ? &n_long : strcmp(argv[i], "--long-length") == 0 ? &long_length
            : strcmp(argv[i], "--short") == 0 ? &n_short : strcmp(argv[i], "--short-length") == 0 ? &short_length
            : strcmp(argv[i], "--width") == 0 ? &d : strcmp(argv[i], "--heads") == 0 ? &H
            : strcmp(argv[i], "--iters") == 0 ? &iters : strcmp(argv[i], "--verify") == 0 ? &verify : NULL;
    if (!at) {
      fprintf(stderr, "usage: loom-mixed-bench [--long 2 --long-length 4096 --short 48 --short-length 256 "
                      "--width 32 --heads 2 --iters 1 --verify 0|1]\n");
      return 2;
    }
    *at = atoi(argv[i + 1]);
  }
  if (n_long < 0 || n_short < 0 || n_long + n_short < 1 || long_length < 1 || short_length < 1 ||
      d < 1 || H < 1 || d % H || iters < 1) {
    fprintf(stderr, "loom-mixed-bench: counts >= 0 (not both 0), lengths and width >= 1, heads dividing the width\n");
    return 2;
  }
  loom_config config = LOOM_CONFIG_INIT;
  loom_ctx *ctx;
  BENCH_CHECK(loom_init(&config, &argc, &argv, &ctx));
  loom_group *world = loom_ctx_world(ctx);
  int p = loom_group_size(world), rank = loom_group_rank(world);
  if (p > 1024) BENCH_CHECK(loom_error_set(LOOM_ERR_ARG, "at most 1024 ranks"));
  batch b = {.d = d, .H = H, .n = n_long + n_short};
  b.lengths = malloc(sizeof(int) * (size_t)b.n);
  float *W = malloc(sizeof(float) * (size_t)d * 3 * d), *dW = malloc(sizeof(float) * (size_t)d * 3 * d);
  float *want = malloc(sizeof(float) * (size_t)d * 3 * d);
  for (int i = 0; i < b.n; i++) { /* long ones spread through the batch */
    int is_long = n_long > 0 && i % (b.n / (n_long ? n_long : 1)) == 0 && i / (b.n / n_long) < n_long;
    b.lengths[i] = is_long ? long_length : short_length;
    b.total_tokens += b.lengths[i];
  }
  for (size_t i = 0; i < (size_t)d * 3 * d; i++) W[i] = value(2, 0, (int)(i / 1024), (int)(i % 1024)) / sqrtf((float)d);
  b.W = W;
  loom_mixed_cost cost = {.attention = 14.0 * d, .linear = 12.0 * d * d};
  int failures = 0;
  if (verify) { /* the whole batch on this rank, every sequence whole */
    memset(want, 0, sizeof(float) * (size_t)d * 3 * d);
    int me = rank;
    loom_ring_params rp = LOOM_RING_PARAMS_INIT;
    rp.group = world, rp.size = 1, rp.order = &me, rp.split = LOOM_SP_CONTIGUOUS;
    loom_ring_attention *ring;
    BENCH_CHECK(loom_ring_attention_create(&rp, &ring));
    double ignore = 0;
    for (int i = 0; i < b.n; i++) run_part(&b, i, ring, want, &ignore);
    loom_ring_attention_destroy(ring);
  }
  if (rank == 0) {
    printf("mixed lengths: %d x %d and %d x %d tokens (%d in all), d %d, %d heads, over %d ranks; "
           "work = CPU s of computation per rank\n", n_long, long_length, n_short, short_length,
           b.total_tokens, d, H, p);
    printf("%-10s %12s %12s %10s %10s %12s %8s\n", "plan", "est max/mn", "work max/mn", "work max s",
           "wall s", "sent/rank", "verify");
  }
  const loom_mixed_kind kinds[3] = {LOOM_MIXED_BALANCED, LOOM_MIXED_BY_COUNT, LOOM_MIXED_ALL_RANKS};
  const char *names[3] = {"planner", "by count", "all ranks"};
  for (int k = 0; k < 3; k++) {
    loom_mixed_plan plan;
    if (loom_mixed_plan_create(kinds[k], b.lengths, b.n, p, &cost, 2, &plan) != LOOM_OK) {
      if (rank == 0) printf("%-10s refused: %s\n", names[k], loom_error_string());
      continue;
    }
    run_result best = {.wall = INFINITY};
    for (int it = 0; it < iters; it++) {
      run_result r = run_plan(world, &b, &plan, dW);
      if (r.wall < best.wall) best = r;
    }
    double work_max, work_mean, wall_max, wall_mean, sent_max, sent_mean;
    max_mean(best.work, &work_max, &work_mean, p);
    max_mean(best.wall, &wall_max, &wall_mean, p);
    max_mean(best.sent, &sent_max, &sent_mean, p);
    const char *verdict = "-";
    if (verify) {
      double gmax = 0, err = 0;
      for (size_t i = 0; i < (size_t)d * 3 * d; i++) gmax = fmax(gmax, fabs(want[i])), err = fmax(err, fabs(want[i] - dW[i]));
      int bad = err > 1e-5 * gmax, any = 0;
      MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
      if (bad) fprintf(stderr, "rank %d: FAIL %s: dW off by %.3g of its largest %.3g\n", rank, names[k], err / gmax, gmax);
      failures += any;
      verdict = any ? "FAIL" : "ok";
    }
    if (rank == 0) {
      printf("%-10s %12.3f %12.3f %10.3f %10.3f %12.0f %8s\n", names[k], loom_mixed_plan_imbalance(&plan),
             work_mean > 0 ? work_max / work_mean : 1, work_max, wall_max, sent_mean, verdict);
      if (k == 0) {
        printf("  planner's long sequences:");
        for (int i = 0; i < b.n; i++)
          if (plan.count[i] > 1) printf(" %d tokens on ranks %d-%d;", b.lengths[i], plan.first[i], plan.first[i] + plan.count[i] - 1);
        printf("\n");
      }
    }
    loom_mixed_plan_free(&plan);
  }
  free(b.lengths), free(W), free(dW), free(want);
  loom_finalize(ctx);
  return failures ? 1 : 0;
}
