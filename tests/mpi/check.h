/* Shared helpers of the multi-rank tests: inputs generated from (seed, rank, index) so every
 * rank can compute what any other rank sent, references in double precision, and a failure
 * counter that reports the first mismatches with their coordinates. */
#ifndef LOOM_TESTS_CHECK_H
#define LOOM_TESTS_CHECK_H

#include <loom.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
  loom_ctx *ctx;
  int rank, size;
  uint64_t seed; /* advanced per case so every case sees fresh inputs */
  long checks, failures;
  int device_mode; /* buffers live on the GPU (--device cuda) */
} check_state;

/* Stop the program on a loom failure: tests want the message, not a cascade. */
#define CHECK_OK(state, call)                                                              \
  do {                                                                                     \
    loom_status s_ = (call);                                                               \
    if (s_ != LOOM_OK) {                                                                   \
      fprintf(stderr, "rank %d: %s:%d: %s -> %s\n", (state)->rank, __FILE__, __LINE__, #call, \
              loom_error_string());                                                        \
      MPI_Abort(MPI_COMM_WORLD, 3);                                                        \
    }                                                                                      \
  } while (0)

/* Input element `index` of `rank` for a case: exactly representable in `dtype`. Floats are
 * uniform in [-1, 1); signed integers in [-50, 50]; uint8 in [0, 255]. */
static inline double input_value(loom_dtype dtype, uint64_t seed, int rank, size_t index) {
  uint32_t word = loom_rng_word_at(seed, LOOM_RNG_TEST, (uint32_t)rank, index);
  double raw;
  switch (dtype) {
    case LOOM_INT32:
    case LOOM_INT64: raw = (double)(word % 101) - 50.0; break;
    case LOOM_UINT8: raw = (double)(word % 256); break;
    default: raw = (double)word / 2147483648.0 - 1.0; break;
  }
  unsigned char slot[8];
  loom_dtype_store(slot, dtype, 0, raw);
  return loom_dtype_load(slot, dtype, 0);
}

static inline void fill_input(loom_buf b, uint64_t seed, int rank, size_t first_index) {
  for (size_t i = 0; i < b.count; i++)
    loom_dtype_store(b.ptr, b.dtype, i, input_value(b.dtype, seed, rank, first_index + i));
}

/* A recognisable garbage pattern, so an element the collective never wrote fails. */
static inline void poison(void *ptr, size_t bytes) {
  unsigned char *p = ptr;
  for (size_t i = 0; i < bytes; i++) p[i] = (unsigned char)(0xA5 ^ (i * 31));
}

/* Reference reduction over `ranks` of element `index`: expected value and tolerance.
 * Tolerances: float32 1e-6, bfloat16 2^-7, float16 2^-10 and float64 1e-13 of the sum of
 * magnitudes (accumulation order differs between flat, hierarchical and the reference, and
 * 16-bit results are rounded once from a float32 sum); integers and max/min are exact. */
static inline void reference_reduction(loom_dtype dtype, loom_op op, uint64_t seed, int ranks,
                                       size_t index, double *expected, double *tolerance) {
  double sum = 0, magnitude = 0, best = 0;
  for (int r = 0; r < ranks; r++) {
    double v = input_value(dtype, seed, r, index);
    sum += v;
    magnitude += v < 0 ? -v : v;
    if (r == 0 || (op == LOOM_OP_MAX && v > best) || (op == LOOM_OP_MIN && v < best)) best = v;
  }
  unsigned char slot[8];
  *tolerance = 0;
  if (op == LOOM_OP_MAX || op == LOOM_OP_MIN) {
    *expected = best;
    return;
  }
  if (!loom_dtype_is_float(dtype)) {
    loom_dtype_store(slot, dtype, 0, sum); /* integer sums wrap like the dtype */
    double wrapped = loom_dtype_load(slot, dtype, 0);
    if (op == LOOM_OP_AVG) {
      double q = wrapped / ranks;
      wrapped = q < 0 ? -(double)(long long)(-q) : (double)(long long)q;
    }
    *expected = wrapped;
    return;
  }
  double value = op == LOOM_OP_AVG ? sum / ranks : sum;
  double scale = op == LOOM_OP_AVG ? magnitude / ranks : magnitude;
  loom_dtype_store(slot, dtype, 0, value);
  *expected = loom_dtype_load(slot, dtype, 0);
  double eps = dtype == LOOM_FLOAT64 ? 1e-13 : dtype == LOOM_FLOAT32 ? 1e-6
               : dtype == LOOM_BFLOAT16 ? 1.0 / 128 : 1.0 / 1024;
  *tolerance = eps * scale + 1e-30;
}

/* Counts one comparison; prints the first few failures of this rank. */
static inline void expect_near(check_state *st, const char *what, size_t index, double got,
                               double expected, double tolerance) {
  st->checks++;
  double diff = got - expected;
  if (diff < 0) diff = -diff;
  if (diff <= tolerance || (got != got && expected != expected)) return;
  if (st->failures++ < 10)
    fprintf(stderr, "rank %d: FAIL %s [%zu]: got %.17g expected %.17g (tolerance %.3g)\n",
            st->rank, what, index, got, expected, tolerance);
}

/* Flat global index of local element i of a slice (offsets `off`, extents `ext`) of a tensor
 * of spec `s`: tests fill slices from the global index so any layout can be checked. */
static inline int64_t global_index(const loom_state_spec *s, const int64_t *off, const int64_t *ext,
                                   int64_t i) {
  int64_t flat = 0, rest = i, local[LOOM_STATE_MAX_DIMS];
  for (int d = s->ndims - 1; d >= 0; d--) {
    local[d] = rest % ext[d];
    rest /= ext[d];
  }
  for (int d = 0; d < s->ndims; d++) flat = flat * s->shape[d] + off[d] + local[d];
  return flat;
}

/* The start every multi-rank test shares: parse flags and LOOM_* variables, start loom, fill
 * `st`. Returns -1 to go on, or the exit code: 2 for bad flags, 77 (skip) when --device cuda
 * finds no GPU, 1 when loom_init fails. `seed_factor` spreads the tests' input seeds. */
static inline int check_start(check_state *st, loom_config *config, int *argc, char ***argv,
                              uint64_t seed_factor) {
  if (loom_config_parse(config, NULL, 0, *argc, *argv) != LOOM_OK) {
    fprintf(stderr, "%s\n", loom_error_string());
    return 2;
  }
  loom_status s = loom_init(config, argc, argv, &st->ctx);
  if (s == LOOM_ERR_UNSUPPORTED && config->device == 2) {
    fprintf(stderr, "skipped: %s\n", loom_error_string());
    return 77; /* no GPU here */
  }
  if (s != LOOM_OK) {
    fprintf(stderr, "loom_init: %s\n", loom_error_string());
    return 1;
  }
  st->device_mode = loom_ctx_device(st->ctx).kind == LOOM_DEVICE_CUDA;
  st->rank = loom_ctx_rank(st->ctx);
  st->size = loom_ctx_size(st->ctx);
  st->seed = config->seed * seed_factor;
  return -1;
}

/* Sums failures over the world; rank 0 prints the summary. Returns the process exit code. */
static inline int check_finish(check_state *st, const char *program) {
  long local[2] = {st->checks, st->failures}, total[2] = {0, 0};
  MPI_Allreduce(local, total, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  if (st->rank == 0)
    printf("%s: %d ranks, %ld checks, %ld failures\n", program, st->size, total[0], total[1]);
  if (total[0] == 0) return 1; /* a test that checked nothing has failed */
  return total[1] == 0 ? 0 : 1;
}

#endif
