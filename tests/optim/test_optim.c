/* Optimizer kernels, schedules and clipping against plain double-precision references, with
 * fresh random parameters and gradients each case. Tolerance: 20 steps of float32 updates
 * drift from the double reference by a few float32 ulps of the parameter scale; 2e-6
 * absolute on parameters of magnitude <= 1 leaves room for that and nothing more. */
#include <CUnit/Basic.h>
#include <loom.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { N = 1000, STEPS = 20 };
static uint64_t next_seed = 42;

static void random_fill(float *out, double *copy, size_t n, double scale) {
  loom_rng rng;
  loom_rng_init(&rng, next_seed++, LOOM_RNG_TEST, 0);
  for (size_t i = 0; i < n; i++) {
    out[i] = (float)((2 * loom_rng_uniform(&rng) - 1) * scale);
    if (copy) copy[i] = out[i];
  }
}

static double max_abs_diff(const float *a, const double *b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
  return worst;
}

static void check_sgd(double momentum, double wd, int nesterov) {
  float p[N], g[N], m[N];
  double rp[N], rg[N], rm[N];
  random_fill(p, rp, N, 1.0);
  double lr = 0.01;
  for (int step = 0; step < STEPS; step++) {
    random_fill(g, rg, N, 0.5);
    loom_sgd_update(N, p, g, m, (float)lr, (float)momentum, (float)wd, nesterov, step == 0);
    for (int i = 0; i < N; i++) {
      double d = rg[i] + wd * rp[i];
      if (momentum != 0) {
        rm[i] = step == 0 ? d : momentum * rm[i] + d;
        d = nesterov ? d + momentum * rm[i] : rm[i];
      }
      rp[i] -= lr * d;
    }
  }
  CU_ASSERT(max_abs_diff(p, rp, N) < 2e-6);
  if (momentum != 0) CU_ASSERT(max_abs_diff(m, rm, N) < 2e-5);
}

static void test_sgd_plain(void) { check_sgd(0, 0, 0); }
static void test_sgd_momentum(void) { check_sgd(0.9, 0, 0); }
static void test_sgd_nesterov_decay(void) { check_sgd(0.9, 1e-2, 1); }

static void test_adamw(void) {
  float p[N], g[N], m[N] = {0}, v[N] = {0};
  double rp[N], rg[N], rm[N] = {0}, rv[N] = {0};
  random_fill(p, rp, N, 1.0);
  const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  for (int t = 1; t <= STEPS; t++) {
    random_fill(g, rg, N, 0.5);
    loom_adamw_update(N, p, g, m, v, t, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd);
    for (int i = 0; i < N; i++) {
      rp[i] *= 1 - lr * wd;
      rm[i] = b1 * rm[i] + (1 - b1) * rg[i];
      rv[i] = b2 * rv[i] + (1 - b2) * rg[i] * rg[i];
      double mhat = rm[i] / (1 - pow(b1, t)), vhat = rv[i] / (1 - pow(b2, t));
      rp[i] -= lr * mhat / (sqrt(vhat) + eps);
    }
  }
  CU_ASSERT(max_abs_diff(p, rp, N) < 2e-6);
  CU_ASSERT(max_abs_diff(m, rm, N) < 1e-6);
}

/* Mixed precision: float32 master weights, bfloat16 gradients, a bfloat16 model copy. The
 * reference widens the same bf16 gradients in double; the copy must be the master rounded to
 * nearest even (checked against the public converter). Both optimizers, through the object. */
static void check_mixed(loom_optim_kind kind) {
  float p[N], g32[N];
  uint16_t g[N], copy[N];
  double rp[N], rg[N], rm[N] = {0}, rv[N] = {0};
  random_fill(p, rp, N, 1.0);
  loom_optim_params params = LOOM_OPTIM_PARAMS_INIT;
  params.kind = kind;
  params.momentum = kind == LOOM_OPTIM_SGD ? 0.9 : 0.0;
  params.weight_decay = 0.01;
  loom_optim *o = NULL;
  CU_ASSERT_FATAL(loom_optim_create(&params, &o) == LOOM_OK);
  CU_ASSERT_FATAL(loom_optim_add_mixed(o, "w", loom_buf_host(p, N, LOOM_FLOAT32),
                                       loom_buf_host(g, N, LOOM_BFLOAT16),
                                       loom_buf_host(copy, N, LOOM_BFLOAT16)) == LOOM_OK);
  const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01, mu = 0.9;
  for (int t = 1; t <= STEPS; t++) {
    random_fill(g32, rg, N, 0.5);
    for (int i = 0; i < N; i++) {
      g[i] = loom_float_to_bf16(g32[i]);
      rg[i] = loom_bf16_to_float(g[i]); /* the gradient the optimizer sees, exactly */
    }
    CU_ASSERT_FATAL(loom_optim_step(o, lr) == LOOM_OK);
    for (int i = 0; i < N; i++) {
      if (kind == LOOM_OPTIM_SGD) {
        double gi = rg[i] + wd * rp[i];
        rm[i] = t == 1 ? gi : mu * rm[i] + gi;
        rp[i] -= lr * rm[i];
      } else {
        rp[i] *= 1 - lr * wd;
        rm[i] = b1 * rm[i] + (1 - b1) * rg[i];
        rv[i] = b2 * rv[i] + (1 - b2) * rg[i] * rg[i];
        rp[i] -= lr * (rm[i] / (1 - pow(b1, t))) / (sqrt(rv[i] / (1 - pow(b2, t))) + eps);
      }
    }
  }
  CU_ASSERT(max_abs_diff(p, rp, N) < 2e-5);
  int copies_exact = 1;
  for (int i = 0; i < N; i++) copies_exact &= copy[i] == loom_float_to_bf16(p[i]);
  CU_ASSERT(copies_exact);
  /* A float32 gradient with a float16 copy, or a copy of another count, is refused. */
  CU_ASSERT(loom_optim_add_mixed(o, "bad", loom_buf_host(p, N, LOOM_FLOAT32),
                                 loom_buf_host(g32, N, LOOM_FLOAT32),
                                 loom_buf_host(copy, N, LOOM_FLOAT16)) == LOOM_ERR_ARG);
  CU_ASSERT(loom_optim_add_mixed(o, "bad", loom_buf_host(p, N, LOOM_FLOAT32),
                                 loom_buf_host(g32, N, LOOM_FLOAT32),
                                 loom_buf_host(copy, N - 1, LOOM_BFLOAT16)) == LOOM_ERR_ARG);
  CU_ASSERT(loom_optim_add_mixed(o, "bad", loom_buf_host(p, N, LOOM_FLOAT32),
                                 loom_buf_host(g, N, LOOM_FLOAT16), (loom_buf){0}) == LOOM_ERR_ARG);
  loom_optim_destroy(o);
}
static void test_mixed_sgd(void) { check_mixed(LOOM_OPTIM_SGD); }
static void test_mixed_adamw(void) { check_mixed(LOOM_OPTIM_ADAMW); }

/* The optimizer object applies the same kernels and exposes its state by name. */
static void test_optim_object(void) {
  float p[N], g[N], p_ref[N], g_ref[N], m_ref[N] = {0}, v_ref[N] = {0};
  random_fill(p, NULL, N, 1.0);
  memcpy(p_ref, p, sizeof p);
  loom_optim_params params = LOOM_OPTIM_PARAMS_INIT;
  params.weight_decay = 0.01;
  loom_optim *o = NULL;
  CU_ASSERT_EQUAL_FATAL(loom_optim_create(&params, &o), LOOM_OK);
  CU_ASSERT_EQUAL(loom_optim_add(o, "w", loom_buf_host(p, N, LOOM_FLOAT32),
                                 loom_buf_host(g, N, LOOM_FLOAT32)), LOOM_OK);
  CU_ASSERT_EQUAL(loom_optim_add(o, "w", loom_buf_host(p, N, LOOM_FLOAT32),
                                 loom_buf_host(g, N, LOOM_FLOAT32)), LOOM_ERR_ARG);
  CU_ASSERT_EQUAL(loom_optim_add(o, "x", loom_buf_host(p, N, LOOM_FLOAT64),
                                 loom_buf_host(g, N, LOOM_FLOAT32)), LOOM_ERR_ARG);
  for (int t = 1; t <= 3; t++) {
    random_fill(g, NULL, N, 0.5);
    memcpy(g_ref, g, sizeof g);
    CU_ASSERT_EQUAL(loom_optim_step(o, 1e-3), LOOM_OK);
    loom_adamw_update(N, p_ref, g_ref, m_ref, v_ref, t, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f);
  }
  CU_ASSERT(memcmp(p, p_ref, sizeof p) == 0);
  CU_ASSERT_EQUAL(loom_optim_step_count(o), 3);
  CU_ASSERT_EQUAL(loom_optim_state_count(o), 3);
  const char *name = NULL;
  loom_buf buf;
  CU_ASSERT_EQUAL(loom_optim_state_at(o, 0, &name, &buf), LOOM_OK);
  CU_ASSERT_STRING_EQUAL(name, "optim.step");
  CU_ASSERT_EQUAL(*(int64_t *)buf.ptr, 3);
  CU_ASSERT_EQUAL(loom_optim_state_at(o, 1, &name, &buf), LOOM_OK);
  CU_ASSERT_STRING_EQUAL(name, "w.exp_avg");
  CU_ASSERT(memcmp(buf.ptr, m_ref, sizeof m_ref) == 0);
  CU_ASSERT_EQUAL(loom_optim_state_at(o, 2, &name, &buf), LOOM_OK);
  CU_ASSERT_STRING_EQUAL(name, "w.exp_avg_sq");
  CU_ASSERT(memcmp(buf.ptr, v_ref, sizeof v_ref) == 0);
  CU_ASSERT_EQUAL(loom_optim_state_at(o, 3, &name, &buf), LOOM_ERR_ARG);
  CU_ASSERT_EQUAL(loom_optim_step(o, -1), LOOM_ERR_ARG);
  loom_optim_destroy(o);
}

static void test_optim_bad_params(void) {
  loom_optim *o = NULL;
  loom_optim_params p = LOOM_OPTIM_PARAMS_INIT;
  p.beta1 = 1.0;
  CU_ASSERT_EQUAL(loom_optim_create(&p, &o), LOOM_ERR_ARG);
  CU_ASSERT(strstr(loom_error_string(), "betas") != NULL);
  p = (loom_optim_params)LOOM_OPTIM_PARAMS_INIT;
  p.kind = LOOM_OPTIM_SGD;
  p.nesterov = 1;
  CU_ASSERT_EQUAL(loom_optim_create(&p, &o), LOOM_ERR_ARG);
  p.momentum = 0.9;
  p.weight_decay = -1;
  CU_ASSERT_EQUAL(loom_optim_create(&p, &o), LOOM_ERR_ARG);
  CU_ASSERT(strstr(loom_error_string(), "weight_decay") != NULL);
}

static void test_schedule(void) {
  loom_schedule s = {.kind = LOOM_SCHEDULE_COSINE, .peak = 1.0, .floor = 0.1, .warmup_steps = 10,
                     .total_steps = 110};
  CU_ASSERT_EQUAL(loom_schedule_check(&s), LOOM_OK);
  CU_ASSERT_DOUBLE_EQUAL(loom_schedule_lr(&s, 0), 0.1, 1e-12);
  CU_ASSERT_DOUBLE_EQUAL(loom_schedule_lr(&s, 4), 0.5, 1e-12);
  CU_ASSERT_DOUBLE_EQUAL(loom_schedule_lr(&s, 10), 1.0, 1e-12);
  CU_ASSERT_DOUBLE_EQUAL(loom_schedule_lr(&s, 60), 0.55, 1e-12); /* half way: mean of peak, floor */
  CU_ASSERT_DOUBLE_EQUAL(loom_schedule_lr(&s, 110), 0.1, 1e-12);
  CU_ASSERT_DOUBLE_EQUAL(loom_schedule_lr(&s, 500), 0.1, 1e-12);
  for (int64_t t = 11; t < 110; t++) CU_ASSERT(loom_schedule_lr(&s, t) <= loom_schedule_lr(&s, t - 1));
  s.kind = LOOM_SCHEDULE_CONSTANT;
  CU_ASSERT_DOUBLE_EQUAL(loom_schedule_lr(&s, 1000), 1.0, 1e-12);
  s.kind = LOOM_SCHEDULE_COSINE;
  s.total_steps = 5;
  CU_ASSERT_EQUAL(loom_schedule_check(&s), LOOM_ERR_ARG);
  s.total_steps = 110;
  s.floor = 2;
  CU_ASSERT_EQUAL(loom_schedule_check(&s), LOOM_ERR_ARG);
  CU_ASSERT_DOUBLE_EQUAL(loom_lr_sqrt_scale(0.1, 256, 1024), 0.2, 1e-12);
  CU_ASSERT_DOUBLE_EQUAL(loom_lr_sqrt_scale(0.1, 1024, 256), 0.05, 1e-12);
}

static void test_clip(void) {
  float a[3] = {3, 0, 0};
  double b[2] = {0, 4};
  loom_buf grads[2] = {loom_buf_host(a, 3, LOOM_FLOAT32), loom_buf_host(b, 2, LOOM_FLOAT64)};
  double norm = 0;
  CU_ASSERT_EQUAL(loom_grad_norm(NULL, NULL, grads, 2, &norm), LOOM_OK);
  CU_ASSERT_DOUBLE_EQUAL(norm, 5.0, 1e-12);
  CU_ASSERT_EQUAL(loom_clip_grad_norm(NULL, NULL, grads, 2, 10.0, &norm), LOOM_OK);
  CU_ASSERT_EQUAL(a[0], 3.0f); /* below the limit: untouched */
  CU_ASSERT_EQUAL(loom_clip_grad_norm(NULL, NULL, grads, 2, 1.0, &norm), LOOM_OK);
  CU_ASSERT_DOUBLE_EQUAL(norm, 5.0, 1e-12);
  CU_ASSERT_DOUBLE_EQUAL(a[0], 0.6, 1e-6);
  CU_ASSERT_DOUBLE_EQUAL(b[1], 0.8, 1e-6);
  CU_ASSERT_EQUAL(loom_clip_grad_norm(NULL, NULL, grads, 2, 0.0, &norm), LOOM_ERR_ARG);
  a[1] = NAN;
  CU_ASSERT_EQUAL(loom_clip_grad_norm(NULL, NULL, grads, 2, 1.0, &norm), LOOM_ERR_ARG);
  int32_t ints[1] = {1};
  loom_buf bad = loom_buf_host(ints, 1, LOOM_INT32);
  CU_ASSERT_EQUAL(loom_grad_norm(NULL, NULL, &bad, 1, &norm), LOOM_ERR_ARG);
}

int main(void) {
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite suite = CU_add_suite("optim", NULL, NULL);
  CU_add_test(suite, "sgd plain", test_sgd_plain);
  CU_add_test(suite, "sgd momentum", test_sgd_momentum);
  CU_add_test(suite, "sgd nesterov + weight decay", test_sgd_nesterov_decay);
  CU_add_test(suite, "adamw", test_adamw);
  CU_add_test(suite, "optimizer object and named state", test_optim_object);
  CU_add_test(suite, "mixed precision sgd (bf16 gradients, bf16 copy)", test_mixed_sgd);
  CU_add_test(suite, "mixed precision adamw (bf16 gradients, bf16 copy)", test_mixed_adamw);
  CU_add_test(suite, "optimizer bad parameters", test_optim_bad_params);
  CU_add_test(suite, "schedule and sqrt scaling", test_schedule);
  CU_add_test(suite, "global-norm clipping", test_clip);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  CU_cleanup_registry();
  return failed ? 1 : 0;
}
