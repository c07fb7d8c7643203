/* Asynchronous snapshots (see snapshot.h and snapshot_impl.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/snapshot_impl.h"
#include "runtime/device.h"
#include "runtime/log.h"

/* ---- asynchronous snapshots ---------------------------------------------------------------
 * The copy of device state leaves the training path. On a side stream, behind the compute
 * stream's pending work, each device share is copied into a device image of the data slot and
 * checksummed in the same pass (HBM speed; the fence makes the next optimizer step wait only
 * for this), host shares are uploaded into it, and one copy moves it into the segment,
 * registered with CUDA so it runs at PCIe speed. A worker thread then encodes the parity with
 * its own communicators and publishes the slot. One snapshot in flight; a request while one is
 * in flight is skipped on every rank alike (counted, and logged once). Without device entries
 * the shares are copied into the slot at the call and the worker checksums them. */

/* The worker's job: wait for the copies into the slot, then publish it. */
static loom_status publish_job(void *arg) {
  loom_snapshot *s = arg;
  snap_comms c = {s->worker_world, s->worker_column, s->worker_group};
  loom_status status = s->job_status;
  const uint64_t *data_sum = NULL;
  if (status != LOOM_OK) loom_error_restore(s->job_message); /* this thread reports it */
#ifdef LOOM_HAVE_CUDA
  if (s->device_entries && status != LOOM_OK) {
    cudaStreamSynchronize(s->side); /* a partial request drains before its buffers are reused */
  } else if (s->device_entries) {
    if (cudaEventSynchronize(s->copied_to_host) != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "snapshot: copying device state to host failed");
    data_sum = s->host_sum;
  }
#endif
  s->job_copied = loom_now();
  status = snap_finish_slot(s, s->job_slot, s->job_seq, s->job_step, status, data_sum, &c);
  s->job_published = loom_now();
  pthread_mutex_lock(&s->job_lock);
  s->job_result = status;
  snprintf(s->job_result_message, sizeof s->job_result_message, "%s",
           status == LOOM_OK ? "" : loom_error_string());
  s->job_done = 1;
  pthread_cond_broadcast(&s->job_cond);
  pthread_mutex_unlock(&s->job_lock);
  return status;
}

/* The training thread's record of a finished job (the request's completion orders the
 * worker's writes before these reads). */
static void record_job(loom_snapshot *s, loom_status status) {
  if (status != LOOM_OK) return;
  s->stats.published++;
  s->stats.copy_seconds += s->job_copied - s->job_requested;
  s->stats.publish_seconds += s->job_published - s->job_requested;
}

/* Folds a finished job into the statistics and keeps its outcome in s->finished (and its
 * message) for the next call to report; frees its request if nobody took it. */
static void settle_job(loom_snapshot *s) {
  pthread_mutex_lock(&s->job_lock);
  loom_status status = s->job_result;
  snprintf(s->finished_message, sizeof s->finished_message, "%s", s->job_result_message);
  pthread_mutex_unlock(&s->job_lock);
  record_job(s, status);
  s->finished = status;
  s->job_active = 0;
  if (s->unclaimed) loom_wait(&s->unclaimed); /* done: returns at once */
}

/* 1 while a snapshot is being published; when it has finished, settles it. */
static int still_publishing(loom_snapshot *s) {
  if (!s->job_active) return 0;
  pthread_mutex_lock(&s->job_lock);
  int done = s->job_done;
  pthread_mutex_unlock(&s->job_lock);
  if (!done) return 1;
  settle_job(s);
  return 0;
}

/* The last finished snapshot's outcome, once. */
static loom_status take_finished(loom_snapshot *s) {
  loom_status status = s->finished;
  s->finished = LOOM_OK;
  if (status != LOOM_OK) loom_error_restore(s->finished_message);
  return status;
}

static loom_status setup_async(loom_snapshot *s) {
  loom_status status = LOOM_OK;
  pthread_mutex_init(&s->job_lock, NULL);
  pthread_cond_init(&s->job_cond, NULL);
  s->job_sync_ready = 1;
  if (MPI_Comm_dup(s->world, &s->worker_world) != MPI_SUCCESS ||
      MPI_Comm_dup(s->column, &s->worker_column) != MPI_SUCCESS ||
      (s->group != MPI_COMM_NULL && MPI_Comm_dup(s->group, &s->worker_group) != MPI_SUCCESS))
    return loom_error_set(LOOM_ERR_MPI, "snapshot: duplicating communicators for the worker");
  for (int i = 0; i < loom_state_count(s->state); i++) s->device_entries += s->shares[i].device;
#ifdef LOOM_HAVE_CUDA
  if (s->device_entries) {
    cudaError_t e = cudaMalloc((void **)&s->staging, s->data_bytes);
    if (e == cudaSuccess) e = cudaMemset(s->staging, 0, s->data_bytes); /* gaps stay zero */
    if (e == cudaSuccess) e = cudaMalloc((void **)&s->staging_sum, sizeof(uint64_t));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&s->host_sum, sizeof(uint64_t));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&s->host_start, sizeof(uint64_t));
    uint64_t host_bytes = 0;
    for (int i = 0; i < loom_state_count(s->state); i++)
      if (!s->shares[i].device) host_bytes = s->shares[i].slot_offset + round8(s->shares[i].share_bytes);
    if (e == cudaSuccess && host_bytes) e = cudaMallocHost((void **)&s->host_stage, host_bytes);
    if (e == cudaSuccess && host_bytes) memset(s->host_stage, 0, host_bytes);
    for (uint64_t w = s->payload / 8; w < s->data_bytes / 8; w++) s->tail_sum += loom_snapshot_sum_term(0, w);
    loom_snapshot_range *table = calloc((size_t)s->device_entries, sizeof *table);
    if (!table && e == cudaSuccess) e = cudaErrorMemoryAllocation;
    for (int i = 0; e == cudaSuccess && i < loom_state_count(s->state); i++) {
      const entry_share *share = &s->shares[i];
      loom_buf local;
      loom_state_entry(s->state, i, NULL, NULL, &local, NULL, NULL);
      if (!share->device || share->share_bytes == 0) continue;
      table[s->plan_count++] = (loom_snapshot_range){(const unsigned char *)local.ptr + share->share_offset,
                                                     share->slot_offset, share->share_bytes,
                                                     share->slot_offset / 8};
      if (share->share_bytes > s->plan_longest) s->plan_longest = share->share_bytes;
    }
    if (e == cudaSuccess && s->plan_count) e = cudaMalloc((void **)&s->plan, sizeof *table * (size_t)s->plan_count);
    if (e == cudaSuccess && s->plan_count)
      e = cudaMemcpy(s->plan, table, sizeof *table * (size_t)s->plan_count, cudaMemcpyHostToDevice);
    free(table);
    if (e != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "snapshot: no GPU memory for the device image of a "
                              "slot (%llu bytes): %s; use loom_snapshot_take",
                              (unsigned long long)s->data_bytes, cudaGetErrorString(e));
  }
  if (status == LOOM_OK && s->device_entries) {
    s->registered = cudaHostRegister(s->base, s->mapped, cudaHostRegisterDefault) == cudaSuccess;
    if (!s->registered) cudaGetLastError(); /* pageable copies: slower, still correct */
    if (cudaStreamCreateWithFlags(&s->side, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->compute_ready, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->copied_on_device, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->copied_to_host, cudaEventDisableTiming) != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "snapshot: creating the side stream and events");
  }
#endif
#ifdef LOOM_HAVE_CUDA
  /* the zeroed image (legacy stream) and the plan are in place before the side stream uses them */
  if (status == LOOM_OK && s->device_entries && cudaDeviceSynchronize() != cudaSuccess)
    status = loom_error_set(LOOM_ERR_CUDA, "snapshot: setting up the device image");
#endif
  if (status == LOOM_OK) status = loom_executor_create("loom-snapshot", 1, &s->worker);
  return status;
}

#ifdef LOOM_HAVE_CUDA
/* Device path (above). The image's checksum starts on the host with the terms of the host
 * shares and of the zero tail, and the GPU adds those of the device shares as it copies them. */
static loom_status enqueue_device_copies(loom_snapshot *s, unsigned char *dst) {
  cudaStream_t compute = (cudaStream_t)loom_ctx_stream(s->ctx);
  if (cudaEventRecord(s->compute_ready, compute) != cudaSuccess ||
      cudaStreamWaitEvent(s->side, s->compute_ready, 0) != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot: ordering the copies after the compute stream");
  uint64_t start = s->tail_sum;
  cudaError_t rc = cudaSuccess;
  for (int i = 0; i < loom_state_count(s->state) && rc == cudaSuccess; i++) { /* host shares */
    const entry_share *e = &s->shares[i];
    loom_buf local;
    loom_state_entry(s->state, i, NULL, NULL, &local, NULL, NULL);
    if (e->device || e->share_bytes == 0) continue;
    /* the previous upload from the stage has finished (one snapshot in flight); pad bytes stay 0 */
    unsigned char *staged = s->host_stage + e->slot_offset;
    memcpy(staged, (const unsigned char *)local.ptr + e->share_offset, e->share_bytes);
    start += loom_snapshot_sum(staged, round8(e->share_bytes), e->slot_offset / 8);
    rc = cudaMemcpyAsync(s->staging + e->slot_offset, staged, e->share_bytes, cudaMemcpyHostToDevice, s->side);
  }
  *s->host_start = start; /* uploaded before the kernel adds the device shares' terms */
  if (rc == cudaSuccess)
    rc = cudaMemcpyAsync(s->staging_sum, s->host_start, sizeof(uint64_t), cudaMemcpyHostToDevice, s->side);
  if (rc != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot: enqueuing a copy: %s", cudaGetErrorString(rc));
  LOOM_CHECK(loom_snapshot_copy_sum_device(s->staging, s->plan, s->plan_count, s->plan_longest,
                                           s->staging_sum, s->side));
  if (cudaEventRecord(s->copied_on_device, s->side) != cudaSuccess ||
      cudaMemcpyAsync(dst, s->staging, s->data_bytes, cudaMemcpyDeviceToHost, s->side) != cudaSuccess ||
      cudaMemcpyAsync(s->host_sum, s->staging_sum, sizeof(uint64_t), cudaMemcpyDeviceToHost, s->side) != cudaSuccess ||
      cudaEventRecord(s->copied_to_host, s->side) != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot: enqueuing the copy to the segment");
  s->fence_pending = 1;
  return LOOM_OK;
}
#endif

/* The shares into `slot`: enqueued on the GPU when any entry is on the device, else copied now. */
static loom_status enqueue_copies(loom_snapshot *s, int slot) {
#ifdef LOOM_HAVE_CUDA
  if (s->device_entries) return enqueue_device_copies(s, data_slot(s, slot));
#endif
  return snap_pack(s, data_slot(s, slot));
}

loom_status loom_snapshot_take_async(loom_snapshot *s, int64_t step, loom_req **req) {
  if (req) *req = NULL;
  if (!s || step < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_take_async: no snapshot, or step < 0");
  if (!s->async_ready) { /* set up on every rank, or torn down on every rank */
    loom_status status = loom_status_agree_comm(s->world, setup_async(s),
                                                "setting up asynchronous snapshots");
    if (status < 0) {
      snap_async_release(s);
      return status;
    }
    s->async_ready = 1;
  }
  int busy = still_publishing(s), any_busy = 0;
  LOOM_CHECK(mpi_check(MPI_Allreduce(&busy, &any_busy, 1, MPI_INT, MPI_MAX, s->world),
                       "MPI_Allreduce (is a snapshot still being published?)"));
  if (any_busy) {
    if (s->skipped++ == 0 && s->rank == 0)
      loom_log(s->ctx, LOOM_LOG_INFO, "snapshot of step %lld skipped: the previous one is still "
               "being published (requests while one is in flight are skipped; counted, not "
               "logged again)", (long long)step);
    return LOOM_OK;
  }
  LOOM_CHECK(take_finished(s)); /* every rank has finished it: the same outcome everywhere */
  /* From here every rank posts a job, even after a local failure: the workers' collectives
   * then agree that this snapshot failed, and the next call reports it. */
  loom_status local = loom_snapshot_fence(s);
  uint64_t seq;
  s->job_requested = loom_now();
  int slot = snap_begin_slot(s, &seq);
  if (local == LOOM_OK) local = enqueue_copies(s, slot);
  s->job_status = local;
  snprintf(s->job_message, sizeof s->job_message, "%s", local == LOOM_OK ? "" : loom_error_string());
  s->job_slot = slot, s->job_seq = seq, s->job_step = step;
  s->job_done = 0; /* the worker is idle: no lock needed */
  loom_req *posted = NULL;
  LOOM_CHECK(loom_executor_post(s->worker, publish_job, s, NULL, &posted));
  s->job_active = 1;
  if (req) *req = posted;
  else s->unclaimed = posted;
  return LOOM_OK;
}

loom_status loom_snapshot_fence(loom_snapshot *s) {
  if (!s) return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_fence: no snapshot");
#ifdef LOOM_HAVE_CUDA
  if (s->fence_pending) {
    if (cudaStreamWaitEvent((cudaStream_t)loom_ctx_stream(s->ctx), s->copied_on_device, 0) != cudaSuccess)
      return loom_error_set(LOOM_ERR_CUDA, "snapshot: fencing the compute stream");
    s->fence_pending = 0;
  }
#endif
  return LOOM_OK;
}

loom_status loom_snapshot_wait(loom_snapshot *s) {
  if (!s) return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_wait: no snapshot");
  if (!s->async_ready) return LOOM_OK;
  if (s->job_active) {
    pthread_mutex_lock(&s->job_lock);
    while (!s->job_done) pthread_cond_wait(&s->job_cond, &s->job_lock);
    pthread_mutex_unlock(&s->job_lock);
    settle_job(s);
  }
  return take_finished(s);
}

loom_snapshot_stats loom_snapshot_get_stats(const loom_snapshot *s) {
  loom_snapshot_stats out = {0};
  if (!s) return out;
  out = s->stats;
  out.skipped = s->skipped;
  return out;
}

uint64_t loom_snapshot_share_bytes(const loom_snapshot *s) {
  uint64_t bytes = 0;
  for (int i = 0; s && i < loom_state_count(s->state); i++) bytes += s->shares[i].share_bytes;
  return bytes;
}

void snap_async_release(loom_snapshot *s) {
  if (s->unclaimed) loom_wait(&s->unclaimed);
  loom_executor_destroy(s->worker); /* runs a queued job to its end */
  s->worker = NULL;
  s->job_active = 0;
  if (s->job_sync_ready) {
    pthread_mutex_destroy(&s->job_lock);
    pthread_cond_destroy(&s->job_cond);
    s->job_sync_ready = 0;
  }
#ifdef LOOM_HAVE_CUDA
  if (s->staging) cudaFree(s->staging);
  if (s->staging_sum) cudaFree(s->staging_sum);
  if (s->host_sum) cudaFreeHost(s->host_sum);
  if (s->host_start) cudaFreeHost(s->host_start);
  if (s->plan) cudaFree(s->plan);
  if (s->host_stage) cudaFreeHost(s->host_stage);
  if (s->registered) cudaHostUnregister(s->base);
  if (s->side) cudaStreamDestroy(s->side);
  if (s->compute_ready) cudaEventDestroy(s->compute_ready);
  if (s->copied_on_device) cudaEventDestroy(s->copied_on_device);
  if (s->copied_to_host) cudaEventDestroy(s->copied_to_host);
  s->side = NULL;
  s->compute_ready = s->copied_on_device = s->copied_to_host = NULL;
#endif
  s->staging = s->host_stage = NULL;
  s->staging_sum = s->host_sum = s->host_start = NULL;
  s->plan = NULL;
  s->registered = s->device_entries = s->plan_count = s->fence_pending = s->async_ready = 0;
  s->plan_longest = s->tail_sum = 0;
  if (s->worker_group != MPI_COMM_NULL) MPI_Comm_free(&s->worker_group);
  if (s->worker_column != MPI_COMM_NULL) MPI_Comm_free(&s->worker_column);
  if (s->worker_world != MPI_COMM_NULL) MPI_Comm_free(&s->worker_world);
}
