/* Streams and events (see stream.h): thin owners of cudaStream_t / cudaEvent_t that report
 * CUDA errors as loom statuses naming the call and the rank. */
#include "runtime/stream.h"

#include <stdlib.h>

#include "runtime/ctx_impl.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

struct loom_stream {
  loom_ctx *ctx;
  void *stream; /* cudaStream_t */
};

struct loom_event {
  loom_ctx *ctx;
  void *event; /* cudaEvent_t */
};

static loom_status need_gpu(const loom_ctx *ctx, const char *call) {
  if (!ctx) return loom_error_set(LOOM_ERR_ARG, "%s: context is NULL", call);
  if (ctx->device.kind == LOOM_DEVICE_CUDA) return LOOM_OK;
  return loom_error_set(LOOM_ERR_UNSUPPORTED, "%s on rank %d: this rank computes on the CPU; "
                        "streams need --device cuda on a GPU build", call, ctx->rank);
}

#ifdef LOOM_HAVE_CUDA
static loom_status cuda_check(const loom_ctx *ctx, cudaError_t e, const char *what) {
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "%s on rank %d (GPU %d): %s", what, ctx->rank,
                        ctx->device.ordinal, cudaGetErrorString(e));
}
#define STREAM_OF(ctx, s) ((cudaStream_t)((s) ? (s)->stream : (ctx)->stream))
#endif

loom_status loom_stream_create(loom_ctx *ctx, loom_stream **out) {
  if (!out) return loom_error_set(LOOM_ERR_ARG, "loom_stream_create: out is NULL");
  *out = NULL;
  LOOM_CHECK(need_gpu(ctx, "loom_stream_create"));
#ifdef LOOM_HAVE_CUDA
  loom_stream *s = calloc(1, sizeof *s);
  if (!s) return loom_error_set(LOOM_ERR_NOMEM, "loom_stream_create");
  s->ctx = ctx;
  loom_status status = cuda_check(ctx, cudaStreamCreateWithFlags((cudaStream_t *)&s->stream,
                                                                 cudaStreamNonBlocking),
                                  "cudaStreamCreateWithFlags");
  if (status < 0) {
    free(s);
    return status;
  }
  *out = s;
  return LOOM_OK;
#else
  return LOOM_ERR_UNSUPPORTED;
#endif
}

loom_status loom_stream_destroy(loom_stream *s) {
  if (!s) return LOOM_OK;
  loom_status status = LOOM_OK;
#ifdef LOOM_HAVE_CUDA
  status = cuda_check(s->ctx, cudaStreamSynchronize((cudaStream_t)s->stream), "loom_stream_destroy");
  cudaStreamDestroy((cudaStream_t)s->stream);
#endif
  free(s);
  return status;
}

void *loom_stream_cuda(const loom_stream *s) { return s ? s->stream : NULL; }

loom_status loom_stream_synchronize(loom_stream *s) {
  if (!s) return loom_error_set(LOOM_ERR_ARG, "loom_stream_synchronize: stream is NULL");
#ifdef LOOM_HAVE_CUDA
  return cuda_check(s->ctx, cudaStreamSynchronize((cudaStream_t)s->stream), "loom_stream_synchronize");
#else
  return LOOM_ERR_UNSUPPORTED;
#endif
}

loom_status loom_stream_wait_event(loom_ctx *ctx, loom_stream *s, const loom_event *event) {
  if (!event) return loom_error_set(LOOM_ERR_ARG, "loom_stream_wait_event: event is NULL");
  if (!ctx) ctx = event->ctx;
  LOOM_CHECK(need_gpu(ctx, "loom_stream_wait_event"));
#ifdef LOOM_HAVE_CUDA
  return cuda_check(ctx, cudaStreamWaitEvent(STREAM_OF(ctx, s), (cudaEvent_t)event->event, 0),
                    "loom_stream_wait_event");
#else
  return LOOM_ERR_UNSUPPORTED;
#endif
}

loom_status loom_event_create(loom_ctx *ctx, loom_event **out) {
  if (!out) return loom_error_set(LOOM_ERR_ARG, "loom_event_create: out is NULL");
  *out = NULL;
  LOOM_CHECK(need_gpu(ctx, "loom_event_create"));
#ifdef LOOM_HAVE_CUDA
  loom_event *e = calloc(1, sizeof *e);
  if (!e) return loom_error_set(LOOM_ERR_NOMEM, "loom_event_create");
  e->ctx = ctx;
  loom_status status = cuda_check(ctx, cudaEventCreateWithFlags((cudaEvent_t *)&e->event,
                                                                cudaEventDisableTiming),
                                  "cudaEventCreateWithFlags");
  if (status < 0) {
    free(e);
    return status;
  }
  *out = e;
  return LOOM_OK;
#else
  return LOOM_ERR_UNSUPPORTED;
#endif
}

loom_status loom_event_destroy(loom_event *e) {
  if (!e) return LOOM_OK;
#ifdef LOOM_HAVE_CUDA
  cudaEventDestroy((cudaEvent_t)e->event);
#endif
  free(e);
  return LOOM_OK;
}

loom_status loom_event_record(loom_event *e, loom_stream *s) {
  if (!e) return loom_error_set(LOOM_ERR_ARG, "loom_event_record: event is NULL");
#ifdef LOOM_HAVE_CUDA
  return cuda_check(e->ctx, cudaEventRecord((cudaEvent_t)e->event, STREAM_OF(e->ctx, s)),
                    "loom_event_record");
#else
  return LOOM_ERR_UNSUPPORTED;
#endif
}

loom_status loom_event_synchronize(const loom_event *e) {
  if (!e) return loom_error_set(LOOM_ERR_ARG, "loom_event_synchronize: event is NULL");
#ifdef LOOM_HAVE_CUDA
  return cuda_check(e->ctx, cudaEventSynchronize((cudaEvent_t)e->event), "loom_event_synchronize");
#else
  return LOOM_ERR_UNSUPPORTED;
#endif
}

void *loom_event_cuda(const loom_event *e) { return e ? e->event : NULL; }
