/* Internal interface of the staged device backend (staged.c): device-buffer collectives and
 * point-to-point through pinned host buffers over MPI, for ranks that share a GPU (NCCL
 * refuses two ranks on one device). Chosen per context at loom_init (--device-comm, see
 * runtime/config.h); same semantics as the NCCL path, so callers never change. */
#ifndef LOOM_COLLECTIVES_STAGED_H
#define LOOM_COLLECTIVES_STAGED_H

#include "collectives/coll_impl.h"

/* Runs `job` (device buffers) on the group's lane: its inputs are copied to pinned host memory
 * after the work queued on the compute stream before this call, the host algorithm runs, the
 * results are copied back. req == NULL: complete on return; else a request of the lane. The
 * job's arrays are taken over (freed here or with the queued job). */
loom_status loom_staged_post(loom_coll_job *job, loom_req **req);

/* Point-to-point on device buffers: a send copies its buffer to the host (after `after`, a
 * cudaEvent_t, or NULL: the group's order stream's queued work) and is issued at once; a receive lands in the host and is copied to
 * the device when it completes. Deadlines and messages as for host point-to-point. */
loom_status loom_staged_p2p(loom_group *g, loom_buf buf, int peer, int tag, int is_send,
                            void *after, loom_req **req);

#endif
