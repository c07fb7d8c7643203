/* The snapshot checksum on a GPU (see snapshot_sum.h): a grid-stride sum of the word terms,
 * reduced per warp and added atomically (addition mod 2^64 is associative, so the result is
 * the host's bit for bit). A small grid: it runs on the snapshot's side stream beside
 * training kernels and should not take the whole card. */
#include "checkpoint/snapshot_sum.h"

#include <cuda_runtime.h>

static __global__ void sum_kernel(const uint64_t *words, uint64_t count, unsigned long long *result) {
  uint64_t sum = 0;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < count;
       i += (uint64_t)gridDim.x * blockDim.x)
    sum += loom_snapshot_sum_term(words[i], i);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if ((threadIdx.x & 31) == 0) atomicAdd(result, (unsigned long long)sum);
}

extern "C" loom_status loom_snapshot_sum_device(const void *p, uint64_t bytes, uint64_t *result,
                                                void *stream) {
  if (bytes % 8 != 0 || ((uintptr_t)p & 7) != 0)
    return loom_error_set(LOOM_ERR_ARG, "snapshot checksum on the GPU: %llu bytes at %p (need a "
                          "multiple of 8, 8-byte aligned)", (unsigned long long)bytes, p);
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t e = cudaMemsetAsync(result, 0, sizeof *result, s);
  uint64_t words = bytes / 8;
  if (e == cudaSuccess && words > 0) {
    int blocks = (int)((words + 511) / 512);
    if (blocks > 64) blocks = 64;
    sum_kernel<<<blocks, 512, 0, s>>>((const uint64_t *)p, words, (unsigned long long *)result);
    e = cudaGetLastError();
  }
  if (e != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot checksum on the GPU: %s", cudaGetErrorString(e));
  return LOOM_OK;
}
