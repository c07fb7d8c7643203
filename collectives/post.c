/* The public collective calls: validate on the caller's thread (so a bad argument fails at
 * once, naming the call, the group and the value), capture a job, and hand it to the group's
 * lane (host buffers) or the NCCL backend (device buffers): blocking calls run it in order
 * and wait, _async calls queue it and return a request. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_impl.h"
#include "collectives/nccl.h"
#include "collectives/staged.h"
#include "runtime/device.h"
#include "runtime/log.h"

const char *loom_op_name(loom_op op) {
  static const char *const names[LOOM_OP_COUNT] = {"sum", "avg", "max", "min"};
  return op >= 0 && op < LOOM_OP_COUNT ? names[op] : "invalid";
}

loom_status loom_group_set_algo(loom_group *g, loom_algo algo) {
  if (!g || algo < LOOM_ALGO_AUTO || algo > LOOM_ALGO_HIER)
    return loom_error_set(LOOM_ERR_ARG, "loom_group_set_algo: group NULL or algo=%d not in "
                          "auto|flat|hier", (int)algo);
  g->algo = algo;
  return LOOM_OK;
}

static loom_status check_group(const loom_group *g, const char *call) {
  if (!g) return loom_error_set(LOOM_ERR_ARG, "%s: group is NULL", call);
  return LOOM_OK;
}

/* A buffer must have a known dtype, live on the CPU (until the NCCL backend), hold
 * `expected` elements, and not exceed MPI's int counts. */
static loom_status check_buf(const loom_group *g, const char *call, const char *which,
                             loom_buf b, size_t expected) {
  if (b.dtype < 0 || b.dtype >= LOOM_DTYPE_COUNT)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %s dtype=%d is not a loom_dtype", call,
                          g->name, which, (int)b.dtype);
  LOOM_CHECK(loom_coll_check_device(g, call, which, b));
  if (b.count != expected)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s (rank %d of %d): %s has %zu elements, "
                          "expected %zu", call, g->name, g->rank, g->size, which, b.count,
                          expected);
  if (b.count > 0 && !b.ptr)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %s pointer is NULL for %zu elements",
                          call, g->name, which, b.count);
  if (b.count > (size_t)INT_MAX)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %s has %zu elements, more than MPI's "
                          "2^31-1 per call; split the buffer", call, g->name, which, b.count);
  return LOOM_OK;
}

loom_status loom_coll_check_device(const loom_group *g, const char *call, const char *which,
                                   loom_buf b) {
  if (b.device.kind == LOOM_DEVICE_CPU) return LOOM_OK;
  if (b.device.kind != LOOM_DEVICE_CUDA)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %s has device kind %d", call, g->name,
                          which, (int)b.device.kind);
  if (g->ctx->device.kind != LOOM_DEVICE_CUDA)
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "%s on group %s: %s is a CUDA buffer, but this "
                          "rank computes on the CPU; pass host memory, or run with --device cuda "
                          "on a GPU build", call, g->name, which);
  if (b.device.ordinal != g->ctx->device.ordinal)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %s lives on GPU %d but rank %d drives GPU "
                          "%d", call, g->name, which, b.device.ordinal, g->ctx->rank,
                          g->ctx->device.ordinal);
  return LOOM_OK;
}

static loom_status check_same_dtype(const loom_group *g, const char *call, loom_buf a, loom_buf b) {
  if (a.device.kind != b.device.kind)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: send is in %s memory but recv in %s; "
                          "host and device buffers cannot be mixed in one call", call, g->name,
                          a.device.kind == LOOM_DEVICE_CPU ? "host" : "device",
                          b.device.kind == LOOM_DEVICE_CPU ? "host" : "device");
  if (a.dtype != b.dtype)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: send is %s but recv is %s", call,
                          g->name, loom_dtype_name(a.dtype), loom_dtype_name(b.dtype));
  return LOOM_OK;
}

static loom_status check_op(const loom_group *g, const char *call, loom_op op) {
  if (op < 0 || op >= LOOM_OP_COUNT)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: op=%d; accepted sum avg max min", call,
                          g->name, (int)op);
  return LOOM_OK;
}

static loom_status check_root(const loom_group *g, const char *call, int root) {
  if (root < 0 || root >= g->size)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: root=%d outside [0, %d)", call, g->name,
                          root, g->size);
  return LOOM_OK;
}

/* FLAT or HIER for this call: explicit choice, or AUTO by span and size. */
static loom_algo resolve_algo(const loom_group *g, size_t bytes) {
  int spans_nodes = !g->is_subgroup && g->node_count > 1 && g->size > g->node_count;
  if (!spans_nodes) return LOOM_ALGO_FLAT;
  if (g->algo == LOOM_ALGO_AUTO)
    return bytes >= g->ctx->config.hier_threshold_bytes ? LOOM_ALGO_HIER : LOOM_ALGO_FLAT;
  return (loom_algo)g->algo;
}

static void release_job(void *opaque) {
  loom_coll_job *job = opaque;
  free(job->counts);
  free(job->bufs);
  free(job);
}

static int on_device(const loom_coll_job *job) {
  if (job->kind == LOOM_COLL_FUSED_ALLREDUCE)
    return job->buf_count > 0 && job->bufs[0].device.kind == LOOM_DEVICE_CUDA;
  return job->send.device.kind == LOOM_DEVICE_CUDA;
}

static loom_status submit(loom_coll_job *job, loom_req **req) {
  if (on_device(job)) return loom_coll_submit_device(job, req);
  return loom_coll_submit_host(job, req);
}

loom_status loom_coll_submit_device(loom_coll_job *job, loom_req **req) {
  if (job->group->ctx->staged) return loom_staged_post(job, req);
  loom_status status = loom_nccl_post(job, req); /* arrays are used before return */
  free(job->counts);
  free(job->bufs);
  return status;
}

loom_status loom_coll_submit_host(loom_coll_job *job, loom_req **req) {
  loom_executor *lane = NULL;
  loom_status status = loom_group_lane(job->group, &lane);
  if (status == LOOM_OK && !req) status = loom_executor_run(lane, loom_coll_run, job);
  if (status < 0 || !req) {
    free(job->counts);
    free(job->bufs);
    return status;
  }
  loom_coll_job *heap = malloc(sizeof *heap);
  if (!heap) {
    free(job->counts);
    free(job->bufs);
    return loom_error_set(LOOM_ERR_NOMEM, "queuing a collective on group %s", job->group->name);
  }
  *heap = *job;
  return loom_executor_post(lane, loom_coll_run, heap, release_job, req);
}

static loom_status allreduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op,
                             loom_req **req) {
  static const char call[] = "loom_allreduce";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_op(g, call, op));
  LOOM_CHECK(check_buf(g, call, "send", send, send.count));
  LOOM_CHECK(check_buf(g, call, "recv", recv, send.count));
  LOOM_CHECK(check_same_dtype(g, call, send, recv));
  loom_coll_job job = {.kind = LOOM_COLL_ALLREDUCE, .group = g, .send = send, .recv = recv,
                       .op = op, .algo = resolve_algo(g, loom_buf_bytes(send))};
  return submit(&job, req);
}
loom_status loom_allreduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op) {
  return allreduce(g, send, recv, op, NULL);
}
loom_status loom_allreduce_async(loom_group *g, loom_buf send, loom_buf recv, loom_op op,
                                 loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_allreduce_async: req is NULL");
  return allreduce(g, send, recv, op, req);
}

static loom_status broadcast(loom_group *g, loom_buf buf, int root, loom_req **req) {
  static const char call[] = "loom_broadcast";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_root(g, call, root));
  LOOM_CHECK(check_buf(g, call, "buf", buf, buf.count));
  loom_coll_job job = {.kind = LOOM_COLL_BROADCAST, .group = g, .send = buf, .recv = buf,
                       .root = root};
  return submit(&job, req);
}
loom_status loom_broadcast(loom_group *g, loom_buf buf, int root) {
  return broadcast(g, buf, root, NULL);
}
loom_status loom_broadcast_async(loom_group *g, loom_buf buf, int root, loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_broadcast_async: req is NULL");
  return broadcast(g, buf, root, req);
}

static loom_status reduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op, int root,
                          loom_req **req) {
  static const char call[] = "loom_reduce";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_op(g, call, op));
  LOOM_CHECK(check_root(g, call, root));
  LOOM_CHECK(check_buf(g, call, "send", send, send.count));
  if (g->rank == root) {
    LOOM_CHECK(check_buf(g, call, "recv", recv, send.count));
    LOOM_CHECK(check_same_dtype(g, call, send, recv));
  }
  loom_coll_job job = {.kind = LOOM_COLL_REDUCE, .group = g, .send = send, .recv = recv,
                       .op = op, .root = root};
  return submit(&job, req);
}
loom_status loom_reduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op, int root) {
  return reduce(g, send, recv, op, root, NULL);
}
loom_status loom_reduce_async(loom_group *g, loom_buf send, loom_buf recv, loom_op op, int root,
                              loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_reduce_async: req is NULL");
  return reduce(g, send, recv, op, root, req);
}

static loom_status allgather(loom_group *g, loom_buf send, loom_buf recv, loom_req **req) {
  static const char call[] = "loom_allgather";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_buf(g, call, "send", send, send.count));
  LOOM_CHECK(check_buf(g, call, "recv", recv, send.count * (size_t)g->size));
  LOOM_CHECK(check_same_dtype(g, call, send, recv));
  loom_coll_job job = {.kind = LOOM_COLL_ALLGATHER, .group = g, .send = send, .recv = recv,
                       .algo = resolve_algo(g, loom_buf_bytes(recv))};
  return submit(&job, req);
}
loom_status loom_allgather(loom_group *g, loom_buf send, loom_buf recv) {
  return allgather(g, send, recv, NULL);
}
loom_status loom_allgather_async(loom_group *g, loom_buf send, loom_buf recv, loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_allgather_async: req is NULL");
  return allgather(g, send, recv, req);
}

static loom_status reduce_scatter(loom_group *g, loom_buf send, loom_buf recv, loom_op op,
                                  loom_req **req) {
  static const char call[] = "loom_reduce_scatter";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_op(g, call, op));
  LOOM_CHECK(check_buf(g, call, "recv", recv, recv.count));
  LOOM_CHECK(check_buf(g, call, "send", send, recv.count * (size_t)g->size));
  LOOM_CHECK(check_same_dtype(g, call, send, recv));
  loom_coll_job job = {.kind = LOOM_COLL_REDUCE_SCATTER, .group = g, .send = send, .recv = recv,
                       .op = op, .algo = resolve_algo(g, loom_buf_bytes(send))};
  return submit(&job, req);
}
loom_status loom_reduce_scatter(loom_group *g, loom_buf send, loom_buf recv, loom_op op) {
  return reduce_scatter(g, send, recv, op, NULL);
}
loom_status loom_reduce_scatter_async(loom_group *g, loom_buf send, loom_buf recv, loom_op op,
                                      loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_reduce_scatter_async: req is NULL");
  return reduce_scatter(g, send, recv, op, req);
}

static loom_status alltoall(loom_group *g, loom_buf send, loom_buf recv, loom_req **req) {
  static const char call[] = "loom_alltoall";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_buf(g, call, "send", send, send.count));
  if (send.count % (size_t)g->size != 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_alltoall on group %s: send has %zu elements, not "
                          "a multiple of the %d members", g->name, send.count, g->size);
  LOOM_CHECK(check_buf(g, call, "recv", recv, send.count));
  LOOM_CHECK(check_same_dtype(g, call, send, recv));
  loom_coll_job job = {.kind = LOOM_COLL_ALLTOALL, .group = g, .send = send, .recv = recv};
  return submit(&job, req);
}
loom_status loom_alltoall(loom_group *g, loom_buf send, loom_buf recv) {
  return alltoall(g, send, recv, NULL);
}
loom_status loom_alltoall_async(loom_group *g, loom_buf send, loom_buf recv, loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_alltoall_async: req is NULL");
  return alltoall(g, send, recv, req);
}

/* Every block [displ, displ + count) must lie inside its buffer. */
static loom_status check_blocks(const loom_group *g, const char *which, const size_t *counts,
                                const size_t *displs, size_t capacity) {
  if (!counts || !displs)
    return loom_error_set(LOOM_ERR_ARG, "loom_alltoallv on group %s: %s counts or displs NULL",
                          g->name, which);
  for (int r = 0; r < g->size; r++) {
    if (counts[r] > (size_t)INT_MAX || displs[r] > (size_t)INT_MAX ||
        displs[r] + counts[r] > capacity)
      return loom_error_set(LOOM_ERR_ARG, "loom_alltoallv on group %s: %s block %d = [%zu, %zu) "
                            "exceeds the buffer of %zu elements (or 2^31-1)", g->name, which, r,
                            displs[r], displs[r] + counts[r], capacity);
  }
  return LOOM_OK;
}

static loom_status alltoallv(loom_group *g, loom_buf send, const size_t *send_counts,
                             const size_t *send_displs, loom_buf recv, const size_t *recv_counts,
                             const size_t *recv_displs, loom_req **req) {
  static const char call[] = "loom_alltoallv";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_buf(g, call, "send", send, send.count));
  LOOM_CHECK(check_buf(g, call, "recv", recv, recv.count));
  LOOM_CHECK(check_same_dtype(g, call, send, recv));
  LOOM_CHECK(check_blocks(g, "send", send_counts, send_displs, send.count));
  LOOM_CHECK(check_blocks(g, "recv", recv_counts, recv_displs, recv.count));
  size_t n = (size_t)g->size;
  size_t *counts = malloc(4 * n * sizeof *counts);
  if (!counts) return loom_error_set(LOOM_ERR_NOMEM, "loom_alltoallv: copying %zu counts", 4 * n);
  memcpy(counts, send_counts, n * sizeof *counts);
  memcpy(counts + n, send_displs, n * sizeof *counts);
  memcpy(counts + 2 * n, recv_counts, n * sizeof *counts);
  memcpy(counts + 3 * n, recv_displs, n * sizeof *counts);
  loom_coll_job job = {.kind = LOOM_COLL_ALLTOALLV, .group = g, .send = send, .recv = recv,
                       .counts = counts};
  return submit(&job, req);
}
loom_status loom_alltoallv(loom_group *g, loom_buf send, const size_t *send_counts,
                           const size_t *send_displs, loom_buf recv, const size_t *recv_counts,
                           const size_t *recv_displs) {
  return alltoallv(g, send, send_counts, send_displs, recv, recv_counts, recv_displs, NULL);
}
loom_status loom_alltoallv_async(loom_group *g, loom_buf send, const size_t *send_counts,
                                 const size_t *send_displs, loom_buf recv,
                                 const size_t *recv_counts, const size_t *recv_displs,
                                 loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_alltoallv_async: req is NULL");
  return alltoallv(g, send, send_counts, send_displs, recv, recv_counts, recv_displs, req);
}

static loom_status barrier(loom_group *g, loom_req **req) {
  LOOM_CHECK(check_group(g, "loom_barrier"));
  loom_coll_job job = {.kind = LOOM_COLL_BARRIER, .group = g};
  return submit(&job, req);
}
loom_status loom_barrier(loom_group *g) { return barrier(g, NULL); }
loom_status loom_barrier_async(loom_group *g, loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_barrier_async: req is NULL");
  return barrier(g, req);
}

static loom_status allreduce_fused(loom_group *g, const loom_buf *bufs, int count, loom_op op,
                                   loom_req **req) {
  static const char call[] = "loom_allreduce_fused";
  LOOM_CHECK(check_group(g, call));
  LOOM_CHECK(check_op(g, call, op));
  if (count < 0 || (count > 0 && !bufs))
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %d tensors with a NULL array", call,
                          g->name, count);
  size_t total = 0;
  for (int i = 0; i < count; i++) {
    LOOM_CHECK(check_buf(g, call, "tensor", bufs[i], bufs[i].count));
    if (bufs[i].device.kind != bufs[0].device.kind)
      return loom_error_set(LOOM_ERR_ARG, "%s on group %s: tensor %d and tensor 0 are in different "
                            "memories (host/device); fuse tensors of one device per call", call,
                            g->name, i);
    if (bufs[i].dtype != bufs[0].dtype)
      return loom_error_set(LOOM_ERR_ARG, "%s on group %s: tensor %d is %s but tensor 0 is %s; "
                            "fuse tensors of one dtype per call", call, g->name, i,
                            loom_dtype_name(bufs[i].dtype), loom_dtype_name(bufs[0].dtype));
    total += bufs[i].count;
  }
  if (total > (size_t)INT_MAX)
    return loom_error_set(LOOM_ERR_ARG, "%s on group %s: %zu elements in all exceed 2^31-1; "
                          "split into several calls", call, g->name, total);
  loom_buf *copy = malloc(sizeof *copy * (size_t)(count ? count : 1));
  if (!copy) return loom_error_set(LOOM_ERR_NOMEM, "%s: copying %d descriptors", call, count);
  if (count) memcpy(copy, bufs, sizeof *copy * (size_t)count);
  size_t bytes = count ? total * loom_dtype_size(bufs[0].dtype) : 0;
  loom_coll_job job = {.kind = LOOM_COLL_FUSED_ALLREDUCE, .group = g, .op = op, .bufs = copy,
                       .buf_count = count, .algo = resolve_algo(g, bytes)};
  return submit(&job, req);
}
loom_status loom_allreduce_fused(loom_group *g, const loom_buf *bufs, int count, loom_op op) {
  return allreduce_fused(g, bufs, count, op, NULL);
}
loom_status loom_allreduce_fused_async(loom_group *g, const loom_buf *bufs, int count,
                                       loom_op op, loom_req **req) {
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_allreduce_fused_async: req is NULL");
  return allreduce_fused(g, bufs, count, op, req);
}
