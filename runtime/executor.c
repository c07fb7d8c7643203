/* Serial executor: a FIFO of jobs drained by one thread. Invariant: at most one job runs at a
 * time (`busy`), and a job starts only after every job posted before it has finished; an
 * inline (blocking) run takes the executor only when the queue is empty and nothing runs. */
#include "runtime/executor.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/log.h"
#include "runtime/req_impl.h"

struct loom_executor {
  pthread_mutex_t lock;
  pthread_cond_t work_posted; /* the thread waits here for jobs */
  pthread_cond_t job_done;    /* waiters and inline runners wait here */
  loom_req *head, *tail;      /* queued, not started */
  int busy;                   /* a job is running (on the thread or inline) */
  int stopping;
  int threaded;
  pthread_t thread;
  char name[16];
};

/* Runs one job outside the lock and publishes its result. */
static void run_job(loom_executor *executor, loom_req *req) {
  req->times.started_at = loom_now();
  loom_status status = req->run(req->arg);
  double completed_at = loom_now();
  if (status < 0) loom_req_record_failure(req, status);
  if (req->release) req->release(req->arg);
  pthread_mutex_lock(&executor->lock);
  req->status = status;
  req->times.completed_at = completed_at;
  __atomic_store_n(&req->done, 1, __ATOMIC_RELEASE); /* after status, message, times */
  executor->busy = 0;
  pthread_cond_broadcast(&executor->job_done);
  pthread_mutex_unlock(&executor->lock);
}

static void *thread_main(void *opaque) {
  loom_executor *executor = opaque;
  pthread_mutex_lock(&executor->lock);
  for (;;) {
    while (!executor->stopping && (executor->busy || !executor->head))
      pthread_cond_wait(&executor->work_posted, &executor->lock);
    if (!executor->head && executor->stopping) break;
    if (executor->busy || !executor->head) continue;
    loom_req *req = executor->head;
    executor->head = req->next;
    if (!executor->head) executor->tail = NULL;
    executor->busy = 1;
    pthread_mutex_unlock(&executor->lock);
    run_job(executor, req);
    pthread_mutex_lock(&executor->lock);
  }
  pthread_mutex_unlock(&executor->lock);
  return NULL;
}

loom_status loom_executor_create(const char *name, int threaded, loom_executor **out) {
  loom_executor *executor = calloc(1, sizeof *executor);
  if (!executor) return loom_error_set(LOOM_ERR_NOMEM, "allocating executor '%s'", name);
  pthread_mutex_init(&executor->lock, NULL);
  pthread_cond_init(&executor->work_posted, NULL);
  pthread_cond_init(&executor->job_done, NULL);
  executor->threaded = threaded;
  snprintf(executor->name, sizeof executor->name, "%s", name);
  if (threaded) {
    int rc = pthread_create(&executor->thread, NULL, thread_main, executor);
    if (rc != 0) {
      free(executor);
      return loom_error_set(LOOM_ERR_INTERNAL, "starting thread '%s': %s", name, strerror(rc));
    }
    pthread_setname_np(executor->thread, executor->name);
  }
  *out = executor;
  return LOOM_OK;
}

void loom_executor_destroy(loom_executor *executor) {
  if (!executor) return;
  if (executor->threaded) {
    pthread_mutex_lock(&executor->lock);
    executor->stopping = 1;
    pthread_cond_broadcast(&executor->work_posted);
    pthread_mutex_unlock(&executor->lock);
    pthread_join(executor->thread, NULL);
  }
  pthread_mutex_destroy(&executor->lock);
  pthread_cond_destroy(&executor->work_posted);
  pthread_cond_destroy(&executor->job_done);
  free(executor);
}

static void enqueue(loom_executor *executor, loom_req *req) {
  req->next = NULL;
  if (executor->tail) executor->tail->next = req;
  else executor->head = req;
  executor->tail = req;
  pthread_cond_signal(&executor->work_posted);
}

loom_status loom_executor_post(loom_executor *executor, loom_job_run_fn run, void *arg,
                               loom_job_release_fn release, loom_req **out) {
  loom_req *req = NULL;
  loom_status status = loom_req_alloc(LOOM_REQ_JOB, &req);
  if (status < 0) {
    if (release) release(arg);
    return status;
  }
  req->executor = executor;
  req->run = run;
  req->arg = arg;
  req->release = release;
  *out = req;
  if (!executor->threaded) {
    /* No background thread: the job runs now and the request is complete on return. */
    run_job(executor, req);
    return LOOM_OK;
  }
  pthread_mutex_lock(&executor->lock);
  enqueue(executor, req);
  pthread_mutex_unlock(&executor->lock);
  return LOOM_OK;
}

loom_status loom_executor_run(loom_executor *executor, loom_job_run_fn run, void *arg) {
  pthread_mutex_lock(&executor->lock);
  if (executor->threaded && (executor->busy || executor->head)) {
    /* Earlier jobs are pending: queue behind them so the posting order holds. */
    loom_req req = {.kind = LOOM_REQ_JOB, .heap = 0, .executor = executor, .run = run,
                    .arg = arg};
    enqueue(executor, &req);
    while (!req.done) pthread_cond_wait(&executor->job_done, &executor->lock);
    pthread_mutex_unlock(&executor->lock);
    loom_status status = req.status;
    if (status < 0 && req.message) loom_error_restore(req.message);
    free(req.message);
    return status;
  }
  executor->busy = 1;
  pthread_mutex_unlock(&executor->lock);
  loom_status status = run(arg);
  pthread_mutex_lock(&executor->lock);
  executor->busy = 0;
  /* Wake the thread only if jobs queued up meanwhile: a wake-up per blocking call would cost
   * a context switch each time on a busy core. */
  if (executor->head) pthread_cond_signal(&executor->work_posted);
  pthread_mutex_unlock(&executor->lock);
  return status;
}

/* A finished request never touches its executor again, so it may be waited for after the
 * executor was destroyed (destroy runs every queued job to its end). */
void loom_executor_wait_job(loom_req *req) {
  if (__atomic_load_n(&req->done, __ATOMIC_ACQUIRE)) return;
  loom_executor *executor = req->executor;
  pthread_mutex_lock(&executor->lock);
  while (!req->done) pthread_cond_wait(&executor->job_done, &executor->lock);
  pthread_mutex_unlock(&executor->lock);
}

int loom_executor_job_done(loom_req *req) {
  if (__atomic_load_n(&req->done, __ATOMIC_ACQUIRE)) return 1;
  loom_executor *executor = req->executor;
  pthread_mutex_lock(&executor->lock);
  int done = req->done;
  pthread_mutex_unlock(&executor->lock);
  return done;
}

int loom_executor_on_thread(const loom_executor *executor) {
  return executor->threaded && pthread_equal(pthread_self(), executor->thread);
}
