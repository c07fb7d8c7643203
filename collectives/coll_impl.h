/* Internals shared by the collective algorithms: the job that a group's lane runs,
 * MPI datatype mapping, and the flat / hierarchical / sparse entry points. Private. */
#ifndef LOOM_COLLECTIVES_COLL_IMPL_H
#define LOOM_COLLECTIVES_COLL_IMPL_H

#include <mpi.h>

#include "collectives/coll.h"
#include "collectives/sparse.h"
#include "runtime/group_impl.h"

typedef enum {
  LOOM_COLL_ALLREDUCE,
  LOOM_COLL_BROADCAST,
  LOOM_COLL_REDUCE,
  LOOM_COLL_ALLGATHER,
  LOOM_COLL_REDUCE_SCATTER,
  LOOM_COLL_ALLTOALL,
  LOOM_COLL_ALLTOALLV,
  LOOM_COLL_BARRIER,
  LOOM_COLL_FUSED_ALLREDUCE,
  LOOM_COLL_SPARSE_PLAN,
  LOOM_COLL_SPARSE_EXCHANGE,
} loom_coll_kind;

/* "loom_allreduce", ... for messages. */
const char *loom_coll_kind_name(loom_coll_kind kind);

/* Everything a collective needs, captured at post time (arrays copied, owned by the job). */
typedef struct {
  loom_coll_kind kind;
  loom_group *group;
  loom_buf send, recv;
  loom_op op;
  int root;
  loom_algo algo; /* resolved: FLAT or HIER */
  size_t *counts; /* alltoallv: (4 * size) send counts, send displs, recv counts, recv displs */
  loom_buf *bufs; /* fused allreduce: (buf_count) */
  int buf_count;
  loom_sparse_plan *plan; /* sparse: the caller's plan */
} loom_coll_job;

/* LOOM_OK for host memory, or device memory on the GPU this rank drives with NCCL built;
 * LOOM_ERR_UNSUPPORTED / LOOM_ERR_ARG naming the call and buffer otherwise. */
loom_status loom_coll_check_device(const loom_group *g, const char *call, const char *which,
                                   loom_buf b);

/* A lane's entry point: runs one job to completion under a watchdog slot. */
loom_status loom_coll_run(void *job);
/* Hands a host job to its group's lane. Blocking (req == NULL): runs the (stack) job in
 * posting order and returns its status. Async: copies it to the heap and queues it. Either
 * way the job's arrays (counts, bufs) are taken over: freed here or by the queued job. */
loom_status loom_coll_submit_host(loom_coll_job *job, loom_req **req);
/* The same for device buffers: the NCCL backend, or the staged one when this context's
 * ranks share a GPU (ctx->staged). */
loom_status loom_coll_submit_device(loom_coll_job *job, loom_req **req);

/* MPI element type used to move `dtype` (16-bit floats move as uint16). */
MPI_Datatype loom_coll_mpi_type(loom_dtype dtype);
/* MPI op for SUM/AVG (sum), MAX, MIN on `dtype` (16-bit floats: their float32 widening). */
MPI_Op loom_coll_mpi_op(const loom_group *g, loom_op op, loom_dtype dtype);

/* Flat algorithms (one MPI collective each; 16-bit floats through a float32 scratch). */
loom_status loom_coll_flat_allreduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op);
loom_status loom_coll_flat_reduce_scatter(loom_group *g, loom_buf send, loom_buf recv,
                                          loom_op op);
loom_status loom_coll_flat_allgather(loom_group *g, loom_buf send, loom_buf recv);

/* Hierarchical algorithms (node-local, cross-node, node-local); need node_count > 1. */
loom_status loom_coll_hier_allreduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op);
loom_status loom_coll_hier_allgather(loom_group *g, loom_buf send, loom_buf recv);
loom_status loom_coll_hier_reduce_scatter(loom_group *g, loom_buf send, loom_buf recv,
                                          loom_op op);

/* The sparse plan's NBX discovery and the data exchange, run on the group's lane. */
loom_status loom_coll_sparse_discover(loom_group *g, loom_sparse_plan *plan);
loom_status loom_coll_sparse_exchange(loom_group *g, const loom_sparse_plan *plan, loom_buf send,
                                      loom_buf recv);

/* Divides every element by `divisor` (AVG after SUM), in the buffer's dtype. */
void loom_coll_divide(loom_buf buf, int divisor);
/* A float32 copy of a 16-bit float buffer (count elements) and back. */
loom_status loom_coll_widen(loom_buf b, float **out);
void loom_coll_narrow(const float *wide, loom_buf b);
int loom_coll_is_half(loom_dtype dtype);

#endif
