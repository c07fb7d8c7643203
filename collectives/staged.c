/* The staged device backend (see staged.h): ranks that share a GPU cannot share an NCCL
 * communicator, so their device traffic moves through pinned host memory over MPI. A
 * collective is a job on the group's lane, like a host collective: it waits for an event
 * recorded on the compute stream when it was posted (so kernels queued before the call have
 * produced the inputs), copies the inputs to the lane's pinned stage, runs the host algorithm
 * (flat.c, hierarchical.c, sparse.c) and copies the results back before it completes. The
 * stage belongs to the lane, which runs one job at a time. Point-to-point bypasses the lanes,
 * as on the host: a send is copied out and issued at post, a receive is copied in when it
 * completes; each holds a pinned block of the group's pool until then. */
#include "collectives/staged.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/log.h"
#include "runtime/req_impl.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>

enum { STAGED_BLOCKS = 64 };

typedef struct {
  void *ptr;
  size_t bytes;
  int in_use;
} pinned_block;

typedef struct {
  cudaStream_t stream; /* device <-> stage copies of this group */
  void *stage;         /* the lane's stage (one job at a time) */
  size_t stage_bytes;
  pthread_mutex_t lock; /* the blocks, taken by point-to-point on any thread */
  pinned_block blocks[STAGED_BLOCKS];
  int block_count;
} staged_state;

static loom_status cuda_failure(const loom_group *g, const char *what, cudaError_t e) {
  return loom_error_set(LOOM_ERR_CUDA, "%s on group %s (rank %d of %d, staged device path): %s",
                        what, g->name, g->rank, g->size, cudaGetErrorString(e));
}

#define CUDA_TRY(g, call)                                                                  \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) return cuda_failure((g), #call, e_);                            \
  } while (0)

static void free_state(loom_group *g) {
  staged_state *st = g->staged;
  if (st->stream) cudaStreamDestroy(st->stream);
  if (st->stage) cudaFreeHost(st->stage);
  for (int i = 0; i < st->block_count; i++) cudaFreeHost(st->blocks[i].ptr);
  pthread_mutex_destroy(&st->lock);
  free(st);
  g->staged = NULL;
}

/* The group's staged state, created on first use from any thread. */
static loom_status ensure(loom_group *g, staged_state **out) {
  staged_state *st = __atomic_load_n((staged_state **)&g->staged, __ATOMIC_ACQUIRE);
  if (st) {
    *out = st;
    return LOOM_OK;
  }
  loom_status status = LOOM_OK;
  cudaError_t current = cudaSetDevice(g->ctx->device.ordinal); /* a lane thread's first use */
  if (current != cudaSuccess) return cuda_failure(g, "cudaSetDevice", current);
  pthread_mutex_lock(&g->ctx->lanes_lock);
  if (!g->staged) {
    st = calloc(1, sizeof *st);
    if (!st) {
      status = loom_error_set(LOOM_ERR_NOMEM, "staged device state of group %s", g->name);
    } else {
      pthread_mutex_init(&st->lock, NULL);
      cudaError_t e = cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking);
      if (e != cudaSuccess) {
        status = cuda_failure(g, "cudaStreamCreateWithFlags", e);
        pthread_mutex_destroy(&st->lock);
        free(st);
      } else {
        g->staged_free = free_state;
        __atomic_store_n((staged_state **)&g->staged, st, __ATOMIC_RELEASE);
      }
    }
  }
  *out = g->staged;
  pthread_mutex_unlock(&g->ctx->lanes_lock);
  return status;
}

/* The lane's stage of at least `bytes` (grown; only the lane uses it). */
static loom_status stage_of(loom_group *g, staged_state *st, size_t bytes, char **out) {
  if (st->stage_bytes < bytes) {
    if (st->stage) cudaFreeHost(st->stage);
    st->stage = NULL;
    st->stage_bytes = 0;
    cudaError_t e = cudaMallocHost(&st->stage, bytes);
    if (e != cudaSuccess)
      return loom_error_set(LOOM_ERR_NOMEM, "pinned stage of %zu bytes for group %s: %s", bytes,
                            g->name, cudaGetErrorString(e));
    st->stage_bytes = bytes;
  }
  *out = st->stage;
  return LOOM_OK;
}

/* ---- collectives ---------------------------------------------------------------------- */

typedef struct {
  loom_coll_job job; /* device buffers, as posted; counts and bufs owned */
  cudaEvent_t ready; /* recorded on the compute stream at post */
} staged_job;

static void release_job(void *opaque) {
  staged_job *sj = opaque;
  if (sj->ready) cudaEventDestroy(sj->ready);
  free(sj->job.counts);
  free(sj->job.bufs);
  free(sj);
}

static size_t bytes_of(size_t count, loom_dtype dtype) { return count * loom_dtype_size(dtype); }

/* Fusion: every tensor into one stretch of the stage, one host allreduce, and back. */
static loom_status run_fused(loom_coll_job *job, staged_state *st) {
  loom_group *g = job->group;
  if (job->buf_count == 0) return LOOM_OK;
  loom_dtype dtype = job->bufs[0].dtype;
  size_t total = 0;
  for (int i = 0; i < job->buf_count; i++) total += job->bufs[i].count;
  char *stage = NULL;
  LOOM_CHECK(stage_of(g, st, bytes_of(total, dtype) + 1, &stage));
  size_t offset = 0;
  for (int i = 0; i < job->buf_count; i++) {
    size_t n = loom_buf_bytes(job->bufs[i]);
    if (n) CUDA_TRY(g, cudaMemcpyAsync(stage + offset, job->bufs[i].ptr, n, cudaMemcpyDeviceToHost, st->stream));
    offset += n;
  }
  CUDA_TRY(g, cudaStreamSynchronize(st->stream));
  loom_buf whole = loom_buf_host(stage, total, dtype);
  loom_coll_job host = {.kind = LOOM_COLL_ALLREDUCE, .group = g, .send = whole, .recv = whole,
                        .op = job->op, .algo = job->algo};
  LOOM_CHECK(loom_coll_run(&host));
  offset = 0;
  for (int i = 0; i < job->buf_count; i++) {
    size_t n = loom_buf_bytes(job->bufs[i]);
    if (n) CUDA_TRY(g, cudaMemcpyAsync(job->bufs[i].ptr, stage + offset, n, cudaMemcpyHostToDevice, st->stream));
    offset += n;
  }
  CUDA_TRY(g, cudaStreamSynchronize(st->stream));
  return LOOM_OK;
}

/* Runs on the lane: inputs out, host algorithm, results back. The send and receive ranges
 * share one stretch of the stage when they overlap (the in-place forms), so the host
 * algorithm sees the same pointer relations as the caller's device buffers. */
static loom_status run_staged(void *opaque) {
  staged_job *sj = opaque;
  loom_coll_job *job = &sj->job;
  loom_group *g = job->group;
  staged_state *st = NULL;
  LOOM_CHECK(ensure(g, &st));
  CUDA_TRY(g, cudaSetDevice(g->ctx->device.ordinal));
  CUDA_TRY(g, cudaStreamWaitEvent(st->stream, sj->ready, 0));
  if (job->kind == LOOM_COLL_FUSED_ALLREDUCE) return run_fused(job, st);
  if (job->kind == LOOM_COLL_BARRIER) return loom_coll_run(job);

  loom_dtype dtype = job->kind == LOOM_COLL_SPARSE_EXCHANGE ? job->plan->dtype : job->send.dtype;
  size_t in_bytes = loom_buf_bytes(job->send), out_bytes = loom_buf_bytes(job->recv);
  if (job->kind == LOOM_COLL_SPARSE_EXCHANGE) {
    in_bytes = bytes_of(job->plan->send_total, dtype);
    out_bytes = bytes_of(job->plan->recv_total, dtype);
  }
  if (job->kind == LOOM_COLL_REDUCE && g->rank != job->root) out_bytes = 0;
  char *in_dev = job->send.ptr, *out_dev = job->recv.ptr;
  size_t span, in_at = 0, out_at;
  int overlap = out_bytes && in_bytes && in_dev < out_dev + out_bytes && out_dev < in_dev + in_bytes;
  if (overlap) {
    char *base = in_dev < out_dev ? in_dev : out_dev;
    char *end = in_dev + in_bytes > out_dev + out_bytes ? in_dev + in_bytes : out_dev + out_bytes;
    span = (size_t)(end - base);
    in_at = (size_t)(in_dev - base);
    out_at = (size_t)(out_dev - base);
  } else {
    out_at = (in_bytes + 63) / 64 * 64;
    span = out_at + out_bytes;
  }
  char *stage = NULL;
  LOOM_CHECK(stage_of(g, st, span + 1, &stage));
  if (in_bytes)
    CUDA_TRY(g, cudaMemcpyAsync(stage + in_at, in_dev, in_bytes, cudaMemcpyDeviceToHost, st->stream));
  CUDA_TRY(g, cudaStreamSynchronize(st->stream));
  loom_coll_job host = *job;
  host.send = loom_buf_host(stage + in_at, job->send.count, job->send.dtype);
  host.recv = loom_buf_host(out_bytes || job->recv.ptr ? stage + out_at : NULL, job->recv.count,
                            job->recv.dtype);
  LOOM_CHECK(loom_coll_run(&host));
  if (out_bytes)
    CUDA_TRY(g, cudaMemcpyAsync(out_dev, stage + out_at, out_bytes, cudaMemcpyHostToDevice, st->stream));
  CUDA_TRY(g, cudaStreamSynchronize(st->stream));
  return LOOM_OK;
}

loom_status loom_staged_post(loom_coll_job *job, loom_req **req) {
  loom_group *g = job->group;
  staged_job *sj = calloc(1, sizeof *sj);
  if (!sj) {
    free(job->counts);
    free(job->bufs);
    return loom_error_set(LOOM_ERR_NOMEM, "staged collective on group %s", g->name);
  }
  sj->job = *job;
  cudaError_t e = cudaEventCreateWithFlags(&sj->ready, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventRecord(sj->ready, (cudaStream_t)loom_group_order_stream(g));
  if (e != cudaSuccess) {
    loom_status s = cuda_failure(g, "ordering after the compute stream", e);
    release_job(sj);
    return s;
  }
  loom_executor *lane = NULL;
  loom_status status = loom_group_lane(g, &lane);
  if (status == LOOM_OK && !req) status = loom_executor_run(lane, run_staged, sj);
  if (status < 0 || !req) {
    release_job(sj);
    return status;
  }
  LOOM_CHECK(loom_executor_post(lane, run_staged, sj, release_job, req));
  (*req)->device_job = 1; /* loom_req_order_stream: the results are on the device once done */
  return LOOM_OK;
}

/* ---- point-to-point ------------------------------------------------------------------- */

typedef struct {
  loom_group *group;
  staged_state *st;
  pinned_block *block;
  loom_buf buf; /* the device buffer */
  int is_send, peer, tag;
  MPI_Request request;
  double posted_at, deadline;
  int finished;
  loom_status result;
  char message[512]; /* the failure's, restored at every later poll */
} staged_p2p;

static loom_status take_block(loom_group *g, staged_state *st, size_t bytes, pinned_block **out) {
  pthread_mutex_lock(&st->lock);
  pinned_block *found = NULL;
  for (int i = 0; i < st->block_count && !found; i++)
    if (!st->blocks[i].in_use && st->blocks[i].bytes >= bytes) found = &st->blocks[i];
  for (int i = 0; i < st->block_count && !found; i++) /* a free block too small: grow it */
    if (!st->blocks[i].in_use) {
      cudaFreeHost(st->blocks[i].ptr);
      st->blocks[i].ptr = NULL;
      st->blocks[i].bytes = 0;
      found = &st->blocks[i];
    }
  if (!found && st->block_count < STAGED_BLOCKS) found = &st->blocks[st->block_count++];
  loom_status status = LOOM_OK;
  if (!found) {
    status = loom_error_set(LOOM_ERR_NOMEM, "staged point-to-point on group %s: %d transfers "
                            "in flight already; wait for some first", g->name, STAGED_BLOCKS);
  } else if (!found->ptr) {
    cudaError_t e = cudaMallocHost(&found->ptr, bytes ? bytes : 1);
    if (e != cudaSuccess) {
      found->ptr = NULL;
      status = loom_error_set(LOOM_ERR_NOMEM, "pinned block of %zu bytes for group %s: %s",
                              bytes, g->name, cudaGetErrorString(e));
    } else {
      found->bytes = bytes ? bytes : 1;
    }
  }
  if (status == LOOM_OK) found->in_use = 1;
  pthread_mutex_unlock(&st->lock);
  *out = found;
  return status;
}

static void release_p2p(void *opaque) {
  staged_p2p *p = opaque;
  int keep_block = 0;
  if (p->request != MPI_REQUEST_NULL) { /* abandoned: let MPI finish or drop it */
    MPI_Cancel(&p->request);
    if (!p->is_send) {
      MPI_Wait(&p->request, MPI_STATUS_IGNORE);
    } else { /* MPI may still read a send it could not cancel: its block stays taken */
      MPI_Request_free(&p->request);
      keep_block = 1;
    }
  }
  if (p->block && !keep_block) {
    pthread_mutex_lock(&p->st->lock);
    p->block->in_use = 0;
    pthread_mutex_unlock(&p->st->lock);
  }
  free(p);
}

static loom_status poll_p2p(void *opaque, int *done) {
  staged_p2p *p = opaque;
  loom_group *g = p->group;
  *done = 1;
  if (p->finished) {
    if (p->result < 0) loom_error_restore(p->message);
    return p->result;
  }
  int flag = 0;
  int rc = MPI_Test(&p->request, &flag, MPI_STATUS_IGNORE);
  loom_status status = LOOM_OK;
  if (rc != MPI_SUCCESS) {
    status = loom_mpi_error(g->ctx, rc, p->is_send ? "loom_send (staged)" : "loom_recv (staged)");
  } else if (!flag) {
    if (loom_now() <= p->deadline) {
      *done = 0;
      return LOOM_INPROGRESS;
    }
    status = loom_error_set(LOOM_ERR_TIMEOUT, "%s %s peer %d (world rank %d), tag %d, on group "
                            "%s (staged device path): not complete after %.1f s (LOOM_TIMEOUT=%g)"
                            ": the peer is hung or dead, or never posted the matching %s; the "
                            "request was cancelled", p->is_send ? "loom_send" : "loom_recv",
                            p->is_send ? "to" : "from", p->peer, g->world_ranks[p->peer], p->tag,
                            g->name, loom_now() - p->posted_at, g->ctx->config.timeout_seconds,
                            p->is_send ? "receive" : "send");
  } else if (!p->is_send && p->buf.count) {
    cudaError_t e = cudaMemcpyAsync(p->buf.ptr, p->block->ptr, loom_buf_bytes(p->buf),
                                    cudaMemcpyHostToDevice, p->st->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(p->st->stream);
    if (e != cudaSuccess) status = cuda_failure(g, "loom_recv (staged): copy to the device", e);
  }
  p->finished = 1;
  p->result = status;
  if (status < 0) snprintf(p->message, sizeof p->message, "%s", loom_error_string());
  return status;
}

/* The result is on the device once the transfer completed: wait for it on the host. */
static loom_status order_p2p(void *opaque, void *stream) {
  int done = 0;
  while (!done) poll_p2p(opaque, &done);
  return LOOM_OK;
}

loom_status loom_staged_p2p(loom_group *g, loom_buf buf, int peer, int tag, int is_send,
                            void *after, loom_req **out) {
  const char *call = is_send ? "loom_send" : "loom_recv";
  staged_state *st = NULL;
  LOOM_CHECK(ensure(g, &st));
  staged_p2p *p = calloc(1, sizeof *p);
  if (!p) return loom_error_set(LOOM_ERR_NOMEM, "%s (staged) on group %s", call, g->name);
  *p = (staged_p2p){.group = g, .st = st, .buf = buf, .is_send = is_send, .peer = peer,
                    .tag = tag, .request = MPI_REQUEST_NULL, .posted_at = loom_now()};
  p->deadline = p->posted_at + g->ctx->config.timeout_seconds;
  size_t bytes = loom_buf_bytes(buf);
  loom_status status = take_block(g, st, bytes, &p->block);
  if (status == LOOM_OK && is_send && bytes) { /* after `after`, or the order stream's work */
    cudaEvent_t ready = (cudaEvent_t)after;
    cudaError_t e = ready ? cudaSuccess : cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
    if (e == cudaSuccess) {
      if (!after) e = cudaEventRecord(ready, (cudaStream_t)loom_group_order_stream(g));
      if (e == cudaSuccess) e = cudaStreamWaitEvent(st->stream, ready, 0);
      if (e == cudaSuccess)
        e = cudaMemcpyAsync(p->block->ptr, buf.ptr, bytes, cudaMemcpyDeviceToHost, st->stream);
      if (e == cudaSuccess) e = cudaStreamSynchronize(st->stream);
      if (!after) cudaEventDestroy(ready);
    }
    if (e != cudaSuccess) status = cuda_failure(g, "loom_send (staged): copy to the host", e);
  }
  if (status == LOOM_OK) {
    MPI_Datatype type = loom_coll_mpi_type(buf.dtype);
    int rc = is_send ? MPI_Isend(p->block->ptr, (int)buf.count, type, peer, tag, g->comm, &p->request)
                     : MPI_Irecv(p->block->ptr, (int)buf.count, type, peer, tag, g->comm, &p->request);
    if (rc != MPI_SUCCESS) {
      p->request = MPI_REQUEST_NULL;
      status = loom_mpi_error(g->ctx, rc, call);
    }
  }
  loom_req *r = NULL;
  if (status == LOOM_OK)
    status = loom_req_poll_create(call, poll_p2p, release_p2p, order_p2p, p, &r);
  if (status < 0) {
    release_p2p(p);
    return status;
  }
  r->ctx = g->ctx;
  r->watch = (loom_watch){.what = call, .group = g->name, .peer = peer, .tag = tag};
  loom_watch_begin(g->ctx, &r->watch);
  *out = r;
  return LOOM_OK;
}

#else /* no CUDA in this build */

static loom_status no_cuda(const loom_group *g) {
  return loom_error_set(LOOM_ERR_UNSUPPORTED, "device buffers on group %s: this build has no "
                        "CUDA", g->name);
}
loom_status loom_staged_post(loom_coll_job *job, loom_req **req) {
  free(job->counts);
  free(job->bufs);
  return no_cuda(job->group);
}
loom_status loom_staged_p2p(loom_group *g, loom_buf buf, int peer, int tag, int is_send,
                            void *after, loom_req **req) {
  return no_cuda(g);
}

#endif
