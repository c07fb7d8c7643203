/* GPU optimizer and norm kernels against the CPU kernels (double-precision references are
 * tested in tests/optim): SGD (plain, momentum, Nesterov + decay) and AdamW over 20 steps,
 * the optimizer object on device tensors, its multi-tensor launches per optimizer group
 * (bit-identical to one launch per tensor), the sum of squares and scaling. Tolerance: the GPU
 * contracts a*b+c into FMAs, so each step may differ by an ulp; 20 steps on parameters of
 * magnitude <= 1 stay within 1e-6. Exits 77 without a GPU. */
#include <loom.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/kernels.h"

enum { N = 100003, STEPS = 20 };
static int failures, checks;

static void expect(int ok, const char *what, double value) {
  checks++;
  if (!ok) {
    failures++;
    fprintf(stderr, "FAIL %s (%g)\n", what, value);
  }
}

static void fill(float *x, size_t n, uint64_t seed, double scale) {
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_TEST, 0);
  for (size_t i = 0; i < n; i++) x[i] = (float)((2 * loom_rng_uniform(&rng) - 1) * scale);
}

/* The optimizer's one launch per group (loom_optim_add_params: two groups, tensors on both
 * sides of a chunk boundary, a bfloat16 gradient with a model copy) against one launch per
 * tensor of the same element rule, over 3 AdamW steps. Not bit for bit: nvcc contracts the
 * rule's multiply-adds into FMAs differently in the two kernels (measured: 6e-8 on values
 * below 1), so within 1e-6 as the other GPU checks; the model copy within 1 bf16 ulp. */
static void check_multi_tensor(loom_ctx *ctx, void *stream, loom_optim_kind kind);

static double max_diff(const float *a, const float *b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
  return worst;
}

#define OK(call)                                                                           \
  do {                                                                                     \
    if ((call) != LOOM_OK) {                                                               \
      fprintf(stderr, "%s: %s\n", #call, loom_error_string());                             \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

int main(int argc, char **argv) {
  if (loom_device_count() == 0) { /* before MPI starts: nothing to run here */
    fprintf(stderr, "skipped: no GPU visible (or a build without CUDA)\n");
    return 77;
  }
  loom_config config = LOOM_CONFIG_INIT;
  config.device = 2;
  if (loom_config_parse(&config, NULL, 0, argc, argv) != LOOM_OK) return 2;
  loom_ctx *ctx = NULL;
  loom_status s = loom_init(&config, &argc, &argv, &ctx);
  if (s == LOOM_ERR_UNSUPPORTED) {
    fprintf(stderr, "skipped: %s\n", loom_error_string());
    return 77;
  }
  OK(s);
  void *stream = loom_ctx_stream(ctx);
  size_t bytes = N * sizeof(float);
  float *p = malloc(bytes), *g = malloc(bytes), *m = malloc(bytes), *v = malloc(bytes);
  float *out = malloc(bytes);
  float *dp, *dg, *dm, *dv;
  OK(loom_device_alloc(ctx, bytes, (void **)&dp));
  OK(loom_device_alloc(ctx, bytes, (void **)&dg));
  OK(loom_device_alloc(ctx, bytes, (void **)&dm));
  OK(loom_device_alloc(ctx, bytes, (void **)&dv));

  struct { float momentum, decay; int nesterov; const char *name; } sgd_cases[] = {
      {0, 0, 0, "sgd plain"}, {0.9f, 0, 0, "sgd momentum"}, {0.9f, 0.01f, 1, "sgd nesterov+decay"}};
  for (int c = 0; c < 3; c++) {
    fill(p, N, 1 + c, 1.0);
    memset(m, 0, bytes);
    OK(loom_device_upload(ctx, dp, p, bytes));
    OK(loom_device_upload(ctx, dm, m, bytes));
    for (int step = 0; step < STEPS; step++) {
      fill(g, N, 100 + step, 0.5);
      OK(loom_device_upload(ctx, dg, g, bytes));
      OK(loom_sgd_update_device(stream, N, dp, dg, dm, 0.01f, sgd_cases[c].momentum,
                                sgd_cases[c].decay, sgd_cases[c].nesterov, step == 0));
      loom_sgd_update(N, p, g, m, 0.01f, sgd_cases[c].momentum, sgd_cases[c].decay,
                      sgd_cases[c].nesterov, step == 0);
    }
    OK(loom_device_download(ctx, out, dp, bytes));
    double d = max_diff(out, p, N);
    expect(d <= 1e-6, sgd_cases[c].name, d);
  }

  fill(p, N, 7, 1.0);
  memset(m, 0, bytes);
  memset(v, 0, bytes);
  OK(loom_device_upload(ctx, dp, p, bytes));
  OK(loom_device_upload(ctx, dm, m, bytes));
  OK(loom_device_upload(ctx, dv, v, bytes));
  for (int t = 1; t <= STEPS; t++) {
    fill(g, N, 200 + t, 0.5);
    OK(loom_device_upload(ctx, dg, g, bytes));
    OK(loom_adamw_update_device(stream, N, dp, dg, dm, dv, t, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f));
    loom_adamw_update(N, p, g, m, v, t, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f);
  }
  OK(loom_device_download(ctx, out, dp, bytes));
  double d = max_diff(out, p, N);
  expect(d <= 1e-6, "adamw parameters", d);
  OK(loom_device_download(ctx, out, dv, bytes));
  d = max_diff(out, v, N);
  expect(d <= 1e-9, "adamw exp_avg_sq", d);

  /* Mixed precision on device: bf16 gradients and a bf16 model copy, AdamW and SGD, against
   * the CPU kernels of the same form; the copies must agree bit for bit where the masters do. */
  {
    uint16_t *g16 = malloc(N * 2), *copy = malloc(N * 2), *out16 = malloc(N * 2);
    uint16_t *dg16, *dcopy;
    OK(loom_device_alloc(ctx, N * 2, (void **)&dg16));
    OK(loom_device_alloc(ctx, N * 2, (void **)&dcopy));
    for (int kind = 0; kind < 2; kind++) {
      fill(p, N, 11 + kind, 1.0);
      memset(m, 0, bytes);
      memset(v, 0, bytes);
      OK(loom_device_upload(ctx, dp, p, bytes));
      OK(loom_device_upload(ctx, dm, m, bytes));
      OK(loom_device_upload(ctx, dv, v, bytes));
      for (int t = 1; t <= STEPS; t++) {
        fill(g, N, 400 + t, 0.5);
        for (size_t i = 0; i < N; i++) g16[i] = loom_float_to_bf16(g[i]);
        OK(loom_device_upload(ctx, dg16, g16, N * 2));
        if (kind == 0) {
          OK(loom_adamw_update_device_mixed(stream, N, dp, dg16, LOOM_BFLOAT16, dm, dv, dcopy, t,
                                            1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f));
          loom_adamw_update_mixed(N, p, g16, LOOM_BFLOAT16, m, v, copy, t, 1e-3f, 0.9f, 0.999f,
                                  1e-8f, 0.1f);
        } else {
          OK(loom_sgd_update_device_mixed(stream, N, dp, dg16, LOOM_BFLOAT16, dm, dcopy, 0.01f,
                                          0.9f, 0.01f, 0, t == 1));
          loom_sgd_update_mixed(N, p, g16, LOOM_BFLOAT16, m, copy, 0.01f, 0.9f, 0.01f, 0, t == 1);
        }
      }
      OK(loom_device_download(ctx, out, dp, bytes));
      OK(loom_device_download(ctx, out16, dcopy, N * 2));
      double d = max_diff(out, p, N);
      expect(d <= 1e-6, kind == 0 ? "mixed adamw parameters" : "mixed sgd parameters", d);
      size_t copy_mismatch = 0;
      for (size_t i = 0; i < N; i++)
        copy_mismatch += out16[i] != loom_float_to_bf16(out[i]);
      expect(copy_mismatch == 0, "mixed bf16 copy = rounded master", (double)copy_mismatch);
    }
    loom_device_free(ctx, dg16);
    loom_device_free(ctx, dcopy);
    free(g16);
    free(copy);
    free(out16);
  }

  /* The optimizer object on device tensors follows the host one. */
  loom_optim_params params = LOOM_OPTIM_PARAMS_INIT;
  params.stream = stream;
  loom_optim *host_opt = NULL, *device_opt = NULL;
  OK(loom_optim_create(&params, &host_opt));
  OK(loom_optim_create(&params, &device_opt));
  fill(p, N, 9, 1.0);
  OK(loom_device_upload(ctx, dp, p, bytes));
  OK(loom_optim_add(host_opt, "w", loom_buf_host(p, N, LOOM_FLOAT32), loom_buf_host(g, N, LOOM_FLOAT32)));
  OK(loom_optim_add(device_opt, "w", loom_buf_device(ctx, dp, N, LOOM_FLOAT32),
                    loom_buf_device(ctx, dg, N, LOOM_FLOAT32)));
  for (int t = 0; t < 5; t++) {
    fill(g, N, 300 + t, 0.5);
    OK(loom_device_upload(ctx, dg, g, bytes));
    OK(loom_optim_step(host_opt, 1e-3));
    OK(loom_optim_step(device_opt, 1e-3));
  }
  OK(loom_device_download(ctx, out, dp, bytes));
  d = max_diff(out, p, N);
  expect(d <= 1e-6, "optimizer object on device", d);
  const char *name;
  loom_buf state;
  OK(loom_optim_state_at(device_opt, 1, &name, &state));
  expect(state.device.kind == LOOM_DEVICE_CUDA && strcmp(name, "w.exp_avg") == 0,
         "device state named and on the GPU", 0);
  loom_optim_destroy(host_opt);
  loom_optim_destroy(device_opt);

  /* Sum of squares (float32 and float64) and scaling. */
  fill(p, N, 11, 1.0);
  double reference = 0;
  for (size_t i = 0; i < N; i++) reference += (double)p[i] * p[i];
  OK(loom_device_upload(ctx, dp, p, bytes));
  double got = 0;
  OK(loom_sum_squares_device(stream, dp, N, LOOM_FLOAT32, &got));
  expect(fabs(got - reference) <= 1e-12 * reference, "sum of squares float32", got - reference);
  double *h64 = malloc(N * sizeof(double)), *d64;
  for (size_t i = 0; i < N; i++) h64[i] = p[i] * 3.0;
  OK(loom_device_alloc(ctx, N * sizeof(double), (void **)&d64));
  OK(loom_device_upload(ctx, d64, h64, N * sizeof(double)));
  OK(loom_sum_squares_device(stream, d64, N, LOOM_FLOAT64, &got));
  expect(fabs(got - 9 * reference) <= 1e-12 * 9 * reference, "sum of squares float64", got);
  OK(loom_scale_device(stream, dp, N, LOOM_FLOAT32, 0.5));
  OK(loom_device_download(ctx, out, dp, bytes));
  for (size_t i = 0; i < N; i++) p[i] = (float)(p[i] * 0.5);
  expect(max_diff(out, p, N) == 0, "scale", max_diff(out, p, N));

  /* Global-norm clipping of device gradients against host clipping of the same values. */
  fill(p, N, 13, 1.0);
  fill(g, N / 2, 14, 2.0);
  OK(loom_device_upload(ctx, dp, p, bytes));
  OK(loom_device_upload(ctx, dg, g, (N / 2) * sizeof(float)));
  loom_buf host_grads[2] = {loom_buf_host(p, N, LOOM_FLOAT32), loom_buf_host(g, N / 2, LOOM_FLOAT32)};
  loom_buf device_grads[2] = {loom_buf_device(ctx, dp, N, LOOM_FLOAT32),
                              loom_buf_device(ctx, dg, N / 2, LOOM_FLOAT32)};
  double host_norm = 0, device_norm = 0;
  OK(loom_clip_grad_norm(NULL, NULL, host_grads, 2, 1.0, &host_norm));
  OK(loom_clip_grad_norm(NULL, stream, device_grads, 2, 1.0, &device_norm));
  expect(fabs(host_norm - device_norm) <= 1e-9 * host_norm, "device gradient norm", device_norm - host_norm);
  OK(loom_device_download(ctx, out, dp, bytes));
  d = max_diff(out, p, N);
  expect(d <= 1e-7, "device clipping", d);
  double after = 0;
  OK(loom_grad_norm(NULL, stream, device_grads, 2, &after));
  expect(fabs(after - 1.0) < 1e-5, "norm after clipping", after);

  check_multi_tensor(ctx, stream, LOOM_OPTIM_ADAMW);
  check_multi_tensor(ctx, stream, LOOM_OPTIM_SGD);
  printf("test_kernels: %d checks, %d failures\n", checks, failures);
  loom_device_free(ctx, dp), loom_device_free(ctx, dg), loom_device_free(ctx, dm);
  loom_device_free(ctx, dv), loom_device_free(ctx, d64);
  free(p), free(g), free(m), free(v), free(out), free(h64);
  loom_finalize(ctx);
  return failures ? 1 : 0;
}

/* One optimizer step on tensors of two groups, float32 and bfloat16 gradients, with and without
 * a bfloat16 copy (three launches), against one single-tensor launch per tensor. */
static void check_multi_tensor(loom_ctx *ctx, void *stream, loom_optim_kind kind) {
  enum { TENSORS = 5, MULTI_STEPS = 3 };
  /* sizes around the chunk (LOOM_OPTIM_CHUNK) and the per-thread unroll; the last has 17 chunks */
  const size_t sizes[TENSORS] = {3, 1000, LOOM_OPTIM_CHUNK + 7, 2 * LOOM_OPTIM_CHUNK + 5,
                                 (1u << 20) + 3};
  const int group_of[TENSORS] = {0, 1, 0, 1, 1}, bf16[TENSORS] = {0, 0, 0, 1, 0};
  const double decay[2] = {0.1, 0.0}, lr_scale[2] = {1.0, 0.5}, lr = 1e-3;
  loom_mesh_shape one = {1, 1, 1, 1};
  loom_mesh *mesh = NULL;
  loom_params *params = NULL;
  OK(loom_mesh_create(ctx, &one, &mesh));
  OK(loom_params_create(mesh, &params));
  loom_param_group slow = {.name = "slow", .weight_decay = 0.0, .lr_scale = 0.5};
  int slow_index = -1;
  OK(loom_params_add_group(params, &slow, &slow_index));
  float *value[TENSORS], *ref_value[TENSORS], *m[TENSORS], *v[TENSORS];
  void *grad[TENSORS];
  uint16_t *copy[TENSORS], *ref_copy[TENSORS];
  for (int t = 0; t < TENSORS; t++) {
    size_t n = sizes[t], grad_bytes = n * (bf16[t] ? 2 : 4);
    float *host = malloc(n * sizeof(float));
    fill(host, n, 40 + (uint64_t)t, 1.0);
    OK(loom_device_alloc(ctx, n * sizeof(float), (void **)&value[t]));
    OK(loom_device_alloc(ctx, n * sizeof(float), (void **)&ref_value[t]));
    OK(loom_device_alloc(ctx, grad_bytes, &grad[t]));
    OK(loom_device_upload(ctx, value[t], host, n * sizeof(float)));
    OK(loom_device_upload(ctx, ref_value[t], host, n * sizeof(float)));
    OK(loom_device_alloc(ctx, n * sizeof(float), (void **)&m[t]));
    OK(loom_device_alloc(ctx, n * sizeof(float), (void **)&v[t]));
    memset(host, 0, n * sizeof(float));
    OK(loom_device_upload(ctx, m[t], host, n * sizeof(float)));
    OK(loom_device_upload(ctx, v[t], host, n * sizeof(float)));
    copy[t] = ref_copy[t] = NULL;
    if (bf16[t]) {
      OK(loom_device_alloc(ctx, n * 2, (void **)&copy[t]));
      OK(loom_device_alloc(ctx, n * 2, (void **)&ref_copy[t]));
    }
    free(host);
    char name[16];
    snprintf(name, sizeof name, "t%d", t);
    loom_param q = {.name = name, .value = loom_buf_device(ctx, value[t], n, LOOM_FLOAT32),
                    .grad = loom_buf_device(ctx, grad[t], n, bf16[t] ? LOOM_BFLOAT16 : LOOM_FLOAT32),
                    .model_copy = bf16[t] ? loom_buf_device(ctx, copy[t], n, LOOM_BFLOAT16)
                                          : (loom_buf){0},
                    .spec = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {(int64_t)n}},
                    .reduce_axis = LOOM_AXIS_COUNT, .group = group_of[t] ? slow_index : 0};
    OK(loom_params_add(params, &q, NULL));
  }
  loom_optim_params op = LOOM_OPTIM_PARAMS_INIT;
  op.kind = kind;
  op.momentum = kind == LOOM_OPTIM_SGD ? 0.9 : 0.0;
  op.nesterov = kind == LOOM_OPTIM_SGD;
  op.weight_decay = decay[0];
  op.stream = stream;
  loom_optim *optim = NULL;
  OK(loom_optim_create(&op, &optim));
  OK(loom_optim_add_params(optim, params));
  for (int step = 1; step <= MULTI_STEPS; step++) {
    for (int t = 0; t < TENSORS; t++) { /* fresh gradients, the same for both */
      size_t n = sizes[t];
      float *g = malloc(n * sizeof(float));
      fill(g, n, 500 + 10 * (uint64_t)step + (uint64_t)t, 0.5);
      if (bf16[t]) {
        uint16_t *g16 = malloc(n * 2);
        for (size_t i = 0; i < n; i++) g16[i] = loom_float_to_bf16(g[i]);
        OK(loom_device_upload(ctx, grad[t], g16, n * 2));
        free(g16);
      } else {
        OK(loom_device_upload(ctx, grad[t], g, n * sizeof(float)));
      }
      free(g);
    }
    OK(loom_optim_step(optim, lr)); /* one launch per group */
    for (int t = 0; t < TENSORS; t++) { /* the reference: one launch per tensor, own moments */
      int g = group_of[t];
      loom_dtype grad_dtype = bf16[t] ? LOOM_BFLOAT16 : LOOM_FLOAT32;
      if (kind == LOOM_OPTIM_SGD)
        OK(loom_sgd_update_device_mixed(stream, sizes[t], ref_value[t], grad[t], grad_dtype, m[t],
                                        ref_copy[t], (float)(lr * lr_scale[g]), 0.9f,
                                        (float)decay[g], 1, step == 1));
      else
        OK(loom_adamw_update_device_mixed(stream, sizes[t], ref_value[t], grad[t], grad_dtype,
                                          m[t], v[t], ref_copy[t], step,
                                          (float)(lr * lr_scale[g]), 0.9f, 0.999f, 1e-8f,
                                          (float)decay[g]));
    }
  }
  for (int t = 0; t < TENSORS; t++) {
    size_t n = sizes[t];
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    OK(loom_device_download(ctx, a, value[t], n * sizeof(float)));
    OK(loom_device_download(ctx, b, ref_value[t], n * sizeof(float)));
    double diff = max_diff(a, b, n);
    expect(diff <= 1e-6, "multi-tensor launch = per-tensor launches (1e-6)", diff);
    if (bf16[t]) {
      uint16_t *ca = malloc(n * 2), *cb = malloc(n * 2);
      OK(loom_device_download(ctx, ca, copy[t], n * 2));
      OK(loom_device_download(ctx, cb, ref_copy[t], n * 2));
      size_t off = 0; /* copies of parameters that differ by an FMA may round apart: 1 ulp */
      for (size_t i = 0; i < n; i++) off += abs((int)ca[i] - (int)cb[i]) > 1;
      expect(off == 0, "multi-tensor bf16 copy within 1 ulp", (double)off);
      free(ca), free(cb);
    }
    free(a), free(b);
    loom_device_free(ctx, value[t]), loom_device_free(ctx, ref_value[t]);
    loom_device_free(ctx, grad[t]), loom_device_free(ctx, m[t]), loom_device_free(ctx, v[t]);
    loom_device_free(ctx, copy[t]), loom_device_free(ctx, ref_copy[t]);
  }
  loom_optim_destroy(optim);
  loom_params_destroy(params);
  loom_mesh_destroy(mesh);
}
