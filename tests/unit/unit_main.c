/* Driver of the single-process unit tests of loom's pure parts (status, config, mesh, rng, dtype,
 * sparse plans, executor, pipeline schedules, mixed-length plans; no MPI, no loom_init): seed, shared CHECK helpers, suite registry.
 * Inputs come from a fresh seed per run, printed first; pass it back as argv[1] to replay. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "unit.h"

/* Root of every input of this run (set once in main, read by the tests). */
static uint64_t unit_seed;

loom_rng input_rng(uint32_t stream) {
  loom_rng rng;
  loom_rng_init(&rng, unit_seed, LOOM_RNG_TEST, stream);
  return rng;
}

void shuffle(loom_rng *rng, int *values, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)loom_rng_below(rng, (uint64_t)i + 1), t = values[i];
    values[i] = values[j];
    values[j] = t;
  }
}

void unit_check_failed(const char *file, unsigned line, const char *condition, const char *fmt,
                       ...) {
  char detail[400], text[600];
  va_list args;
  va_start(args, fmt);
  vsnprintf(detail, sizeof detail, fmt, args);
  va_end(args);
  snprintf(text, sizeof text, "%s [%s] (seed %" PRIu64 ")", condition, detail, unit_seed);
  CU_assertImplementation(CU_FALSE, line, text, file, "", CU_FALSE);
}

int unit_add_suite(const char *name, const unit_test *tests) {
  CU_pSuite suite = CU_add_suite(name, NULL, NULL);
  for (const unit_test *t = tests; suite && t->name; t++)
    if (!CU_add_test(suite, t->name, t->run)) suite = NULL;
  if (!suite) {
    fprintf(stderr, "test_unit: adding suite %s: %s\n", name, CU_get_error_msg());
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) {
    unit_seed = strtoull(argv[1], NULL, 0);
  } else {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unit_seed = ((uint64_t)now.tv_sec * 1000000007ull) ^ (uint64_t)now.tv_nsec ^
                ((uint64_t)getpid() << 32);
  }
  printf("test_unit: seed %" PRIu64 " (replay with: test_unit %" PRIu64 ")\n", unit_seed,
         unit_seed);

  /* the order the suites run in */
  static int (*const register_suites[])(void) = {
      register_status_suite, register_config_suite, register_mesh_suite,
      register_rng_suite,    register_dtype_suite,  register_sparse_suite,
      register_executor_suite, register_state_suite, register_erasure_suite, register_snapshot_sum_suite,
      register_pipeline_suite, register_mixed_suite};

  if (CU_initialize_registry() != CUE_SUCCESS) {
    fprintf(stderr, "test_unit: CUnit registry: %s\n", CU_get_error_msg());
    return 1;
  }
  for (size_t s = 0; s < sizeof register_suites / sizeof register_suites[0]; s++) {
    if (register_suites[s]() != 0) {
      CU_cleanup_registry();
      return 1;
    }
  }
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failures = CU_get_number_of_failures();
  unsigned tests_failed = CU_get_number_of_tests_failed();
  int run_error = CU_get_error() != CUE_SUCCESS;
  CU_cleanup_registry();
  if (failures || tests_failed || run_error) {
    fprintf(stderr, "test_unit: %u failed assertions in %u tests (seed %" PRIu64 ")\n",
            failures, tests_failed, unit_seed);
    return 1;
  }
  return 0;
}
