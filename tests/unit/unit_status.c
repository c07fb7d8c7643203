/* Unit tests of loom_status: every status has a unique name and message from the X-macro, error
 * messages are formatted, chained, truncated and kept per thread, and LOOM_CHECK / _GOTO pass
 * the status up after evaluating their expression exactly once. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "runtime/rng.h"
#include "runtime/status.h"
#include "unit.h"

static void test_status_names(void) {
  static const struct {
    loom_status value;
    const char *name, *message;
  } map[] = {
#define STATUS_ROW(name, value, msg) {LOOM_##name, "LOOM_" #name, msg},
      LOOM_STATUS_MAP(STATUS_ROW)
#undef STATUS_ROW
  };
  const int n = (int)(sizeof map / sizeof map[0]);
  CHECK(n >= 14, "only %d statuses in the map", n);
  for (int i = 0; i < n; i++) {
    const char *name = loom_status_name(map[i].value);
    const char *message = loom_status_message(map[i].value);
    CHECK(strcmp(name, map[i].name) == 0, "value %d named %s", (int)map[i].value, name);
    CHECK(strncmp(name, "LOOM_", 5) == 0, "%s", name);
    CHECK(message && message[0] && strcmp(message, map[i].message) == 0, "%s: '%s'", name,
          message ? message : "(null)");
    for (int j = 0; j < i; j++) {
      CHECK(map[i].value != map[j].value, "%s and %s share %d", map[i].name, map[j].name,
            (int)map[i].value);
      CHECK(strcmp(name, loom_status_name(map[j].value)) != 0, "%s named twice", name);
    }
  }
  CHECK(LOOM_OK == 0 && LOOM_INPROGRESS > 0 && LOOM_ERR_ARG < 0, "OK/INPROGRESS/ERR signs");
  const int unknown[] = {2, 77, -13, -1000};
  for (int i = 0; i < 4; i++) {
    const char *name = loom_status_name((loom_status)unknown[i]);
    CHECK(strcmp(name, "LOOM_UNKNOWN_STATUS") == 0, "%d named %s", unknown[i], name);
    const char *message = loom_status_message((loom_status)unknown[i]);
    CHECK(message && message[0], "no message for %d", unknown[i]);
  }
}

static void test_status_error_messages(void) {
  loom_rng rng = input_rng(1);
  static const loom_status errors[] = {LOOM_ERR_ARG,     LOOM_ERR_NOMEM,       LOOM_ERR_MPI,
                                       LOOM_ERR_NCCL,    LOOM_ERR_CUDA,        LOOM_ERR_HDF5,
                                       LOOM_ERR_IO,      LOOM_ERR_TIMEOUT,     LOOM_ERR_CORRUPT,
                                       LOOM_ERR_STATE,   LOOM_ERR_UNSUPPORTED, LOOM_ERR_INTERNAL};
  for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
    unsigned rank = loom_rng_u32(&rng) % 4096;
    double value = loom_rng_normal(&rng);
    char expected[256], prefix[64];
    snprintf(expected, sizeof expected, "tensor w%u on rank %u: value %.6f", rank + 1, rank,
             value);
    snprintf(prefix, sizeof prefix, "%s: ", loom_status_name(errors[i]));
    loom_error_clear();
    loom_status s = loom_error_set(errors[i], "tensor w%u on rank %u: value %.6f", rank + 1,
                                   rank, value);
    CHECK(s == errors[i], "returned %d for %d", (int)s, (int)errors[i]);
    const char *text = loom_error_string();
    CHECK(strncmp(text, prefix, strlen(prefix)) == 0, "'%s' does not start with '%s'", text,
          prefix);
    CHECK_CONTAINS(text, expected);
  }

  /* A message built from the previous one keeps the cause (formatted before it is replaced). */
  loom_error_set(LOOM_ERR_IO, "open shard-%d.h5", 17);
  loom_error_set(LOOM_ERR_CORRUPT, "checkpoint step 3: %s", loom_error_string());
  CHECK(strcmp(loom_error_string(),
               "LOOM_ERR_CORRUPT: checkpoint step 3: LOOM_ERR_IO: open shard-17.h5") == 0,
        "'%s'", loom_error_string());

  /* A long message is truncated, not overflowed. */
  char long_text[4000];
  memset(long_text, 'x', sizeof long_text - 1);
  long_text[sizeof long_text - 1] = '\0';
  loom_error_set(LOOM_ERR_ARG, "%s", long_text);
  size_t length = strlen(loom_error_string());
  CHECK(length > 100 && length < 4000, "length %zu", length);

  loom_error_restore("LOOM_ERR_MPI: restored verbatim");
  CHECK(strcmp(loom_error_string(), "LOOM_ERR_MPI: restored verbatim") == 0, "'%s'",
        loom_error_string());
  loom_error_restore(NULL);
  CHECK(loom_error_string()[0] == '\0', "'%s'", loom_error_string());
  loom_error_set(LOOM_ERR_ARG, "something");
  loom_error_clear();
  CHECK(loom_error_string()[0] == '\0', "'%s' after clear", loom_error_string());
}

static void *set_error_on_thread(void *unused) {
  loom_error_set(LOOM_ERR_TIMEOUT, "other thread");
  return NULL;
}

static void test_status_thread_local(void) {
  loom_error_set(LOOM_ERR_IO, "main thread");
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, set_error_on_thread, NULL) == 0, "pthread_create");
  pthread_join(thread, NULL);
  CHECK(strcmp(loom_error_string(), "LOOM_ERR_IO: main thread") == 0, "'%s'",
        loom_error_string());
  loom_error_clear();
}

static loom_status through_check(loom_status status, int *evaluations, int *reached) {
  LOOM_CHECK(((*evaluations)++, status));
  *reached = 1;
  return LOOM_OK;
}

static loom_status through_check_goto(loom_status status, int *cleaned) {
  loom_status result = LOOM_OK;
  LOOM_CHECK_GOTO(status, result, cleanup);
  result = LOOM_OK;
cleanup:
  *cleaned = 1;
  return result;
}

static void test_status_check_macros(void) {
  const loom_status cases[] = {LOOM_OK, LOOM_INPROGRESS, LOOM_ERR_ARG, LOOM_ERR_TIMEOUT,
                               LOOM_ERR_INTERNAL};
  for (int i = 0; i < 5; i++) {
    int evaluations = 0, reached = 0, cleaned = 0;
    loom_status s = through_check(cases[i], &evaluations, &reached);
    loom_status g = through_check_goto(cases[i], &cleaned);
    CHECK(evaluations == 1, "expression evaluated %d times", evaluations);
    CHECK(cleaned == 1, "cleanup skipped for %d", (int)cases[i]);
    if (cases[i] < 0) {
      CHECK(s == cases[i] && !reached, "LOOM_CHECK(%d) gave %d, reached %d", (int)cases[i],
            (int)s, reached);
      CHECK(g == cases[i], "LOOM_CHECK_GOTO(%d) gave %d", (int)cases[i], (int)g);
    } else {
      CHECK(s == LOOM_OK && reached, "LOOM_CHECK(%d) stopped (%d)", (int)cases[i], (int)s);
      CHECK(g == LOOM_OK, "LOOM_CHECK_GOTO(%d) gave %d", (int)cases[i], (int)g);
    }
  }
}

int register_status_suite(void) {
  static const unit_test tests[] = {
      {"names and messages", test_status_names},
      {"error messages", test_status_error_messages},
      {"thread-local message", test_status_thread_local},
      {"LOOM_CHECK", test_status_check_macros},
      {NULL, NULL}};
  return unit_add_suite("status", tests);
}
