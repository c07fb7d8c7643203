/* The parameter table (runtime/params.h) and its readers, on a mesh chosen from the rank count
 * so that parameters are replicated differently: 4 ranks = dp 4 with ep 2 (experts split over
 * EP, replicated over EDP), 2 ranks = two pipeline stages, 1 rank = everything local.
 *   - loom_params_grad_norm: the global norm of every gradient, each element counted once,
 *     against a double-precision sum over the global tensors of every stage;
 *   - loom_clip_params: afterwards the norm is max_norm, every element scaled alike;
 *   - loom_optim_add_params: one SGD step per optimizer group (weight decay off, lr scale)
 *     against the rule in double precision;
 *   - loom_ddp_add_params: dense gradients summed over GRAD, expert gradients over EDP;
 *   - loom_state_register_params, and the rejections of bad entries.
 * Gradients live on the GPU under --device cuda (norm and clip); inputs from (seed, index). */
#include <math.h>
#include <string.h>
#include <time.h>

#include "check.h"

enum { DENSE_ROWS = 7, DENSE_COLS = 5, EXPERT_ROWS = 3, EXPERT_COLS = 4, BIAS = 6 };

typedef struct {
  float *value, *grad;
  void *device_value, *device_grad;
  size_t count;
  int64_t offset; /* flat global index of the slice's first element (dim 0 splits only) */
} tensor;

/* Gradient value of global element `index` of tensor `which` on stage `stage`. */
static double grad_value(uint64_t seed, int stage, int which, int64_t index) {
  return input_value(LOOM_FLOAT32, seed + 100u * (uint64_t)stage + (uint64_t)which, 0,
                     (size_t)index);
}

static void make(check_state *st, tensor *t, size_t count, int64_t offset, uint64_t seed,
                 int stage, int which) {
  t->count = count;
  t->offset = offset;
  t->value = malloc(sizeof(float) * (count ? count : 1));
  t->grad = malloc(sizeof(float) * (count ? count : 1));
  for (size_t i = 0; i < count; i++) {
    t->value[i] = (float)input_value(LOOM_FLOAT32, seed + 7, st->rank, i);
    t->grad[i] = (float)grad_value(seed, stage, which, offset + (int64_t)i);
  }
  t->device_value = t->device_grad = NULL;
  if (st->device_mode) {
    CHECK_OK(st, loom_device_alloc(st->ctx, sizeof(float) * count, &t->device_value));
    CHECK_OK(st, loom_device_alloc(st->ctx, sizeof(float) * count, &t->device_grad));
    CHECK_OK(st, loom_device_upload(st->ctx, t->device_value, t->value, sizeof(float) * count));
    CHECK_OK(st, loom_device_upload(st->ctx, t->device_grad, t->grad, sizeof(float) * count));
  }
}

static loom_buf value_buf(check_state *st, tensor *t) {
  return st->device_mode ? loom_buf_device(st->ctx, t->device_value, t->count, LOOM_FLOAT32)
                         : loom_buf_host(t->value, t->count, LOOM_FLOAT32);
}
static loom_buf grad_buf(check_state *st, tensor *t) {
  return st->device_mode ? loom_buf_device(st->ctx, t->device_grad, t->count, LOOM_FLOAT32)
                         : loom_buf_host(t->grad, t->count, LOOM_FLOAT32);
}
static void fetch_grad(check_state *st, tensor *t) {
  if (st->device_mode)
    CHECK_OK(st, loom_device_download(st->ctx, t->grad, t->device_grad, sizeof(float) * t->count));
}
static void drop(check_state *st, tensor *t) {
  loom_device_free(st->ctx, t->device_value);
  loom_device_free(st->ctx, t->device_grad);
  free(t->value);
  free(t->grad);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  config.seed = (uint64_t)time(NULL);
  check_state st = {0};
  int code = check_start(&st, &config, &argc, &argv, 1);
  if (code >= 0) return code;
  MPI_Bcast(&st.seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  loom_mesh_shape shape = {1, st.size, 1, 1};
  if (st.size == 2) shape = (loom_mesh_shape){2, 1, 1, 1};
  if (st.size == 4) shape = (loom_mesh_shape){1, 4, 1, 2};
  if (st.rank == 0)
    printf("test_params: %d ranks, mesh pp=%d dp=%d ep=%d, %s gradients, seed %llu\n", st.size,
           shape.pp, shape.dp, shape.ep, st.device_mode ? "device" : "host",
           (unsigned long long)st.seed);
  loom_mesh *mesh = NULL;
  CHECK_OK(&st, loom_mesh_create(st.ctx, &shape, &mesh));
  loom_mesh_coords me = loom_mesh_my_coords(mesh);
  int stage = me.pp;

  loom_params *params = NULL;
  CHECK_OK(&st, loom_params_create(mesh, &params));
  loom_param_group no_decay = {.name = "no_decay", .weight_decay = 0.0, .lr_scale = 1.0};
  loom_param_group slow = {.name = "slow", .weight_decay = -1.0, .lr_scale = 0.5};
  int no_decay_index = -1, slow_index = -1;
  CHECK_OK(&st, loom_params_add_group(params, &no_decay, &no_decay_index));
  CHECK_OK(&st, loom_params_add_group(params, &slow, &slow_index));

  tensor dense, bias, experts;
  make(&st, &dense, DENSE_ROWS * DENSE_COLS, 0, st.seed, stage, 0);
  make(&st, &bias, BIAS, 0, st.seed, stage, 1);
  int64_t expert_rows = (int64_t)EXPERT_ROWS * shape.ep;
  make(&st, &experts, EXPERT_ROWS * EXPERT_COLS, (int64_t)me.ep * EXPERT_ROWS * EXPERT_COLS,
       st.seed, stage, 2);
  char names[3][32];
  snprintf(names[0], sizeof names[0], "stage%d.dense", stage);
  snprintf(names[1], sizeof names[1], "stage%d.bias", stage);
  snprintf(names[2], sizeof names[2], "stage%d.experts", stage);
  loom_param entries[3] = {
      {.name = names[0], .value = value_buf(&st, &dense), .grad = grad_buf(&st, &dense),
       .spec = {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {DENSE_ROWS, DENSE_COLS}},
       .reduce_axis = LOOM_AXIS_GRAD, .group = 0},
      {.name = names[1], .value = value_buf(&st, &bias), .grad = grad_buf(&st, &bias),
       .spec = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {BIAS}},
       .reduce_axis = LOOM_AXIS_GRAD, .group = no_decay_index},
      {.name = names[2], .value = value_buf(&st, &experts), .grad = grad_buf(&st, &experts),
       .spec = {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {expert_rows, EXPERT_COLS},
                .split_count = 1, .splits = {{LOOM_AXIS_EP, 0}}},
       .reduce_axis = LOOM_AXIS_EDP, .group = slow_index},
  };
  for (int i = 0; i < 3; i++) CHECK_OK(&st, loom_params_add(params, &entries[i], NULL));

  /* rejections: a duplicate, a slice of the wrong size, an unknown group */
  loom_param bad = entries[0];
  expect_near(&st, "duplicate name refused", 0, loom_params_add(params, &bad, NULL), LOOM_ERR_ARG, 0);
  bad.name = "wrong.size";
  bad.spec.shape[0] = DENSE_ROWS + 1;
  expect_near(&st, "slice of another size refused", 0, loom_params_add(params, &bad, NULL),
              LOOM_ERR_ARG, 0);
  expect_near(&st, "the message names the parameter", 0,
              strstr(loom_error_string(), "wrong.size") != NULL, 1, 0);
  bad = entries[1];
  bad.name = "bad.group";
  bad.group = 9;
  expect_near(&st, "unknown group refused", 0, loom_params_add(params, &bad, NULL), LOOM_ERR_ARG, 0);
  expect_near(&st, "three parameters", 0, loom_params_count(params), 3, 0);

  /* the global norm: every stage's global tensors, each element once */
  double reference = 0;
  for (int s = 0; s < shape.pp; s++) {
    for (int64_t i = 0; i < DENSE_ROWS * DENSE_COLS; i++) reference += pow(grad_value(st.seed, s, 0, i), 2);
    for (int64_t i = 0; i < BIAS; i++) reference += pow(grad_value(st.seed, s, 1, i), 2);
    for (int64_t i = 0; i < expert_rows * EXPERT_COLS; i++) reference += pow(grad_value(st.seed, s, 2, i), 2);
  }
  reference = sqrt(reference);
  void *stream = loom_ctx_stream(st.ctx);
  double norm = 0;
  CHECK_OK(&st, loom_params_grad_norm(params, stream, &norm));
  /* sums of squares in double of float32 inputs, in another order: 1e-12 relative */
  expect_near(&st, "global gradient norm", 0, norm, reference, 1e-12 * reference);

  double max_norm = reference / 2, before = 0;
  CHECK_OK(&st, loom_clip_params(params, stream, max_norm, &before));
  expect_near(&st, "clip reports the norm before", 0, before, reference, 1e-12 * reference);
  CHECK_OK(&st, loom_params_grad_norm(params, stream, &norm));
  /* float32 gradients scaled once: within float32 rounding of max_norm */
  expect_near(&st, "norm after clipping", 0, norm, max_norm, 1e-6 * max_norm);
  double scale = max_norm / (reference + 1e-6);
  fetch_grad(&st, &dense);
  for (size_t i = 0; i < dense.count; i++)
    expect_near(&st, "clipped element", i, dense.grad[i],
                (float)(grad_value(st.seed, stage, 0, (int64_t)i) * scale),
                1e-6 * fabs(grad_value(st.seed, stage, 0, (int64_t)i)) + 1e-30);

  if (!st.device_mode) {
    /* one SGD step per group: p -= lr * lr_scale * (g + wd * p), wd = 0 for "no_decay" */
    loom_optim_params op = LOOM_OPTIM_PARAMS_INIT;
    op.kind = LOOM_OPTIM_SGD;
    op.weight_decay = 0.25;
    loom_optim *optim = NULL;
    CHECK_OK(&st, loom_optim_create(&op, &optim));
    CHECK_OK(&st, loom_optim_add_params(optim, params));
    tensor *ts[3] = {&dense, &bias, &experts};
    double decay[3] = {0.25, 0.0, 0.25}, lr_scale[3] = {1.0, 1.0, 0.5}, lr = 0.1;
    float *before_values[3];
    for (int t = 0; t < 3; t++) {
      before_values[t] = malloc(sizeof(float) * ts[t]->count);
      memcpy(before_values[t], ts[t]->value, sizeof(float) * ts[t]->count);
    }
    CHECK_OK(&st, loom_optim_step(optim, lr));
    for (int t = 0; t < 3; t++) {
      for (size_t i = 0; i < ts[t]->count; i++) {
        double p = before_values[t][i], g = ts[t]->grad[i];
        double want = p - lr * lr_scale[t] * (g + decay[t] * p);
        /* float32 arithmetic of 3 operations on values below 1: 4 ulps */
        expect_near(&st, "SGD step of the parameter's group", i, ts[t]->value[i], want,
                    4 * 1.2e-7 * (fabs(p) + fabs(g) + 1e-30));
      }
      free(before_values[t]);
    }
    loom_optim_destroy(optim);

    /* DDP over GRAD for dense parameters and EDP for experts, summed: each rank's gradient
     * becomes rank-dependent first */
    for (size_t i = 0; i < dense.count; i++) dense.grad[i] = (float)(st.rank + 1);
    for (size_t i = 0; i < bias.count; i++) bias.grad[i] = (float)(st.rank + 1);
    for (size_t i = 0; i < experts.count; i++) experts.grad[i] = (float)(st.rank + 1);
    loom_ddp_params dp = LOOM_DDP_PARAMS_INIT;
    dp.op = LOOM_OP_SUM;
    loom_ddp *dense_ddp = NULL, *expert_ddp = NULL;
    CHECK_OK(&st, loom_ddp_create(loom_mesh_group(mesh, LOOM_AXIS_GRAD), &dp, &dense_ddp));
    CHECK_OK(&st, loom_ddp_create(loom_mesh_group(mesh, LOOM_AXIS_EDP), &dp, &expert_ddp));
    CHECK_OK(&st, loom_ddp_add_params(dense_ddp, params, LOOM_AXIS_GRAD));
    CHECK_OK(&st, loom_ddp_add_params(expert_ddp, params, LOOM_AXIS_EDP));
    CHECK_OK(&st, loom_ddp_begin(dense_ddp, 1));
    CHECK_OK(&st, loom_ddp_begin(expert_ddp, 1));
    for (int i = loom_params_count(params) - 1; i >= 0; i--) {
      CHECK_OK(&st, loom_ddp_param_ready(dense_ddp, i));
      CHECK_OK(&st, loom_ddp_param_ready(expert_ddp, i));
    }
    CHECK_OK(&st, loom_ddp_finish(dense_ddp));
    CHECK_OK(&st, loom_ddp_finish(expert_ddp));
    int members[64];
    double grad_sum = 0, edp_sum = 0;
    int n = loom_mesh_group_members(&shape, LOOM_AXIS_GRAD, st.rank, members);
    for (int m = 0; m < n; m++) grad_sum += members[m] + 1;
    n = loom_mesh_group_members(&shape, LOOM_AXIS_EDP, st.rank, members);
    for (int m = 0; m < n; m++) edp_sum += members[m] + 1;
    expect_near(&st, "dense gradient summed over GRAD", 0, dense.grad[0], grad_sum, 0);
    expect_near(&st, "bias gradient summed over GRAD", 0, bias.grad[BIAS - 1], grad_sum, 0);
    expect_near(&st, "expert gradient summed over EDP", 0, experts.grad[1], edp_sum, 0);
    loom_ddp_destroy(dense_ddp);
    loom_ddp_destroy(expert_ddp);
  }

  loom_state *state = NULL;
  CHECK_OK(&st, loom_state_create(mesh, &state));
  CHECK_OK(&st, loom_state_register_params(state, params));
  expect_near(&st, "registry holds every parameter", 0, loom_state_count(state), 3, 0);
  expect_near(&st, "registry finds the experts", 0, loom_state_find(state, names[2]), 2, 0);
  /* AdamW moments: the split expert's placed like it, the replicated ones 1-D */
  loom_optim_params adam = LOOM_OPTIM_PARAMS_INIT;
  adam.stream = loom_ctx_stream(st.ctx);
  loom_optim *moments = NULL;
  CHECK_OK(&st, loom_optim_create(&adam, &moments));
  CHECK_OK(&st, loom_optim_add_params(moments, params));
  CHECK_OK(&st, loom_optim_register_state(moments, state));
  char moment[48];
  snprintf(moment, sizeof moment, "%s.exp_avg", names[2]);
  const loom_state_spec *spec = NULL;
  int at = loom_state_find(state, moment);
  expect_near(&st, "expert moment registered", 0, at >= 0, 1, 0);
  if (at >= 0) {
    CHECK_OK(&st, loom_state_entry(state, at, NULL, &spec, NULL, NULL, NULL));
    expect_near(&st, "expert moment split over EP like its parameter", 0,
                spec->split_count == 1 && spec->splits[0].axis == LOOM_AXIS_EP &&
                    spec->shape[0] == expert_rows, 1, 0);
  }
  snprintf(moment, sizeof moment, "%s.exp_avg_sq", names[0]);
  at = loom_state_find(state, moment);
  if (at >= 0) CHECK_OK(&st, loom_state_entry(state, at, NULL, &spec, NULL, NULL, NULL));
  expect_near(&st, "dense moment replicated 1-D", 0, at >= 0 && spec->ndims == 1 && spec->split_count == 0, 1, 0);
  loom_state_destroy(state);
  loom_optim_destroy(moments);

  CHECK_OK(&st, loom_params_destroy(params));
  drop(&st, &dense);
  drop(&st, &bias);
  drop(&st, &experts);
  code = check_finish(&st, "test_params");
  loom_mesh_destroy(mesh);
  loom_finalize(st.ctx);
  return code;
}
