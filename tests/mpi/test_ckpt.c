/* Checkpoints across layouts. `--ckpt-mode save` registers five tensors (split over DP, GRAD,
 * EP x EDP, replicated, a scalar) on the current mesh, fills each rank's slice from the global
 * value function, and saves step 42. `--ckpt-mode load` registers the same tensors on whatever
 * mesh this run has, poisons them, loads, and checks every element against the global values.
 * `load-extra` adds a tensor the checkpoint lacks (must fail with LOOM_ERR_ARG naming it),
 * `corrupt` overwrites tensor A in rank file 1 with valid HDF5 but other values, after which
 * `load-corrupt` must fail with LOOM_ERR_CORRUPT naming the file and the tensor.
 * `save-async` saves step N with loom_ckpt_save_async, overwrites the tensors right after the
 * fence (as an optimizer step would) and checks the save still holds the values of step N;
 * then two back-to-back saves N+1, N+2 exercise the busy policy (--ckpt-busy skip|wait): every
 * rank must make the same decision, and a skipped step must not exist on disk.
 * `save-stages` / `load-stages`: per-pipeline-stage tensors. Of STAGES stages, the rank at
 * pipeline coordinate p of P hosts stages [p S / P, (p + 1) S / P) and registers only their
 * tensors "stage<k>.W" (split over DP); the load may use another P (1 = every stage). */
#include <hdf5.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

enum { TENSORS = 5 };
static const char *const names[TENSORS] = {"A", "blocks/B", "C", "step", "E"};

static loom_state_spec spec_of(int t) {
  loom_state_spec specs[TENSORS] = {
      {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {13, 7}, .split_count = 1,
       .splits = {{LOOM_AXIS_DP, 0}}},
      {.dtype = LOOM_FLOAT64, .ndims = 1, .shape = {5}},
      {.dtype = LOOM_BFLOAT16, .ndims = 2, .shape = {6, 10}, .split_count = 1,
       .splits = {{LOOM_AXIS_GRAD, 1}}},
      {.dtype = LOOM_INT64, .ndims = 0},
      {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {4, 9}, .split_count = 2,
       .splits = {{LOOM_AXIS_EP, 0}, {LOOM_AXIS_EDP, 1}}},
  };
  return specs[t];
}

/* Global element `flat` of tensor t (exact in its dtype). */
static double global_value(int t, int64_t flat) {
  loom_state_spec s = spec_of(t);
  return input_value(s.dtype, 4242, t, (size_t)flat);
}


enum { STAGES = 4 };

/* Registers the tensors of the stages this rank hosts (values of step_number when saving,
 * poison otherwise) and, for load-stages, checks them after the load. */
static void run_stages(check_state *st, loom_mesh *mesh, const char *mode, const char *dir,
                       int step_number) {
  loom_state *state = NULL;
  CHECK_OK(st, loom_state_create(mesh, &state));
  loom_mesh_shape shape = loom_mesh_get_shape(mesh);
  loom_mesh_coords coords = loom_mesh_my_coords(mesh);
  int first = coords.pp * STAGES / shape.pp, last = (coords.pp + 1) * STAGES / shape.pp;
  int saving = strcmp(mode, "save-stages") == 0;
  float *data[STAGES] = {0};
  int64_t off[STAGES][LOOM_STATE_MAX_DIMS], ext[STAGES][LOOM_STATE_MAX_DIMS];
  loom_state_spec spec = {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {10, 3}, .split_count = 1,
                          .splits = {{LOOM_AXIS_DP, 0}}};
  for (int k = first; k < last; k++) {
    CHECK_OK(st, loom_state_slice(&spec, &shape, &coords, off[k], ext[k]));
    int64_t n = ext[k][0] * ext[k][1];
    data[k] = calloc((size_t)n + 1, sizeof(float));
    for (int64_t i = 0; i < n; i++)
      data[k][i] = saving ? (float)input_value(LOOM_FLOAT32, 77, k, (size_t)global_index(&spec, off[k], ext[k], i)) : -5.0f;
    char name[32];
    snprintf(name, sizeof name, "stage%d.W", k);
    CHECK_OK(st, loom_state_register(state, name, &spec, loom_buf_host(data[k], (size_t)n, LOOM_FLOAT32)));
  }
  int64_t step_value = saving ? step_number : -1;
  loom_state_spec scalar = {.dtype = LOOM_INT64, .ndims = 0};
  CHECK_OK(st, loom_state_register(state, "step", &scalar, loom_buf_host(&step_value, 1, LOOM_INT64)));
  if (saving) {
    CHECK_OK(st, loom_ckpt_save(state, dir, step_number));
  } else {
    int64_t step = -1;
    CHECK_OK(st, loom_ckpt_load(state, dir, &step));
    expect_near(st, "stages: step", 0, (double)step_value, step_number, 0);
    for (int k = first; k < last; k++)
      for (int64_t i = 0; i < ext[k][0] * ext[k][1]; i++)
        expect_near(st, "stages: stage tensor", (size_t)i, data[k][i],
                    (float)input_value(LOOM_FLOAT32, 77, k, (size_t)global_index(&spec, off[k], ext[k], i)), 0);
  }
  st->checks++;
  loom_state_destroy(state);
  for (int k = 0; k < STAGES; k++) free(data[k]);
}

/* save-async: see the header comment. */
static void run_async(check_state *st, loom_state *state, void *const *data, const int64_t *count,
                      const char *dir, int step_number, int busy_wait) {
  loom_ckpt_params params = LOOM_CKPT_PARAMS_INIT;
  params.busy = busy_wait ? LOOM_CKPT_BUSY_WAIT : LOOM_CKPT_BUSY_SKIP;
  loom_ckpt *ckpt = NULL;
  CHECK_OK(st, loom_ckpt_create(state, dir, &params, &ckpt));
  loom_req *first = NULL;
  CHECK_OK(st, loom_ckpt_save_async(ckpt, step_number, &first));
  expect_near(st, "first save started", 0, first != NULL, 1, 0);
  CHECK_OK(st, loom_ckpt_fence(ckpt));
  for (int t = 0; t < TENSORS; t++) /* the next optimizer step overwrites the state */
    for (int64_t i = 0; i < count[t]; i++)
      loom_dtype_store(data[t], spec_of(t).dtype, (size_t)i, -3.0);
  CHECK_OK(st, loom_wait(&first)); /* the save's own request: published */
  CHECK_OK(st, loom_ckpt_wait(ckpt));
  loom_req *next[2] = {NULL, NULL};
  CHECK_OK(st, loom_ckpt_save_async(ckpt, step_number + 1, &next[0]));
  CHECK_OK(st, loom_ckpt_save_async(ckpt, step_number + 2, &next[1]));
  int started_next[2] = {next[0] != NULL, next[1] != NULL};
  CHECK_OK(st, loom_ckpt_wait(ckpt));
  CHECK_OK(st, loom_wait_all(next, 2)); /* after loom_ckpt_wait: the order does not matter */
  int low[2], high[2], negated[2] = {-started_next[0], -started_next[1]};
  MPI_Allreduce(started_next, high, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(negated, low, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  expect_near(st, "ranks agree on the busy decision", 0, high[1], -low[1], 0);
  expect_near(st, "an idle checkpointer starts a save", 0, started_next[0], 1, 0);
  if (busy_wait) expect_near(st, "busy wait: no save skipped", 0, started_next[1], 1, 0);
  char path[4200];
  snprintf(path, sizeof path, "%s/step-%08d/index.h5", dir, step_number + 2);
  expect_near(st, "a skipped step is not on disk", 0, access(path, F_OK) == 0, started_next[1], 0);
  loom_ckpt_stats stats;
  CHECK_OK(st, loom_ckpt_get_stats(ckpt, &stats));
  expect_near(st, "stats count the saves", 0, stats.saves_started + stats.saves_skipped, 3, 0);
  if (st->rank == 0)
    printf("save-async: second back-to-back save %s (policy %s)\n",
           started_next[1] ? "started" : "skipped", busy_wait ? "wait" : "skip");
  loom_ckpt_destroy(ckpt);
}

int main(int argc, char **argv) {
  const char *mode = "load", *dir = NULL;
  int step_number = 42, keep = 0, deflate = 0, busy_wait = 0;
  loom_option options[] = {
      {"ckpt-mode", LOOM_OPTION_STRING, &mode, "save|load|load-extra|corrupt|load-corrupt|load-arg|"
       "save-async|save-stages|load-stages"},
      {"ckpt-dir", LOOM_OPTION_STRING, &dir, "checkpoint root"},
      {"ckpt-step", LOOM_OPTION_INT, &step_number, "step saved / expected", NULL, 0, 1 << 30},
      {"ckpt-keep", LOOM_OPTION_INT, &keep, "checkpoints kept (0 = all)", NULL, 0, 1000},
      {"ckpt-deflate", LOOM_OPTION_INT, &deflate, "deflate level", NULL, 0, 9},
      {"ckpt-busy", LOOM_OPTION_CHOICE, &busy_wait, "save-async: busy policy", "skip|wait"},
  };
  loom_config config = LOOM_CONFIG_INIT;
  if (loom_config_parse(&config, options, (int)(sizeof options / sizeof options[0]), argc, argv) != LOOM_OK || !dir) {
    fprintf(stderr, "%s (and --ckpt-dir is required)\n", loom_error_string());
    return 2;
  }
  check_state st = {0};
  if (loom_init(&config, &argc, &argv, &st.ctx) != LOOM_OK) {
    fprintf(stderr, "loom_init: %s\n", loom_error_string());
    return 1;
  }
  st.rank = loom_ctx_rank(st.ctx);
  st.size = loom_ctx_size(st.ctx);
  if (strcmp(mode, "corrupt") == 0) { /* rank 0 rewrites A in rank-00001.h5 */
    if (st.rank == 0) {
      char latest[4096], name[64] = "", path[4200];
      snprintf(latest, sizeof latest, "%s/latest", dir);
      FILE *f = fopen(latest, "r");
      if (!f || fscanf(f, "%63s", name) != 1) return 3;
      fclose(f);
      snprintf(path, sizeof path, "%s/%s/rank-00001.h5", dir, name);
      hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
      hid_t set = H5Dopen2(file, "A", H5P_DEFAULT);
      hssize_t n = H5Sget_simple_extent_npoints(H5Dget_space(set));
      float *values = calloc((size_t)n, sizeof(float));
      H5Dread(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
      values[n / 2] += 1.0f; /* one flipped value */
      H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
      free(values);
      H5Dclose(set);
      H5Fclose(file);
      st.checks++;
    }
    int code = check_finish(&st, "test_ckpt corrupt");
    loom_finalize(st.ctx);
    return code;
  }
  loom_mesh_shape shape;
  CHECK_OK(&st, loom_mesh_shape_from_config(&config, st.size, &shape));
  loom_mesh *mesh = NULL;
  loom_state *state = NULL;
  CHECK_OK(&st, loom_mesh_create(st.ctx, &shape, &mesh));
  if (strstr(mode, "stages")) {
    run_stages(&st, mesh, mode, dir, step_number);
    int code = check_finish(&st, "test_ckpt stages");
    loom_mesh_destroy(mesh);
    loom_finalize(st.ctx);
    return code;
  }
  CHECK_OK(&st, loom_state_create(mesh, &state));
  loom_mesh_coords coords = loom_mesh_my_coords(mesh);
  void *data[TENSORS + 1];
  int64_t off[TENSORS][LOOM_STATE_MAX_DIMS], ext[TENSORS][LOOM_STATE_MAX_DIMS], count[TENSORS];
  for (int t = 0; t < TENSORS; t++) {
    loom_state_spec s = spec_of(t);
    CHECK_OK(&st, loom_state_slice(&s, &shape, &coords, off[t], ext[t]));
    count[t] = 1;
    for (int d = 0; d < s.ndims; d++) count[t] *= ext[t][d];
    data[t] = calloc((size_t)count[t] + 1, loom_dtype_size(s.dtype));
    for (int64_t i = 0; i < count[t]; i++) {
      double v = strncmp(mode, "save", 4) == 0 ? global_value(t, global_index(&s, off[t], ext[t], i)) : -7.0;
      loom_dtype_store(data[t], s.dtype, (size_t)i, v);
    }
    CHECK_OK(&st, loom_state_register(state, names[t], &s,
                                      loom_buf_host(data[t], (size_t)count[t], s.dtype)));
  }
  float extra[3] = {0};
  loom_state_spec extra_spec = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {3}};
  if (strcmp(mode, "load-extra") == 0)
    CHECK_OK(&st, loom_state_register(state, "not_in_checkpoint", &extra_spec,
                                      loom_buf_host(extra, 3, LOOM_FLOAT32)));
  if (strcmp(mode, "save-async") == 0) {
    run_async(&st, state, data, count, dir, step_number, busy_wait);
  } else if (strcmp(mode, "save") == 0) {
    loom_ckpt_params params = {.keep_last = keep, .deflate_level = deflate};
    CHECK_OK(&st, loom_ckpt_save_with(state, dir, step_number, &params));
    st.checks++;
  } else {
    int64_t step = -1;
    loom_status s = loom_ckpt_load(state, dir, &step);
    if (strcmp(mode, "load") == 0) {
      if (s != LOOM_OK) fprintf(stderr, "rank %d: load: %s\n", st.rank, loom_error_string());
      expect_near(&st, "load status", 0, s, LOOM_OK, 0);
      expect_near(&st, "step", 0, (double)step, step_number, 0);
      for (int t = 0; t < TENSORS; t++) {
        loom_state_spec sp = spec_of(t);
        for (int64_t i = 0; i < count[t]; i++)
          expect_near(&st, names[t], (size_t)i, loom_dtype_load(data[t], sp.dtype, (size_t)i),
                      global_value(t, global_index(&sp, off[t], ext[t], i)), 0);
      }
    } else if (strcmp(mode, "load-extra") == 0) {
      expect_near(&st, "another model -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
      if (st.rank == 0)
        expect_near(&st, "names the tensor", 0,
                    strstr(loom_error_string(), "not_in_checkpoint") != NULL, 1, 0);
    } else if (strcmp(mode, "load-arg") == 0) { /* not a checkpoint, or another model */
      expect_near(&st, "-> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
      printf("rank %d: %s\n", st.rank, loom_error_string());
    } else { /* load-corrupt */
      expect_near(&st, "corrupt -> ERR_CORRUPT", 0, s, LOOM_ERR_CORRUPT, 0);
      if (strstr(loom_error_string(), "rank-00001.h5"))
        expect_near(&st, "names the tensor", 0, strstr(loom_error_string(), "'A'") != NULL, 1, 0);
      printf("rank %d: %s\n", st.rank, loom_error_string());
    }
  }
  int code = check_finish(&st, "test_ckpt");
  loom_state_destroy(state);
  loom_mesh_destroy(mesh);
  for (int t = 0; t < TENSORS; t++) free(data[t]);
  loom_finalize(st.ctx);
  return code;
}
