/* loom_req: one in-flight operation, whatever carries it (a job on a group's lane,
 * MPI requests, CUDA events). Lifecycle: a non-blocking call creates it; loom_wait or a
 * loom_test that reports completion frees it and sets the handle to NULL. */
#ifndef LOOM_RUNTIME_REQ_H
#define LOOM_RUNTIME_REQ_H

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_req loom_req;

/* Blocks until the operation completes, returns its status (with the thread's error message
 * set to the operation's on failure), frees it and sets *req = NULL. A NULL *req is a
 * completed operation (LOOM_OK). */
loom_status loom_wait(loom_req **req);

/* Non-blocking: *done = 1 and the operation's status when it has completed (then freed,
 * *req = NULL); *done = 0 and LOOM_INPROGRESS otherwise. */
loom_status loom_test(loom_req **req, int *done);

/* When an operation was posted, started running and completed (loom_now() seconds); for jobs
 * of a group's lane these are the thread's own timestamps, so they show whether
 * communication overlapped the caller's work. */
typedef struct {
  double posted_at, started_at, completed_at;
} loom_req_times;

/* loom_wait that also reports the operation's timestamps (`times` may be NULL). */
loom_status loom_wait_timed(loom_req **req, loom_req_times *times);

/* Device operations: makes later work on `stream` (a cudaStream_t; NULL = the compute
 * stream of the context that posted the operation) wait for the operation: on the GPU, with no
 * host wait, through NCCL; on the staged path (ranks sharing a GPU) by a host wait for the
 * transfer, whose results are on the device once it completed. The request stays the caller's: wait for or test it later, which reports a
 * failure or a timeout. An asynchronous device collective does not order the compute stream
 * by itself, so that compute enqueued after the post overlaps the communication. A completed
 * request (NULL) needs nothing; a host operation is LOOM_ERR_ARG (wait for it instead). */
loom_status loom_req_order_stream(loom_req *req, void *stream);
/* Waits for all; returns the first failure, after every request has completed. */
loom_status loom_wait_all(loom_req **reqs, int count);

#ifdef __cplusplus
}
#endif
#endif
