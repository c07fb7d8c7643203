/* Point-to-point over MPI_Isend / MPI_Irecv on the group's communicator. These bypass the
 * group's lane: they are issued at once, so matching follows the caller's order and a
 * blocking receive never waits behind a queued send. */
#include <limits.h>

#include "collectives/coll_impl.h"
#include "collectives/nccl.h"
#include "runtime/req_impl.h"

static loom_status check_p2p(loom_group *g, const char *call, loom_buf b, int peer, int tag) {
  if (!g) return loom_error_set(LOOM_ERR_ARG, "%s: group is NULL", call);
  if (peer < 0 || peer >= g->size)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: peer=%d outside [0, %d)", call, g->name,
                          peer, g->size);
  if (tag < 0)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: tag=%d must be >= 0", call, g->name, tag);
  if (b.dtype < 0 || b.dtype >= LOOM_DTYPE_COUNT)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: dtype=%d is not a loom_dtype", call,
                          g->name, (int)b.dtype);
  LOOM_CHECK(loom_coll_check_device(g, call, "buf", b));
  if (b.count > (size_t)INT_MAX || (b.count && !b.ptr))
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %zu elements at %p (NULL, or over "
                          "2^31-1)", call, g->name, b.count, b.ptr);
  return LOOM_OK;
}

static loom_status post(loom_group *g, loom_buf b, int peer, int tag, int is_send,
                        loom_req **out) {
  const char *call = is_send ? "loom_send" : "loom_recv";
  LOOM_CHECK(check_p2p(g, call, b, peer, tag));
  if (!out) return loom_error_set(LOOM_ERR_ARG, "%s_async: req is NULL", call);
  if (b.device.kind == LOOM_DEVICE_CUDA) {
    if (peer == g->rank) /* NCCL matches a self send only inside one group call */
      return loom_error_set(LOOM_ERR_UNSUPPORTED, "%s on group %s: device point-to-point with "
                            "oneself (rank %d) is not supported; copy with cudaMemcpyAsync",
                            call, g->name, peer);
    return loom_nccl_p2p(g, b, peer, is_send, out);
  }
  loom_req *req = NULL;
  LOOM_CHECK(loom_req_alloc(LOOM_REQ_MPI, &req));
  req->what = call;
  req->mpi_count = 1;
  req->mpi_is_recv[0] = !is_send;
  req->ctx = g->ctx;
  req->peer_world = g->world_ranks[peer];
  req->deadline = req->times.posted_at + g->ctx->config.timeout_seconds;
  req->watch = (loom_watch){.what = call, .group = g->name, .peer = peer, .tag = tag};
  loom_watch_begin(g->ctx, &req->watch);
  MPI_Datatype type = loom_coll_mpi_type(b.dtype);
  int rc = is_send ? MPI_Isend(b.ptr, (int)b.count, type, peer, tag, g->comm, &req->mpi_requests[0])
                   : MPI_Irecv(b.ptr, (int)b.count, type, peer, tag, g->comm, &req->mpi_requests[0]);
  if (rc != MPI_SUCCESS) {
    loom_status status = loom_mpi_error(g->ctx, rc, call);
    req->mpi_count = 0;
    loom_wait(&req);
    return status;
  }
  *out = req;
  return LOOM_OK;
}

loom_status loom_send_async(loom_group *g, loom_buf b, int peer, int tag, loom_req **req) {
  return post(g, b, peer, tag, 1, req);
}
loom_status loom_recv_async(loom_group *g, loom_buf b, int peer, int tag, loom_req **req) {
  return post(g, b, peer, tag, 0, req);
}
loom_status loom_send(loom_group *g, loom_buf b, int peer, int tag) {
  loom_req *req = NULL;
  LOOM_CHECK(post(g, b, peer, tag, 1, &req));
  return loom_wait(&req);
}
loom_status loom_recv(loom_group *g, loom_buf b, int peer, int tag) {
  loom_req *req = NULL;
  LOOM_CHECK(post(g, b, peer, tag, 0, &req));
  return loom_wait(&req);
}
