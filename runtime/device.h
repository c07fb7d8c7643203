/* Devices: which GPU this rank drives, its compute stream, and device memory helpers that
 * tests, examples and benchmarks use without including CUDA headers. In a build without CUDA
 * every call here that needs a GPU returns LOOM_ERR_UNSUPPORTED with a message.
 *
 * Selection (loom_init): --device auto|cpu|cuda (LOOM_DEVICE). auto takes a GPU when the
 * build has CUDA and one is visible. A rank drives GPU (local rank % visible GPUs), where the
 * local rank is the real one on the host (not LOOM_RANKS_PER_NODE's) and CUDA_VISIBLE_DEVICES
 * limits what is visible; more local ranks than GPUs is an error unless --share-gpus 1. */
#ifndef LOOM_RUNTIME_DEVICE_H
#define LOOM_RUNTIME_DEVICE_H

#include <stddef.h>

#include "runtime/ctx.h"
#include "runtime/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if this build has CUDA (and so device buffers) compiled in. */
int loom_build_has_cuda(void);
/* 1 if this build has the NCCL backend for device-buffer collectives. */
int loom_build_has_nccl(void);
/* Visible GPUs (0 in a CPU build or without a driver). */
int loom_device_count(void);

/* The device this rank computes on: {LOOM_DEVICE_CPU, 0} or {LOOM_DEVICE_CUDA, ordinal}. */
loom_device loom_ctx_device(const loom_ctx *ctx);
/* 1 when this rank's device traffic takes the staged path (pinned host buffers over MPI, for
 * ranks that share a GPU; --device-comm), 0 for NCCL or on the CPU. */
int loom_ctx_device_staged(const loom_ctx *ctx);
/* The rank's compute stream (a cudaStream_t) on which loom orders device collectives after
 * the caller's work; NULL on CPU. User kernels that produce collective inputs go here. */
void *loom_ctx_stream(const loom_ctx *ctx);

/* Device memory of `bytes` on the context's GPU (cudaMalloc); LOOM_ERR_UNSUPPORTED on CPU. */
loom_status loom_device_alloc(loom_ctx *ctx, size_t bytes, void **out);
void loom_device_free(loom_ctx *ctx, void *ptr);
/* Synchronous copies between host and the context's GPU (on the compute stream). */
loom_status loom_device_upload(loom_ctx *ctx, void *device, const void *host, size_t bytes);
loom_status loom_device_download(loom_ctx *ctx, void *host, const void *device, size_t bytes);
/* Device-to-device copy enqueued on the compute stream (returns when enqueued). */
loom_status loom_device_copy_async(loom_ctx *ctx, void *dst, const void *src, size_t bytes);
/* Waits for all work on the compute stream. */
loom_status loom_device_synchronize(loom_ctx *ctx);
/* A buffer view of device memory on the context's GPU. */
loom_buf loom_buf_device(const loom_ctx *ctx, void *ptr, size_t count, loom_dtype dtype);

#ifdef __cplusplus
}
#endif
#endif
