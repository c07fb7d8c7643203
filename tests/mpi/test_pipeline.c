/* The pipeline executor on ranks: a chain of tanh layers in double precision, one layer per
 * stage, run by every schedule (GPipe, 1F1B, interleaved with 2 and 3 chunks, ZB-H1, ZB-V)
 * over the PP axis of the world, alone and with dp 2 (stage gradients reduced over DP from
 * the stage_finished hook, while the pipeline goes on). Every stage's weight gradients and the
 * loss equal a single-process reference bit for bit: each stage accumulates its micro-batches
 * in order 0..m-1 under every schedule, as the reference does, and dp 2 sums two replicas, a
 * commutative sum. A second step repeats the first exactly. Boundary shapes that disagree fail
 * on every rank with both stages named. Inputs from the run's seed. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "parallel/pipeline/executor.h"

enum { kRows = 3, kWidth = 5, kCells = kRows * kWidth };

typedef struct {
  int stages, microbatches, dp_index;
  uint64_t seed;
  double *weight, *bias;           // (stages) x (kWidth x kWidth), (stages) x (kWidth)
  double *grad_weight, *grad_bias; // same
  double *saved_x, *saved_y, *saved_dz, *saved_dy; // (stages x microbatches) x kCells
  double *loss;                    // (microbatches)
  loom_group *dp;
  loom_req *reductions[64];
  int reduction_count;
} chain;

static double *cell(double *base, const chain *c, int stage, int j) {
  return base + ((size_t)stage * c->microbatches + j) * kCells;
}

static void chain_input(const chain *c, int j, double *x) {
  for (int i = 0; i < kCells; i++) x[i] = input_value(LOOM_FLOAT64, c->seed, 100 + c->dp_index, (size_t)j * kCells + i);
}

static double chain_target(const chain *c, int j, int i) {
  return input_value(LOOM_FLOAT64, c->seed, 200 + c->dp_index, (size_t)j * kCells + i);
}

// y = tanh(x W^T + b) for one stage; on the last stage the loss and dy = y - target.
static void stage_forward(chain *c, int s, int j, const double *x, double *y_out) {
  const double *W = c->weight + (size_t)s * kWidth * kWidth, *b = c->bias + (size_t)s * kWidth;
  double *sx = cell(c->saved_x, c, s, j), *sy = cell(c->saved_y, c, s, j);
  memcpy(sx, x, sizeof(double) * kCells);
  for (int r = 0; r < kRows; r++)
    for (int o = 0; o < kWidth; o++) {
      double z = b[o];
      for (int i = 0; i < kWidth; i++) z += x[r * kWidth + i] * W[o * kWidth + i];
      sy[r * kWidth + o] = tanh(z);
    }
  if (y_out) memcpy(y_out, sy, sizeof(double) * kCells);
  if (s == c->stages - 1) {
    double loss = 0, *dy = cell(c->saved_dy, c, s, j);
    for (int i = 0; i < kCells; i++) {
      dy[i] = sy[i] - chain_target(c, j, i);
      loss += 0.5 * dy[i] * dy[i];
    }
    c->loss[j] = loss;
  }
}

static void stage_backward_input(chain *c, int s, int j, const double *dy, double *dx) {
  const double *W = c->weight + (size_t)s * kWidth * kWidth, *y = cell(c->saved_y, c, s, j);
  double *dz = cell(c->saved_dz, c, s, j);
  for (int i = 0; i < kCells; i++) dz[i] = dy[i] * (1 - y[i] * y[i]);
  if (!dx) return;
  for (int r = 0; r < kRows; r++)
    for (int i = 0; i < kWidth; i++) {
      double v = 0;
      for (int o = 0; o < kWidth; o++) v += dz[r * kWidth + o] * W[o * kWidth + i];
      dx[r * kWidth + i] = v;
    }
}

static void stage_backward_weight(chain *c, int s, int j) {
  double *gW = c->grad_weight + (size_t)s * kWidth * kWidth, *gb = c->grad_bias + (size_t)s * kWidth;
  const double *dz = cell(c->saved_dz, c, s, j), *x = cell(c->saved_x, c, s, j);
  for (int o = 0; o < kWidth; o++)
    for (int r = 0; r < kRows; r++) {
      gb[o] += dz[r * kWidth + o];
      for (int i = 0; i < kWidth; i++) gW[o * kWidth + i] += dz[r * kWidth + o] * x[r * kWidth + i];
    }
}

static loom_status on_forward(void *user, int s, int j, const loom_buf *input, loom_buf *output) {
  chain *c = user;
  double x[kCells];
  if (input) memcpy(x, input->ptr, sizeof x);
  else chain_input(c, j, x);
  stage_forward(c, s, j, x, output ? output->ptr : NULL);
  return LOOM_OK;
}

static loom_status on_backward(void *user, int s, int j, const loom_buf *output_grad,
                               loom_buf *input_grad, int weights) {
  chain *c = user;
  const double *dy = output_grad ? output_grad->ptr : cell(c->saved_dy, c, s, j);
  stage_backward_input(c, s, j, dy, input_grad ? input_grad->ptr : NULL);
  if (weights) stage_backward_weight(c, s, j);
  return LOOM_OK;
}

static loom_status on_backward_weight(void *user, int s, int j) {
  stage_backward_weight(user, s, j);
  return LOOM_OK;
}

// dp: the stage's gradients summed over the replicas, in the background
static loom_status on_stage_finished(void *user, int s) {
  chain *c = user;
  if (!c->dp || loom_group_size(c->dp) == 1) return LOOM_OK;
  double *gW = c->grad_weight + (size_t)s * kWidth * kWidth, *gb = c->grad_bias + (size_t)s * kWidth;
  LOOM_CHECK(loom_allreduce_async(c->dp, loom_buf_host(gW, kWidth * kWidth, LOOM_FLOAT64),
                                  loom_buf_host(gW, kWidth * kWidth, LOOM_FLOAT64), LOOM_OP_SUM,
                                  &c->reductions[c->reduction_count++]));
  return loom_allreduce_async(c->dp, loom_buf_host(gb, kWidth, LOOM_FLOAT64),
                              loom_buf_host(gb, kWidth, LOOM_FLOAT64), LOOM_OP_SUM,
                              &c->reductions[c->reduction_count++]);
}

static int chain_init(chain *c, int stages, int microbatches, uint64_t seed, int dp_index) {
  memset(c, 0, sizeof *c);
  c->stages = stages, c->microbatches = microbatches, c->seed = seed, c->dp_index = dp_index;
  size_t w = (size_t)stages * kWidth * kWidth, b = (size_t)stages * kWidth;
  size_t saved = (size_t)stages * microbatches * kCells;
  c->weight = calloc(w, sizeof(double)), c->bias = calloc(b, sizeof(double));
  c->grad_weight = calloc(w, sizeof(double)), c->grad_bias = calloc(b, sizeof(double));
  c->saved_x = calloc(saved, sizeof(double)), c->saved_y = calloc(saved, sizeof(double));
  c->saved_dz = calloc(saved, sizeof(double)), c->saved_dy = calloc(saved, sizeof(double));
  c->loss = calloc((size_t)microbatches, sizeof(double));
  if (!c->weight || !c->bias || !c->grad_weight || !c->grad_bias || !c->saved_x || !c->saved_y ||
      !c->saved_dz || !c->saved_dy || !c->loss)
    return -1;
  for (size_t i = 0; i < w; i++) c->weight[i] = 0.8 * input_value(LOOM_FLOAT64, seed, 7, i);
  for (size_t i = 0; i < b; i++) c->bias[i] = 0.3 * input_value(LOOM_FLOAT64, seed, 8, i);
  return 0;
}

static void chain_free(chain *c) {
  free(c->weight), free(c->bias), free(c->grad_weight), free(c->grad_bias);
  free(c->saved_x), free(c->saved_y), free(c->saved_dz), free(c->saved_dy), free(c->loss);
}

static void chain_zero_grads(chain *c) {
  memset(c->grad_weight, 0, sizeof(double) * (size_t)c->stages * kWidth * kWidth);
  memset(c->grad_bias, 0, sizeof(double) * (size_t)c->stages * kWidth);
}

// The single-process reference of replica dp_index: micro-batch by micro-batch, forward then
// backward through every stage; returns the loss summed in micro-batch order.
static double chain_reference(chain *c) {
  double x[kCells], y[kCells], g[kCells], dx[kCells], loss = 0;
  chain_zero_grads(c);
  for (int j = 0; j < c->microbatches; j++) {
    chain_input(c, j, x);
    for (int s = 0; s < c->stages; s++) {
      stage_forward(c, s, j, x, y);
      memcpy(x, y, sizeof x);
    }
    loss += c->loss[j];
    memcpy(g, cell(c->saved_dy, c, c->stages - 1, j), sizeof g);
    for (int s = c->stages - 1; s >= 0; s--) {
      stage_backward_input(c, s, j, g, s > 0 ? dx : NULL);
      stage_backward_weight(c, s, j);
      memcpy(g, dx, sizeof g);
    }
  }
  return loss;
}

static void expect_same(check_state *st, const char *what, const double *got, const double *want,
                        size_t n) {
  for (size_t i = 0; i < n; i++) expect_near(st, what, i, got[i], want[i], 0);
}

// One schedule on (pp, dp): two steps, each against the reference.
static void run_case(check_state *st, loom_group *pp, loom_group *dp, int dp_index,
                     loom_pipeline_kind kind, int microbatches, int chunks) {
  int p = loom_group_size(pp), me = loom_group_rank(pp);
  loom_pipeline_schedule *schedule;
  CHECK_OK(st, loom_pipeline_schedule_create(kind, p, microbatches, chunks, &schedule));
  int S = loom_pipeline_schedule_stages(schedule);
  st->seed++;
  chain run, ref[2];
  if (chain_init(&run, S, microbatches, st->seed, dp_index) || chain_init(&ref[0], S, microbatches, st->seed, 0) ||
      chain_init(&ref[1], S, microbatches, st->seed, 1)) {
    fprintf(stderr, "rank %d: out of memory\n", st->rank);
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  run.dp = dp;
  int replicas = loom_group_size(dp);
  double want_loss = chain_reference(&ref[0]);
  if (replicas == 2) { // the reduced gradient: replica 0's plus replica 1's
    double other = chain_reference(&ref[1]);
    want_loss = dp_index == 0 ? want_loss : other;
    for (size_t i = 0; i < (size_t)S * kWidth * kWidth; i++) ref[0].grad_weight[i] += ref[1].grad_weight[i];
    for (size_t i = 0; i < (size_t)S * kWidth; i++) ref[0].grad_bias[i] += ref[1].grad_bias[i];
  }
  loom_pipeline_tensor boundaries[64];
  for (int b = 0; b < S - 1; b++) boundaries[b] = (loom_pipeline_tensor){kCells, LOOM_FLOAT64};
  loom_pipeline_executor_params params = LOOM_PIPELINE_EXECUTOR_PARAMS_INIT;
  params.schedule = schedule, params.boundaries = boundaries;
  params.ops = (loom_pipeline_stage_ops){.user = &run, .forward = on_forward, .backward = on_backward,
                                         .backward_weight = on_backward_weight,
                                         .stage_finished = on_stage_finished};
  loom_pipeline_executor *exec;
  CHECK_OK(st, loom_pipeline_executor_create(pp, &params, &exec));
  char what[96];
  for (int step = 0; step < 2; step++) {
    chain_zero_grads(&run);
    memset(run.loss, 0, sizeof(double) * (size_t)microbatches);
    run.reduction_count = 0;
    CHECK_OK(st, loom_pipeline_executor_step(exec));
    CHECK_OK(st, loom_wait_all(run.reductions, run.reduction_count));
    for (int c = 0; c < loom_pipeline_schedule_chunks(schedule); c++) {
      int s = loom_pipeline_rank_stage(schedule, me, c);
      snprintf(what, sizeof what, "%s pp=%d dp=%d m=%d step %d: stage %d weight gradient",
               loom_pipeline_kind_name(kind), p, replicas, microbatches, step, s);
      expect_same(st, what, run.grad_weight + (size_t)s * kWidth * kWidth,
                  ref[0].grad_weight + (size_t)s * kWidth * kWidth, kWidth * kWidth);
      expect_same(st, what, run.grad_bias + (size_t)s * kWidth, ref[0].grad_bias + (size_t)s * kWidth, kWidth);
      if (s == S - 1) {
        double loss = 0;
        for (int j = 0; j < microbatches; j++) loss += run.loss[j];
        snprintf(what, sizeof what, "%s pp=%d m=%d step %d: loss", loom_pipeline_kind_name(kind), p,
                 microbatches, step);
        expect_near(st, what, 0, loss, want_loss, 0);
      }
    }
  }
  loom_pipeline_executor_destroy(exec);
  loom_pipeline_schedule_destroy(schedule);
  chain_free(&run), chain_free(&ref[0]), chain_free(&ref[1]);
}

// Rank 0 declares a different first boundary: every rank's create fails naming stages 0 and 1.
static void test_shape_mismatch(check_state *st, loom_group *pp) {
  int p = loom_group_size(pp);
  if (p < 2) return;
  loom_pipeline_schedule *schedule;
  CHECK_OK(st, loom_pipeline_schedule_create(LOOM_PIPELINE_1F1B, p, p, 0, &schedule));
  loom_pipeline_tensor boundaries[64];
  for (int b = 0; b < p - 1; b++) boundaries[b] = (loom_pipeline_tensor){kCells, LOOM_FLOAT64};
  if (loom_group_rank(pp) == 0) boundaries[0].count = kCells + 1;
  chain unused;
  loom_pipeline_executor_params params = LOOM_PIPELINE_EXECUTOR_PARAMS_INIT;
  params.schedule = schedule, params.boundaries = boundaries;
  params.ops = (loom_pipeline_stage_ops){.user = &unused, .forward = on_forward, .backward = on_backward};
  loom_pipeline_executor *exec = NULL;
  loom_status status = loom_pipeline_executor_create(pp, &params, &exec);
  st->checks++;
  if (status != LOOM_ERR_ARG || exec != NULL ||
      !strstr(loom_error_string(), "stage 0 (pipeline rank 0) sends 16 x float64, stage 1 "
                                   "(pipeline rank 1) expects 15 x float64")) {
    st->failures++;
    fprintf(stderr, "rank %d: FAIL shape mismatch: status %d: %s\n", st->rank, (int)status,
            loom_error_string());
  }
  loom_pipeline_executor_destroy(exec);
  loom_pipeline_schedule_destroy(schedule);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  int early = check_start(&st, &config, &argc, &argv, 7919u);
  if (early >= 0) return early;
  // pp over the whole world, then pp = size / 2 with dp 2 when the size is even
  for (int dp = 1; dp <= 2; dp++) {
    if (st.size % dp || (dp == 2 && st.size < 4)) continue;
    loom_mesh_shape shape = {.pp = st.size / dp, .dp = dp, .sp = 1, .ep = 1};
    loom_mesh *mesh;
    CHECK_OK(&st, loom_mesh_create(st.ctx, &shape, &mesh));
    loom_group *pp = loom_mesh_group(mesh, LOOM_AXIS_PP), *dp_group = loom_mesh_group(mesh, LOOM_AXIS_DP);
    if (!pp || !dp_group) CHECK_OK(&st, LOOM_ERR_INTERNAL);
    int p = shape.pp, dp_index = loom_mesh_my_coords(mesh).dp;
    const int counts[] = {1, p, 2 * p + 1};
    for (int k = 0; k < LOOM_PIPELINE_KIND_COUNT; k++)
      for (int i = 0; i < 3; i++) {
        int m = counts[i];
        if ((k == LOOM_PIPELINE_INTERLEAVED || k == LOOM_PIPELINE_ZBV) && m < p) continue;
        run_case(&st, pp, dp_group, dp_index, (loom_pipeline_kind)k, m, 0);
        if (k == LOOM_PIPELINE_INTERLEAVED) run_case(&st, pp, dp_group, dp_index, (loom_pipeline_kind)k, m, 3);
      }
    if (dp == 1) test_shape_mismatch(&st, pp);
    CHECK_OK(&st, loom_mesh_destroy(mesh));
  }
  int code = check_finish(&st, "test_pipeline");
  loom_finalize(st.ctx);
  return code;
}
