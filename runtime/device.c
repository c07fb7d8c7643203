/* Device selection and helpers. With CUDA compiled in (LOOM_HAVE_CUDA) this talks to the CUDA
 * runtime; without it, the same functions report that the build has no GPU support. */
#include "runtime/device.h"

#include <stdlib.h>

#include "runtime/group_impl.h"
#include "runtime/log.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

int loom_build_has_cuda(void) {
#ifdef LOOM_HAVE_CUDA
  return 1;
#else
  return 0;
#endif
}

int loom_build_has_nccl(void) {
#ifdef LOOM_HAVE_NCCL
  return 1;
#else
  return 0;
#endif
}

int loom_device_count(void) {
#ifdef LOOM_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError(); /* no driver or no device: clear the sticky error */
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

loom_device loom_ctx_device(const loom_ctx *ctx) { return ctx->device; }
void *loom_ctx_stream(const loom_ctx *ctx) { return ctx->stream; }

loom_buf loom_buf_device(const loom_ctx *ctx, void *ptr, size_t count, loom_dtype dtype) {
  loom_buf b = {ptr, count, dtype, ctx->device};
  return b;
}

#ifdef LOOM_HAVE_CUDA
static loom_status cuda_status(const loom_ctx *ctx, cudaError_t e, const char *what) {
  return loom_error_set(LOOM_ERR_CUDA, "%s on rank %d (GPU %d): %s", what, ctx ? ctx->rank : -1,
                        ctx ? ctx->device.ordinal : -1, cudaGetErrorString(e));
}
#define CUDA_TRY(ctx, call)                                                                \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) return cuda_status((ctx), e_, #call);                           \
  } while (0)
#endif

static loom_status require_gpu(const loom_ctx *ctx, const char *call) {
  if (ctx->device.kind == LOOM_DEVICE_CUDA) return LOOM_OK;
  return loom_error_set(LOOM_ERR_UNSUPPORTED, "%s on rank %d: this rank computes on the CPU (%s); "
                        "use --device cuda on a GPU machine with a CUDA build", call, ctx->rank,
                        loom_build_has_cuda() ? "no GPU chosen" : "built without CUDA");
}

loom_status loom_device_select(loom_ctx *ctx) {
  ctx->device = (loom_device){LOOM_DEVICE_CPU, 0};
  int want = ctx->config.device; /* 0 auto, 1 cpu, 2 cuda */
  if (want == 1) return LOOM_OK;
  int count = loom_device_count();
  if (count == 0) {
    if (want == 0) return LOOM_OK;
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "--device cuda on rank %d: %s", ctx->rank,
                          loom_build_has_cuda() ? "no GPU is visible (check the driver and "
                          "CUDA_VISIBLE_DEVICES)" : "this build has no CUDA (rebuild with "
                          "-Dcuda=enabled where nvcc and the CUDA toolkit are installed)");
  }
#ifdef LOOM_HAVE_CUDA
  if (ctx->host_local_size > count && !ctx->config.share_gpus)
    return loom_error_set(LOOM_ERR_ARG, "%d ranks on this host but %d visible GPU(s); start at "
                          "most one rank per GPU, or pass --share-gpus 1 to put several ranks "
                          "on one GPU", ctx->host_local_size, count);
  int ordinal = ctx->host_local_rank % count;
  CUDA_TRY(ctx, cudaSetDevice(ordinal));
  CUDA_TRY(ctx, cudaStreamCreateWithFlags((cudaStream_t *)&ctx->stream, cudaStreamNonBlocking));
  ctx->device = (loom_device){LOOM_DEVICE_CUDA, ordinal};
  /* NCCL refuses two ranks on one GPU: those go staged; so does a build without NCCL */
  /* every rank takes the same path: one host's ranks sharing a GPU make the whole job staged */
  int shared_here = ctx->host_local_size > count, shared = 0;
  int rc = MPI_Allreduce(&shared_here, &shared, 1, MPI_INT, MPI_MAX, ctx->world->comm);
  if (rc != MPI_SUCCESS) return loom_mpi_error(ctx, rc, "agreeing on the device path");
  ctx->staged = ctx->config.device_comm == 2 ||
                (ctx->config.device_comm == 0 && (shared || !loom_build_has_nccl()));
  if (ctx->config.device_comm == 1 && !loom_build_has_nccl())
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "--device-comm nccl on rank %d: this build has "
                          "no NCCL; use --device-comm staged or auto", ctx->rank);
  if (ctx->config.device_comm == 1 && shared)
    return loom_error_set(LOOM_ERR_ARG, "--device-comm nccl where ranks share a GPU (%d ranks on "
                          "%d GPU(s) on this host): NCCL refuses two ranks on one GPU; use "
                          "--device-comm staged or auto", ctx->host_local_size, count);
  return LOOM_OK;
#else
  return LOOM_ERR_INTERNAL;
#endif
}

int loom_ctx_device_staged(const loom_ctx *ctx) { return ctx->staged; }

void loom_device_release(loom_ctx *ctx) {
#ifdef LOOM_HAVE_CUDA
  if (ctx->stream) cudaStreamDestroy((cudaStream_t)ctx->stream);
#endif
  ctx->stream = NULL;
}

loom_status loom_device_alloc(loom_ctx *ctx, size_t bytes, void **out) {
  LOOM_CHECK(require_gpu(ctx, "loom_device_alloc"));
#ifdef LOOM_HAVE_CUDA
  cudaError_t e = cudaMalloc(out, bytes ? bytes : 1);
  if (e != cudaSuccess)
    return loom_error_set(LOOM_ERR_NOMEM, "cudaMalloc of %zu bytes on rank %d (GPU %d): %s", bytes,
                          ctx->rank, ctx->device.ordinal, cudaGetErrorString(e));
#endif
  return LOOM_OK;
}

void loom_device_free(loom_ctx *ctx, void *ptr) {
#ifdef LOOM_HAVE_CUDA
  if (ptr && ctx->device.kind == LOOM_DEVICE_CUDA) cudaFree(ptr);
#endif
}

/* A copy on the compute stream, waited for: uploads and downloads of tests and examples. */
static loom_status copy_and_wait(loom_ctx *ctx, const char *call, void *dst, const void *src,
                                 size_t bytes, int to_device) {
  LOOM_CHECK(require_gpu(ctx, call));
#ifdef LOOM_HAVE_CUDA
  if (!bytes) return LOOM_OK;
  CUDA_TRY(ctx, cudaMemcpyAsync(dst, src, bytes, to_device ? cudaMemcpyHostToDevice
                                                           : cudaMemcpyDeviceToHost,
                                (cudaStream_t)ctx->stream));
  CUDA_TRY(ctx, cudaStreamSynchronize((cudaStream_t)ctx->stream));
#endif
  return LOOM_OK;
}

loom_status loom_device_upload(loom_ctx *ctx, void *device, const void *host, size_t bytes) {
  return copy_and_wait(ctx, "loom_device_upload", device, host, bytes, 1);
}

loom_status loom_device_download(loom_ctx *ctx, void *host, const void *device, size_t bytes) {
  return copy_and_wait(ctx, "loom_device_download", host, device, bytes, 0);
}

loom_status loom_device_synchronize(loom_ctx *ctx) {
  LOOM_CHECK(require_gpu(ctx, "loom_device_synchronize"));
#ifdef LOOM_HAVE_CUDA
  CUDA_TRY(ctx, cudaStreamSynchronize((cudaStream_t)ctx->stream));
#endif
  return LOOM_OK;
}

loom_status loom_device_copy_async(loom_ctx *ctx, void *dst, const void *src, size_t bytes) {
  LOOM_CHECK(require_gpu(ctx, "loom_device_copy_async"));
#ifdef LOOM_HAVE_CUDA
  if (!bytes) return LOOM_OK;
  CUDA_TRY(ctx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)ctx->stream));
#endif
  return LOOM_OK;
}
