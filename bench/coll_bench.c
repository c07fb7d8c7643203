/* loom-coll-bench: loom's collectives against raw MPI on the same buffers in the same process,
 * in the nccl-tests mould: one small table of functions per collective, one driver that warms
 * up, checks loom's output exactly, times loom and MPI in interleaved rounds and prints a row
 * per size; then the fusion and sparse all-to-all cases. Inputs are integers in [-128, 127]
 * drawn from (seed, rank, index), so float32 sums are exact and every check is an equality. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "loom.h"

enum {
  PURPOSE_DATA = LOOM_RNG_USER,            /* + table index: input data of one collective */
  PURPOSE_FUSION = LOOM_RNG_USER + 50,     /* fusion tensors */
  PURPOSE_SPARSE_CASE = LOOM_RNG_USER + 60,
  PURPOSE_PATTERN = LOOM_RNG_USER + 100,   /* sparse pair pattern; stream = source rank */
  FUSION_TENSORS = 200,
  FUSION_TENSOR_BYTES = 4096,
  CHECK_CHUNK = 4096, /* elements of the reference built at a time */
  WARMUP_MAX = 5,     /* untimed iterations of each variant before the rounds */
};
/* Bytes one variant moves per round at most; larger sizes run fewer iterations per round
 * (at least one), so 256 MiB costs seconds, not minutes, on a 2-core machine. */
static const uint64_t ROUND_BYTES = 256ull << 20;
/* The footer of each table summarises the sizes from here up (the 'within 3%' target). */
static const uint64_t LARGE_BYTES = 1ull << 20;
/* Largest --max-bytes: element counts must stay below MPI's 2^31 limit. */
static const uint64_t MAX_BYTES_LIMIT = 4ull << 30;

typedef struct {
  uint64_t min_bytes, max_bytes;
  int step_factor;
  int iters;  /* iterations per round for sizes up to ROUND_BYTES / iters */
  int rounds; /* interleaved rounds; the median over rounds is reported */
  int check;
  double density; /* sparse: fraction of (rank, peer) pairs with data */
  const char *collectives;
} bench_options;

#define BENCH_OPTIONS_INIT                                                                 \
  {.min_bytes = 8, .max_bytes = 256ull << 20, .step_factor = 4, .iters = 20, .rounds = 9,  \
   .check = 1, .density = 0.10, .collectives = "all"}

/* What can be selected with --collectives: the five tables, then the two special cases. */
static const char *const SELECTABLE[] = {"allreduce", "allgather", "reduce_scatter", "alltoall",
                                         "sparse_alltoall", "fusion", "sparse"};
enum { SELECTABLE_COUNT = 7, TABLE_COUNT = 5, SELECT_FUSION = 5, SELECT_SPARSE = 6 };

/* Which (source, destination) pairs carry data; the same on every rank for a run. */
typedef struct {
  int size;
  unsigned char *pairs; /* (size * size): pairs[src * size + dst] */
  int nonempty;
} sparse_pattern;

typedef struct {
  loom_group *group;
  MPI_Comm comm; /* a dup of MPI_COMM_WORLD for the raw MPI calls */
  int rank, size;
  uint64_t seed;
  const bench_options *options;
  const sparse_pattern *pattern;
} bench_env;

/* One collective at one size; buffers are allocated for the largest size and reused. */
typedef struct {
  const bench_env *env;
  uint32_t purpose;
  size_t block;                  /* elements per rank block (or per nonempty sparse pair) */
  size_t send_count, recv_count; /* elements used at this size */
  size_t bytes;                  /* the size reported, nccl-tests convention */
  float *send, *recv;
  /* sparse: the plan built by init, and the dense equivalent in MPI's int counts */
  loom_sparse_plan plan;
  int *dense; /* (6 * size): send counts, send displs, recv counts, recv displs, scratch x2 */
  /* fusion */
  loom_buf *tensors; /* (FUSION_TENSORS) */
  float *pristine;   /* (FUSION_TENSORS * elements) the inputs, restored before each block */
  float *flat;       /* (FUSION_TENSORS * elements) one buffer: the unfused lower bound */
} bench_case;

typedef void (*bench_run_fn)(bench_case *c);

/* ---------------------------------------------------------------------------------------- */
/* Failures: a bench stops the whole job on the first one. */

static void die_loom(const bench_env *env, const char *call, loom_status status) {
  fprintf(stderr, "loom-coll-bench rank %d: %s failed (%s): %s\n", env->rank, call,
          loom_status_name(status), loom_error_string());
  MPI_Abort(MPI_COMM_WORLD, 1);
}

static void check_loom(const bench_env *env, const char *call, loom_status status) {
  if (status < 0) die_loom(env, call, status);
}

static void check_mpi(const bench_env *env, const char *call, int rc) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fprintf(stderr, "loom-coll-bench rank %d: %s failed: %s\n", env->rank, call, text);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

static void *allocate(const bench_env *env, size_t bytes, const char *what) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "loom-coll-bench rank %d: out of memory for %s (%zu bytes); lower "
            "--max-bytes\n", env->rank, what, bytes);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return p;
}

/* ---------------------------------------------------------------------------------------- */
/* Data: element `index` of stream (seed, purpose, rank) is the Philox word
 * loom_rng_word_at(seed, purpose, rank, index) taken modulo 256 and shifted to [-128, 127].
 * A block of 4 words is computed once for 4 elements (main checks the identity at start). */

static void fill_values(float *out, size_t count, uint64_t seed, uint32_t purpose,
                        uint32_t stream, uint64_t first_index, int accumulate) {
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t words[4];
  uint64_t cached = UINT64_MAX;
  for (size_t i = 0; i < count; i++) {
    uint64_t index = first_index + i, block = index >> 2;
    if (block != cached) {
      const uint32_t counter[4] = {(uint32_t)block, (uint32_t)(block >> 32), stream, purpose};
      loom_philox4x32(counter, key, words);
      cached = block;
    }
    float value = (float)((int)(words[index & 3] & 0xffu) - 128);
    out[i] = accumulate ? out[i] + value : value;
  }
}

static int fill_matches_rng(uint64_t seed) {
  float got[9];
  fill_values(got, 9, seed, PURPOSE_DATA, 3, 5, 0);
  for (int i = 0; i < 9; i++) {
    uint32_t word = loom_rng_word_at(seed, PURPOSE_DATA, 3, 5 + (uint64_t)i);
    if (got[i] != (float)((int)(word & 0xffu) - 128)) return 0;
  }
  return 1;
}

/* Elements of got[0 .. count) that differ from the reference: the sum over the streams
 * [first_stream, first_stream + streams) of their inputs at first_index + i. NaN poison left
 * in an unwritten element never compares equal, so it counts as wrong. */
static size_t count_wrong(const float *got, size_t count, uint64_t seed, uint32_t purpose,
                          int first_stream, int streams, uint64_t first_index) {
  float expected[CHECK_CHUNK];
  size_t wrong = 0;
  for (size_t offset = 0; offset < count; offset += CHECK_CHUNK) {
    size_t m = count - offset < CHECK_CHUNK ? count - offset : CHECK_CHUNK;
    for (int s = 0; s < streams; s++)
      fill_values(expected, m, seed, purpose, (uint32_t)(first_stream + s), first_index + offset,
                  s > 0);
    for (size_t i = 0; i < m; i++) wrong += got[offset + i] != expected[i];
  }
  return wrong;
}

static void poison(float *p, size_t count) { memset(p, 0xff, count * sizeof *p); /* NaN */ }

/* ---------------------------------------------------------------------------------------- */
/* Sparse pattern: each source rank draws its own row from its own stream, so the set is fixed
 * by (seed, size, density); every rank draws all rows (cheap) to know what it will receive. */

static void pattern_create(const bench_env *env, double density, sparse_pattern *out) {
  int n = env->size;
  out->size = n;
  out->pairs = allocate(env, (size_t)n * (size_t)n, "sparse pattern");
  out->nonempty = 0;
  for (int src = 0; src < n; src++) {
    loom_rng rng;
    loom_rng_init(&rng, env->seed, PURPOSE_PATTERN, (uint32_t)src);
    for (int dst = 0; dst < n; dst++) {
      out->pairs[src * n + dst] = loom_rng_uniform(&rng) < density;
      out->nonempty += out->pairs[src * n + dst];
    }
  }
  if (out->nonempty == 0) { /* at least one pair, drawn from a stream no row uses */
    loom_rng rng;
    loom_rng_init(&rng, env->seed, PURPOSE_PATTERN, (uint32_t)n);
    out->pairs[loom_rng_below(&rng, (uint64_t)n * (uint64_t)n)] = 1;
    out->nonempty = 1;
  }
}

static int out_degree(const sparse_pattern *p, int src) {
  int d = 0;
  for (int dst = 0; dst < p->size; dst++) d += p->pairs[src * p->size + dst];
  return d;
}

static int in_degree(const sparse_pattern *p, int dst) {
  int d = 0;
  for (int src = 0; src < p->size; src++) d += p->pairs[src * p->size + dst];
  return d;
}

/* ---------------------------------------------------------------------------------------- */
/* The table: per collective, its sizes, busbw factor, inputs, loom call, MPI call and check. */

typedef struct {
  const char *name;
  const char *title; /* the calls compared and what bytes / busbw mean */
  void (*size)(bench_case *c, size_t nominal_bytes); /* block, counts and bytes for a size */
  double (*busbw_factor)(int n);
  void (*init)(bench_case *c);    /* inputs from (seed, rank, index); sparse: also the plan */
  void (*release)(bench_case *c); /* may be NULL */
  bench_run_fn run_loom, run_mpi;
  size_t (*check)(const bench_case *c); /* elements of loom's output that are wrong */
} coll_entry;

static size_t at_least_one(size_t v) { return v ? v : 1; }
static loom_buf host(float *p, size_t count) { return loom_buf_host(p, count, LOOM_FLOAT32); }
static double factor_allreduce(int n) { return 2.0 * (n - 1) / n; }
static double factor_gather(int n) { return (double)(n - 1) / n; }
static double factor_one(int n) { return 1.0; }

/* allreduce: bytes = buffer size */
static void allreduce_size(bench_case *c, size_t nominal) {
  c->block = c->send_count = c->recv_count = at_least_one(nominal / sizeof(float));
  c->bytes = c->send_count * sizeof(float);
}
static void allreduce_init(bench_case *c) {
  fill_values(c->send, c->send_count, c->env->seed, c->purpose, (uint32_t)c->env->rank, 0, 0);
}
static void allreduce_loom(bench_case *c) {
  check_loom(c->env, "loom_allreduce", loom_allreduce(c->env->group, host(c->send, c->send_count),
                                                      host(c->recv, c->recv_count), LOOM_OP_SUM));
}
static void allreduce_mpi(bench_case *c) {
  check_mpi(c->env, "MPI_Allreduce", MPI_Allreduce(c->send, c->recv, (int)c->send_count,
                                                   MPI_FLOAT, MPI_SUM, c->env->comm));
}
static size_t allreduce_check(const bench_case *c) {
  return count_wrong(c->recv, c->recv_count, c->env->seed, c->purpose, 0, c->env->size, 0);
}

/* allgather: bytes = total received (size blocks) */
static void allgather_size(bench_case *c, size_t nominal) {
  c->block = at_least_one(nominal / sizeof(float) / (size_t)c->env->size);
  c->send_count = c->block;
  c->recv_count = c->block * (size_t)c->env->size;
  c->bytes = c->recv_count * sizeof(float);
}
static void allgather_init(bench_case *c) {
  fill_values(c->send, c->send_count, c->env->seed, c->purpose, (uint32_t)c->env->rank, 0, 0);
}
static void allgather_loom(bench_case *c) {
  check_loom(c->env, "loom_allgather", loom_allgather(c->env->group, host(c->send, c->send_count),
                                                      host(c->recv, c->recv_count)));
}
static void allgather_mpi(bench_case *c) {
  check_mpi(c->env, "MPI_Allgather", MPI_Allgather(c->send, (int)c->block, MPI_FLOAT, c->recv,
                                                   (int)c->block, MPI_FLOAT, c->env->comm));
}
static size_t allgather_check(const bench_case *c) {
  size_t wrong = 0;
  for (int r = 0; r < c->env->size; r++)
    wrong += count_wrong(c->recv + (size_t)r * c->block, c->block, c->env->seed, c->purpose, r,
                         1, 0);
  return wrong;
}

/* reduce_scatter: bytes = total sent (size blocks) */
static void reduce_scatter_size(bench_case *c, size_t nominal) {
  c->block = at_least_one(nominal / sizeof(float) / (size_t)c->env->size);
  c->send_count = c->block * (size_t)c->env->size;
  c->recv_count = c->block;
  c->bytes = c->send_count * sizeof(float);
}
static void reduce_scatter_init(bench_case *c) {
  fill_values(c->send, c->send_count, c->env->seed, c->purpose, (uint32_t)c->env->rank, 0, 0);
}
static void reduce_scatter_loom(bench_case *c) {
  check_loom(c->env, "loom_reduce_scatter",
             loom_reduce_scatter(c->env->group, host(c->send, c->send_count),
                                 host(c->recv, c->recv_count), LOOM_OP_SUM));
}
static void reduce_scatter_mpi(bench_case *c) {
  check_mpi(c->env, "MPI_Reduce_scatter_block",
            MPI_Reduce_scatter_block(c->send, c->recv, (int)c->block, MPI_FLOAT, MPI_SUM,
                                     c->env->comm));
}
static size_t reduce_scatter_check(const bench_case *c) {
  return count_wrong(c->recv, c->recv_count, c->env->seed, c->purpose, 0, c->env->size,
                     (uint64_t)c->env->rank * c->block);
}

/* alltoall: bytes = total received; block p of rank r's input is its elements p * block.. */
static void alltoall_size(bench_case *c, size_t nominal) {
  c->block = at_least_one(nominal / sizeof(float) / (size_t)c->env->size);
  c->send_count = c->recv_count = c->block * (size_t)c->env->size;
  c->bytes = c->recv_count * sizeof(float);
}
static void alltoall_init(bench_case *c) {
  fill_values(c->send, c->send_count, c->env->seed, c->purpose, (uint32_t)c->env->rank, 0, 0);
}
static void alltoall_loom(bench_case *c) {
  check_loom(c->env, "loom_alltoall", loom_alltoall(c->env->group, host(c->send, c->send_count),
                                                    host(c->recv, c->recv_count)));
}
static void alltoall_mpi(bench_case *c) {
  check_mpi(c->env, "MPI_Alltoall", MPI_Alltoall(c->send, (int)c->block, MPI_FLOAT, c->recv,
                                                 (int)c->block, MPI_FLOAT, c->env->comm));
}
static size_t alltoall_check(const bench_case *c) {
  size_t wrong = 0;
  for (int r = 0; r < c->env->size; r++)
    wrong += count_wrong(c->recv + (size_t)r * c->block, c->block, c->env->seed, c->purpose, r,
                         1, (uint64_t)c->env->rank * c->block);
  return wrong;
}

/* sparse all-to-all: bytes = one nonempty block; the block from src to dst holds src's
 * elements dst * block ..; send packed by ascending destination, receive by ascending source
 * (loom's plan order and MPI_Alltoallv's displacement order agree, so one buffer serves both). */
static void sparse_size(bench_case *c, size_t nominal) {
  const sparse_pattern *p = c->env->pattern;
  c->block = at_least_one(nominal / sizeof(float));
  c->send_count = (size_t)out_degree(p, c->env->rank) * c->block;
  c->recv_count = (size_t)in_degree(p, c->env->rank) * c->block;
  c->bytes = c->block * sizeof(float);
}
static void sparse_init(bench_case *c) {
  const bench_env *env = c->env;
  const sparse_pattern *p = env->pattern;
  int n = env->size, me = env->rank, peers_used = 0;
  int *peers = allocate(env, sizeof(int) * (size_t)n, "sparse peers");
  size_t *counts = allocate(env, sizeof(size_t) * (size_t)n, "sparse counts");
  int *d = c->dense = allocate(env, sizeof(int) * 6 * (size_t)n, "dense counts");
  size_t offset = 0;
  for (int dst = 0; dst < n; dst++) {
    int used = p->pairs[me * n + dst];
    d[dst] = used ? (int)c->block : 0;
    d[n + dst] = (int)offset;
    if (!used) continue;
    fill_values(c->send + offset, c->block, env->seed, c->purpose, (uint32_t)me,
                (uint64_t)dst * c->block, 0);
    peers[peers_used] = dst;
    counts[peers_used++] = c->block;
    offset += c->block;
  }
  check_loom(env, "loom_sparse_plan_create",
             loom_sparse_plan_create(env->group, LOOM_FLOAT32, peers_used, peers, counts,
                                     &c->plan));
  /* The dense side learns its receive counts once, untimed (variant c2 of the sparse case). */
  check_mpi(env, "MPI_Alltoall (counts)",
            MPI_Alltoall(d, 1, MPI_INT, d + 2 * n, 1, MPI_INT, env->comm));
  for (int src = 0, at = 0; src < n; src++) {
    d[3 * n + src] = at;
    at += d[2 * n + src];
  }
  free(peers);
  free(counts);
}
static void sparse_release(bench_case *c) {
  loom_sparse_plan_free(&c->plan);
  free(c->dense);
  c->dense = NULL;
}
static void sparse_loom(bench_case *c) {
  check_loom(c->env, "loom_alltoall_sparse",
             loom_alltoall_sparse(c->env->group, &c->plan, host(c->send, c->send_count),
                                  host(c->recv, c->recv_count)));
}
static void sparse_mpi(bench_case *c) {
  int n = c->env->size, *d = c->dense;
  check_mpi(c->env, "MPI_Alltoallv", MPI_Alltoallv(c->send, d, d + n, MPI_FLOAT, c->recv,
                                                   d + 2 * n, d + 3 * n, MPI_FLOAT, c->env->comm));
}
/* Wrong elements of `recv` (packed by ascending source); with `plan`, a receive side that
 * disagrees with the pattern counts a whole block per disagreeing entry. */
static size_t sparse_check_data(const bench_case *c, const loom_sparse_plan *plan,
                                const float *recv) {
  const sparse_pattern *p = c->env->pattern;
  int n = c->env->size, me = c->env->rank, j = 0;
  size_t wrong = 0;
  if (plan && plan->recv_count != in_degree(p, me)) return c->recv_count ? c->recv_count : 1;
  for (int src = 0; src < n; src++) {
    if (!p->pairs[src * n + me]) continue;
    if (plan && (plan->recv_peers[j] != src || plan->recv_counts[j] != c->block ||
                 plan->recv_displs[j] != (size_t)j * c->block))
      wrong += c->block;
    wrong += count_wrong(recv + (size_t)j * c->block, c->block, c->env->seed, c->purpose, src, 1,
                         (uint64_t)me * c->block);
    j++;
  }
  return wrong;
}
static size_t sparse_check(const bench_case *c) { return sparse_check_data(c, &c->plan, c->recv); }

static const coll_entry TABLE[TABLE_COUNT] = {
    {"allreduce", "loom_allreduce vs MPI_Allreduce (sum, float32, out of place); "
     "bytes = buffer size; busbw = algbw * 2(n-1)/n",
     allreduce_size, factor_allreduce, allreduce_init, NULL, allreduce_loom, allreduce_mpi,
     allreduce_check},
    {"allgather", "loom_allgather vs MPI_Allgather (float32); bytes = total received; "
     "busbw = algbw * (n-1)/n",
     allgather_size, factor_gather, allgather_init, NULL, allgather_loom, allgather_mpi,
     allgather_check},
    {"reduce_scatter", "loom_reduce_scatter vs MPI_Reduce_scatter_block (sum, float32); "
     "bytes = total sent; busbw = algbw * (n-1)/n",
     reduce_scatter_size, factor_gather, reduce_scatter_init, NULL, reduce_scatter_loom,
     reduce_scatter_mpi, reduce_scatter_check},
    {"alltoall", "loom_alltoall vs MPI_Alltoall (float32); bytes = total received; "
     "busbw = algbw * (n-1)/n",
     alltoall_size, factor_gather, alltoall_init, NULL, alltoall_loom, alltoall_mpi,
     alltoall_check},
    {"sparse_alltoall", "loom_alltoall_sparse (plan reused) vs MPI_Alltoallv (zeros for empty "
     "pairs, counts known); bytes = one nonempty block; busbw = algbw (no standard factor)",
     sparse_size, factor_one, sparse_init, sparse_release, sparse_loom, sparse_mpi,
     sparse_check},
};

/* ---------------------------------------------------------------------------------------- */
/* Timing: variants alternate in rounds (the first variant rotates from round to round), each
 * block of `iters` iterations starts after a barrier, and a round's per-iteration time is the
 * slowest rank's. Interleaving keeps load from other processes on a shared machine from
 * landing on one variant only. */

static void time_interleaved(bench_case *c, const bench_run_fn *variants, int variant_count,
                             int iters, void (*before_block)(bench_case *), double *out) {
  const bench_env *env = c->env;
  int rounds = env->options->rounds;
  for (int round = 0; round < rounds; round++) {
    for (int step = 0; step < variant_count; step++) {
      int v = (round + step) % variant_count;
      if (before_block) before_block(c);
      check_mpi(env, "MPI_Barrier", MPI_Barrier(env->comm));
      double start = loom_now();
      for (int i = 0; i < iters; i++) variants[v](c);
      out[v * rounds + round] = (loom_now() - start) / iters;
    }
  }
  check_mpi(env, "MPI_Allreduce (timings)",
            MPI_Allreduce(MPI_IN_PLACE, out, variant_count * rounds, MPI_DOUBLE, MPI_MAX,
                          env->comm));
}

static void warm_up(bench_case *c, const bench_run_fn *variants, int variant_count, int iters,
                    void (*before_block)(bench_case *)) {
  int warm = iters < WARMUP_MAX ? iters : WARMUP_MAX;
  for (int v = 0; v < variant_count; v++) {
    if (before_block) before_block(c);
    for (int i = 0; i < warm; i++) variants[v](c);
  }
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(const double *values, int count) {
  double sorted[1024];
  int m = count < 1024 ? count : 1024;
  memcpy(sorted, values, sizeof(double) * (size_t)m);
  qsort(sorted, (size_t)m, sizeof(double), by_value);
  return m % 2 ? sorted[m / 2] : 0.5 * (sorted[m / 2 - 1] + sorted[m / 2]);
}

/* Smallest and largest of the per-round ratios a[r] / b[r] (paired: same round). */
static void ratio_range(const double *a, const double *b, int rounds, double *lo, double *hi) {
  *lo = 1e300;
  *hi = 0;
  for (int r = 0; r < rounds; r++) {
    double q = a[r] / b[r];
    if (q < *lo) *lo = q;
    if (q > *hi) *hi = q;
  }
}

static int iterations_for(size_t bytes, int iters) {
  uint64_t fit = ROUND_BYTES / (bytes ? bytes : 1);
  if (fit < 1) fit = 1;
  return fit < (uint64_t)iters ? (int)fit : iters;
}

/* The next size of the sweep: times step_factor, and max-bytes itself as the last size. */
static uint64_t next_size(uint64_t current, const bench_options *o) {
  if (current >= o->max_bytes) return 0;
  if (current > o->max_bytes / (uint64_t)o->step_factor) return o->max_bytes;
  return current * (uint64_t)o->step_factor;
}

static uint64_t sum_over_ranks(const bench_env *env, uint64_t value) {
  check_mpi(env, "MPI_Allreduce (check)",
            MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_UINT64_T, MPI_SUM, env->comm));
  return value;
}

/* ---------------------------------------------------------------------------------------- */
/* The driver: one table per collective. Returns the wrong elements found in all. */

static uint64_t bench_collective(const bench_env *env, const coll_entry *entry, uint32_t purpose) {
  const bench_options *o = env->options;
  int rounds = o->rounds, root = env->rank == 0;
  bench_case c = {.env = env, .purpose = purpose};
  entry->size(&c, o->max_bytes);
  c.send = allocate(env, c.send_count * sizeof(float), "send buffer");
  c.recv = allocate(env, c.recv_count * sizeof(float), "receive buffer");
  uint64_t wrong_total = 0;
  double *times = allocate(env, sizeof(double) * 2 * (size_t)rounds, "timings");
  if (root) {
    printf("\n# %s: %s\n", entry->name, entry->title);
    printf("# %12s %11s %6s | %10s %8s %8s | %10s %8s | %8s %15s %6s\n", "bytes", "count",
           "iters", "loom us", "algbw", "busbw", "mpi us", "busbw", "loom/mpi", "round ratios",
           "wrong");
    fflush(stdout);
  }
  size_t previous_bytes = 0;
  double large_log_ratio = 0, large_worst = 0;
  int large_count = 0;
  for (uint64_t nominal = o->min_bytes; nominal; nominal = next_size(nominal, o)) {
    entry->size(&c, nominal);
    if (c.bytes == previous_bytes) continue; /* rounding made the same size again */
    previous_bytes = c.bytes;
    entry->init(&c);
    int iters = iterations_for(c.bytes, o->iters);
    long long wrong = -1;
    if (o->check) {
      poison(c.recv, c.recv_count);
      entry->run_loom(&c);
      wrong = (long long)sum_over_ranks(env, entry->check(&c));
      wrong_total += (uint64_t)wrong;
    }
    const bench_run_fn variants[2] = {entry->run_loom, entry->run_mpi};
    warm_up(&c, variants, 2, iters, NULL);
    time_interleaved(&c, variants, 2, iters, NULL, times);
    double loom_t = median(times, rounds), mpi_t = median(times + rounds, rounds), lo, hi;
    ratio_range(times, times + rounds, rounds, &lo, &hi);
    if (c.bytes >= LARGE_BYTES) {
      large_log_ratio += log(loom_t / mpi_t);
      large_count++;
      if (loom_t / mpi_t > large_worst) large_worst = loom_t / mpi_t;
    }
    if (root) {
      double factor = entry->busbw_factor(env->size);
      double algbw = (double)c.bytes / loom_t * 1e-9, mpi_algbw = (double)c.bytes / mpi_t * 1e-9;
      char range[32], wrong_text[24];
      snprintf(range, sizeof range, "%.3f-%.3f", lo, hi);
      if (wrong < 0) snprintf(wrong_text, sizeof wrong_text, "-");
      else snprintf(wrong_text, sizeof wrong_text, "%lld", wrong);
      printf("  %12zu %11zu %3dx%-2d | %10.1f %8.3f %8.3f | %10.1f %8.3f | %8.3f %15s %6s\n",
             c.bytes, c.bytes / sizeof(float), iters, rounds, loom_t * 1e6, algbw,
             algbw * factor, mpi_t * 1e6, mpi_algbw * factor, loom_t / mpi_t, range, wrong_text);
      fflush(stdout);
    }
    if (entry->release) entry->release(&c);
  }
  if (root && large_count)
    printf("# %s, sizes >= %" PRIu64 " MiB: loom/mpi geometric mean %.3f over %d sizes, "
           "largest %.3f\n", entry->name, LARGE_BYTES >> 20, exp(large_log_ratio / large_count),
           large_count, large_worst);
  free(times);
  free(c.send);
  free(c.recv);
  return wrong_total;
}

/* ---------------------------------------------------------------------------------------- */
/* Fusion: FUSION_TENSORS tensors of FUSION_TENSOR_BYTES, each its own allocation as in a
 * model, reduced in place; inputs are restored before every block so sums stay finite. */

static size_t fusion_elements(void) { return FUSION_TENSOR_BYTES / sizeof(float); }

static void fusion_restore(bench_case *c) {
  size_t e = fusion_elements();
  for (int t = 0; t < FUSION_TENSORS; t++)
    memcpy(c->tensors[t].ptr, c->pristine + (size_t)t * e, e * sizeof(float));
  memcpy(c->flat, c->pristine, e * FUSION_TENSORS * sizeof(float));
}
static void fusion_fused(bench_case *c) {
  check_loom(c->env, "loom_allreduce_fused",
             loom_allreduce_fused(c->env->group, c->tensors, FUSION_TENSORS, LOOM_OP_SUM));
}
static void fusion_mpi_each(bench_case *c) {
  for (int t = 0; t < FUSION_TENSORS; t++)
    check_mpi(c->env, "MPI_Allreduce (per tensor)",
              MPI_Allreduce(MPI_IN_PLACE, c->tensors[t].ptr, (int)c->tensors[t].count, MPI_FLOAT,
                            MPI_SUM, c->env->comm));
}
/* What fusion can reach at best: the same bytes already contiguous, no packing. */
static void fusion_mpi_contiguous(bench_case *c) {
  check_mpi(c->env, "MPI_Allreduce (contiguous)",
            MPI_Allreduce(MPI_IN_PLACE, c->flat, (int)(fusion_elements() * FUSION_TENSORS),
                          MPI_FLOAT, MPI_SUM, c->env->comm));
}
static void fusion_loom_each(bench_case *c) {
  for (int t = 0; t < FUSION_TENSORS; t++)
    check_loom(c->env, "loom_allreduce (per tensor)",
               loom_allreduce(c->env->group, c->tensors[t], c->tensors[t], LOOM_OP_SUM));
}
static uint64_t fusion_check(bench_case *c, bench_run_fn run) {
  size_t e = fusion_elements(), wrong = 0;
  fusion_restore(c);
  run(c);
  for (int t = 0; t < FUSION_TENSORS; t++)
    wrong += count_wrong(c->tensors[t].ptr, e, c->env->seed, c->purpose, 0, c->env->size,
                         (uint64_t)t * e);
  return sum_over_ranks(c->env, wrong);
}

static uint64_t bench_fusion(const bench_env *env) {
  const bench_options *o = env->options;
  int rounds = o->rounds, iters = o->iters < 10 ? o->iters : 10;
  size_t e = fusion_elements();
  bench_case c = {.env = env, .purpose = PURPOSE_FUSION};
  c.tensors = allocate(env, sizeof(loom_buf) * FUSION_TENSORS, "fusion descriptors");
  c.pristine = allocate(env, sizeof(float) * e * FUSION_TENSORS, "fusion inputs");
  c.flat = allocate(env, sizeof(float) * e * FUSION_TENSORS, "fusion contiguous buffer");
  fill_values(c.pristine, e * FUSION_TENSORS, env->seed, c.purpose, (uint32_t)env->rank, 0, 0);
  for (int t = 0; t < FUSION_TENSORS; t++)
    c.tensors[t] = host(allocate(env, e * sizeof(float), "fusion tensor"), e);
  const bench_run_fn variants[4] = {fusion_fused, fusion_mpi_each, fusion_loom_each,
                                    fusion_mpi_contiguous};
  static const char *const labels[4] = {"loom_allreduce_fused (1 call)",
                                        "MPI_Allreduce x 200 (1 per tensor)",
                                        "loom_allreduce x 200 (1 per tensor)",
                                        "MPI_Allreduce, 1 contiguous buffer"};
  uint64_t wrong = 0;
  if (o->check) wrong = fusion_check(&c, fusion_fused) + fusion_check(&c, fusion_loom_each);
  double *times = allocate(env, sizeof(double) * 4 * (size_t)rounds, "timings");
  warm_up(&c, variants, 4, iters, fusion_restore);
  time_interleaved(&c, variants, 4, iters, fusion_restore, times);
  if (env->rank == 0) {
    double t[4];
    for (int v = 0; v < 4; v++) t[v] = median(times + v * rounds, rounds);
    printf("\n# fusion: %d tensors x %d B float32 (%d KiB in all), sum in place; median of %d "
           "rounds x %d iterations; wrong (fused + per-tensor loom) = %s%" PRIu64 "\n",
           FUSION_TENSORS, FUSION_TENSOR_BYTES, FUSION_TENSORS * FUSION_TENSOR_BYTES / 1024,
           rounds, iters, o->check ? "" : "unchecked ", wrong);
    for (int v = 0; v < 4; v++) {
      double lo, hi;
      ratio_range(times + v * rounds, times, rounds, &lo, &hi);
      printf("  %-38s %10.1f us", labels[v], t[v] * 1e6);
      if (v == 1 || v == 2)
        printf("   fused speedup %6.2fx (rounds %.2f-%.2fx)", t[v] / t[0], lo, hi);
      if (v == 3) printf("   lower bound; fused costs %.2fx of it", t[0] / t[v]);
      printf("\n");
    }
    fflush(stdout);
  }
  free(times);
  for (int t = 0; t < FUSION_TENSORS; t++) free(c.tensors[t].ptr);
  free(c.tensors);
  free(c.pristine);
  free(c.flat);
  return wrong;
}

/* ---------------------------------------------------------------------------------------- */
/* Sparse case: the same pattern moved four ways, (a) and (c1) learning the receive side every
 * iteration, (b) and (c2) knowing it. */

static void sparse_plan_each_time(bench_case *c) {
  const bench_env *env = c->env;
  loom_sparse_plan plan;
  check_loom(env, "loom_sparse_plan_create",
             loom_sparse_plan_create(env->group, LOOM_FLOAT32, c->plan.send_count,
                                     c->plan.send_peers, c->plan.send_counts, &plan));
  check_loom(env, "loom_alltoall_sparse",
             loom_alltoall_sparse(env->group, &plan, host(c->send, c->send_count),
                                  host(c->recv, c->recv_count)));
  loom_sparse_plan_free(&plan);
}
static void sparse_dense_with_counts(bench_case *c) {
  int n = c->env->size, *d = c->dense, *counts = d + 4 * n, *displs = d + 5 * n;
  check_mpi(c->env, "MPI_Alltoall (counts)",
            MPI_Alltoall(d, 1, MPI_INT, counts, 1, MPI_INT, c->env->comm));
  for (int src = 0, at = 0; src < n; src++) {
    displs[src] = at;
    at += counts[src];
  }
  check_mpi(c->env, "MPI_Alltoallv", MPI_Alltoallv(c->send, d, d + n, MPI_FLOAT, c->recv, counts,
                                                   displs, MPI_FLOAT, c->env->comm));
}

static uint64_t bench_sparse_case(const bench_env *env) {
  static const size_t block_bytes[] = {1024, 64 * 1024};
  static const char *const labels[4] = {
      "(a) loom, plan created every iteration", "(b) loom, plan reused",
      "(c1) MPI_Alltoall(counts) + MPI_Alltoallv", "(c2) MPI_Alltoallv, counts known"};
  const bench_options *o = env->options;
  const sparse_pattern *p = env->pattern;
  int rounds = o->rounds, iters = o->iters, n = env->size;
  uint64_t wrong_total = 0;
  if (env->rank == 0) {
    printf("\n# sparse all-to-all: density %.2f -> %d of %d (rank, peer) pairs carry a block:",
           o->density, p->nonempty, n * n);
    for (int i = 0; i < n * n; i++)
      if (p->pairs[i]) printf(" %d->%d", i / n, i % n);
    printf("\n# median of %d rounds x %d iterations; speedup = dense time / sparse time\n", rounds,
           iters);
  }
  const bench_run_fn variants[4] = {sparse_plan_each_time, sparse_loom, sparse_dense_with_counts,
                                    sparse_mpi};
  double *times = allocate(env, sizeof(double) * 4 * (size_t)rounds, "timings");
  for (size_t b = 0; b < sizeof block_bytes / sizeof block_bytes[0]; b++) {
    bench_case c = {.env = env, .purpose = PURPOSE_SPARSE_CASE};
    sparse_size(&c, block_bytes[b]);
    c.send = allocate(env, c.send_count * sizeof(float), "sparse send");
    c.recv = allocate(env, c.recv_count * sizeof(float), "sparse receive");
    sparse_init(&c);
    uint64_t wrong = 0;
    if (o->check) {
      for (int v = 0; v < 4; v++) {
        poison(c.recv, c.recv_count);
        if (v == 0) { /* the plan of (a) is checked too */
          loom_sparse_plan plan;
          check_loom(env, "loom_sparse_plan_create",
                     loom_sparse_plan_create(env->group, LOOM_FLOAT32, c.plan.send_count,
                                             c.plan.send_peers, c.plan.send_counts, &plan));
          check_loom(env, "loom_alltoall_sparse",
                     loom_alltoall_sparse(env->group, &plan, host(c.send, c.send_count),
                                          host(c.recv, c.recv_count)));
          wrong += sparse_check_data(&c, &plan, c.recv);
          loom_sparse_plan_free(&plan);
        } else {
          variants[v](&c);
          wrong += sparse_check_data(&c, v == 1 ? &c.plan : NULL, c.recv);
        }
      }
      wrong = sum_over_ranks(env, wrong);
      wrong_total += wrong;
    }
    warm_up(&c, variants, 4, iters, NULL);
    time_interleaved(&c, variants, 4, iters, NULL, times);
    if (env->rank == 0) {
      double t[4];
      for (int v = 0; v < 4; v++) t[v] = median(times + v * rounds, rounds);
      printf("# block %zu B per pair; wrong (all four ways) = %s%" PRIu64 "\n", c.bytes,
             o->check ? "" : "unchecked ", wrong);
      for (int v = 0; v < 4; v++) printf("  %-44s %10.1f us\n", labels[v], t[v] * 1e6);
      printf("  speedup (a) vs (c1), pattern learned every iteration: %6.2fx\n", t[2] / t[0]);
      printf("  speedup (b) vs (c2), pattern known:                   %6.2fx\n", t[3] / t[1]);
      printf("  speedup (b) vs (c1), plan reused vs dense with counts: %5.2fx\n", t[2] / t[1]);
      fflush(stdout);
    }
    sparse_release(&c);
    free(c.send);
    free(c.recv);
  }
  free(times);
  return wrong_total;
}

/* ---------------------------------------------------------------------------------------- */

/* Sets selected[i] for each name of the comma-separated list ("all" = every one). */
static loom_status parse_selection(const char *list, int selected[SELECTABLE_COUNT]) {
  memset(selected, 0, sizeof(int) * SELECTABLE_COUNT);
  for (const char *p = list; *p;) {
    size_t len = strcspn(p, ",");
    int found = len == 3 && strncmp(p, "all", 3) == 0;
    if (found)
      for (int i = 0; i < SELECTABLE_COUNT; i++) selected[i] = 1;
    for (int i = 0; i < SELECTABLE_COUNT && !found; i++)
      if (strlen(SELECTABLE[i]) == len && strncmp(p, SELECTABLE[i], len) == 0)
        found = selected[i] = 1;
    if (!found)
      return loom_error_set(LOOM_ERR_ARG, "--collectives: unknown name '%.*s'; accepted: all "
                            "allreduce allgather reduce_scatter alltoall sparse_alltoall fusion "
                            "sparse (comma-separated)", (int)len, p);
    p += len;
    if (*p == ',') p++;
  }
  return LOOM_OK;
}

static loom_status check_options(const bench_options *o) {
  if (o->min_bytes < 1 || o->max_bytes < o->min_bytes || o->max_bytes > MAX_BYTES_LIMIT)
    return loom_error_set(LOOM_ERR_ARG, "--min-bytes=%" PRIu64 " --max-bytes=%" PRIu64 ": need "
                          "1 <= min <= max <= %" PRIu64 " (MPI counts are ints)", o->min_bytes,
                          o->max_bytes, MAX_BYTES_LIMIT);
  return LOOM_OK;
}

static void print_header(const bench_env *env, loom_ctx *ctx, const char *command) {
  char host_name[256] = "?", date[64] = "?", library[MPI_MAX_LIBRARY_VERSION_STRING] = "?";
  gethostname(host_name, sizeof host_name);
  time_t now = time(NULL);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
  int len = 0;
  MPI_Get_library_version(library, &len);
  library[strcspn(library, ",\n")] = '\0';
  const bench_options *o = env->options;
  printf("# loom-coll-bench (loom %s)\n", LOOM_VERSION);
  printf("# date: %s\n", date);
  printf("# machine: %s, %ld cores online\n", host_name, sysconf(_SC_NPROCESSORS_ONLN));
  int level = loom_ctx_thread_level(ctx);
  printf("# ranks: %d on %d node(s), launcher %s, %s, %s\n", env->size,
         loom_ctx_node_count(ctx), loom_ctx_launcher(ctx),
         level == MPI_THREAD_MULTIPLE ? "MPI_THREAD_MULTIPLE" : "MPI thread level below MULTIPLE",
         library);
  printf("# command: %s\n", command);
  printf("# sizes %" PRIu64 "..%" PRIu64 " B x%d, seed %" PRIu64 ", check %s\n", o->min_bytes,
         o->max_bytes, o->step_factor, env->seed, o->check ? "on" : "off");
  printf("# time = median over %d rounds of the per-iteration time (slowest rank); each round "
         "runs iters of loom then iters of MPI (order alternating), a barrier before each\n"
         "# block; iters = min(--iters, %" PRIu64 " MiB / bytes, >= 1); round ratios = min-max "
         "of the per-round loom/MPI ratios; GB/s = 1e9 B/s\n",
         o->rounds, ROUND_BYTES >> 20);
  fflush(stdout);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  bench_options options = BENCH_OPTIONS_INIT;
  loom_option extra[] = {
      {"min-bytes", LOOM_OPTION_UINT64, &options.min_bytes, "smallest size (B; K/M/G suffixes)",
       NULL, 0, 0},
      {"max-bytes", LOOM_OPTION_UINT64, &options.max_bytes, "largest size (B), always measured",
       NULL, 0, 0},
      {"step-factor", LOOM_OPTION_INT, &options.step_factor, "size multiplier between rows",
       NULL, 2, 1024},
      {"iters", LOOM_OPTION_INT, &options.iters,
       "iterations per round for small sizes (fewer for large ones)", NULL, 1, 1000000},
      {"rounds", LOOM_OPTION_INT, &options.rounds, "interleaved rounds; the median is reported",
       NULL, 1, 1000},
      {"check", LOOM_OPTION_BOOL, &options.check, "check loom's output against the reference",
       NULL, 0, 0},
      {"density", LOOM_OPTION_DOUBLE, &options.density,
       "sparse: fraction of (rank, peer) pairs with data", NULL, 0.0, 1.0},
      {"collectives", LOOM_OPTION_STRING, &options.collectives,
       "comma-separated: all allreduce allgather reduce_scatter alltoall sparse_alltoall fusion "
       "sparse", NULL, 0, 0},
  };
  int extra_count = (int)(sizeof extra / sizeof extra[0]);
  int selected[SELECTABLE_COUNT];
  loom_status status = loom_config_parse(&config, extra, extra_count, argc, argv);
  if (status == LOOM_OK) status = check_options(&options);
  if (status == LOOM_OK) status = parse_selection(options.collectives, selected);
  if (status < 0) {
    if (loom_launcher_rank() == 0)
      fprintf(stderr, "loom-coll-bench: %s (--help lists the options)\n", loom_error_string());
    return 2;
  }
  if (config.help) {
    if (loom_launcher_rank() == 0)
      loom_config_usage(stdout, "loom-coll-bench", &config, extra, extra_count);
    return 0;
  }
  char command[2048];
  size_t used = 0;
  command[0] = '\0';
  for (int i = 0; i < argc && used + 1 < sizeof command; i++)
    used += (size_t)snprintf(command + used, sizeof command - used, "%s%s", i ? " " : "", argv[i]);

  loom_ctx *ctx = NULL;
  status = loom_init(&config, &argc, &argv, &ctx);
  if (status < 0) {
    fprintf(stderr, "loom-coll-bench rank %d: loom_init failed: %s\n", loom_launcher_rank(),
            loom_error_string());
    return 1;
  }
  bench_env env = {.group = loom_ctx_world(ctx), .rank = loom_ctx_rank(ctx),
                   .size = loom_ctx_size(ctx), .seed = config.seed, .options = &options};
  check_mpi(&env, "MPI_Comm_dup", MPI_Comm_dup(MPI_COMM_WORLD, &env.comm));
  if (!fill_matches_rng(env.seed)) {
    fprintf(stderr, "loom-coll-bench: the block-wise input generator no longer matches "
            "loom_rng_word_at; update fill_values to loom's Philox counter layout\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  sparse_pattern pattern;
  pattern_create(&env, options.density, &pattern);
  env.pattern = &pattern;
  if (env.rank == 0) print_header(&env, ctx, command);

  uint64_t wrong = 0;
  for (int i = 0; i < TABLE_COUNT; i++)
    if (selected[i]) wrong += bench_collective(&env, &TABLE[i], PURPOSE_DATA + (uint32_t)i);
  if (selected[SELECT_FUSION]) wrong += bench_fusion(&env);
  if (selected[SELECT_SPARSE]) wrong += bench_sparse_case(&env);
  if (env.rank == 0) {
    if (options.check) printf("\n# wrong elements in all: %" PRIu64 " (%s)\n", wrong,
                              wrong ? "FAILED" : "OK");
    else printf("\n# output not checked (--check 0)\n");
  }

  free(pattern.pairs);
  MPI_Comm_free(&env.comm);
  status = loom_finalize(ctx);
  if (status < 0) {
    fprintf(stderr, "loom-coll-bench: loom_finalize failed: %s\n", loom_error_string());
    return 1;
  }
  return wrong ? 1 : 0;
}
