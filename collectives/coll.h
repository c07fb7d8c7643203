/* Collectives over a loom_group. The backend follows the buffers' device (host memory: MPI;
 * CUDA memory: NCCL once built, LOOM_ERR_UNSUPPORTED until then), so callers never change.
 *
 * Progress model (decided once, here): one lane per group. Open MPI does not advance
 * non-blocking collectives in the background, so loom runs each host collective as the
 * blocking MPI call (the tuned algorithms, not libnbc's schedules) on the lane of its group:
 * a serial executor with its own thread (runtime/executor.h), created when the group is first
 * used. Consequences:
 *   - operations on one group keep their posting order (the matching order MPI needs);
 *   - operations on different groups never wait on each other: each lane is in its own MPI
 *     call at once (MPI_THREAD_MULTIPLE), so a step may post on DP, SP, EP and PP groups in
 *     any order that MPI itself would accept (a ring of 2-member groups, each rank posting
 *     its two groups in its own order, completes), and a small all-to-all on one group
 *     finishes while a large allreduce on another is still in flight;
 *   - a blocking call runs on the caller's thread when its lane is idle, so it costs what the
 *     MPI call costs; behind queued work it waits its turn;
 *   - hierarchical algorithms run their phases from the group's lane on private channels of
 *     its node-local and cross-node subgroups, so they never interleave with collectives
 *     posted on those subgroups themselves (host buffers; device ones share the subgroups'
 *     NCCL communicators);
 *   - loom_status_agree runs on the group's lane too, in posting order with its collectives.
 * Point-to-point calls bypass the lanes (MPI_Isend/Irecv at post), so a blocking receive can
 * never wait behind a queued send. Without MPI_THREAD_MULTIPLE every lane runs its jobs at
 * post time (no overlap; logged at init).
 *
 * Deadlines: every outstanding host operation holds a watchdog slot (runtime/watchdog.h). A
 * point-to-point wait past LOOM_TIMEOUT returns LOOM_ERR_TIMEOUT naming the call, group, peer
 * and tag (the request is cancelled); a collective blocked inside MPI past LOOM_TIMEOUT aborts
 * the job (exit 124), since MPI cannot cancel it. Device operations abort their NCCL
 * communicator and return LOOM_ERR_TIMEOUT.
 *
 * Conventions (NCCL's, so the device backend slots in): counts are elements of the buffer's
 * dtype; `_async` calls return when the operation is enqueued, and the caller may touch
 * neither buffer until loom_wait/loom_test report completion; blocking calls return when it
 * is complete. In place: allreduce/reduce/alltoall with send.ptr == recv.ptr; allgather with
 * send.ptr == recv.ptr + rank * send.count; reduce_scatter with recv.ptr == send.ptr + rank *
 * recv.count. bfloat16 and float16 are reduced in float32. AVG of integers divides the
 * (wrapping) sum by the group size, truncating toward zero. */
#ifndef LOOM_COLLECTIVES_COLL_H
#define LOOM_COLLECTIVES_COLL_H

#include <stddef.h>

#include "runtime/dtype.h"
#include "runtime/group.h"
#include "runtime/req.h"
#include "runtime/stream.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_OP_SUM, LOOM_OP_AVG, LOOM_OP_MAX, LOOM_OP_MIN, LOOM_OP_COUNT } loom_op;
const char *loom_op_name(loom_op op);

/* Chooses flat, hierarchical or automatic (size threshold) for allreduce, allgather and
 * reduce_scatter posted on `group` after this returns. Hierarchical needs the group to span
 * several nodes; where nodes hold uneven member counts, allgather and reduce_scatter fall
 * back to flat (allreduce goes through node leaders). */
loom_status loom_group_set_algo(loom_group *group, loom_algo algo);

/* recv.count == send.count on every rank. */
loom_status loom_allreduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op);
loom_status loom_allreduce_async(loom_group *g, loom_buf send, loom_buf recv, loom_op op,
                                 loom_req **req);
/* buf.count elements from `root` to every member. */
loom_status loom_broadcast(loom_group *g, loom_buf buf, int root);
loom_status loom_broadcast_async(loom_group *g, loom_buf buf, int root, loom_req **req);
/* Result in `recv` on `root` only (recv ignored elsewhere, may be {0}). */
loom_status loom_reduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op, int root);
loom_status loom_reduce_async(loom_group *g, loom_buf send, loom_buf recv, loom_op op, int root,
                              loom_req **req);
/* recv.count == send.count * size; block r of recv is member r's send. */
loom_status loom_allgather(loom_group *g, loom_buf send, loom_buf recv);
loom_status loom_allgather_async(loom_group *g, loom_buf send, loom_buf recv, loom_req **req);
/* send.count == recv.count * size; member r receives the reduction of block r. */
loom_status loom_reduce_scatter(loom_group *g, loom_buf send, loom_buf recv, loom_op op);
loom_status loom_reduce_scatter_async(loom_group *g, loom_buf send, loom_buf recv, loom_op op,
                                      loom_req **req);
/* send.count == recv.count == block * size; block r of send goes to member r. */
loom_status loom_alltoall(loom_group *g, loom_buf send, loom_buf recv);
loom_status loom_alltoall_async(loom_group *g, loom_buf send, loom_buf recv, loom_req **req);
/* Per-member counts and displacements in elements ((size) arrays each, copied at post). */
loom_status loom_alltoallv(loom_group *g, loom_buf send, const size_t *send_counts,
                           const size_t *send_displs, loom_buf recv, const size_t *recv_counts,
                           const size_t *recv_displs);
loom_status loom_alltoallv_async(loom_group *g, loom_buf send, const size_t *send_counts,
                                 const size_t *send_displs, loom_buf recv,
                                 const size_t *recv_counts, const size_t *recv_displs,
                                 loom_req **req);
/* Point-to-point with a group rank; tags >= 0. Host buffers: MPI, not ordered with
 * collectives. Device buffers through NCCL: tags ignored (matching is by order), not with
 * oneself; the _async calls of a group are issued together (one NCCL group) at the next wait,
 * test or collective, so a ring of send/recv pairs cannot deadlock (loom_p2p_batch below
 * issues a ring at once instead); a blocking device send or receive is issued alone and waits
 * for its peer. Device buffers on the staged path: as host buffers, through pinned copies. */
loom_status loom_send(loom_group *g, loom_buf buf, int peer, int tag);
loom_status loom_send_async(loom_group *g, loom_buf buf, int peer, int tag, loom_req **req);
loom_status loom_recv(loom_group *g, loom_buf buf, int peer, int tag);
loom_status loom_recv_async(loom_group *g, loom_buf buf, int peer, int tag, loom_req **req);
/* One transfer of a point-to-point batch: `buf` to (is_send) or from group rank `peer`. */
typedef struct {
  loom_buf buf;
  int peer, tag, is_send;
} loom_p2p;

/* Posts `count` sends and receives at once and returns one request for them all (complete
 * when every transfer is; its status is the first failure). Device buffers through NCCL:
 * issued now, as one NCCL group on the group's stream (a ring of pairs cannot deadlock),
 * ordered after `after` (NULL: the group's order stream as it stands now) rather than after
 * everything queued by the next wait; tags are ignored (matching is by order per peer).
 * Host buffers and the staged path: each transfer is posted now (device sends are copied out
 * after `after`). All buffers are of one kind (host or device). `ops` is copied. */
loom_status loom_p2p_batch(loom_group *g, const loom_p2p *ops, int count, const loom_event *after,
                           loom_req **req);
loom_status loom_barrier(loom_group *g);
loom_status loom_barrier_async(loom_group *g, loom_req **req);

/* Fusion: reduces `count` tensors in place with one allreduce through a flat buffer (all of
 * one dtype and device). The array is copied at post; the tensors are the caller's. */
loom_status loom_allreduce_fused(loom_group *g, const loom_buf *bufs, int count, loom_op op);
loom_status loom_allreduce_fused_async(loom_group *g, const loom_buf *bufs, int count,
                                       loom_op op, loom_req **req);

#ifdef __cplusplus
}
#endif
#endif
