/* NCCL backend: every collective on device buffers. Each group gets, on first use, an NCCL
 * communicator (unique id from group rank 0, broadcast over the group's MPI communicator;
 * blocking configuration, see ensure()) and a communication stream. A call records an event on the
 * context's compute stream, makes the communication stream wait for it, enqueues the NCCL
 * operation(s), records a completion event, and makes the compute stream wait for that, so
 * kernels before and after the call see the right data without host synchronisation.
 * Failures are never silent hangs: waits poll the event and ncclCommGetAsyncError, and at
 * the context's timeout (LOOM_TIMEOUT) or on a remote error the communicator is aborted and
 * the group is marked broken; every later call on it fails at once. */
#include "collectives/nccl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/log.h"
#include "runtime/req_impl.h"

#ifdef LOOM_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

typedef struct {
  ncclComm_t comm;
  cudaStream_t stream;  /* communication stream */
  cudaEvent_t ready;    /* compute stream -> communication stream edge (reused) */
  cudaEvent_t joined;   /* communication stream -> compute stream edge (reused) */
  int broken;           /* aborted after a timeout or error */
  void *scratch;        /* device scratch (fusion, in-place all-to-all), grows */
  size_t scratch_bytes;
  cudaEvent_t spare_events[32]; /* completion events of finished requests, for reuse */
  int spare_count;
  /* Point-to-point calls wait here and are issued together in one NCCL group at the next
   * wait, test or collective: separate ncclSend/ncclRecv calls on one stream would serialise
   * and deadlock a ring (every rank's receive waiting behind its own send). */
  struct pending *p2p[64];
  int p2p_count;
} nccl_state;

typedef struct pending {
  loom_group *group;
  nccl_state *st;
  cudaEvent_t done;
  double deadline;
  const char *what;
  int issued;      /* 0: a point-to-point operation still waiting for its group flush */
  loom_buf buf;    /* point-to-point only */
  int peer, is_send;
} pending;



/* "group DP (rank 1 of 4; world ranks 0 2 4 6)" */
static void describe(const loom_group *g, char *out, size_t bytes) {
  int used = snprintf(out, bytes, "group %s (rank %d of %d; world ranks", g->name, g->rank, g->size);
  for (int r = 0; r < g->size && used < (int)bytes - 16; r++)
    used += snprintf(out + used, bytes - (size_t)used, " %d", g->world_ranks[r]);
  if (g->size > 0 && used < (int)bytes - 2) snprintf(out + used, bytes - (size_t)used, ")");
}

static loom_status nccl_failure(const loom_group *g, const char *what, ncclResult_t r,
                                ncclComm_t comm) {
  char where[256];
  describe(g, where, sizeof where);
  const char *detail = comm ? ncclGetLastError(comm) : "";
  return loom_error_set(LOOM_ERR_NCCL, "%s on %s: %s%s%s", what, where, ncclGetErrorString(r),
                        detail && *detail ? ": " : "", detail ? detail : "");
}

static loom_status cuda_failure(const loom_group *g, const char *what, cudaError_t e) {
  char where[256];
  describe(g, where, sizeof where);
  return loom_error_set(LOOM_ERR_CUDA, "%s on %s: %s", what, where, cudaGetErrorString(e));
}

#define CUDA_TRY(g, call)                                                                  \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) return cuda_failure((g), #call, e_);                            \
  } while (0)

/* Aborts the communicator: the operation in flight ends, later calls fail at once. */
static void abort_comm(loom_group *g, nccl_state *st) {
  if (st->broken) return;
  st->broken = 1;
  ncclCommAbort(st->comm);
  st->comm = NULL;
  loom_log(g->ctx, LOOM_LOG_ERROR, "NCCL communicator of group %s aborted", g->name);
}

/* Polls the non-blocking communicator until it is no longer in progress. */
static loom_status settle(loom_group *g, nccl_state *st, const char *what, ncclResult_t r,
                          double deadline) {
  while (r == ncclInProgress) {
    if (loom_now() > deadline) {
      abort_comm(g, st);
      char where[256];
      describe(g, where, sizeof where);
      return loom_error_set(LOOM_ERR_TIMEOUT, "%s on %s: still in progress after %g s "
                            "(LOOM_TIMEOUT); communicator aborted", what, where,
                            g->ctx->config.timeout_seconds);
    }
    ncclCommGetAsyncError(st->comm, &r);
  }
  if (r != ncclSuccess) {
    loom_status s = nccl_failure(g, what, r, st->comm);
    abort_comm(g, st);
    return s;
  }
  return LOOM_OK;
}

static void free_state(loom_group *g) {
  nccl_state *st = g->nccl;
  if (st->comm && !st->broken) {
    double deadline = loom_now() + 10.0;
    ncclResult_t r = ncclCommFinalize(st->comm);
    if (settle(g, st, "ncclCommFinalize", r, deadline) == LOOM_OK) ncclCommDestroy(st->comm);
  }
  if (st->stream && st->stream != (cudaStream_t)g->ctx->stream) cudaStreamDestroy(st->stream);
  if (st->ready) cudaEventDestroy(st->ready);
  if (st->joined) cudaEventDestroy(st->joined);
  if (st->scratch) cudaFree(st->scratch);
  for (int i = 0; i < st->spare_count; i++) cudaEventDestroy(st->spare_events[i]);
  free(st);
  g->nccl = NULL;
}

/* The group's NCCL state, created on first use (collective over the group). */
static loom_status ensure(loom_group *g, nccl_state **out) {
  nccl_state *st = g->nccl;
  if (st) {
    if (st->broken) {
      char where[256];
      describe(g, where, sizeof where);
      return loom_error_set(LOOM_ERR_STATE, "the NCCL communicator of %s was aborted after an "
                            "earlier failure; restart the job", where);
    }
    *out = st;
    return LOOM_OK;
  }
  st = calloc(1, sizeof *st);
  if (!st) return loom_error_set(LOOM_ERR_NOMEM, "NCCL state of group %s", g->name);
  g->nccl = st;
  g->nccl_free = free_state;
  ncclUniqueId id;
  if (g->rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) memset(&id, 0, sizeof id); /* peers fail at init, naming NCCL */
  }
  LOOM_MPI_CHECK(g->ctx, MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, g->comm));
  if (g->ctx->config.nccl_stream == 1) st->stream = (cudaStream_t)g->ctx->stream; /* in order */
  else CUDA_TRY(g, cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
  CUDA_TRY(g, cudaEventCreateWithFlags(&st->ready, cudaEventDisableTiming));
  CUDA_TRY(g, cudaEventCreateWithFlags(&st->joined, cudaEventDisableTiming));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  /* Blocking configuration: measured on 4 x H200 (NCCL 2.28), a non-blocking communicator
   * adds 60-85 us to every small collective (enqueue through NCCL's own thread), a blocking
   * one about 3 us. Hangs are still caught: waits poll the completion event and
   * ncclCommGetAsyncError and abort the communicator at LOOM_TIMEOUT. What a blocking
   * communicator cannot bound is its own initialisation when a peer never arrives; that peer
   * would already be stuck in the MPI broadcast of the unique id, the MPI watchdog's case. */
  config.blocking = 1;
  double deadline = loom_now() + g->ctx->config.timeout_seconds;
  ncclResult_t r = ncclCommInitRankConfig(&st->comm, g->size, id, g->rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    loom_status s = nccl_failure(g, "ncclCommInitRankConfig", r, NULL);
    st->broken = 1;
    return s;
  }
  LOOM_CHECK(settle(g, st, "ncclCommInitRankConfig", ncclInProgress, deadline));
  loom_log(g->ctx, LOOM_LOG_DEBUG, "NCCL communicator for group %s: %d ranks", g->name, g->size);
  *out = st;
  return LOOM_OK;
}

static ncclDataType_t nccl_type(loom_dtype dtype) {
  switch (dtype) {
    case LOOM_FLOAT32: return ncclFloat32;
    case LOOM_FLOAT64: return ncclFloat64;
    case LOOM_BFLOAT16: return ncclBfloat16;
    case LOOM_FLOAT16: return ncclFloat16;
    case LOOM_INT32: return ncclInt32;
    case LOOM_INT64: return ncclInt64;
    default: return ncclUint8;
  }
}

static ncclRedOp_t nccl_op(loom_op op) {
  switch (op) {
    case LOOM_OP_AVG: return ncclAvg;
    case LOOM_OP_MAX: return ncclMax;
    case LOOM_OP_MIN: return ncclMin;
    default: return ncclSum;
  }
}

/* Device scratch of at least `bytes` (used only on this group's communication stream). */
static loom_status scratch(loom_group *g, nccl_state *st, size_t bytes, void **out) {
  if (st->scratch_bytes < bytes) {
    if (st->scratch) {
      CUDA_TRY(g, cudaStreamSynchronize(st->stream)); /* the old buffer may still be in use */
      cudaFree(st->scratch);
      st->scratch = NULL;
      st->scratch_bytes = 0;
    }
    cudaError_t e = cudaMalloc(&st->scratch, bytes);
    if (e != cudaSuccess)
      return loom_error_set(LOOM_ERR_NOMEM, "device scratch of %zu bytes for group %s: %s", bytes,
                            g->name, cudaGetErrorString(e));
    st->scratch_bytes = bytes;
  }
  *out = st->scratch;
  return LOOM_OK;
}

/* Checks an enqueue's result: in progress settles, failure aborts. */
#define NCCL_TRY(g, st, call, deadline)                                                    \
  do {                                                                                     \
    ncclResult_t r_ = (call);                                                              \
    if (r_ != ncclSuccess) LOOM_CHECK(settle((g), (st), #call, r_, (deadline)));           \
  } while (0)

/* Grouped point-to-point exchange: block r of `send` (send_counts[r] elements at
 * send_displs[r]) to member r, and the same for receives. */
static loom_status exchange(loom_group *g, nccl_state *st, loom_dtype dtype, const char *send,
                            const size_t *send_counts, const size_t *send_displs, char *recv,
                            const size_t *recv_counts, const size_t *recv_displs, double deadline) {
  size_t element = loom_dtype_size(dtype);
  ncclDataType_t type = nccl_type(dtype);
  NCCL_TRY(g, st, ncclGroupStart(), deadline);
  for (int r = 0; r < g->size; r++) {
    if (send_counts[r])
      NCCL_TRY(g, st, ncclSend(send + send_displs[r] * element, send_counts[r], type, r, st->comm,
                               st->stream), deadline);
    if (recv_counts[r])
      NCCL_TRY(g, st, ncclRecv(recv + recv_displs[r] * element, recv_counts[r], type, r, st->comm,
                               st->stream), deadline);
  }
  NCCL_TRY(g, st, ncclGroupEnd(), deadline);
  return LOOM_OK;
}

/* NCCL_TRY for functions with a `status` variable and a `done:` label. */
#define NCCL_TRY_GOTO(group, state, call)                                                  \
  do {                                                                                     \
    ncclResult_t r_ = (call);                                                              \
    if (r_ != ncclSuccess) {                                                               \
      status = settle((group), (state), #call, r_, deadline);                              \
      if (status < 0) goto done;                                                           \
    }                                                                                      \
  } while (0)

/* A premultiplied sum by 1/size (AVG in phases that only sum); floats only. */
static loom_status premul_avg(loom_group *g, nccl_state *st, loom_dtype dtype, int divisor,
                              ncclRedOp_t *op) {
  unsigned char scalar[8];
  loom_dtype_store(scalar, dtype, 0, 1.0 / divisor);
  ncclResult_t r = ncclRedOpCreatePreMulSum(op, scalar, nccl_type(dtype), ncclScalarHostImmediate,
                                            st->comm);
  if (r != ncclSuccess) return nccl_failure(g, "ncclRedOpCreatePreMulSum", r, st->comm);
  return LOOM_OK;
}

/* Hierarchical allreduce of `buf` in place, enqueued on `stream` (the parent's). Uniform
 * nodes and a count divisible by the node size: reduce-scatter in node, allreduce across
 * nodes, allgather in node. Otherwise: reduce to the node leader, allreduce across leaders,
 * broadcast in node. AVG divides once, in the first phase (premultiplied sum). */
static loom_status hier_allreduce(loom_group *g, nccl_state *st, loom_buf buf, loom_op op,
                                  double deadline) {
  loom_group *local = g->node_local, *cross = g->cross_node;
  nccl_state *lst = NULL, *xst = NULL;
  LOOM_CHECK(ensure(local, &lst));
  LOOM_CHECK(ensure(cross, &xst));
  ncclDataType_t type = nccl_type(buf.dtype);
  ncclRedOp_t first = nccl_op(op), rest = nccl_op(op);
  int premul = op == LOOM_OP_AVG;
  if (premul) {
    LOOM_CHECK(premul_avg(g, lst, buf.dtype, g->size, &first));
    rest = ncclSum;
  }
  size_t element = loom_dtype_size(buf.dtype);
  char *base = buf.ptr;
  loom_status status = LOOM_OK;
  /* Each phase settles on its own communicator: a non-blocking communicator that answers
   * ncclInProgress must be polled before it takes the next call. */
  if (g->uniform && buf.count % (size_t)local->size == 0) {
    size_t piece = buf.count / (size_t)local->size;
    char *mine = base + (size_t)local->rank * piece * element;
    NCCL_TRY_GOTO(local, lst, ncclReduceScatter(base, mine, piece, type, first, lst->comm, st->stream));
    NCCL_TRY_GOTO(cross, xst, ncclAllReduce(mine, mine, piece, type, rest, xst->comm, st->stream));
    NCCL_TRY_GOTO(local, lst, ncclAllGather(mine, base, piece, type, lst->comm, st->stream));
  } else {
    NCCL_TRY_GOTO(local, lst, ncclReduce(base, base, buf.count, type, first, 0, lst->comm, st->stream));
    if (local->rank == 0)
      NCCL_TRY_GOTO(cross, xst, ncclAllReduce(base, base, buf.count, type, rest, xst->comm, st->stream));
    NCCL_TRY_GOTO(local, lst, ncclBroadcast(base, base, buf.count, type, 0, lst->comm, st->stream));
  }
done:
  if (premul) ncclRedOpDestroy(first, lst->comm);
  return status;
}

/* Enqueues the job's NCCL work on st->stream. */
static loom_status enqueue(loom_coll_job *job, nccl_state *st, double deadline) {
  loom_group *g = job->group;
  loom_buf send = job->send, recv = job->recv;
  ncclDataType_t type = nccl_type(send.dtype);
  switch (job->kind) {
    case LOOM_COLL_ALLREDUCE:
      if (job->algo == LOOM_ALGO_HIER && g->node_local && g->node_count > 1 &&
          (loom_dtype_is_float(send.dtype) || job->op != LOOM_OP_AVG)) {
        if (send.ptr != recv.ptr)
          CUDA_TRY(g, cudaMemcpyAsync(recv.ptr, send.ptr, loom_buf_bytes(send),
                                      cudaMemcpyDeviceToDevice, st->stream));
        return hier_allreduce(g, st, recv, job->op, deadline);
      }
      NCCL_TRY(g, st, ncclAllReduce(send.ptr, recv.ptr, send.count, type, nccl_op(job->op),
                                    st->comm, st->stream), deadline);
      return LOOM_OK;
    case LOOM_COLL_BROADCAST:
      NCCL_TRY(g, st, ncclBroadcast(send.ptr, send.ptr, send.count, type, job->root, st->comm,
                                    st->stream), deadline);
      return LOOM_OK;
    case LOOM_COLL_REDUCE:
      NCCL_TRY(g, st, ncclReduce(send.ptr, g->rank == job->root ? recv.ptr : send.ptr, send.count,
                                 type, nccl_op(job->op), job->root, st->comm, st->stream), deadline);
      return LOOM_OK;
    case LOOM_COLL_ALLGATHER:
      NCCL_TRY(g, st, ncclAllGather(send.ptr, recv.ptr, send.count, type, st->comm, st->stream),
               deadline);
      return LOOM_OK;
    case LOOM_COLL_REDUCE_SCATTER:
      NCCL_TRY(g, st, ncclReduceScatter(send.ptr, recv.ptr, recv.count, type, nccl_op(job->op),
                                        st->comm, st->stream), deadline);
      return LOOM_OK;
    case LOOM_COLL_ALLTOALL: {
      size_t n = (size_t)g->size, block = send.count / n;
      const char *source = send.ptr;
      if (send.ptr == recv.ptr) { /* in place: send from a copy */
        void *copy = NULL;
        LOOM_CHECK(scratch(g, st, loom_buf_bytes(send), &copy));
        CUDA_TRY(g, cudaMemcpyAsync(copy, send.ptr, loom_buf_bytes(send), cudaMemcpyDeviceToDevice,
                                    st->stream));
        source = copy;
      }
      size_t *counts = malloc(2 * n * sizeof *counts);
      if (!counts) return loom_error_set(LOOM_ERR_NOMEM, "alltoall counts (%zu)", n);
      for (size_t r = 0; r < n; r++) {
        counts[r] = block;
        counts[n + r] = r * block;
      }
      loom_status s = exchange(g, st, send.dtype, source, counts, counts + n, recv.ptr, counts,
                               counts + n, deadline);
      free(counts);
      return s;
    }
    case LOOM_COLL_ALLTOALLV: {
      size_t n = (size_t)g->size;
      return exchange(g, st, send.dtype, send.ptr, job->counts, job->counts + n, recv.ptr,
                      job->counts + 2 * n, job->counts + 3 * n, deadline);
    }
    case LOOM_COLL_FUSED_ALLREDUCE: {
      if (job->buf_count == 0) return LOOM_OK;
      loom_dtype dtype = job->bufs[0].dtype;
      size_t total = 0;
      for (int i = 0; i < job->buf_count; i++) total += loom_buf_bytes(job->bufs[i]);
      char *flat = NULL;
      LOOM_CHECK(scratch(g, st, total ? total : 1, (void **)&flat));
      size_t offset = 0;
      for (int i = 0; i < job->buf_count; i++) {
        size_t bytes = loom_buf_bytes(job->bufs[i]);
        if (bytes)
          CUDA_TRY(g, cudaMemcpyAsync(flat + offset, job->bufs[i].ptr, bytes,
                                      cudaMemcpyDeviceToDevice, st->stream));
        offset += bytes;
      }
      NCCL_TRY(g, st, ncclAllReduce(flat, flat, total / loom_dtype_size(dtype), nccl_type(dtype),
                                    nccl_op(job->op), st->comm, st->stream), deadline);
      offset = 0;
      for (int i = 0; i < job->buf_count; i++) {
        size_t bytes = loom_buf_bytes(job->bufs[i]);
        if (bytes)
          CUDA_TRY(g, cudaMemcpyAsync(job->bufs[i].ptr, flat + offset, bytes,
                                      cudaMemcpyDeviceToDevice, st->stream));
        offset += bytes;
      }
      return LOOM_OK;
    }
    case LOOM_COLL_SPARSE_EXCHANGE: {
      const loom_sparse_plan *plan = job->plan;
      size_t n = (size_t)g->size;
      size_t *counts = calloc(4 * n, sizeof *counts);
      if (!counts) return loom_error_set(LOOM_ERR_NOMEM, "sparse exchange counts (%zu)", n);
      for (int i = 0; i < plan->send_count; i++) {
        counts[plan->send_peers[i]] = plan->send_counts[i];
        counts[n + plan->send_peers[i]] = plan->send_displs[i];
      }
      for (int i = 0; i < plan->recv_count; i++) {
        counts[2 * n + plan->recv_peers[i]] = plan->recv_counts[i];
        counts[3 * n + plan->recv_peers[i]] = plan->recv_displs[i];
      }
      loom_status s = exchange(g, st, plan->dtype, send.ptr, counts, counts + n, recv.ptr,
                               counts + 2 * n, counts + 3 * n, deadline);
      free(counts);
      return s;
    }
    default:
      return loom_error_set(LOOM_ERR_INTERNAL, "NCCL backend: collective kind %d has no device "
                            "form", (int)job->kind);
  }
}


/* One look at a pending operation: done, failed remotely, or past its deadline. */
static loom_status flush_p2p(loom_group *g, nccl_state *st);

static loom_status poll_pending(void *opaque, int *done) {
  pending *p = opaque;
  loom_group *g = p->group;
  *done = 1;
  if (!p->issued) LOOM_CHECK(flush_p2p(g, p->st));
  if (p->st->broken)
    return loom_error_set(LOOM_ERR_STATE, "%s on group %s: communicator already aborted", p->what,
                          g->name);
  cudaError_t e = cudaEventQuery(p->done);
  if (e == cudaSuccess) return LOOM_OK;
  if (e != cudaErrorNotReady) return cuda_failure(g, p->what, e);
  ncclResult_t async = ncclSuccess;
  ncclCommGetAsyncError(p->st->comm, &async);
  if (async != ncclSuccess && async != ncclInProgress) {
    loom_status s = nccl_failure(g, p->what, async, p->st->comm);
    abort_comm(g, p->st);
    return s;
  }
  if (loom_now() > p->deadline) {
    char where[256];
    describe(g, where, sizeof where);
    abort_comm(g, p->st);
    return loom_error_set(LOOM_ERR_TIMEOUT, "%s on %s did not complete within %g s (LOOM_TIMEOUT):"
                          " a peer did not join or stopped; the communicator was aborted so the "
                          "job can be restarted", p->what, where, g->ctx->config.timeout_seconds);
  }
  *done = 0;
  return LOOM_INPROGRESS;
}

/* loom_req_order_stream: `stream` (NULL = the compute stream) waits for the operation. */
static loom_status order_pending(void *opaque, void *stream) {
  pending *p = opaque;
  loom_group *g = p->group;
  if (!p->issued) LOOM_CHECK(flush_p2p(g, p->st));
  cudaStream_t target = stream ? (cudaStream_t)stream : (cudaStream_t)loom_group_order_stream(g);
  CUDA_TRY(g, cudaStreamWaitEvent(target, p->done, 0));
  return LOOM_OK;
}

static void release_pending(void *opaque) {
  pending *p = opaque;
  if (p->st->spare_count < (int)(sizeof p->st->spare_events / sizeof p->st->spare_events[0]))
    p->st->spare_events[p->st->spare_count++] = p->done;
  else
    cudaEventDestroy(p->done);
  free(p);
}

/* Orders st->stream after the group's order stream (the compute stream unless set). */
static loom_status join_in(loom_group *g, nccl_state *st) {
  cudaStream_t ordered = loom_group_order_stream(g);
  if (st->stream == ordered) return LOOM_OK; /* --nccl-stream compute: stream order suffices */
  CUDA_TRY(g, cudaEventRecord(st->ready, ordered));
  CUDA_TRY(g, cudaStreamWaitEvent(st->stream, st->ready, 0));
  return LOOM_OK;
}

/* Orders the compute stream after st->stream; completes through a request or a wait. */
/* A request polling `*proto` (copied; its completion event taken from the spare pool or
 * created). The pending state and event belong to the request from here on. */
static loom_status new_request(const pending *proto, pending **out_pending, loom_req **out) {
  loom_group *g = proto->group;
  nccl_state *st = proto->st;
  pending *p = malloc(sizeof *p);
  if (!p) return loom_error_set(LOOM_ERR_NOMEM, "pending NCCL operation (%s)", proto->what);
  *p = *proto;
  if (st->spare_count > 0) {
    p->done = st->spare_events[--st->spare_count];
  } else {
    cudaError_t e = cudaEventCreateWithFlags(&p->done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
      free(p);
      return cuda_failure(g, proto->what, e);
    }
  }
  loom_req *r = NULL;
  loom_status s = loom_req_alloc(LOOM_REQ_POLL, &r);
  if (s < 0) {
    release_pending(p);
    return s;
  }
  r->poll = poll_pending;
  r->poll_release = release_pending;
  r->poll_order = order_pending;
  r->poll_state = p;
  r->what = proto->what;
  *out_pending = p;
  *out = r;
  return LOOM_OK;
}

/* Hands the request to the caller, or waits for it (blocking forms). */
static loom_status deliver(loom_req *r, loom_req **req) {
  if (req) {
    *req = r;
    return LOOM_OK;
  }
  return loom_wait(&r);
}

/* Completes through a request or a wait. A blocking call also orders the compute stream after
 * st->stream (its result is ready for the caller's next kernels, as with NCCL on one stream);
 * an asynchronous one does not, so compute posted after it overlaps it: the caller orders a
 * stream with loom_req_order_stream, or waits. */
static loom_status join_out(loom_group *g, nccl_state *st, const char *what, double deadline,
                            loom_req **req) {
  pending proto = {.group = g, .st = st, .deadline = deadline, .what = what, .issued = 1};
  pending *p = NULL;
  loom_req *r = NULL;
  LOOM_CHECK(new_request(&proto, &p, &r));
  cudaError_t e = cudaEventRecord(p->done, st->stream);
  cudaStream_t ordered = loom_group_order_stream(g);
  if (e == cudaSuccess && !req && st->stream != ordered) e = cudaStreamWaitEvent(ordered, p->done, 0);
  if (e != cudaSuccess) {
    loom_status s = cuda_failure(g, what, e);
    char message[1024];
    snprintf(message, sizeof message, "%s", loom_error_string());
    st->broken = 1; /* the stream order is lost: nothing later on this group can be trusted */
    loom_wait(&r);  /* frees the request (it reports the broken group at once) */
    loom_error_restore(message);
    return s;
  }
  return deliver(r, req);
}

loom_status loom_nccl_post(loom_coll_job *job, loom_req **req) {
  loom_group *g = job->group;
  nccl_state *st = NULL;
  LOOM_CHECK(ensure(g, &st));
  LOOM_CHECK(flush_p2p(g, st)); /* keep the posting order */
  double deadline = loom_now() + g->ctx->config.timeout_seconds;
  LOOM_CHECK(join_in(g, st));
  LOOM_CHECK(enqueue(job, st, deadline));
  return join_out(g, st, loom_coll_kind_name(job->kind), deadline, req);
}

/* Issues every waiting point-to-point operation of the group in one NCCL group call. */
static loom_status flush_p2p(loom_group *g, nccl_state *st) {
  if (st->p2p_count == 0) return LOOM_OK;
  int count = st->p2p_count;
  st->p2p_count = 0;
  double deadline = st->p2p[0]->deadline;
  LOOM_CHECK(join_in(g, st));
  NCCL_TRY(g, st, ncclGroupStart(), deadline);
  for (int i = 0; i < count; i++) {
    pending *p = st->p2p[i];
    ncclDataType_t type = nccl_type(p->buf.dtype);
    if (p->is_send)
      NCCL_TRY(g, st, ncclSend(p->buf.ptr, p->buf.count, type, p->peer, st->comm, st->stream), deadline);
    else
      NCCL_TRY(g, st, ncclRecv(p->buf.ptr, p->buf.count, type, p->peer, st->comm, st->stream), deadline);
  }
  NCCL_TRY(g, st, ncclGroupEnd(), deadline);
  for (int i = 0; i < count; i++) {
    CUDA_TRY(g, cudaEventRecord(st->p2p[i]->done, st->stream));
    st->p2p[i]->issued = 1;
  }
  cudaStream_t ordered = loom_group_order_stream(g);
  if (st->stream != ordered) {
    CUDA_TRY(g, cudaEventRecord(st->joined, st->stream));
    CUDA_TRY(g, cudaStreamWaitEvent(ordered, st->joined, 0));
  }
  return LOOM_OK;
}

loom_status loom_nccl_p2p(loom_group *g, loom_buf buf, int peer, int is_send, loom_req **req) {
  nccl_state *st = NULL;
  LOOM_CHECK(ensure(g, &st));
  if (st->p2p_count == (int)(sizeof st->p2p / sizeof st->p2p[0])) LOOM_CHECK(flush_p2p(g, st));
  pending proto = {.group = g, .st = st, .deadline = loom_now() + g->ctx->config.timeout_seconds,
                   .what = is_send ? "loom_send" : "loom_recv", .issued = 0, .buf = buf,
                   .peer = peer, .is_send = is_send};
  pending *p = NULL;
  loom_req *r = NULL;
  LOOM_CHECK(new_request(&proto, &p, &r));
  st->p2p[st->p2p_count++] = p; /* issued with the group's next flush */
  return deliver(r, req);
}

loom_status loom_nccl_p2p_batch(loom_group *g, const loom_p2p *ops, int count, void *after,
                                loom_req **req) {
  nccl_state *st = NULL;
  LOOM_CHECK(ensure(g, &st));
  LOOM_CHECK(flush_p2p(g, st)); /* keep the posting order */
  double deadline = loom_now() + g->ctx->config.timeout_seconds;
  if (after) CUDA_TRY(g, cudaStreamWaitEvent(st->stream, (cudaEvent_t)after, 0));
  else LOOM_CHECK(join_in(g, st));
  NCCL_TRY(g, st, ncclGroupStart(), deadline);
  for (int i = 0; i < count; i++) {
    ncclDataType_t type = nccl_type(ops[i].buf.dtype);
    if (ops[i].is_send)
      NCCL_TRY(g, st, ncclSend(ops[i].buf.ptr, ops[i].buf.count, type, ops[i].peer, st->comm,
                               st->stream), deadline);
    else
      NCCL_TRY(g, st, ncclRecv(ops[i].buf.ptr, ops[i].buf.count, type, ops[i].peer, st->comm,
                               st->stream), deadline);
  }
  NCCL_TRY(g, st, ncclGroupEnd(), deadline);
  return join_out(g, st, "loom_p2p_batch", deadline, req);
}

#else /* no NCCL in this build */

static loom_status no_nccl(const loom_group *g) {
  return loom_error_set(LOOM_ERR_UNSUPPORTED, "device buffers on group %s: this build has no NCCL "
                        "backend; rebuild where NCCL and CUDA are installed (-Dnccl=enabled)",
                        g->name);
}
loom_status loom_nccl_post(loom_coll_job *job, loom_req **req) { return no_nccl(job->group); }
loom_status loom_nccl_p2p(loom_group *g, loom_buf buf, int peer, int is_send, loom_req **req) {
  return no_nccl(g);
}
loom_status loom_nccl_p2p_batch(loom_group *g, const loom_p2p *ops, int count, void *after,
                                loom_req **req) {
  return no_nccl(g);
}

#endif
