/* In-memory snapshots across placements: tensors split over DP, GRAD, EP/EDP, replicated ones
 * of awkward lengths (fewer elements than replicas, 2-byte bfloat16), per-pipeline-stage
 * tensors, and (with LOOM_DEVICE=cuda) device tensors. Every rank keeps only its share of a
 * replicated slice; restore must gather the slices back exactly, also after segments were lost
 * and rebuilt from parity.
 *   --snap-mode save     fill the values of step 5, snapshot synchronously; fill those of step
 *                        6, snapshot asynchronously and overwrite the tensors before the
 *                        snapshot is published (as the next optimizer step does); wait; then
 *                        poison and restore in-process: step 6 comes back. Also checks that
 *                        the ranks' shares add up to the distinct tensor bytes (+ alignment).
 *                        The segments stay for `restore`.
 *   --snap-mode restore  poison, restore: step 6 and its values (--expect-step 6), or nothing
 *                        restorable (--expect-step -1).
 * snapshot.sh removes segments between the two (a lost node) and runs several layouts. */
#include <string.h>

#include "check.h"

enum { TENSORS = 6, STAGES = 3 };
static const char *const names[TENSORS] = {"A", "B", "C", "step", "E", "W"};

static loom_state_spec spec_of(int t) {
  loom_state_spec specs[TENSORS] = {
      {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {13, 7}, .split_count = 1,
       .splits = {{LOOM_AXIS_DP, 0}}},
      {.dtype = LOOM_FLOAT64, .ndims = 1, .shape = {3}},       /* fewer elements than replicas */
      {.dtype = LOOM_BFLOAT16, .ndims = 2, .shape = {5, 11}, .split_count = 1,
       .splits = {{LOOM_AXIS_GRAD, 1}}},
      {.dtype = LOOM_INT64, .ndims = 0},
      {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {4, 9}, .split_count = 2,
       .splits = {{LOOM_AXIS_EP, 0}, {LOOM_AXIS_EDP, 1}}},
      {.dtype = LOOM_BFLOAT16, .ndims = 1, .shape = {1001}},   /* replicated, odd length */
  };
  return specs[t];
}
static const loom_state_spec stage_spec = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {37}};

typedef struct {
  int count;
  char name[TENSORS + STAGES][32];
  loom_state_spec spec[TENSORS + STAGES];
  int64_t off[TENSORS + STAGES][LOOM_STATE_MAX_DIMS], ext[TENSORS + STAGES][LOOM_STATE_MAX_DIMS];
  int64_t elements[TENSORS + STAGES];
  void *host[TENSORS + STAGES];   /* values (the host copy of a device tensor) */
  void *device[TENSORS + STAGES]; /* NULL for host tensors */
} model;

/* Value of element i of tensor k at `step` (exact in its dtype). */
static double value_at(const model *m, int k, int64_t i, int step) {
  return input_value(m->spec[k].dtype, 1000 + (uint64_t)step, k,
                     (size_t)global_index(&m->spec[k], m->off[k], m->ext[k], i));
}

static void set_values(check_state *st, model *m, int step) { /* step < 0: poison */
  for (int k = 0; k < m->count; k++) {
    for (int64_t i = 0; i < m->elements[k]; i++)
      loom_dtype_store(m->host[k], m->spec[k].dtype, (size_t)i, step < 0 ? -9.0 : value_at(m, k, i, step));
    if (m->device[k])
      CHECK_OK(st, loom_device_upload(st->ctx, m->device[k], m->host[k],
                                      (size_t)m->elements[k] * loom_dtype_size(m->spec[k].dtype)));
  }
}

static void expect_values(check_state *st, model *m, int step, const char *what) { /* < 0: poison */
  for (int k = 0; k < m->count; k++) {
    if (m->device[k])
      CHECK_OK(st, loom_device_download(st->ctx, m->host[k], m->device[k],
                                        (size_t)m->elements[k] * loom_dtype_size(m->spec[k].dtype)));
    for (int64_t i = 0; i < m->elements[k]; i++)
      expect_near(st, what, (size_t)i, loom_dtype_load(m->host[k], m->spec[k].dtype, (size_t)i),
                  step < 0 ? -9.0 : value_at(m, k, i, step), 0);
  }
}

/* The model: the TENSORS above, and stage<s>.w for the pipeline stages this rank hosts (of
 * STAGES, the rank at pipeline coordinate p of P hosts [p S / P, (p + 1) S / P)). A and W live
 * on the device in device mode. */
static void build(check_state *st, loom_mesh *mesh, loom_state *state, model *m) {
  loom_mesh_shape shape = loom_mesh_get_shape(mesh);
  loom_mesh_coords coords = loom_mesh_my_coords(mesh);
  memset(m, 0, sizeof *m);
  for (int t = 0; t < TENSORS; t++, m->count++) {
    snprintf(m->name[m->count], sizeof m->name[0], "%s", names[t]);
    m->spec[m->count] = spec_of(t);
  }
  for (int s = coords.pp * STAGES / shape.pp; s < (coords.pp + 1) * STAGES / shape.pp; s++, m->count++) {
    snprintf(m->name[m->count], sizeof m->name[0], "stage%d.w", s);
    m->spec[m->count] = stage_spec;
  }
  for (int k = 0; k < m->count; k++) {
    CHECK_OK(st, loom_state_slice(&m->spec[k], &shape, &coords, m->off[k], m->ext[k]));
    m->elements[k] = 1;
    for (int d = 0; d < m->spec[k].ndims; d++) m->elements[k] *= m->ext[k][d];
    size_t bytes = (size_t)m->elements[k] * loom_dtype_size(m->spec[k].dtype);
    m->host[k] = calloc(bytes + 8, 1);
    loom_buf buf = loom_buf_host(m->host[k], (size_t)m->elements[k], m->spec[k].dtype);
    if (st->device_mode && (strcmp(m->name[k], "A") == 0 || strcmp(m->name[k], "W") == 0)) {
      CHECK_OK(st, loom_device_alloc(st->ctx, bytes + 8, &m->device[k]));
      buf = loom_buf_device(st->ctx, m->device[k], (size_t)m->elements[k], m->spec[k].dtype);
    }
    CHECK_OK(st, loom_state_register(state, m->name[k], &m->spec[k], buf));
  }
}

/* Sum over the world of the shares, against the bytes of the distinct tensors: every element
 * is kept once, plus at most 7 bytes of alignment per entry. */
static void check_share_bytes(check_state *st, loom_snapshot *snap, const model *m) {
  double mine[2] = {(double)loom_snapshot_share_bytes(snap), m->count}, all[2];
  MPI_Allreduce(mine, all, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  double distinct = 0;
  for (int t = 0; t < TENSORS; t++) {
    loom_state_spec s = spec_of(t);
    double n = 1;
    for (int d = 0; d < s.ndims; d++) n *= (double)s.shape[d];
    distinct += n * (double)loom_dtype_size(s.dtype);
  }
  distinct += STAGES * 37 * 4;
  expect_near(st, "the shares keep every element once", 0, all[0], distinct, 0);
}

int main(int argc, char **argv) {
  const char *mode = "save";
  int expect_step = 6, parity = 1;
  loom_option options[] = {
      {"snap-mode", LOOM_OPTION_STRING, &mode, "save|restore"},
      {"expect-step", LOOM_OPTION_INT, &expect_step, "restore: step expected (-1: none)", NULL, -1, 1000},
      {"snap-parity", LOOM_OPTION_INT, &parity, "parity fragments per group", NULL, 0, 8},
  };
  loom_config config = LOOM_CONFIG_INIT;
  if (loom_config_parse(&config, options, (int)(sizeof options / sizeof options[0]), argc, argv) != LOOM_OK) {
    fprintf(stderr, "%s\n", loom_error_string());
    return 2;
  }
  check_state st = {0};
  loom_status s = loom_init(&config, &argc, &argv, &st.ctx);
  if (s != LOOM_OK) {
    fprintf(stderr, "loom_init: %s\n", loom_error_string());
    return s == LOOM_ERR_UNSUPPORTED ? 77 : 1;
  }
  st.rank = loom_ctx_rank(st.ctx);
  st.size = loom_ctx_size(st.ctx);
  st.device_mode = loom_ctx_device(st.ctx).kind == LOOM_DEVICE_CUDA;
  loom_mesh_shape shape;
  loom_mesh *mesh = NULL;
  loom_state *state = NULL;
  loom_snapshot *snap = NULL;
  model m;
  CHECK_OK(&st, loom_mesh_shape_from_config(&config, st.size, &shape));
  CHECK_OK(&st, loom_mesh_create(st.ctx, &shape, &mesh));
  CHECK_OK(&st, loom_state_create(mesh, &state));
  build(&st, mesh, state, &m);
  loom_snapshot_params params = {.parity = parity};
  CHECK_OK(&st, loom_snapshot_create(state, &params, &snap));
  int64_t step = -1;
  int restored = 0;
  if (strcmp(mode, "save") == 0) {
    check_share_bytes(&st, snap, &m);
    set_values(&st, &m, 5);
    CHECK_OK(&st, loom_snapshot_take(snap, 5));
    set_values(&st, &m, 6);
    loom_req *published = NULL;
    CHECK_OK(&st, loom_snapshot_take_async(snap, 6, &published));
    expect_near(&st, "an idle snapshot starts", 0, published != NULL, 1, 0);
    CHECK_OK(&st, loom_snapshot_fence(snap));
    if (st.device_mode) CHECK_OK(&st, loom_device_synchronize(st.ctx));
    set_values(&st, &m, -1); /* the next step overwrites the state while it is published */
    CHECK_OK(&st, loom_wait(&published)); /* the snapshot's own request: the slot is valid */
    CHECK_OK(&st, loom_snapshot_wait(snap));
    CHECK_OK(&st, loom_snapshot_restore(snap, &step, &restored));
    expect_near(&st, "restored in-process", 0, restored, 1, 0);
    expect_near(&st, "newest step", 0, (double)step, 6, 0);
    expect_values(&st, &m, 6, "in-process restore");
  } else {
    set_values(&st, &m, -1);
    CHECK_OK(&st, loom_snapshot_restore(snap, &step, &restored));
    expect_near(&st, "restorable", 0, restored, expect_step >= 0, 0);
    if (expect_step >= 0) {
      expect_near(&st, "restored step", 0, (double)step, expect_step, 0);
      expect_values(&st, &m, expect_step, "restore after restart");
    } else {
      expect_values(&st, &m, -1, "nothing loaded when nothing is restorable");
    }
  }
  int code = check_finish(&st, strcmp(mode, "save") == 0 ? "test_snapshot save" : "test_snapshot restore");
  loom_snapshot_destroy(snap);
  loom_state_destroy(state);
  for (int k = 0; k < m.count; k++) {
    free(m.host[k]);
    if (m.device[k]) loom_device_free(st.ctx, m.device[k]);
  }
  loom_mesh_destroy(mesh);
  loom_finalize(st.ctx);
  return code;
}
