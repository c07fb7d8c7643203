/* Activation offload (see offload.h). Invariant: a slot is handed out only with the stream
 * that takes it ordered after `free_after`, the event that marks the end of its previous
 * user's work on it (the copy out, or the backward); a copy back is ordered after the copy
 * out of the same stash. Two copy streams, so copies out and back overlap each other. */
#include "parallel/pipeline/offload.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/device.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>

typedef struct {
  int key;               /* (chunk x microbatches + microbatch) using it, -1 when free */
  cudaEvent_t free_after;
  int used;              /* free_after was recorded at least once */
  long long freed;       /* when it was given back (a counter): the oldest free slot is the
                            likeliest to have its copy out done */
} device_slot;

typedef struct {
  int slot;              /* device slot holding it, -1 */
  int offloaded;         /* goes to the host after the forward */
  int on_host;           /* the copy out was queued */
  cudaEvent_t copied_out, copied_in;
  int prefetched;        /* copied_in was recorded for the present slot */
} stash;

struct loom_offload {
  loom_ctx *ctx;
  loom_offload_params p;
  cudaStream_t out_stream, in_stream, compute;
  char *device;          /* device_slots x stash_bytes */
  char *host;            /* keys x stash_bytes, pinned (offloaded keys only are used) */
  device_slot *slots;
  stash *stashes;        /* (chunks x microbatches) */
  int in_use, peak;
  long long gives;       /* slots given back so far */
};

static loom_status cuda_check(const loom_offload *o, cudaError_t e, const char *what) {
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "activation offload on rank %d: %s: %s", loom_ctx_rank(o->ctx),
                        what, cudaGetErrorString(e));
}

static stash *stash_of(loom_offload *o, int chunk, int microbatch, int *key) {
  if (chunk < 0 || chunk >= o->p.chunks || microbatch < 0 || microbatch >= o->p.microbatches) return NULL;
  *key = chunk * o->p.microbatches + microbatch;
  return &o->stashes[*key];
}

static void *slot_memory(const loom_offload *o, int slot) { return o->device + (size_t)slot * o->p.stash_bytes; }
static void *host_memory(const loom_offload *o, int key) { return o->host + (size_t)key * o->p.stash_bytes; }

// A free slot for `key`, with `stream` ordered after its previous user: one whose last use has
// already finished if there is one (no wait at all), else the one given back first (its copy
// out is the furthest along), so the compute stream does not wait on the copy just queued.
static loom_status take_slot(loom_offload *o, int key, cudaStream_t stream, int *out) {
  int best = -1, best_done = 0;
  for (int s = 0; s < o->p.device_slots; s++) {
    device_slot *d = &o->slots[s];
    if (d->key >= 0) continue;
    int done = !d->used || cudaEventQuery(d->free_after) == cudaSuccess;
    if (best < 0 || (done && !best_done) || (done == best_done && d->freed < o->slots[best].freed))
      best = s, best_done = done;
  }
  if (best >= 0) {
    device_slot *d = &o->slots[best];
    if (d->used && !best_done)
      LOOM_CHECK(cuda_check(o, cudaStreamWaitEvent(stream, d->free_after, 0), "ordering a slot's reuse"));
    d->key = key, *out = best;
    if (++o->in_use > o->peak) o->peak = o->in_use;
    return LOOM_OK;
  }
  return loom_error_set(LOOM_ERR_STATE, "activation offload on rank %d: all %d device slots are "
                        "in use (micro-batch %d of chunk %d needs one); give it more slots or a "
                        "higher ratio", loom_ctx_rank(o->ctx), o->p.device_slots,
                        key % o->p.microbatches, key / o->p.microbatches);
}

// The slot is free once `stream`'s work so far is done.
static loom_status give_slot(loom_offload *o, int slot, cudaStream_t stream) {
  device_slot *d = &o->slots[slot];
  LOOM_CHECK(cuda_check(o, cudaEventRecord(d->free_after, stream), "marking a slot's last use"));
  d->used = 1, d->key = -1, o->in_use--, d->freed = ++o->gives;
  return LOOM_OK;
}
#else
struct loom_offload {
  loom_offload_params p;
};

static loom_status no_cuda(const char *call) {
  return loom_error_set(LOOM_ERR_UNSUPPORTED, "%s: this build of loom has no CUDA; rebuild with "
                        "-Dcuda=enabled on a machine with the CUDA toolkit", call);
}
#endif

loom_status loom_offload_create(loom_ctx *ctx, const loom_offload_params *params, loom_offload **out) {
  *out = NULL;
  if (!ctx || !params || params->stash_bytes == 0 || params->device_slots < 1 ||
      params->microbatches < 1 || params->chunks < 1 || !(params->ratio >= 0 && params->ratio <= 1))
    return loom_error_set(LOOM_ERR_ARG, "loom_offload_create: stash_bytes (%zu) > 0, device_slots "
                          "(%d) >= 1, microbatches (%d) and chunks (%d) >= 1, ratio (%g) in [0, 1]",
                          params ? params->stash_bytes : 0, params ? params->device_slots : 0,
                          params ? params->microbatches : 0, params ? params->chunks : 0,
                          params ? params->ratio : 0.0);
  size_t keys_total = (size_t)params->chunks * (size_t)params->microbatches;
  if (keys_total > (size_t)INT_MAX || params->stash_bytes > SIZE_MAX / (keys_total + (size_t)params->device_slots))
    return loom_error_set(LOOM_ERR_ARG, "loom_offload_create: %d chunks x %d micro-batches of %zu "
                          "bytes (and %d slots) do not fit in memory sizes", params->chunks,
                          params->microbatches, params->stash_bytes, params->device_slots);
  if (loom_ctx_device(ctx).kind != LOOM_DEVICE_CUDA)
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "activation offload on rank %d: the rank computes "
                          "on the CPU (offload moves GPU activations; run with --device cuda)",
                          loom_ctx_rank(ctx));
#ifdef LOOM_HAVE_CUDA
  loom_offload *o = calloc(1, sizeof *o);
  if (!o) return loom_error_set(LOOM_ERR_NOMEM, "activation offload");
  o->ctx = ctx, o->p = *params, o->compute = (cudaStream_t)loom_ctx_stream(ctx);
  int keys = params->chunks * params->microbatches;
  o->slots = calloc((size_t)params->device_slots, sizeof *o->slots);
  o->stashes = calloc((size_t)keys, sizeof *o->stashes);
  loom_status status = o->slots && o->stashes ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, "activation offload");
  if (status == LOOM_OK) status = cuda_check(o, cudaStreamCreateWithFlags(&o->out_stream, cudaStreamNonBlocking), "copy-out stream");
  if (status == LOOM_OK) status = cuda_check(o, cudaStreamCreateWithFlags(&o->in_stream, cudaStreamNonBlocking), "copy-in stream");
  if (status == LOOM_OK) status = loom_device_alloc(ctx, params->stash_bytes * (size_t)params->device_slots, (void **)&o->device);
  if (status == LOOM_OK)
    status = cuda_check(o, cudaMallocHost((void **)&o->host, params->stash_bytes * (size_t)keys), "pinned host stashes");
  for (int s = 0; status == LOOM_OK && s < params->device_slots; s++) {
    o->slots[s].key = -1;
    status = cuda_check(o, cudaEventCreateWithFlags(&o->slots[s].free_after, cudaEventDisableTiming), "slot event");
  }
  for (int k = 0; status == LOOM_OK && k < keys; k++) {
    stash *st = &o->stashes[k];
    int j = k % params->microbatches;
    st->slot = -1;
    st->offloaded = params->plan ? params->plan[k] != 0
                                 : (int)((j + 1) * params->ratio) > (int)(j * params->ratio);
    status = cuda_check(o, cudaEventCreateWithFlags(&st->copied_out, cudaEventDisableTiming), "stash event");
    if (status == LOOM_OK) status = cuda_check(o, cudaEventCreateWithFlags(&st->copied_in, cudaEventDisableTiming), "stash event");
  }
  if (status != LOOM_OK) {
    loom_offload_destroy(o);
    return status;
  }
  *out = o;
  return LOOM_OK;
#else
  return no_cuda("loom_offload_create");
#endif
}

void loom_offload_destroy(loom_offload *o) {
  if (!o) return;
#ifdef LOOM_HAVE_CUDA
  if (o->out_stream) cudaStreamSynchronize(o->out_stream), cudaStreamDestroy(o->out_stream);
  if (o->in_stream) cudaStreamSynchronize(o->in_stream), cudaStreamDestroy(o->in_stream);
  for (int s = 0; o->slots && s < o->p.device_slots; s++)
    if (o->slots[s].free_after) cudaEventDestroy(o->slots[s].free_after);
  for (int k = 0; o->stashes && k < o->p.chunks * o->p.microbatches; k++) {
    if (o->stashes[k].copied_out) cudaEventDestroy(o->stashes[k].copied_out);
    if (o->stashes[k].copied_in) cudaEventDestroy(o->stashes[k].copied_in);
  }
  if (o->device) loom_device_free(o->ctx, o->device);
  if (o->host) cudaFreeHost(o->host);
  free(o->slots), free(o->stashes);
#endif
  free(o);
}

#ifdef LOOM_HAVE_CUDA
#define FIND_STASH(o, chunk, microbatch, call)                                                  \
  int key;                                                                                     \
  stash *st = (o) ? stash_of((o), (chunk), (microbatch), &key) : NULL;                         \
  if (!st)                                                                                     \
    return loom_error_set(LOOM_ERR_ARG, "%s: chunk %d, micro-batch %d outside the offload's "  \
                          "%d x %d", call, (chunk), (microbatch), (o) ? (o)->p.chunks : 0,      \
                          (o) ? (o)->p.microbatches : 0)
#endif

loom_status loom_offload_begin_forward(loom_offload *o, int chunk, int microbatch, void **device) {
#ifdef LOOM_HAVE_CUDA
  FIND_STASH(o, chunk, microbatch, "loom_offload_begin_forward");
  if (st->slot >= 0)
    return loom_error_set(LOOM_ERR_STATE, "activation offload: the forward of micro-batch %d, "
                          "chunk %d, began twice", microbatch, chunk);
  LOOM_CHECK(take_slot(o, key, o->compute, &st->slot));
  st->on_host = 0, st->prefetched = 0;
  *device = slot_memory(o, st->slot);
  return LOOM_OK;
#else
  (void)o, (void)chunk, (void)microbatch, (void)device;
  return no_cuda("loom_offload_begin_forward");
#endif
}

loom_status loom_offload_end_forward(loom_offload *o, int chunk, int microbatch) {
#ifdef LOOM_HAVE_CUDA
  FIND_STASH(o, chunk, microbatch, "loom_offload_end_forward");
  if (st->slot < 0) return loom_error_set(LOOM_ERR_STATE, "activation offload: end_forward without begin_forward");
  if (!st->offloaded) return LOOM_OK; /* stays on the GPU until its backward */
  cudaEvent_t written = o->slots[st->slot].free_after; /* reused: marks the forward's writes */
  LOOM_CHECK(cuda_check(o, cudaEventRecord(written, o->compute), "marking the forward's stash"));
  LOOM_CHECK(cuda_check(o, cudaStreamWaitEvent(o->out_stream, written, 0), "ordering the copy out"));
  LOOM_CHECK(cuda_check(o, cudaMemcpyAsync(host_memory(o, key), slot_memory(o, st->slot), o->p.stash_bytes,
                                           cudaMemcpyDeviceToHost, o->out_stream), "copying a stash out"));
  LOOM_CHECK(cuda_check(o, cudaEventRecord(st->copied_out, o->out_stream), "marking the copy out"));
  st->on_host = 1;
  LOOM_CHECK(give_slot(o, st->slot, o->out_stream));
  st->slot = -1;
  return LOOM_OK;
#else
  (void)o, (void)chunk, (void)microbatch;
  return no_cuda("loom_offload_end_forward");
#endif
}

loom_status loom_offload_prefetch(loom_offload *o, int chunk, int microbatch) {
#ifdef LOOM_HAVE_CUDA
  FIND_STASH(o, chunk, microbatch, "loom_offload_prefetch");
  if (!st->on_host || st->slot >= 0) return LOOM_OK; /* on the GPU already, or on its way */
  LOOM_CHECK(take_slot(o, key, o->in_stream, &st->slot));
  LOOM_CHECK(cuda_check(o, cudaStreamWaitEvent(o->in_stream, st->copied_out, 0), "ordering the copy back"));
  LOOM_CHECK(cuda_check(o, cudaMemcpyAsync(slot_memory(o, st->slot), host_memory(o, key), o->p.stash_bytes,
                                           cudaMemcpyHostToDevice, o->in_stream), "copying a stash back"));
  LOOM_CHECK(cuda_check(o, cudaEventRecord(st->copied_in, o->in_stream), "marking the copy back"));
  st->prefetched = 1;
  return LOOM_OK;
#else
  (void)o, (void)chunk, (void)microbatch;
  return no_cuda("loom_offload_prefetch");
#endif
}

loom_status loom_offload_begin_backward(loom_offload *o, int chunk, int microbatch, void **device) {
#ifdef LOOM_HAVE_CUDA
  FIND_STASH(o, chunk, microbatch, "loom_offload_begin_backward");
  if (st->slot < 0 && !st->on_host)
    return loom_error_set(LOOM_ERR_STATE, "activation offload: backward of micro-batch %d, chunk "
                          "%d, before its forward", microbatch, chunk);
  LOOM_CHECK(loom_offload_prefetch(o, chunk, microbatch));
  if (st->prefetched)
    LOOM_CHECK(cuda_check(o, cudaStreamWaitEvent(o->compute, st->copied_in, 0), "waiting for the copy back"));
  *device = slot_memory(o, st->slot);
  return LOOM_OK;
#else
  (void)o, (void)chunk, (void)microbatch, (void)device;
  return no_cuda("loom_offload_begin_backward");
#endif
}

loom_status loom_offload_end_backward(loom_offload *o, int chunk, int microbatch) {
#ifdef LOOM_HAVE_CUDA
  FIND_STASH(o, chunk, microbatch, "loom_offload_end_backward");
  if (st->slot < 0) return loom_error_set(LOOM_ERR_STATE, "activation offload: end_backward without begin_backward");
  LOOM_CHECK(give_slot(o, st->slot, o->compute));
  st->slot = -1, st->on_host = 0, st->prefetched = 0;
  return LOOM_OK;
#else
  (void)o, (void)chunk, (void)microbatch;
  return no_cuda("loom_offload_end_backward");
#endif
}

typedef struct {
  int key, life, born;
} stash_life;

// longest life first, the earlier forward on a tie
static int longer_life(const void *x, const void *y) {
  const stash_life *a = x, *b = y;
  if (a->life != b->life) return b->life - a->life;
  return a->born - b->born;
}

loom_status loom_offload_plan(const loom_pipeline_schedule *s, int rank, double ratio,
                              unsigned char *plan) {
  if (!s || !plan || !(ratio >= 0 && ratio <= 1) || rank < 0 || rank >= loom_pipeline_schedule_ranks(s))
    return loom_error_set(LOOM_ERR_ARG, "loom_offload_plan: a schedule, rank %d of its ranks, "
                          "ratio %g in [0, 1] and a plan array", rank, ratio);
  int m = loom_pipeline_schedule_microbatches(s), keys = m * loom_pipeline_schedule_chunks(s), count;
  const loom_pipeline_action *a = loom_pipeline_actions(s, rank, &count);
  stash_life *lives = calloc((size_t)keys, sizeof *lives);
  if (!lives) return loom_error_set(LOOM_ERR_NOMEM, "offload plan of %d stashes", keys);
  for (int i = 0, computes = 0; i < count; i++) {
    if (a[i].op > LOOM_PIPELINE_BACKWARD_WEIGHT) continue; /* transfers */
    stash_life *l = &lives[a[i].chunk * m + a[i].microbatch];
    l->key = a[i].chunk * m + a[i].microbatch;
    if (a[i].op == LOOM_PIPELINE_FORWARD) l->born = computes;
    /* the copy back must be there for B or I: the window to hide both copies in */
    if (a[i].op == LOOM_PIPELINE_BACKWARD || a[i].op == LOOM_PIPELINE_BACKWARD_INPUT)
      l->life = computes - l->born;
    computes++;
  }
  qsort(lives, (size_t)keys, sizeof *lives, longer_life);
  memset(plan, 0, (size_t)keys);
  /* a stash whose backward comes right after its forward has nothing to hide its copies
   * behind: never offloaded */
  for (int k = 0, want = (int)(ratio * keys + 0.5); k < want && lives[k].life > 1; k++) plan[lives[k].key] = 1;
  free(lives);
  return LOOM_OK;
}

size_t loom_offload_device_bytes(const loom_offload *o) {
  return o ? o->p.stash_bytes * (size_t)o->p.device_slots : 0;
}

int loom_offload_peak_slots(const loom_offload *o) {
#ifdef LOOM_HAVE_CUDA
  return o ? o->peak : 0;
#else
  (void)o;
  return 0;
#endif
}
