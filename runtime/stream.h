/* loom_stream and loom_event: CUDA streams and events of the context's GPU behind plain C
 * handles, so one step can run work on several streams (input- and weight-gradient work of a
 * split backward, activation offload copies) and order loom's device traffic after any of
 * them: loom_group_set_stream (collectives and point-to-point of a group), the `after` event
 * of loom_p2p_batch, and loom_req_order_stream (a request's result on a stream). In a build
 * without CUDA, or on a rank that computes on the CPU, creation returns LOOM_ERR_UNSUPPORTED. */
#ifndef LOOM_RUNTIME_STREAM_H
#define LOOM_RUNTIME_STREAM_H

#include "runtime/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_stream loom_stream;
typedef struct loom_event loom_event;

/* A new stream on the context's GPU, not synchronising with the legacy default stream. */
loom_status loom_stream_create(loom_ctx *ctx, loom_stream **out);
/* Waits for the stream's work, then destroys it. NULL is a no-op. */
loom_status loom_stream_destroy(loom_stream *stream);
/* The cudaStream_t, for the caller's own kernels; the compute stream for NULL is
 * loom_ctx_stream. */
void *loom_stream_cuda(const loom_stream *stream);
/* Returns when every operation queued on the stream so far has completed. */
loom_status loom_stream_synchronize(loom_stream *stream);
/* Later work on `stream` (NULL: the context's compute stream) waits for `event` on the GPU
 * (no host wait). `ctx` names the context whose compute stream NULL means. */
loom_status loom_stream_wait_event(loom_ctx *ctx, loom_stream *stream, const loom_event *event);

loom_status loom_event_create(loom_ctx *ctx, loom_event **out);
loom_status loom_event_destroy(loom_event *event);
/* Marks the work queued so far on `stream` (NULL: the compute stream of the event's context). */
loom_status loom_event_record(loom_event *event, loom_stream *stream);
/* Returns when the recorded work has completed. */
loom_status loom_event_synchronize(const loom_event *event);
/* The cudaEvent_t. */
void *loom_event_cuda(const loom_event *event);

#ifdef __cplusplus
}
#endif
#endif
