/* loom_ddp across ranks: averaged gradients against a double reference with many small
 * buckets, mixed dtypes and a different ready order on every rank; gradient accumulation;
 * a forgotten gradient named in the error; real overlap shown by a group's lane thread's
 * own timestamps; the global gradient norm over a shard group. */
#include <string.h>
#include <time.h>

#include <math.h>

#include "check.h"

enum { PARAMS = 12 };

static void sleep_ms(int ms) {
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* Device mode (--device cuda): DDP reduces GPU copies of the gradients; the host arrays are
 * uploaded before each gradient is marked ready and downloaded after finish. */
typedef struct {
  loom_buf grads[PARAMS];   /* host arrays the test fills and checks */
  loom_buf device[PARAMS];  /* what DDP sees (host arrays themselves in host mode) */
  int index[PARAMS];
  uint64_t seeds[PARAMS];
} model;

/* Sizes 1..3000 elements; parameters 4..6 are float64 (a dtype change splits buckets). */
static void make_model(check_state *st, loom_ddp *ddp, model *m) {
  for (int p = 0; p < PARAMS; p++) {
    size_t n = 1 + loom_rng_word_at(7, LOOM_RNG_TEST, 0, (uint64_t)p) % 3000;
    loom_dtype dt = (p >= 4 && p <= 6) ? LOOM_FLOAT64 : LOOM_FLOAT32;
    m->grads[p] = loom_buf_host(calloc(n, loom_dtype_size(dt)), n, dt);
    m->device[p] = m->grads[p];
    if (st->device_mode) {
      void *d = NULL;
      CHECK_OK(st, loom_device_alloc(st->ctx, n * loom_dtype_size(dt), &d));
      m->device[p] = loom_buf_device(st->ctx, d, n, dt);
    }
    char name[32];
    snprintf(name, sizeof name, "param%d", p);
    CHECK_OK(st, loom_ddp_register(ddp, name, m->device[p], &m->index[p]));
  }
}

static void free_model(check_state *st, model *m) {
  for (int p = 0; p < PARAMS; p++) {
    if (m->device[p].ptr != m->grads[p].ptr) loom_device_free(st->ctx, m->device[p].ptr);
    free(m->grads[p].ptr);
  }
}

/* One step: fill gradients (accumulating `micro` times), mark them ready in a rank-specific
 * random order, finish; then compare with the average over ranks of the sums. */
static void run_step(check_state *st, loom_ddp *ddp, model *m, int micro) {
  int size = st->size;
  for (int p = 0; p < PARAMS; p++) {
    m->seeds[p] = ++st->seed;
    memset(m->grads[p].ptr, 0, loom_buf_bytes(m->grads[p]));
  }
  for (int k = 0; k < micro; k++) {
    int sync = k == micro - 1;
    CHECK_OK(st, loom_ddp_begin(ddp, sync));
    int order[PARAMS];
    for (int p = 0; p < PARAMS; p++) order[p] = p;
    loom_rng rng;
    loom_rng_init(&rng, st->seed * 31 + (uint64_t)k, LOOM_RNG_TEST, (uint32_t)st->rank);
    for (int p = PARAMS - 1; p > 0; p--) {
      int j = (int)loom_rng_below(&rng, (uint64_t)p + 1), t = order[p];
      order[p] = order[j];
      order[j] = t;
    }
    for (int q = 0; q < PARAMS; q++) {
      int p = order[q];
      loom_buf g = m->grads[p];
      for (size_t i = 0; i < g.count; i++) /* micro-batch k contributes input(seed + k) */
        loom_dtype_store(g.ptr, g.dtype, i, loom_dtype_load(g.ptr, g.dtype, i) +
                         input_value(g.dtype, m->seeds[p] + 1000u * (uint64_t)k, st->rank, i));
      if (st->device_mode)
        CHECK_OK(st, loom_device_upload(st->ctx, m->device[p].ptr, g.ptr, loom_buf_bytes(g)));
      CHECK_OK(st, loom_ddp_grad_ready(ddp, m->index[p]));
    }
    CHECK_OK(st, loom_ddp_finish(ddp));
  }
  for (int p = 0; st->device_mode && p < PARAMS; p++)
    CHECK_OK(st, loom_device_download(st->ctx, m->grads[p].ptr, m->device[p].ptr,
                                      loom_buf_bytes(m->grads[p])));
  for (int p = 0; p < PARAMS; p++) {
    loom_buf g = m->grads[p];
    for (size_t i = 0; i < g.count; i++) {
      double sum = 0;
      for (int r = 0; r < size; r++) {
        double local = 0; /* the rank's accumulated gradient, rounded like the dtype */
        for (int k = 0; k < micro; k++) {
          local += input_value(g.dtype, m->seeds[p] + 1000u * (uint64_t)k, r, i);
          unsigned char slot[8];
          loom_dtype_store(slot, g.dtype, 0, local);
          local = loom_dtype_load(slot, g.dtype, 0);
        }
        sum += local;
      }
      expect_near(st, micro > 1 ? "ddp accumulated average" : "ddp average", i,
                  loom_dtype_load(g.ptr, g.dtype, i), sum / size,
                  (g.dtype == LOOM_FLOAT32 ? 1e-6 : 1e-13) * micro * 2);
    }
  }
}

static void test_average(check_state *st, loom_group *g, size_t bucket_bytes, int overlap) {
  loom_ddp_params params = LOOM_DDP_PARAMS_INIT;
  params.bucket_bytes = bucket_bytes;
  params.overlap = overlap;
  loom_ddp *ddp = NULL;
  model m;
  CHECK_OK(st, loom_ddp_create(g, &params, &ddp));
  make_model(st, ddp, &m);
  run_step(st, ddp, &m, 1);
  run_step(st, ddp, &m, 1);
  run_step(st, ddp, &m, 3);
  loom_ddp_stats stats;
  CHECK_OK(st, loom_ddp_get_stats(ddp, &stats));
  if (bucket_bytes <= 4096) expect_near(st, "many buckets", 0, stats.bucket_count >= 6, 1, 0);
  /* Registration is closed once training started. */
  int index;
  float extra[4];
  loom_status s = loom_ddp_register(ddp, "late", loom_buf_host(extra, 4, LOOM_FLOAT32), &index);
  expect_near(st, "register after start -> ERR_STATE", 0, s, LOOM_ERR_STATE, 0);
  loom_ddp_destroy(ddp);
  free_model(st, &m);
}

/* A gradient never marked ready: LOOM_ERR_STATE naming it, nothing left in flight, and the
 * next step works. Marking twice is refused too. */
static void test_errors(check_state *st, loom_group *g) {
  loom_ddp_params params = LOOM_DDP_PARAMS_INIT;
  params.bucket_bytes = 2048;
  loom_ddp *ddp = NULL;
  model m;
  CHECK_OK(st, loom_ddp_create(g, &params, &ddp));
  make_model(st, ddp, &m);
  CHECK_OK(st, loom_ddp_begin(ddp, 1));
  for (int p = 0; p < PARAMS; p++)
    if (p != 3) CHECK_OK(st, loom_ddp_grad_ready(ddp, m.index[p]));
  loom_status s = loom_ddp_grad_ready(ddp, m.index[5]);
  expect_near(st, "marked twice -> ERR_STATE", 0, s, LOOM_ERR_STATE, 0);
  s = loom_ddp_finish(ddp);
  expect_near(st, "missing gradient -> ERR_STATE", 0, s, LOOM_ERR_STATE, 0);
  expect_near(st, "message names param3", 0, strstr(loom_error_string(), "'param3'") != NULL, 1, 0);
  run_step(st, ddp, &m, 1);
  loom_ddp_destroy(ddp);
  free_model(st, &m);
  expect_near(st, "bucket_bytes 0 -> ERR_ARG", 0,
              loom_ddp_create(g, &(loom_ddp_params){.bucket_bytes = 0, .overlap = 1,
                                                    .op = LOOM_OP_AVG}, &ddp),
              LOOM_ERR_ARG, 0);
}

/* Overlap: four equal buckets, 40 ms of "backward" before each gradient. With overlap the
 * first bucket's reduction has completed on a group's lane thread before the last
 * gradient is produced; without overlap nothing starts before backward ends. */
static void test_overlap(check_state *st, loom_group *g) {
  enum { LAYERS = 4, WIDTH = 4096 };
  for (int overlap = 1; overlap >= 0; overlap--) {
    loom_ddp_params params = LOOM_DDP_PARAMS_INIT;
    params.bucket_bytes = WIDTH * sizeof(float);
    params.overlap = overlap;
    loom_ddp *ddp = NULL;
    CHECK_OK(st, loom_ddp_create(g, &params, &ddp));
    float *grads[LAYERS];
    int index[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
      grads[l] = calloc(WIDTH, sizeof(float));
      char name[16];
      snprintf(name, sizeof name, "layer%d", l);
      CHECK_OK(st, loom_ddp_register(ddp, name, loom_buf_host(grads[l], WIDTH, LOOM_FLOAT32),
                                     &index[l]));
    }
    CHECK_OK(st, loom_ddp_begin(ddp, 1));
    for (int l = LAYERS - 1; l >= 0; l--) { /* backward: last layer first */
      sleep_ms(40);
      for (int i = 0; i < WIDTH; i++) grads[l][i] = (float)(st->rank + l);
      CHECK_OK(st, loom_ddp_grad_ready(ddp, index[l]));
    }
    CHECK_OK(st, loom_ddp_finish(ddp));
    loom_ddp_stats stats;
    CHECK_OK(st, loom_ddp_get_stats(ddp, &stats));
    expect_near(st, "one bucket per layer", 0, stats.bucket_count, LAYERS, 0);
    if (overlap) {
      expect_near(st, "overlap: first bucket reduced before backward ended", 0,
                  stats.buckets[0].completed_at < stats.backward_end, 1, 0);
      expect_near(st, "overlap: first bucket started before the second gradient", 0,
                  stats.buckets[0].started_at < stats.backward_end - 0.05, 1, 0);
    } else {
      expect_near(st, "no overlap: nothing started before backward ended", 0,
                  stats.buckets[0].started_at >= stats.backward_end, 1, 0);
    }
    double expected = (st->size - 1) / 2.0; /* mean of rank + l over ranks, minus l */
    for (int l = 0; l < LAYERS; l++) {
      expect_near(st, "overlap result", (size_t)l, grads[l][0], expected + l, 1e-6);
      free(grads[l]);
    }
    loom_ddp_destroy(ddp);
  }
}

/* Gradients sharded over the world: the norm sums squares over every member. */
static void test_sharded_norm(check_state *st, loom_group *g) {
  uint64_t seed = ++st->seed;
  float shard[100];
  fill_input(loom_buf_host(shard, 100, LOOM_FLOAT32), seed, st->rank, 0);
  double reference = 0;
  for (int r = 0; r < st->size; r++)
    for (size_t i = 0; i < 100; i++) {
      double v = input_value(LOOM_FLOAT32, seed, r, i);
      reference += v * v;
    }
  loom_buf buf = loom_buf_host(shard, 100, LOOM_FLOAT32);
  double norm = 0;
  CHECK_OK(st, loom_grad_norm(g, NULL, &buf, 1, &norm));
  expect_near(st, "sharded global norm", 0, norm, sqrt(reference), 1e-9 * sqrt(reference));
  CHECK_OK(st, loom_clip_grad_norm(g, NULL, &buf, 1, norm / 2, &norm));
  double after = 0;
  CHECK_OK(st, loom_grad_norm(g, NULL, &buf, 1, &after));
  expect_near(st, "clipped global norm", 0, after, sqrt(reference) / 2, 1e-5 * sqrt(reference));
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  int early = check_start(&st, &config, &argc, &argv, 104729u);
  if (early >= 0) return early;
  loom_group *world = loom_ctx_world(st.ctx);
  test_average(&st, world, 2048, 1);
  test_average(&st, world, 4096, 0);
  test_average(&st, world, 25u << 20, 1);
  test_errors(&st, world);
  if (!st.device_mode) { /* host gradients: timestamps of a group's lane thread */
    test_overlap(&st, world);
    test_sharded_norm(&st, world);
  }
  int code = check_finish(&st, "test_ddp");
  loom_finalize(st.ctx);
  return code;
}
