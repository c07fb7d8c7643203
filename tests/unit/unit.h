/* What the unit test files share: input streams from the run's seed, CHECK assertions whose
 * failure records carry the values involved and the seed, the suite table type, and the one
 * registration function each unit_<suite>.c exposes (main calls them in order). */
#ifndef LOOM_TESTS_UNIT_H
#define LOOM_TESTS_UNIT_H

#include <stdint.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "runtime/rng.h"

/* A test input stream; each test takes its own stream id so tests stay independent. */
loom_rng input_rng(uint32_t stream);

/* Fisher-Yates shuffle of values[0, n) with draws from rng. */
void shuffle(loom_rng *rng, int *values, int n);

/* A failed CUnit assertion at file:line whose record carries the values involved and the seed
 * (CUnit copies it). check_failed(line, ...) names the calling file. */
void unit_check_failed(const char *file, unsigned line, const char *condition, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));
#define check_failed(line, ...) unit_check_failed(__FILE__, (line), __VA_ARGS__)
#define CHECK(cond, ...)                                                             \
  do {                                                                               \
    if (cond)                                                                        \
      CU_assertImplementation(CU_TRUE, __LINE__, #cond, __FILE__, "", CU_FALSE);     \
    else                                                                             \
      check_failed(__LINE__, #cond, __VA_ARGS__);                                    \
  } while (0)
#define CHECK_CONTAINS(text, needle) \
  CHECK(strstr((text), (needle)) != NULL, "'%s' lacks '%s'", (text), (needle))

/* One test of a suite; a suite's table ends with {NULL, NULL}. */
typedef struct {
  const char *name;
  CU_TestFunc run;
} unit_test;

/* Adds a suite and its tests to the CUnit registry: 0, or -1 with the cause on stderr. */
int unit_add_suite(const char *name, const unit_test *tests);

/* One per unit_<suite>.c; each adds its suite through unit_add_suite. */
int register_status_suite(void);
int register_config_suite(void);
int register_mesh_suite(void);
int register_rng_suite(void);
int register_dtype_suite(void);
int register_sparse_suite(void);
int register_executor_suite(void);
int register_state_suite(void);
int register_erasure_suite(void);
int register_snapshot_sum_suite(void);
int register_pipeline_suite(void);
int register_mixed_suite(void);

#endif
