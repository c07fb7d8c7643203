/* Asynchronous, lazy checkpoints (see ckpt.h; DataStates-LLM, Maurya et al., HPDC'24).
 * A save has three stages, each overlapping training:
 *   1. device tensors: on a side stream, behind the compute stream's pending work, a copy to a
 *      device-side snapshot (about 1 ms for 1.6 GB at HBM speed) when memory allows, then to
 *      pinned host staging over PCIe; the fence makes the compute stream wait only for the
 *      device-side snapshot (or for the PCIe copy when there is no room for one);
 *   2. host tensors: copied into host staging by the writer thread; the fence waits for that;
 *   3. the writer writes the rank files from staging and publishes the checkpoint
 *      (ckpt_write_checkpoint) on a communicator of its own.
 * The writer is a job on a serial executor of the checkpointer's own (runtime/executor.h, one
 * save at a time: the mechanism asynchronous snapshots use too); each save returns its
 * loom_req, which may be waited for even after loom_ckpt_destroy.
 * Invariants: at most one save in flight; staging is rewritten only after the previous save
 * finished; every rank makes the same busy decision (one allreduce on the control
 * communicator), so the writer threads' collectives always match. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/catalog.h"
#include "checkpoint/ckpt.h"
#include "checkpoint/ckpt_write.h"
#include "collectives/coll.h"
#include "runtime/device.h"
#include "runtime/executor.h"
#include "runtime/log.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

struct loom_ckpt {
  loom_state *state;
  loom_ctx *ctx;
  char *root;
  loom_ckpt_params params;
  MPI_Comm control, writer; /* main thread's and writer thread's collectives */
  ckpt_catalog catalog;
  int count;                /* local registry entries */
  void **staging;           /* (count) host copy of each entry this rank writes, else NULL */
  unsigned char *pinned;    /* (count) staging[i] is pinned (cudaMallocHost) */
  void **snapshot;          /* (count) device-side copy of a device entry, or NULL */
  int device_entries, host_entries, snapshots_complete;
#ifdef LOOM_HAVE_CUDA
  cudaStream_t side;
  cudaEvent_t compute_ready, snapshot_done, copy_done;
#endif
  loom_executor *writer_lane; /* runs one save at a time */
  loom_req *unclaimed;        /* the last save's request when the caller did not take it */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  /* guarded by lock */
  int in_flight, host_copy_pending, result_pending;
  int64_t step;
  loom_status result;
  char message[1024];
  loom_ckpt_stats stats;
  int device_fence_pending; /* main thread only */
};

#ifdef LOOM_HAVE_CUDA
static loom_status cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "asynchronous checkpoint: %s: %s", what, cudaGetErrorString(e));
}
#endif

/* The writer's job: copy host tensors, wait for the device copies, write, publish. Its
 * outcome goes to the request and, once, to the next loom_ckpt_wait or save. */
static loom_status write_job(void *arg) {
  loom_ckpt *ck = arg;
  pthread_mutex_lock(&ck->lock);
  int64_t step = ck->step;
  pthread_mutex_unlock(&ck->lock);
  double start = loom_now();
  loom_status status = LOOM_OK;
  for (int i = 0; i < ck->count; i++) {
    loom_buf local;
    loom_state_entry(ck->state, i, NULL, NULL, &local, NULL, NULL);
    if (ck->staging[i] && local.device.kind == LOOM_DEVICE_CPU)
      memcpy(ck->staging[i], local.ptr, loom_buf_bytes(local));
  }
  pthread_mutex_lock(&ck->lock);
  ck->host_copy_pending = 0;
  pthread_cond_broadcast(&ck->cond);
  pthread_mutex_unlock(&ck->lock);
#ifdef LOOM_HAVE_CUDA
  if (ck->device_entries) status = cuda_check(cudaEventSynchronize(ck->copy_done), "device copy");
#endif
  double copied = loom_now();
  ckpt_write_report report = {0};
  /* A failed copy still joins the collective write so that every rank learns of it. */
  loom_status written = ckpt_write_checkpoint(ck->state, &ck->catalog, ck->writer, ck->root, step,
                                              &ck->params, ck->staging, &report);
  double bytes = report.bytes;
  if (status == LOOM_OK) status = written;
  double done = loom_now();
  pthread_mutex_lock(&ck->lock);
  ck->result = status;
  snprintf(ck->message, sizeof ck->message, "%s", status == LOOM_OK ? "" : loom_error_string());
  ck->result_pending = 1;
  ck->in_flight = 0;
  ck->stats.last_copy_seconds = copied - start;
  ck->stats.last_write_seconds = done - copied;
  ck->stats.last_data_seconds = report.data_seconds;
  ck->stats.last_bytes = bytes;
  ck->stats.total_write_seconds += done - copied;
  ck->stats.total_data_seconds += report.data_seconds;
  ck->stats.total_bytes += bytes;
  pthread_cond_broadcast(&ck->cond);
  pthread_mutex_unlock(&ck->lock);
  if (status == LOOM_OK && ck->catalog.world > 0) {
    int rank;
    MPI_Comm_rank(ck->writer, &rank);
    if (rank == 0)
      loom_log(ck->ctx, LOOM_LOG_INFO, "checkpoint step %lld written to %s in the background "
               "(%.2f s; this rank %.1f MB at %.2f GB/s)", (long long)step, ck->root,
               done - start, bytes / 1e6, bytes / 1e9 / (done - copied > 0 ? done - copied : 1e-9));
  }
  if (status < 0) loom_error_restore(ck->message); /* the request carries it */
  return status;
}

/* Frees the request of an earlier save nobody took (its outcome reaches wait_local). */
static void reap_unclaimed(loom_ckpt *ck) {
  if (!ck->unclaimed) return;
  loom_wait(&ck->unclaimed);
}

/* Staging for every entry this rank writes: pinned host memory (and a device-side snapshot
 * when memory allows) for device tensors, plain memory for host tensors. */
static loom_status allocate_staging(loom_ckpt *ck) {
  ck->staging = calloc((size_t)(ck->count ? ck->count : 1), sizeof(void *));
  ck->snapshot = calloc((size_t)(ck->count ? ck->count : 1), sizeof(void *));
  ck->pinned = calloc((size_t)(ck->count ? ck->count : 1), 1);
  if (!ck->staging || !ck->snapshot || !ck->pinned)
    return loom_error_set(LOOM_ERR_NOMEM, "asynchronous checkpoint tables");
  ck->snapshots_complete = 1;
  for (int i = 0; i < ck->count; i++) {
    if (!ck->catalog.local_writes[i]) continue;
    const char *name;
    loom_buf local;
    loom_state_entry(ck->state, i, &name, NULL, &local, NULL, NULL);
    size_t bytes = loom_buf_bytes(local);
    if (local.device.kind == LOOM_DEVICE_CPU) {
      ck->host_entries++;
      ck->staging[i] = malloc(bytes ? bytes : 1);
    } else {
#ifdef LOOM_HAVE_CUDA
      ck->device_entries++;
      if (cudaMallocHost(&ck->staging[i], bytes ? bytes : 1) == cudaSuccess) ck->pinned[i] = 1;
      else ck->staging[i] = malloc(bytes ? bytes : 1); /* pageable: slower, still correct */
      if (cudaMalloc(&ck->snapshot[i], bytes ? bytes : 1) != cudaSuccess) {
        ck->snapshot[i] = NULL;
        ck->snapshots_complete = 0;
        cudaGetLastError(); /* clear the allocation error */
      }
#else
      return loom_error_set(LOOM_ERR_UNSUPPORTED, "checkpoint of '%s': a device tensor in a build "
                            "without CUDA", name);
#endif
    }
    if (!ck->staging[i])
      return loom_error_set(LOOM_ERR_NOMEM, "checkpoint staging for '%s' (%zu bytes)", name, bytes);
  }
  return LOOM_OK;
}

loom_status loom_ckpt_create(loom_state *state, const char *root, const loom_ckpt_params *params,
                             loom_ckpt **out) {
  loom_ckpt_params defaults = LOOM_CKPT_PARAMS_INIT;
  if (!params) params = &defaults;
  if (!state || !root || !*root || !out)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_create: state, root or out missing");
  LOOM_CHECK(ckpt_check_params(params));
  loom_group *world = loom_mesh_group(loom_state_mesh(state), LOOM_AXIS_WORLD);
  loom_ckpt *ck = calloc(1, sizeof *ck);
  if (!ck) return loom_error_set(LOOM_ERR_NOMEM, "loom_ckpt_create");
  ck->state = state;
  ck->ctx = loom_group_ctx(world);
  ck->params = *params;
  ck->root = strdup(root);
  ck->count = loom_state_count(state);
  ck->control = ck->writer = MPI_COMM_NULL;
  pthread_mutex_init(&ck->lock, NULL);
  pthread_cond_init(&ck->cond, NULL);
  loom_status status = ck->root ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, "loom_ckpt_create");
  if (MPI_Comm_dup(loom_group_comm(world), &ck->control) != MPI_SUCCESS ||
      MPI_Comm_dup(loom_group_comm(world), &ck->writer) != MPI_SUCCESS) {
    loom_ckpt_destroy(ck);
    return loom_error_set(LOOM_ERR_MPI, "loom_ckpt_create: duplicating the world communicator");
  }
  if (status == LOOM_OK) status = ckpt_catalog_build(state, ck->control, &ck->catalog);
  if (ck->catalog.world == 0) { /* failed alike on every rank */
    loom_ckpt_destroy(ck);
    return status;
  }
  if (status == LOOM_OK) status = allocate_staging(ck);
  int rank;
  MPI_Comm_rank(ck->control, &rank);
  if (rank == 0) ckpt_remove_stale(root); /* what a crashed earlier run left half written */
#ifdef LOOM_HAVE_CUDA
  if (status == LOOM_OK && ck->device_entries) {
    status = cuda_check(cudaStreamCreateWithFlags(&ck->side, cudaStreamNonBlocking), "side stream");
    if (status == LOOM_OK) status = cuda_check(cudaEventCreateWithFlags(&ck->compute_ready, cudaEventDisableTiming), "event");
    if (status == LOOM_OK) status = cuda_check(cudaEventCreateWithFlags(&ck->snapshot_done, cudaEventDisableTiming), "event");
    if (status == LOOM_OK) status = cuda_check(cudaEventCreateWithFlags(&ck->copy_done, cudaEventDisableTiming), "event");
  }
#endif
  if (status == LOOM_OK) status = loom_executor_create("loom-ckpt", 1, &ck->writer_lane);
  status = ckpt_agree(ck->control, status);
  if (status != LOOM_OK) {
    loom_ckpt_destroy(ck);
    return status;
  }
  if (rank == 0 || !ck->snapshots_complete)
    loom_log(ck->ctx, LOOM_LOG_INFO, "asynchronous checkpoints to %s: %d tensors, %.1f MB written "
             "by this rank; device tensors staged %s; a save requested while one is in flight is "
             "%s", root, ck->catalog.tensor_count, ck->catalog.local_bytes / 1e6,
             !ck->device_entries ? "(none)" : ck->snapshots_complete ? "through a device-side snapshot"
             : "straight to host memory (no room for a device-side snapshot: the fence waits for PCIe)",
             params->busy == LOOM_CKPT_BUSY_SKIP ? "skipped (logged)" : "delayed until it finishes");
  *out = ck;
  return LOOM_OK;
}

/* Waits until no save is in flight; returns the finished save's status (once). */
static loom_status wait_local(loom_ckpt *ck) {
  pthread_mutex_lock(&ck->lock);
  while (ck->in_flight) pthread_cond_wait(&ck->cond, &ck->lock);
  loom_status status = LOOM_OK;
  char message[1024] = "";
  if (ck->result_pending) {
    status = ck->result;
    snprintf(message, sizeof message, "%s", ck->message);
    ck->result_pending = 0;
  }
  pthread_mutex_unlock(&ck->lock);
  if (status != LOOM_OK) loom_error_restore(message);
  return status;
}

/* Stage 1: device copies on the side stream, after the compute stream's pending work. */
static loom_status enqueue_device_copies(loom_ckpt *ck) {
#ifdef LOOM_HAVE_CUDA
  if (ck->device_entries == 0) return LOOM_OK;
  cudaStream_t compute = (cudaStream_t)loom_ctx_stream(ck->ctx);
  LOOM_CHECK(cuda_check(cudaEventRecord(ck->compute_ready, compute), "ordering after compute"));
  LOOM_CHECK(cuda_check(cudaStreamWaitEvent(ck->side, ck->compute_ready, 0), "ordering after compute"));
  for (int i = 0; i < ck->count; i++) {
    loom_buf local;
    loom_state_entry(ck->state, i, NULL, NULL, &local, NULL, NULL);
    if (!ck->snapshot[i] || local.device.kind == LOOM_DEVICE_CPU) continue;
    LOOM_CHECK(cuda_check(cudaMemcpyAsync(ck->snapshot[i], local.ptr, loom_buf_bytes(local),
                                          cudaMemcpyDeviceToDevice, ck->side), "device snapshot"));
  }
  LOOM_CHECK(cuda_check(cudaEventRecord(ck->snapshot_done, ck->side), "snapshot event"));
  for (int i = 0; i < ck->count; i++) {
    loom_buf local;
    loom_state_entry(ck->state, i, NULL, NULL, &local, NULL, NULL);
    if (!ck->staging[i] || local.device.kind == LOOM_DEVICE_CPU) continue;
    const void *source = ck->snapshot[i] ? ck->snapshot[i] : local.ptr;
    LOOM_CHECK(cuda_check(cudaMemcpyAsync(ck->staging[i], source, loom_buf_bytes(local),
                                          cudaMemcpyDeviceToHost, ck->side), "copy to host"));
  }
  LOOM_CHECK(cuda_check(cudaEventRecord(ck->copy_done, ck->side), "copy event"));
  ck->device_fence_pending = 1;
#else
  (void)ck;
#endif
  return LOOM_OK;
}

loom_status loom_ckpt_save_async(loom_ckpt *ck, int64_t step, loom_req **req) {
  if (req) *req = NULL;
  if (!ck || step < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_save_async: no checkpointer, or step %lld < 0",
                          (long long)step);
  pthread_mutex_lock(&ck->lock);
  int busy = ck->in_flight, any_busy = 0;
  pthread_mutex_unlock(&ck->lock);
  if (MPI_Allreduce(&busy, &any_busy, 1, MPI_INT, MPI_MAX, ck->control) != MPI_SUCCESS)
    return loom_error_set(LOOM_ERR_MPI, "loom_ckpt_save_async: agreeing on the busy state");
  int rank;
  MPI_Comm_rank(ck->control, &rank);
  if (any_busy && ck->params.busy == LOOM_CKPT_BUSY_SKIP) {
    pthread_mutex_lock(&ck->lock);
    ck->stats.saves_skipped++;
    int64_t previous = ck->step;
    pthread_mutex_unlock(&ck->lock);
    if (rank == 0)
      loom_log(ck->ctx, LOOM_LOG_WARN, "checkpoint step %lld skipped: step %lld is still being "
               "written (saves come faster than the disk takes them; raise the interval, or set "
               "busy = LOOM_CKPT_BUSY_WAIT to wait instead)", (long long)step, (long long)previous);
    return LOOM_OK;
  }
  /* Idle (or WAIT): the previous save's outcome first; a failure is reported, not lost. */
  loom_status previous_result = wait_local(ck);
  reap_unclaimed(ck);
  LOOM_CHECK(previous_result);
  LOOM_CHECK(loom_ckpt_fence(ck)); /* staging and snapshots are about to be rewritten */
  loom_status status = enqueue_device_copies(ck);
  if (status != LOOM_OK) return status;
  pthread_mutex_lock(&ck->lock);
  ck->step = step;
  ck->in_flight = 1;
  ck->host_copy_pending = ck->host_entries > 0;
  ck->stats.saves_started++;
  pthread_mutex_unlock(&ck->lock);
  loom_req *posted = NULL;
  status = loom_executor_post(ck->writer_lane, write_job, ck, NULL, &posted);
  if (status < 0) { /* nothing runs: nothing is in flight */
    pthread_mutex_lock(&ck->lock);
    ck->in_flight = ck->host_copy_pending = 0;
    pthread_mutex_unlock(&ck->lock);
    return status;
  }
  if (req) *req = posted;
  else ck->unclaimed = posted;
  return LOOM_OK;
}

loom_status loom_ckpt_fence(loom_ckpt *ck) {
  if (!ck) return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_fence: no checkpointer");
  pthread_mutex_lock(&ck->lock);
  while (ck->host_copy_pending) pthread_cond_wait(&ck->cond, &ck->lock);
  pthread_mutex_unlock(&ck->lock);
#ifdef LOOM_HAVE_CUDA
  if (ck->device_fence_pending) {
    cudaStream_t compute = (cudaStream_t)loom_ctx_stream(ck->ctx);
    cudaEvent_t event = ck->snapshots_complete ? ck->snapshot_done : ck->copy_done;
    LOOM_CHECK(cuda_check(cudaStreamWaitEvent(compute, event, 0), "fence"));
    ck->device_fence_pending = 0;
  }
#endif
  return LOOM_OK;
}

loom_status loom_ckpt_wait(loom_ckpt *ck) {
  if (!ck) return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_wait: no checkpointer");
  loom_status status = wait_local(ck);
  reap_unclaimed(ck);
  return status;
}

loom_status loom_ckpt_get_stats(const loom_ckpt *ck, loom_ckpt_stats *stats) {
  if (!ck || !stats) return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_get_stats: NULL argument");
  pthread_mutex_lock((pthread_mutex_t *)&ck->lock);
  *stats = ck->stats;
  pthread_mutex_unlock((pthread_mutex_t *)&ck->lock);
  return LOOM_OK;
}

loom_status loom_ckpt_destroy(loom_ckpt *ck) {
  if (!ck) return LOOM_OK;
  loom_status status = LOOM_OK;
  if (ck->writer_lane) {
    status = wait_local(ck); /* the last save's outcome, if nobody asked for it */
    reap_unclaimed(ck);
    loom_executor_destroy(ck->writer_lane);
  }
  for (int i = 0; ck->staging && i < ck->count; i++) {
#ifdef LOOM_HAVE_CUDA
    if (ck->pinned[i]) cudaFreeHost(ck->staging[i]);
    else
#endif
      free(ck->staging[i]);
#ifdef LOOM_HAVE_CUDA
    if (ck->snapshot[i]) cudaFree(ck->snapshot[i]);
#endif
  }
#ifdef LOOM_HAVE_CUDA
  if (ck->side) cudaStreamDestroy(ck->side);
  if (ck->compute_ready) cudaEventDestroy(ck->compute_ready);
  if (ck->snapshot_done) cudaEventDestroy(ck->snapshot_done);
  if (ck->copy_done) cudaEventDestroy(ck->copy_done);
#endif
  free(ck->staging);
  free(ck->snapshot);
  free(ck->pinned);
  ckpt_catalog_free(&ck->catalog);
  if (ck->control != MPI_COMM_NULL) MPI_Comm_free(&ck->control);
  if (ck->writer != MPI_COMM_NULL) MPI_Comm_free(&ck->writer);
  pthread_mutex_destroy(&ck->lock);
  pthread_cond_destroy(&ck->cond);
  free(ck->root);
  free(ck);
  return status;
}
