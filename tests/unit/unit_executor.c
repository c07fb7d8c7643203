/* Unit tests of the serial executor: posted jobs run one at a time in posting order off the
 * caller's thread, a blocking run waits its turn, and failures come back with their message
 * through loom_test, loom_wait and loom_wait_all, threaded or not. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/executor.h"
#include "runtime/req.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#include "unit.h"

/* A latch a job blocks on until the test opens it. */
typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t opened;
  int open;
} gate;

static void gate_init(gate *g) {
  pthread_mutex_init(&g->lock, NULL);
  pthread_cond_init(&g->opened, NULL);
  g->open = 0;
}
static void gate_destroy(gate *g) {
  pthread_mutex_destroy(&g->lock);
  pthread_cond_destroy(&g->opened);
}
static void gate_open(gate *g) {
  pthread_mutex_lock(&g->lock);
  g->open = 1;
  pthread_cond_broadcast(&g->opened);
  pthread_mutex_unlock(&g->lock);
}
static void gate_pass(gate *g) {
  pthread_mutex_lock(&g->lock);
  while (!g->open) pthread_cond_wait(&g->opened, &g->lock);
  pthread_mutex_unlock(&g->lock);
}
static void *gate_open_later(void *opaque) {
  usleep(200 * 1000);
  gate_open(opaque);
  return NULL;
}

enum { MAX_JOBS = 1100 };

/* What jobs record; written only from inside jobs, which the executor runs one at a time. */
typedef struct {
  int order[MAX_JOBS];
  int count;
  int released[MAX_JOBS];
  pthread_t ran_on[MAX_JOBS];
} job_log;

typedef struct {
  job_log *log;
  int index;
  loom_status result; /* what the job returns; a failure sets a message naming the index */
  unsigned spin;      /* random work so jobs take uneven time */
  gate *wait_for;     /* NULL or a gate the job blocks on first */
} job_arg;

static loom_status record_job(void *opaque) {
  job_arg *a = opaque;
  if (a->wait_for) gate_pass(a->wait_for);
  loom_rng work;
  loom_rng_init(&work, 1, LOOM_RNG_TEST, (uint32_t)a->index);
  volatile uint32_t sink = 0;
  for (unsigned i = 0; i < a->spin; i++) sink ^= loom_rng_u32(&work);
  a->log->ran_on[a->log->count] = pthread_self();
  a->log->order[a->log->count++] = a->index;
  if (a->result < 0) return loom_error_set(a->result, "job %d failed on purpose", a->index);
  return a->result;
}

static void release_job(void *opaque) {
  job_arg *a = opaque;
  a->log->released[a->index]++;
  free(a);
}

typedef struct {
  const loom_executor *executor;
  int on_thread; /* what loom_executor_on_thread said inside the job */
} thread_probe;

static loom_status probe_thread(void *opaque) {
  thread_probe *probe = opaque;
  probe->on_thread = loom_executor_on_thread(probe->executor);
  return LOOM_OK;
}

static loom_status post_job(loom_executor *executor, job_log *log, int index,
                            loom_status result, unsigned spin, gate *wait_for, loom_req **req) {
  job_arg *a = malloc(sizeof *a);
  *a = (job_arg){log, index, result, spin, wait_for};
  return loom_executor_post(executor, record_job, a, release_job, req);
}

static void test_executor_order(void) {
  loom_rng rng = input_rng(60);
  loom_executor *executor = NULL;
  CHECK(loom_executor_create("unit-exec", 1, &executor) == LOOM_OK, "%s", loom_error_string());
  if (!executor) return;
  job_log *log = calloc(1, sizeof *log);
  loom_req **reqs = calloc(MAX_JOBS, sizeof *reqs);
  gate start;
  gate_init(&start);
  enum { JOBS = 1000 };
  int post_failures = 0;
  for (int i = 0; i < JOBS; i++)
    post_failures += post_job(executor, log, i, LOOM_OK, (unsigned)loom_rng_below(&rng, 200),
                              i == 0 ? &start : NULL, &reqs[i]) != LOOM_OK;
  CHECK(post_failures == 0, "%d posts failed", post_failures);
  gate_open(&start);
  /* wait in a random order: completion order is the executor's, not the waiter's */
  int *wait_order = malloc(sizeof(int) * JOBS);
  for (int i = 0; i < JOBS; i++) wait_order[i] = i;
  shuffle(&rng, wait_order, JOBS);
  int failed = 0;
  for (int i = 0; i < JOBS; i++) {
    failed += loom_wait(&reqs[wait_order[i]]) != LOOM_OK;
    if (reqs[wait_order[i]] != NULL) failed++;
  }
  CHECK(failed == 0, "%d waits failed or left the handle set", failed);
  int out_of_order = 0, release_wrong = 0, on_caller = 0;
  for (int i = 0; i < JOBS; i++) {
    out_of_order += log->order[i] != i;
    release_wrong += log->released[i] != 1;
    on_caller += pthread_equal(log->ran_on[i], pthread_self()) != 0;
  }
  CHECK(log->count == JOBS && out_of_order == 0, "%d jobs ran, %d out of order", log->count,
        out_of_order);
  CHECK(release_wrong == 0, "%d jobs not released exactly once", release_wrong);
  CHECK(on_caller == 0, "%d posted jobs ran on the posting thread", on_caller);

  /* a blocking run while jobs are queued runs after them, in posting order */
  gate hold;
  gate_init(&hold);
  int base = log->count;
  for (int i = 0; i < 50; i++)
    post_job(executor, log, JOBS + i, LOOM_OK, (unsigned)loom_rng_below(&rng, 100),
             i == 0 ? &hold : NULL, &reqs[JOBS + i]);
  pthread_t opener;
  pthread_create(&opener, NULL, gate_open_later, &hold);
  job_arg inline_job = {log, JOBS + 50, LOOM_OK, 10, NULL};
  CHECK(loom_executor_run(executor, record_job, &inline_job) == LOOM_OK, "%s",
        loom_error_string());
  CHECK(log->count == base + 51, "run returned after %d of 51 jobs", log->count - base);
  int late = 0;
  for (int i = 0; i < 51 && base + i < MAX_JOBS; i++) late += log->order[base + i] != JOBS + i;
  CHECK(late == 0, "%d jobs out of order around a blocking run", late);
  for (int i = 0; i < 50; i++) loom_wait(&reqs[JOBS + i]);
  pthread_join(opener, NULL);

  /* with nothing queued, a blocking run takes the caller's thread */
  job_arg direct = {log, JOBS + 51, LOOM_OK, 0, NULL};
  CHECK(loom_executor_run(executor, record_job, &direct) == LOOM_OK, "%s", loom_error_string());
  CHECK(log->count == base + 52 && pthread_equal(log->ran_on[base + 51], pthread_self()),
        "idle blocking run did not run inline");

  /* loom_executor_on_thread: 1 only inside a job on the background thread */
  thread_probe posted = {executor, -1}, inline_probe = {executor, -1};
  loom_req *probe_req = NULL;
  loom_executor_post(executor, probe_thread, &posted, NULL, &probe_req);
  loom_wait(&probe_req);
  loom_executor_run(executor, probe_thread, &inline_probe);
  CHECK(posted.on_thread == 1 && inline_probe.on_thread == 0 &&
            loom_executor_on_thread(executor) == 0,
        "on_thread: posted %d inline %d caller %d", posted.on_thread, inline_probe.on_thread,
        loom_executor_on_thread(executor));
  loom_executor_destroy(executor);
  int release_after = 0;
  for (int i = JOBS; i < JOBS + 50; i++) release_after += log->released[i] != 1;
  CHECK(release_after == 0, "%d of the later jobs not released exactly once", release_after);
  gate_destroy(&start);
  gate_destroy(&hold);
  free(wait_order);
  free(reqs);
  free(log);
}

static void test_executor_failures(void) {
  loom_rng rng = input_rng(61);
  for (int threaded = 0; threaded <= 1; threaded++) {
    loom_executor *executor = NULL;
    CHECK(loom_executor_create("unit-fail", threaded, &executor) == LOOM_OK, "%s",
          loom_error_string());
    if (!executor) return;
    job_log *log = calloc(1, sizeof *log);
    gate hold[3];
    for (int g = 0; g < 3; g++) gate_init(&hold[g]);
    const int index = 1 + (int)loom_rng_below(&rng, 999);
    char expected[96];

    /* a failing posted job: status and message come back through loom_test */
    loom_req *req = NULL;
    loom_error_clear();
    CHECK(post_job(executor, log, index, LOOM_ERR_IO, 0, threaded ? &hold[0] : NULL, &req) ==
              LOOM_OK && req != NULL,
          "post");
    int done = -1;
    loom_status s;
    if (threaded) {
      CHECK(loom_error_string()[0] == '\0', "job message leaked to the poster: '%s'",
            loom_error_string());
      s = loom_test(&req, &done);
      CHECK(s == LOOM_INPROGRESS && done == 0 && req != NULL, "held job: test %d done %d",
            (int)s, done);
      CHECK(log->released[index] == 0, "released before it ran");
      gate_open(&hold[0]);
      for (int polls = 0; polls < 100000 && !done; polls++) {
        s = loom_test(&req, &done);
        if (!done) usleep(100);
      }
    } else {
      CHECK(log->count == 1 && log->released[index] == 1 &&
                pthread_equal(log->ran_on[0], pthread_self()),
            "unthreaded post did not complete at post time");
      loom_error_clear(); /* the inline job wrote it here; the request must bring it back */
      s = loom_test(&req, &done);
    }
    snprintf(expected, sizeof expected, "LOOM_ERR_IO: job %d failed on purpose", index);
    CHECK(done == 1 && s == LOOM_ERR_IO && req == NULL, "test: done %d status %d", done, (int)s);
    CHECK(strcmp(loom_error_string(), expected) == 0, "message '%s', want '%s'",
          loom_error_string(), expected);
    CHECK(log->released[index] == 1, "failing job released %d times", log->released[index]);

    /* the same through loom_wait */
    post_job(executor, log, index + 1, LOOM_ERR_TIMEOUT, 50, NULL, &req);
    loom_error_clear();
    s = loom_wait(&req);
    snprintf(expected, sizeof expected, "LOOM_ERR_TIMEOUT: job %d failed on purpose", index + 1);
    CHECK(s == LOOM_ERR_TIMEOUT && req == NULL, "wait gave %d", (int)s);
    CHECK(strcmp(loom_error_string(), expected) == 0, "message '%s', want '%s'",
          loom_error_string(), expected);
    CHECK(loom_wait(&req) == LOOM_OK, "wait on a NULL request");
    CHECK(loom_test(&req, &done) == LOOM_OK && done == 1, "test on a NULL request");

    /* a failing blocking run queued behind a job restores the message on the caller */
    pthread_t opener;
    post_job(executor, log, index + 2, LOOM_OK, 0, threaded ? &hold[1] : NULL, &req);
    if (threaded) pthread_create(&opener, NULL, gate_open_later, &hold[1]);
    loom_error_clear();
    job_arg failing = {log, index + 3, LOOM_ERR_CORRUPT, 0, NULL};
    s = loom_executor_run(executor, record_job, &failing);
    snprintf(expected, sizeof expected, "LOOM_ERR_CORRUPT: job %d failed on purpose", index + 3);
    CHECK(s == LOOM_ERR_CORRUPT && strcmp(loom_error_string(), expected) == 0,
          "blocking run: %d '%s'", (int)s, loom_error_string());
    CHECK(log->order[log->count - 2] == index + 2 && log->order[log->count - 1] == index + 3,
          "blocking run overtook a posted job");
    CHECK(loom_wait(&req) == LOOM_OK, "job before the run: %s", loom_error_string());
    if (threaded) pthread_join(opener, NULL);

    /* wait_all: the first failure in array order (not in time), after all completed */
    loom_req *reqs[6] = {NULL};
    CHECK(loom_req_completed(LOOM_OK, &reqs[0]) == LOOM_OK, "completed OK");
    post_job(executor, log, index + 4, LOOM_ERR_HDF5, 0, threaded ? &hold[2] : NULL, &reqs[1]);
    loom_error_set(LOOM_ERR_ARG, "second failure");
    CHECK(loom_req_completed(LOOM_ERR_ARG, &reqs[2]) == LOOM_OK, "completed ERR_ARG");
    post_job(executor, log, index + 5, LOOM_OK, 0, NULL, &reqs[4]);
    loom_error_set(LOOM_ERR_NCCL, "third failure");
    loom_req_completed(LOOM_ERR_NCCL, &reqs[5]);
    if (threaded) pthread_create(&opener, NULL, gate_open_later, &hold[2]);
    loom_error_clear();
    s = loom_wait_all(reqs, 6);
    snprintf(expected, sizeof expected, "LOOM_ERR_HDF5: job %d failed on purpose", index + 4);
    CHECK(s == LOOM_ERR_HDF5 && strcmp(loom_error_string(), expected) == 0,
          "wait_all: %d '%s'", (int)s, loom_error_string());
    int left = 0;
    for (int i = 0; i < 6; i++) left += reqs[i] != NULL;
    CHECK(left == 0, "%d requests left after wait_all", left);
    CHECK(log->released[index + 4] == 1 && log->released[index + 5] == 1, "wait_all releases");
    if (threaded) pthread_join(opener, NULL);

    loom_req *fine[3] = {NULL};
    loom_req_completed(LOOM_OK, &fine[0]);
    post_job(executor, log, index + 6, LOOM_OK, 10, NULL, &fine[1]);
    CHECK(loom_wait_all(fine, 3) == LOOM_OK, "all-OK wait_all: %s", loom_error_string());
    int total_released = 0;
    for (int i = 0; i < MAX_JOBS; i++) total_released += log->released[i];
    CHECK(total_released == 6, "%d releases for 6 posted jobs", total_released);
    thread_probe probe = {executor, -1};
    loom_executor_post(executor, probe_thread, &probe, NULL, &req);
    loom_wait(&req);
    CHECK(probe.on_thread == threaded, "on_thread %d in a posted job, threaded %d",
          probe.on_thread, threaded);
    loom_executor_destroy(executor);
    for (int g = 0; g < 3; g++) gate_destroy(&hold[g]);
    free(log);
  }
}

int register_executor_suite(void) {
  static const unit_test tests[] = {
      {"order", test_executor_order},
      {"failures and completion", test_executor_failures},
      {NULL, NULL}};
  return unit_add_suite("executor", tests);
}
