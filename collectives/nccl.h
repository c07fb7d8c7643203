/* Internal interface of the NCCL backend (nccl.c): device-buffer collectives of a group. */
#ifndef LOOM_COLLECTIVES_NCCL_H
#define LOOM_COLLECTIVES_NCCL_H

#include "collectives/coll_impl.h"

/* Enqueues `job` (device buffers) on the group's communication stream, ordered after the
 * context's compute stream; the compute stream then waits for the result. req == NULL: waits
 * for completion (with the context's timeout); else returns a request completing on a CUDA
 * event. The job's arrays are copied or used before return. */
loom_status loom_nccl_post(loom_coll_job *job, loom_req **req);

/* Point-to-point on device buffers (ncclSend / ncclRecv). */
loom_status loom_nccl_p2p(loom_group *g, loom_buf buf, int peer, int is_send, loom_req **req);

/* A batch of point-to-point transfers issued now as one NCCL group, ordered after `after`
 * (a cudaEvent_t; NULL: the group's order stream); one request for all. */
loom_status loom_nccl_p2p_batch(loom_group *g, const loom_p2p *ops, int count, void *after,
                                loom_req **req);

#endif
