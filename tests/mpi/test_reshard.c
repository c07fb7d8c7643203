/* loom_reshard over the world: random shapes of 1 to 4 dimensions with extents from 1 to 7
 * (so that shards are uneven and, beyond 7 ranks or for small extents, empty), random source
 * and target dimensions and dtypes; every element of every rank's new shard equals the global
 * tensor's element at its global index, bit for bit, and resharding back restores the input.
 * The shards follow the split rule of reshard.h, computed here on its own. Inputs from the
 * run's seed. */
#include <string.h>

#include "check.h"
#include "parallel/sequence/reshard.h"

// First row and count of rank r's shard of n rows over p ranks: ceil split, recomputed here.
static void shard(int64_t n, int r, int p, int64_t *first, int64_t *count) {
  int64_t c = (n + p - 1) / p;
  *first = c * r < n ? c * r : n;
  *count = (*first + c < n ? *first + c : n) - *first;
}

// Fills (or checks) this rank's shard along `dim` with the global tensor's values.
static void walk_shard(check_state *st, const loom_reshard_spec *spec, int dim, loom_buf b,
                       uint64_t seed, int fill, const char *what) {
  int64_t first, count, ext[LOOM_RESHARD_MAX_DIMS];
  shard(spec->shape[dim], st->rank, st->size, &first, &count);
  memcpy(ext, spec->shape, sizeof ext);
  ext[dim] = count;
  int64_t n = 1;
  for (int d = 0; d < spec->ndims; d++) n *= ext[d];
  for (int64_t i = 0; i < n; i++) {
    int64_t rest = i, global = 0, local[LOOM_RESHARD_MAX_DIMS];
    for (int d = spec->ndims - 1; d >= 0; d--) local[d] = rest % ext[d], rest /= ext[d];
    for (int d = 0; d < spec->ndims; d++) global = global * spec->shape[d] + local[d] + (d == dim ? first : 0);
    double want = input_value(b.dtype, seed, 0, (size_t)global);
    if (fill) loom_dtype_store(b.ptr, b.dtype, (size_t)i, want);
    else expect_near(st, what, (size_t)i, loom_dtype_load(b.ptr, b.dtype, (size_t)i), want, 0);
  }
}

static int64_t shard_count(const check_state *st, const loom_reshard_spec *spec, int dim) {
  int64_t first, count, n = 1;
  shard(spec->shape[dim], st->rank, st->size, &first, &count);
  for (int d = 0; d < spec->ndims; d++) n *= d == dim ? count : spec->shape[d];
  return n;
}

static void test_random(check_state *st, loom_group *world) {
  static const loom_dtype dtypes[] = {LOOM_FLOAT32, LOOM_FLOAT64, LOOM_INT32, LOOM_BFLOAT16, LOOM_UINT8};
  loom_rng rng;
  loom_rng_init(&rng, st->seed, LOOM_RNG_TEST, 1000); /* the same draws on every rank */
  for (int trial = 0; trial < 60; trial++) {
    loom_reshard_spec spec = {.ndims = 1 + (int)loom_rng_below(&rng, 4)};
    for (int d = 0; d < spec.ndims; d++) spec.shape[d] = 1 + (int64_t)loom_rng_below(&rng, 7);
    spec.from = (int)loom_rng_below(&rng, (uint64_t)spec.ndims);
    spec.to = (int)loom_rng_below(&rng, (uint64_t)spec.ndims);
    loom_dtype dtype = dtypes[loom_rng_below(&rng, 5)];
    size_t bytes = loom_dtype_size(dtype);
    int64_t n_in = shard_count(st, &spec, spec.from), n_out = shard_count(st, &spec, spec.to);
    void *in = malloc((size_t)n_in * bytes + 1), *out = malloc((size_t)n_out * bytes + 1),
         *back = malloc((size_t)n_in * bytes + 1);
    poison(out, (size_t)n_out * bytes + 1), poison(back, (size_t)n_in * bytes + 1);
    loom_buf bin = loom_buf_host(in, (size_t)n_in, dtype), bout = loom_buf_host(out, (size_t)n_out, dtype);
    loom_buf bback = loom_buf_host(back, (size_t)n_in, dtype);
    st->seed++;
    walk_shard(st, &spec, spec.from, bin, st->seed, 1, NULL);
    CHECK_OK(st, loom_reshard(world, &spec, bin, bout));
    char what[128];
    snprintf(what, sizeof what, "reshard %d-d [%lld %lld %lld %lld] %s dim %d -> %d", spec.ndims,
             (long long)spec.shape[0], (long long)spec.shape[1], (long long)spec.shape[2],
             (long long)spec.shape[3], loom_dtype_name(dtype), spec.from, spec.to);
    walk_shard(st, &spec, spec.to, bout, st->seed, 0, what);
    loom_reshard_spec reverse = spec;
    reverse.from = spec.to, reverse.to = spec.from;
    CHECK_OK(st, loom_reshard(world, &reverse, bout, bback));
    st->checks++;
    if (memcmp(in, back, (size_t)n_in * bytes) != 0 && st->failures++ < 10)
      fprintf(stderr, "rank %d: FAIL %s and back: the input is not restored\n", st->rank, what);
    free(in), free(out), free(back);
  }
}

// The same wrong arguments on every rank: refused on every rank, nothing exchanged.
static void test_refusals(check_state *st, loom_group *world) {
  float x[64];
  loom_reshard_spec spec = {.ndims = 2, .shape = {4, 3}, .from = 0, .to = 2};
  loom_status s = loom_reshard(world, &spec, loom_buf_host(x, 1, LOOM_FLOAT32), loom_buf_host(x + 32, 1, LOOM_FLOAT32));
  expect_near(st, "to outside the dimensions refused", 0, s, LOOM_ERR_ARG, 0);
  spec.to = 1;
  s = loom_reshard(world, &spec, loom_buf_host(x, 63, LOOM_FLOAT32), loom_buf_host(x + 32, 1, LOOM_FLOAT32));
  expect_near(st, "a buffer of the wrong size refused", 0, s, LOOM_ERR_ARG, 0);
  st->checks++;
  if (!strstr(loom_error_string(), "in has 63 elements") && st->failures++ < 10)
    fprintf(stderr, "rank %d: FAIL message: %s\n", st->rank, loom_error_string());
  s = loom_reshard(world, &spec, loom_buf_host(x, 1, LOOM_FLOAT32), loom_buf_host(x + 32, 1, LOOM_FLOAT64));
  expect_near(st, "two dtypes refused", 0, s, LOOM_ERR_ARG, 0);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  int early = check_start(&st, &config, &argc, &argv, 6271u);
  if (early >= 0) return early;
  loom_group *world = loom_ctx_world(st.ctx);
  test_random(&st, world);
  test_refusals(&st, world);
  int code = check_finish(&st, "test_reshard");
  loom_finalize(st.ctx);
  return code;
}
