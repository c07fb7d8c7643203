/* State registry arithmetic: local slices over every rank of several mesh shapes tile each
 * global tensor exactly (every element in exactly one distinct slice, replicas holding equal
 * slices), padding where a dimension does not divide, nested splits, exactly one writer per
 * distinct slice, and rejected specs. Pure functions: no MPI. */
#include "runtime/state.h"
#include "unit.h"

enum { MAX_RANKS = 64 };

/* Checks that the slices of `spec` over all ranks of `shape` tile the tensor and that each
 * distinct slice has exactly one writer. Tensors here have at most 3 dims of <= 12. */
static void check_tiling(const loom_state_spec *spec, const loom_mesh_shape *shape) {
  int world = shape->pp * shape->dp * shape->sp;
  int64_t off[MAX_RANKS][LOOM_STATE_MAX_DIMS], ext[MAX_RANKS][LOOM_STATE_MAX_DIMS];
  int writer[MAX_RANKS];
  for (int r = 0; r < world; r++) {
    loom_mesh_coords c = loom_mesh_coords_of(shape, r);
    CHECK(loom_state_slice(spec, shape, &c, off[r], ext[r]) == LOOM_OK, "%s", loom_error_string());
    writer[r] = loom_state_is_writer(spec, &c);
  }
  /* Per pipeline stage (stages hold their own tensors): count coverage of every element by the
   * writers, which must be exactly once, and every rank's slice must equal some writer's. */
  int64_t total = 1;
  for (int d = 0; d < spec->ndims; d++) total *= spec->shape[d];
  for (int stage = 0; stage < shape->pp; stage++) {
    for (int64_t flat = 0; flat < total; flat++) {
      int64_t index[LOOM_STATE_MAX_DIMS], rest = flat;
      for (int d = spec->ndims - 1; d >= 0; d--) {
        index[d] = rest % spec->shape[d];
        rest /= spec->shape[d];
      }
      int covering_writers = 0;
      for (int r = 0; r < world; r++) {
        if (loom_mesh_coords_of(shape, r).pp != stage || !writer[r]) continue;
        int inside = 1;
        for (int d = 0; d < spec->ndims; d++)
          inside &= index[d] >= off[r][d] && index[d] < off[r][d] + ext[r][d];
        covering_writers += inside;
      }
      CHECK(covering_writers == 1, "element %lld of stage %d covered by %d writers (pp%d dp%d sp%d ep%d)",
            (long long)flat, stage, covering_writers, shape->pp, shape->dp, shape->sp, shape->ep);
    }
    for (int r = 0; r < world; r++) {
      int64_t elements = 1;
      for (int d = 0; d < spec->ndims; d++) elements *= ext[r][d];
      /* empty shards (padding) hold nothing to write: several may share offset n, extent 0 */
      if (loom_mesh_coords_of(shape, r).pp != stage || elements == 0) continue;
      int matches = 0;
      for (int w = 0; w < world; w++) {
        if (!writer[w] || loom_mesh_coords_of(shape, w).pp != stage) continue;
        int same = 1;
        for (int d = 0; d < spec->ndims; d++)
          same &= off[w][d] == off[r][d] && ext[w][d] == ext[r][d];
        matches += same;
      }
      CHECK(matches == 1, "rank %d's slice has %d writers", r, matches);
    }
  }
}

static void test_state_tiling(void) {
  static const loom_mesh_shape shapes[] = {{1, 1, 1, 1}, {1, 4, 1, 1}, {2, 4, 2, 2},
                                           {1, 6, 1, 3}, {3, 2, 2, 1}, {1, 8, 1, 4}};
  loom_rng rng = input_rng(40);
  for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
    const loom_mesh_shape *shape = &shapes[k];
    /* replicated; split dim 0 over DP; over GRAD; EP on dim 0 and EDP on dim 1; nested DP then
     * SP on dim 1; a scalar */
    loom_state_spec specs[] = {
        {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {5, 3}},
        {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {7, 3}, .split_count = 1,
         .splits = {{LOOM_AXIS_DP, 0}}},
        {.dtype = LOOM_BFLOAT16, .ndims = 1, .shape = {11}, .split_count = 1,
         .splits = {{LOOM_AXIS_GRAD, 0}}},
        {.dtype = LOOM_FLOAT32, .ndims = 3, .shape = {4, 9, 2}, .split_count = 2,
         .splits = {{LOOM_AXIS_EP, 0}, {LOOM_AXIS_EDP, 1}}},
        {.dtype = LOOM_FLOAT64, .ndims = 2, .shape = {3, 10}, .split_count = 2,
         .splits = {{LOOM_AXIS_DP, 1}, {LOOM_AXIS_SP, 1}}},
        {.dtype = LOOM_INT64, .ndims = 0},
    };
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
      /* fresh random extents where the spec allows (keeping 0-dim scalars) */
      for (int d = 0; d < specs[s].ndims; d++) specs[s].shape[d] = 1 + (int64_t)loom_rng_below(&rng, 12);
      check_tiling(&specs[s], shape);
    }
  }
}

static void test_state_padding(void) {
  /* 10 rows over 4 data-parallel ranks: 3, 3, 3, 1 */
  loom_mesh_shape shape = {1, 4, 1, 1};
  loom_state_spec spec = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {10}, .split_count = 1,
                          .splits = {{LOOM_AXIS_DP, 0}}};
  const int64_t want_off[4] = {0, 3, 6, 9}, want_ext[4] = {3, 3, 3, 1};
  for (int r = 0; r < 4; r++) {
    loom_mesh_coords c = loom_mesh_coords_of(&shape, r);
    int64_t off, ext;
    CHECK(loom_state_slice(&spec, &shape, &c, &off, &ext) == LOOM_OK, "%s", loom_error_string());
    CHECK(off == want_off[r] && ext == want_ext[r], "rank %d: [%lld, +%lld)", r, (long long)off,
          (long long)ext);
  }
  /* 2 rows over 4 ranks: 1, 1, 0, 0 (empty shards are rectangular too) */
  spec.shape[0] = 2;
  loom_mesh_coords last = loom_mesh_coords_of(&shape, 3);
  int64_t off, ext;
  CHECK(loom_state_slice(&spec, &shape, &last, &off, &ext) == LOOM_OK && ext == 0 && off == 2,
        "rank 3 of a 2-row tensor: [%lld, +%lld)", (long long)off, (long long)ext);
}

static void test_state_bad_specs(void) {
  loom_mesh_shape shape = {1, 4, 2, 2};
  loom_mesh_coords c = loom_mesh_coords_of(&shape, 0);
  int64_t off[LOOM_STATE_MAX_DIMS], ext[LOOM_STATE_MAX_DIMS];
  loom_state_spec bad = {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {4, 4}, .split_count = 1,
                         .splits = {{LOOM_AXIS_DP, 2}}};
  CHECK(loom_state_slice(&bad, &shape, &c, off, ext) == LOOM_ERR_ARG, "dim out of range accepted");
  CHECK_CONTAINS(loom_error_string(), "dimension 2");
  bad.splits[0] = (loom_state_split){LOOM_AXIS_WORLD, 0};
  CHECK(loom_state_slice(&bad, &shape, &c, off, ext) == LOOM_ERR_ARG, "WORLD split accepted");
  CHECK_CONTAINS(loom_error_string(), "WORLD");
  bad.split_count = 2;
  bad.splits[0] = (loom_state_split){LOOM_AXIS_DP, 0};
  bad.splits[1] = (loom_state_split){LOOM_AXIS_EP, 1};
  CHECK(loom_state_slice(&bad, &shape, &c, off, ext) == LOOM_ERR_ARG, "overlapping DP, EP accepted");
  CHECK_CONTAINS(loom_error_string(), "overlaps");
  bad.split_count = 0;
  bad.shape[1] = -1;
  CHECK(loom_state_slice(&bad, &shape, &c, off, ext) == LOOM_ERR_ARG, "negative extent accepted");
  bad.shape[1] = 4;
  bad.ndims = LOOM_STATE_MAX_DIMS + 1;
  CHECK(loom_state_slice(&bad, &shape, &c, off, ext) == LOOM_ERR_ARG, "ndims 9 accepted");
}

int register_state_suite(void) {
  static const unit_test tests[] = {{"slices tile tensors, one writer each", test_state_tiling},
                                    {"padding of uneven splits", test_state_padding},
                                    {"bad specs", test_state_bad_specs},
                                    {NULL, NULL}};
  return unit_add_suite("state", tests);
}
