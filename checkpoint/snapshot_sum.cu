/* The snapshot copy and checksum on a GPU (see snapshot_sum.h): each thread assembles word i
 * of the destination from the source (with loads of the source's alignment), stores it, and
 * adds its term; terms are reduced per warp and added atomically (addition mod 2^64 is
 * associative, so the result is the host's bit for bit). One read and one write of the data.
 * A bounded grid: it runs on the snapshot's side stream beside training kernels. */
#include "checkpoint/snapshot_sum.h"

#include <cuda_runtime.h>

/* Word i of src (bytes long), zero-padded past the end; `align` is src's alignment (8, 4, 1). */
static __device__ uint64_t load_word(const unsigned char *src, uint64_t bytes, uint64_t i, int align) {
  uint64_t at = 8 * i;
  if (at + 8 <= bytes) {
    if (align == 8) return *(const uint64_t *)(src + at);
    if (align == 4) {
      const uint32_t *p = (const uint32_t *)(src + at);
      return (uint64_t)p[0] | (uint64_t)p[1] << 32;
    }
  }
  uint64_t w = 0;
  for (int b = 0; b < 8 && at + b < bytes; b++) w |= (uint64_t)src[at + b] << (8 * b);
  return w;
}

static __global__ void copy_sum_kernel(uint64_t *dst, const unsigned char *src, uint64_t bytes,
                                       uint64_t first, int align, unsigned long long *result) {
  uint64_t sum = 0, words = (bytes + 7) / 8;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < words;
       i += (uint64_t)gridDim.x * blockDim.x) {
    uint64_t w = load_word(src, bytes, i, align);
    dst[i] = w;
    sum += loom_snapshot_sum_term(w, first + i);
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if ((threadIdx.x & 31) == 0 && sum) atomicAdd(result, (unsigned long long)sum);
}

extern "C" loom_status loom_snapshot_copy_sum_device(void *dst, const void *src, uint64_t bytes,
                                                     uint64_t first, uint64_t *result, void *stream) {
  if (((uintptr_t)dst & 7) != 0)
    return loom_error_set(LOOM_ERR_ARG, "snapshot copy on the GPU: destination %p is not 8-byte "
                          "aligned", dst);
  uint64_t words = (bytes + 7) / 8;
  if (words == 0) return LOOM_OK;
  int align = ((uintptr_t)src & 7) == 0 ? 8 : ((uintptr_t)src & 3) == 0 ? 4 : 1;
  uint64_t blocks = (words + 511) / 512;
  if (blocks > 128) blocks = 128;
  copy_sum_kernel<<<(unsigned)blocks, 512, 0, (cudaStream_t)stream>>>(
      (uint64_t *)dst, (const unsigned char *)src, bytes, first, align, (unsigned long long *)result);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot copy on the GPU: %s", cudaGetErrorString(e));
  return LOOM_OK;
}
