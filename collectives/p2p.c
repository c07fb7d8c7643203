/* Point-to-point over MPI_Isend / MPI_Irecv on the group's communicator. These bypass the
 * group's lane: they are issued at once, so matching follows the caller's order and a
 * blocking receive never waits behind a queued send. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "collectives/coll_impl.h"
#include "collectives/nccl.h"
#include "collectives/staged.h"
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
  if (b.device.kind == LOOM_DEVICE_CUDA && g->ctx->staged)
    return loom_staged_p2p(g, b, peer, tag, is_send, NULL, out);
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

/* A batch's request over host or staged transfers: one request per transfer inside. */
typedef struct {
  loom_req **parts; /* (count); NULL once complete */
  int count;
  loom_status first;
  char message[1024]; /* the first failure's */
} batch_state;

static loom_status poll_batch(void *opaque, int *done) {
  batch_state *b = opaque;
  *done = 1;
  for (int i = 0; i < b->count; i++) {
    if (!b->parts[i]) continue;
    int part_done = 0;
    loom_status s = loom_test(&b->parts[i], &part_done);
    if (!part_done) {
      *done = 0;
      continue;
    }
    if (s < 0 && b->first == LOOM_OK) {
      b->first = s;
      snprintf(b->message, sizeof b->message, "%s", loom_error_string());
    }
  }
  if (!*done) return LOOM_INPROGRESS;
  if (b->first < 0) loom_error_restore(b->message);
  return b->first;
}

static loom_status order_batch(void *opaque, void *stream) {
  batch_state *b = opaque;
  for (int i = 0; i < b->count; i++) LOOM_CHECK(loom_req_order_stream(b->parts[i], stream));
  return LOOM_OK;
}

static void release_batch(void *opaque) {
  batch_state *b = opaque;
  loom_wait_all(b->parts, b->count); /* none left after a completed poll; a failed post's */
  free(b->parts);
  free(b);
}

loom_status loom_p2p_batch(loom_group *g, const loom_p2p *ops, int count, const loom_event *after,
                           loom_req **req) {
  static const char call[] = "loom_p2p_batch";
  if (!req) return loom_error_set(LOOM_ERR_ARG, "%s: req is NULL", call);
  *req = NULL;
  if (!g || count < 0 || (count > 0 && !ops))
    return loom_error_set(LOOM_ERR_ARG, "%s: group NULL, or %d transfers with a NULL array", call,
                          count);
  for (int i = 0; i < count; i++) {
    LOOM_CHECK(check_p2p(g, call, ops[i].buf, ops[i].peer, ops[i].tag));
    if (ops[i].buf.device.kind != ops[0].buf.device.kind)
      return loom_error_set(LOOM_ERR_ARG, "%s on group %s: transfer %d and transfer 0 are in "
                            "different memories (host/device); batch one kind at a time", call,
                            g->name, i);
  }
  int device = count > 0 && ops[0].buf.device.kind == LOOM_DEVICE_CUDA;
  void *after_event = loom_event_cuda(after);
  if (device && !g->ctx->staged) {
    for (int i = 0; i < count; i++)
      if (ops[i].peer == g->rank)
        return loom_error_set(LOOM_ERR_UNSUPPORTED, "%s on group %s: device transfer %d is with "
                              "oneself (rank %d); copy with cudaMemcpyAsync", call, g->name, i,
                              g->rank);
    return loom_nccl_p2p_batch(g, ops, count, after_event, req);
  }
  batch_state *b = calloc(1, sizeof *b);
  loom_req **parts = calloc((size_t)(count ? count : 1), sizeof *parts);
  loom_req *r = NULL;
  loom_status status = b && parts ? loom_req_poll_create(call, poll_batch, release_batch,
                                                        device ? order_batch : NULL, b, &r)
                                  : loom_error_set(LOOM_ERR_NOMEM, "%s: %d transfers", call, count);
  if (status < 0) {
    free(b);
    free(parts);
    return status;
  }
  b->parts = parts;
  b->count = count;
  for (int i = 0; i < count && status == LOOM_OK; i++) {
    const loom_p2p *op = &ops[i];
    status = device ? loom_staged_p2p(g, op->buf, op->peer, op->tag, op->is_send, after_event,
                                      &parts[i])
                    : post(g, op->buf, op->peer, op->tag, op->is_send, &parts[i]);
  }
  if (status < 0) { /* host transfers already posted are cancelled now, staged ones at their
                     * deadline */
    for (int i = 0; i < count; i++)
      if (parts[i] && parts[i]->kind == LOOM_REQ_MPI) parts[i]->deadline = 1e-9;
    char message[1024];
    snprintf(message, sizeof message, "%s", loom_error_string());
    loom_wait(&r);
    loom_error_restore(message);
    return status;
  }
  *req = r;
  return LOOM_OK;
}
