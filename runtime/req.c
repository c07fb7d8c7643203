/* loom_wait / loom_test over every kind of request. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ctx_impl.h"
#include "runtime/log.h"
#include "runtime/req_impl.h"

loom_status loom_req_alloc(loom_req_kind kind, loom_req **out) {
  loom_req *req = calloc(1, sizeof *req);
  if (!req) return loom_error_set(LOOM_ERR_NOMEM, "allocating a request (%zu bytes)", sizeof *req);
  req->kind = kind;
  req->heap = 1;
  req->times.posted_at = loom_now();
  *out = req;
  return LOOM_OK;
}

loom_status loom_req_poll_create(const char *what, loom_req_poll_fn poll,
                                 void (*release)(void *state),
                                 loom_status (*order)(void *state, void *stream), void *state,
                                 loom_req **out) {
  loom_req *req = NULL;
  LOOM_CHECK(loom_req_alloc(LOOM_REQ_POLL, &req));
  req->what = what;
  req->poll = poll;
  req->poll_release = release;
  req->poll_order = order;
  req->poll_state = state;
  *out = req;
  return LOOM_OK;
}

loom_status loom_req_completed(loom_status status, loom_req **out) {
  loom_req *req = NULL;
  LOOM_CHECK(loom_req_alloc(LOOM_REQ_DONE, &req));
  if (status < 0) loom_req_record_failure(req, status);
  req->status = status;
  *out = req;
  return LOOM_OK;
}

void loom_req_record_failure(loom_req *req, loom_status status) {
  req->status = status;
  free(req->message);
  req->message = strdup(loom_error_string());
}

/* Frees the request and returns its status, restoring its message on the calling thread. */
static loom_status finish(loom_req **handle) {
  loom_req *req = *handle;
  if (req->ctx) loom_watch_end(req->ctx, &req->watch);
  loom_status status = req->status;
  if (status < 0 && req->message) loom_error_restore(req->message);
  free(req->message);
  req->message = NULL;
  if (req->heap) free(req);
  *handle = NULL;
  return status;
}

/* Polls a LOOM_REQ_POLL request once (or until done when blocking). */
static void poll_complete(loom_req *req, int blocking, int *done) {
  loom_status status;
  do {
    status = req->poll(req->poll_state, done);
    if (!*done && blocking) sched_yield();
  } while (blocking && !*done);
  if (!*done) return;
  if (status < 0) loom_req_record_failure(req, status);
  req->status = status;
  if (req->poll_release) req->poll_release(req->poll_state);
  req->poll_release = NULL;
}

/* Past its deadline: receives are cancelled (their buffer is the caller's again); a send that
 * cannot be cancelled is released to MPI, so its buffer must outlive the job (a timed-out
 * peer means the job is to be restarted anyway). */
static void mpi_abandon(loom_req *req) {
  for (int i = 0; i < req->mpi_count; i++) {
    if (req->mpi_requests[i] == MPI_REQUEST_NULL) continue;
    MPI_Cancel(&req->mpi_requests[i]);
    if (req->mpi_is_recv[i]) MPI_Wait(&req->mpi_requests[i], MPI_STATUS_IGNORE);
    else MPI_Request_free(&req->mpi_requests[i]);
  }
  double waited = loom_now() - req->times.posted_at;
  req->status = loom_error_set(LOOM_ERR_TIMEOUT, "%s %s peer %d (world rank %d), tag %d, on "
                               "group %s: not complete after %.1f s (LOOM_TIMEOUT=%g): the peer "
                               "is hung or dead, or never posted the matching %s; the request "
                               "was cancelled", req->what, req->mpi_is_recv[0] ? "from" : "to",
                               req->watch.peer, req->peer_world, req->watch.tag,
                               req->watch.group ? req->watch.group : "?", waited,
                               req->ctx ? req->ctx->config.timeout_seconds : 0.0,
                               req->mpi_is_recv[0] ? "send" : "receive");
  loom_req_record_failure(req, req->status);
}

/* Tests (once, or until done when blocking) and enforces the deadline either way. */
static loom_status mpi_complete(loom_req *req, int blocking, int *done) {
  for (;;) {
    int flag = 0;
    int rc = MPI_Testall(req->mpi_count, req->mpi_requests, &flag, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      char text[MPI_MAX_ERROR_STRING];
      int len = 0;
      MPI_Error_string(rc, text, &len);
      req->status = loom_error_set(LOOM_ERR_MPI, "%s on group %s: %s",
                                   req->what ? req->what : "MPI request",
                                   req->watch.group ? req->watch.group : "?", text);
      loom_req_record_failure(req, req->status);
      flag = 1;
    } else if (!flag && req->deadline > 0 && loom_now() > req->deadline) {
      mpi_abandon(req);
      flag = 1;
    }
    *done = flag;
    if (flag || !blocking) return req->status;
  }
}

loom_status loom_wait_timed(loom_req **handle, loom_req_times *times) {
  if (!handle) return loom_error_set(LOOM_ERR_ARG, "loom_wait: request handle is NULL");
  loom_req *req = *handle;
  if (!req) {
    if (times) times->posted_at = times->started_at = times->completed_at = loom_now();
    return LOOM_OK;
  }
  int done = 0;
  switch (req->kind) {
    case LOOM_REQ_DONE: break;
    case LOOM_REQ_JOB: loom_executor_wait_job(req); break;
    case LOOM_REQ_MPI: mpi_complete(req, 1, &done); break;
    case LOOM_REQ_POLL: poll_complete(req, 1, &done); break;
  }
  if (req->kind != LOOM_REQ_JOB) { /* no thread timestamps: it ran under this wait */
    if (!req->times.started_at) req->times.started_at = req->times.posted_at;
    req->times.completed_at = loom_now();
  }
  if (times) *times = req->times;
  return finish(handle);
}

loom_status loom_wait(loom_req **handle) { return loom_wait_timed(handle, NULL); }

loom_status loom_test(loom_req **handle, int *done) {
  if (!handle || !done) return loom_error_set(LOOM_ERR_ARG, "loom_test: NULL argument");
  loom_req *req = *handle;
  *done = 1;
  if (!req) return LOOM_OK;
  switch (req->kind) {
    case LOOM_REQ_DONE: break;
    case LOOM_REQ_JOB: *done = loom_executor_job_done(req); break;
    case LOOM_REQ_MPI: mpi_complete(req, 0, done); break;
    case LOOM_REQ_POLL: poll_complete(req, 0, done); break;
  }
  if (!*done) return LOOM_INPROGRESS;
  return finish(handle);
}

loom_status loom_wait_all(loom_req **reqs, int count) {
  loom_status first = LOOM_OK;
  char first_message[1024] = "";
  for (int i = 0; i < count; i++) {
    loom_status s = loom_wait(&reqs[i]);
    if (s < 0 && first == LOOM_OK) {
      first = s;
      snprintf(first_message, sizeof first_message, "%s", loom_error_string());
    }
  }
  if (first < 0) loom_error_restore(first_message);
  return first;
}

loom_status loom_req_order_stream(loom_req *req, void *stream) {
  if (!req) return LOOM_OK;
  if (req->kind == LOOM_REQ_JOB && req->device_job) {
    loom_executor_wait_job(req); /* staged: copied back to the device before it completed */
    return LOOM_OK;
  }
  if (req->kind != LOOM_REQ_POLL || !req->poll_order)
    return loom_error_set(LOOM_ERR_ARG, "loom_req_order_stream: %s is not a device operation; "
                          "wait for it with loom_wait", req->what ? req->what : "the request");
  return req->poll_order(req->poll_state, stream);
}
