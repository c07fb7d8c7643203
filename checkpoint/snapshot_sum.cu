/* The snapshot copy and checksum on a GPU (see snapshot_sum.h). Block row y copies range y of
 * the plan: each thread assembles word i of the destination from the source (with loads of
 * the source's alignment), stores it and adds its term; terms are reduced per warp and added
 * atomically (addition mod 2^64 is associative, so the result is the host's bit for bit). One
 * read and one write of the data, one launch. A bounded grid: it runs on the snapshot's side
 * stream beside training kernels. */
#include "checkpoint/snapshot_sum.h"

#include <cuda_runtime.h>

/* Word i of src (bytes long), zero-padded past the end, read with loads of src's alignment. */
static __device__ uint64_t load_word(const unsigned char *src, uint64_t bytes, uint64_t i) {
  uint64_t at = 8 * i;
  if (at + 8 <= bytes) {
    if (((uintptr_t)src & 7) == 0) return *(const uint64_t *)(src + at);
    if (((uintptr_t)src & 3) == 0) {
      const uint32_t *p = (const uint32_t *)(src + at);
      return (uint64_t)p[0] | (uint64_t)p[1] << 32;
    }
  }
  uint64_t w = 0;
  for (int b = 0; b < 8 && at + b < bytes; b++) w |= (uint64_t)src[at + b] << (8 * b);
  return w;
}

static __global__ void copy_sum_kernel(unsigned char *dst, const loom_snapshot_range *ranges,
                                       unsigned long long *result) {
  const loom_snapshot_range r = ranges[blockIdx.y];
  const unsigned char *src = (const unsigned char *)r.src;
  uint64_t *out = (uint64_t *)(dst + r.dst_offset);
  uint64_t sum = 0, words = (r.bytes + 7) / 8;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < words;
       i += (uint64_t)gridDim.x * blockDim.x) {
    uint64_t w = load_word(src, r.bytes, i);
    out[i] = w;
    sum += loom_snapshot_sum_term(w, r.first + i);
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if ((threadIdx.x & 31) == 0 && sum) atomicAdd(result, (unsigned long long)sum);
}

extern "C" loom_status loom_snapshot_copy_sum_device(void *dst, const loom_snapshot_range *ranges,
                                                     int count, uint64_t longest, uint64_t *result,
                                                     void *stream) {
  if (((uintptr_t)dst & 7) != 0 || count > 65535)
    return loom_error_set(LOOM_ERR_ARG, "snapshot copy on the GPU: destination %p not 8-byte aligned, "
                          "or %d ranges (at most 65535)", dst, count);
  if (count <= 0 || longest == 0) return LOOM_OK;
  enum { THREADS = 512, TOTAL_BLOCKS = 2048 }; /* about 4 resident blocks per SM on an H100 */
  uint64_t per_range = (TOTAL_BLOCKS + (uint64_t)count - 1) / (uint64_t)count;
  uint64_t needed = ((longest + 7) / 8 + THREADS - 1) / THREADS;
  if (per_range > needed) per_range = needed;
  if (per_range > 256) per_range = 256;
  dim3 grid((unsigned)per_range, (unsigned)count);
  copy_sum_kernel<<<grid, THREADS, 0, (cudaStream_t)stream>>>((unsigned char *)dst, ranges,
                                                               (unsigned long long *)result);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot copy on the GPU: %s", cudaGetErrorString(e));
  return LOOM_OK;
}
