/* A serial executor: jobs run one at a time, in the order they were posted, on one
 * background thread. A blocking post runs the job on the caller's thread when nothing is
 * queued or running, so blocking calls pay no thread hand-off, and the total order of jobs
 * on a rank is always the posting order (what MPI collective matching needs). */
#ifndef LOOM_RUNTIME_EXECUTOR_H
#define LOOM_RUNTIME_EXECUTOR_H

#include "runtime/req.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_executor loom_executor;

/* A job's work; returns its status (and sets the thread's error message on failure). */
typedef loom_status (*loom_job_run_fn)(void *arg);
/* Frees the job's argument after it ran (or when it is dropped); may be NULL. */
typedef void (*loom_job_release_fn)(void *arg);

/* `threaded` = 0 makes every post run inline at post time (used when MPI did not grant
 * MPI_THREAD_MULTIPLE); `name` labels the thread for debuggers. */
loom_status loom_executor_create(const char *name, int threaded, loom_executor **out);
/* Runs every job still queued, then joins the thread. */
void loom_executor_destroy(loom_executor *executor);

/* Queues a job and returns at once with a request (enqueued, not complete). The argument
 * belongs to the executor from here on: `release` frees it after the run. */
loom_status loom_executor_post(loom_executor *executor, loom_job_run_fn run, void *arg,
                               loom_job_release_fn release, loom_req **out);

/* Runs a job to completion in posting order and returns its status. `arg` stays the
 * caller's (may be on its stack). */
loom_status loom_executor_run(loom_executor *executor, loom_job_run_fn run, void *arg);

/* 1 when called from the executor's own background thread. */
int loom_executor_on_thread(const loom_executor *executor);

/* A request that is already complete with `status` (for operations that finished inline). */
loom_status loom_req_completed(loom_status status, loom_req **out);

#ifdef __cplusplus
}
#endif
#endif
