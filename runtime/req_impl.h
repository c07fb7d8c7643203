/* The request object behind loom_req, shared by the executor (jobs) and the MPI
 * point-to-point path. Private to libloom. */
#ifndef LOOM_RUNTIME_REQ_IMPL_H
#define LOOM_RUNTIME_REQ_IMPL_H

#include <mpi.h>

#include "runtime/executor.h"
#include "runtime/req.h"
#include "runtime/watchdog.h"

typedef enum {
  LOOM_REQ_DONE, /* completed at creation; status holds the result */
  LOOM_REQ_JOB,  /* a job of a loom_executor */
  LOOM_REQ_MPI,  /* up to LOOM_REQ_MPI_MAX MPI requests */
  LOOM_REQ_POLL, /* completion polled through a backend's function (CUDA events, NCCL) */
} loom_req_kind;

/* LOOM_REQ_POLL: sets *done; when done, returns the operation's status (message set). Owns
 * the timeout: a poll past its deadline reports LOOM_ERR_TIMEOUT and is done. */
typedef loom_status (*loom_req_poll_fn)(void *state, int *done);

enum { LOOM_REQ_MPI_MAX = 2 };

struct loom_req {
  loom_req_kind kind;
  loom_status status;
  char *message; /* copy of the failure message, owned; NULL on success */
  int heap;      /* 1: freed by wait/test; 0: lives on a blocking caller's stack */
  loom_req_times times;

  /* LOOM_REQ_JOB: fields below `done` are guarded by the executor's lock */
  loom_executor *executor;
  loom_job_run_fn run;
  void *arg;
  loom_job_release_fn release;
  struct loom_req *next;
  int done;
  int device_job; /* a staged device collective: its results are on the device once done */

  /* LOOM_REQ_POLL: state freed by poll_release after completion */
  loom_req_poll_fn poll;
  void (*poll_release)(void *state);
  /* optional: orders a CUDA stream after the operation (loom_req_order_stream) */
  loom_status (*poll_order)(void *state, void *stream);
  void *poll_state;

  /* LOOM_REQ_MPI */
  MPI_Request mpi_requests[LOOM_REQ_MPI_MAX];
  int mpi_count;
  int mpi_is_recv[LOOM_REQ_MPI_MAX]; /* receives are cancelled at the deadline */
  const char *what; /* the operation, for messages ("loom_recv") */
  /* Deadline (loom_now() seconds; 0 = none) and the watchdog slot held from post to
   * completion (what, group, peer, tag); `ctx` owns the watchdog. */
  double deadline;
  int peer_world; /* world rank of the peer, for messages */
  loom_ctx *ctx;
  loom_watch watch;
};

/* A heap request of `kind`, zeroed. */
loom_status loom_req_alloc(loom_req_kind kind, loom_req **out);
/* A LOOM_REQ_POLL request over `state` (`order` may be NULL: not a device operation). */
loom_status loom_req_poll_create(const char *what, loom_req_poll_fn poll,
                                 void (*release)(void *state),
                                 loom_status (*order)(void *state, void *stream), void *state,
                                 loom_req **out);
/* Records a failure message (copies loom_error_string() of the calling thread). */
void loom_req_record_failure(loom_req *req, loom_status status);

/* Executor side of wait/test for LOOM_REQ_JOB. */
void loom_executor_wait_job(loom_req *req);
int loom_executor_job_done(loom_req *req);

#endif
