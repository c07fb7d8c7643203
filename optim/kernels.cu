// GPU optimizer and norm kernels (see kernels.h). Grid-stride loops, 256 threads a block.
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>

#include "optim/kernels.h"
#include "optim/update_rules.h"

namespace {

constexpr int kThreads = 256;

int blocks_for(size_t n) {
  size_t blocks = (n + kThreads - 1) / kThreads;
  return (int)(blocks > 4096 ? 4096 : blocks < 1 ? 1 : blocks);
}

loom_status launch_status(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "%s kernel launch: %s", what, cudaGetErrorString(e));
  return LOOM_OK;
}

// G is float or uint16_t (bfloat16 bits); copy may be null.
__device__ inline float widen(float g) { return g; }
__device__ inline float widen(uint16_t g) { return loom_bf16_widen(g); }

template <typename G>
__global__ void sgd_kernel(size_t n, float *param, const G *grad, float *momentum_buf,
                           uint16_t *copy, float lr, float momentum, float weight_decay,
                           int nesterov, int first_step) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    loom_sgd_element(&param[i], widen(grad[i]), momentum_buf ? &momentum_buf[i] : nullptr, lr,
                     momentum, weight_decay, nesterov, first_step);
    if (copy) copy[i] = loom_bf16_round(param[i]);
  }
}

template <typename G>
__global__ void adamw_kernel(size_t n, float *param, const G *grad, float *exp_avg,
                             float *exp_avg_sq, uint16_t *copy, float beta1, float beta2,
                             float eps, loom_adamw_step_scalars scalars) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    loom_adamw_element(&param[i], widen(grad[i]), &exp_avg[i], &exp_avg_sq[i], beta1, beta2, eps,
                       scalars);
    if (copy) copy[i] = loom_bf16_round(param[i]);
  }
}

template <typename T>
__global__ void sum_squares_kernel(const T *x, size_t n, double *block_sums) {
  __shared__ double partial[kThreads];
  double sum = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    double v = (double)x[i];
    sum += v * v;
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) block_sums[blockIdx.x] = partial[0];
}

template <typename T>
__global__ void scale_kernel(T *x, size_t n, double scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = (T)((double)x[i] * scale);
}

// Multi-tensor kernels: each block takes chunks of the table, each thread kIlp elements of a
// chunk at a time, all loads before any arithmetic so that kIlp loads of each stream are in
// flight per thread (the single-tensor kernels rely on a 4096-block grid for the same effect).
// Templated on the gradient type and on the bfloat16 copy so that the inner loop has no
// branch a launch group does not need (a group is homogeneous in both).
constexpr int kIlp = 4;

template <typename G, bool kCopy>
__global__ void sgd_multi_kernel(const loom_optim_tensor *tensors, const loom_optim_chunk *chunks,
                                 int chunk_count, float lr, float momentum, float weight_decay,
                                 int nesterov, int first_step) {
  for (int c = blockIdx.x; c < chunk_count; c += gridDim.x) {
    const loom_optim_tensor t = tensors[chunks[c].tensor];
    const size_t first = chunks[c].first;
    const size_t end = first + LOOM_OPTIM_CHUNK < t.n ? first + LOOM_OPTIM_CHUNK : t.n;
    float *param = t.param, *buf = t.state0;
    const G *grad = (const G *)t.grad;
    for (size_t base = first + threadIdx.x; base < end; base += (size_t)kIlp * blockDim.x) {
      float p[kIlp], g[kIlp], m[kIlp];
#pragma unroll
      for (int k = 0; k < kIlp; k++) {
        size_t i = base + (size_t)k * blockDim.x;
        if (i < end) {
          p[k] = param[i];
          g[k] = widen(grad[i]);
          m[k] = buf ? buf[i] : 0.0f;
        }
      }
#pragma unroll
      for (int k = 0; k < kIlp; k++) {
        size_t i = base + (size_t)k * blockDim.x;
        if (i >= end) continue;
        loom_sgd_element(&p[k], g[k], &m[k], lr, momentum, weight_decay, nesterov, first_step);
        param[i] = p[k];
        if (buf) buf[i] = m[k];
        if (kCopy) t.copy[i] = loom_bf16_round(p[k]);
      }
    }
  }
}

template <typename G, bool kCopy>
__global__ void adamw_multi_kernel(const loom_optim_tensor *tensors, const loom_optim_chunk *chunks,
                                   int chunk_count, float beta1, float beta2, float eps,
                                   loom_adamw_step_scalars scalars) {
  for (int c = blockIdx.x; c < chunk_count; c += gridDim.x) {
    const loom_optim_tensor t = tensors[chunks[c].tensor];
    const size_t first = chunks[c].first;
    const size_t end = first + LOOM_OPTIM_CHUNK < t.n ? first + LOOM_OPTIM_CHUNK : t.n;
    float *param = t.param, *avg = t.state0, *avg_sq = t.state1;
    const G *grad = (const G *)t.grad;
    for (size_t base = first + threadIdx.x; base < end; base += (size_t)kIlp * blockDim.x) {
      float p[kIlp], g[kIlp], m[kIlp], v[kIlp];
#pragma unroll
      for (int k = 0; k < kIlp; k++) {
        size_t i = base + (size_t)k * blockDim.x;
        if (i < end) {
          p[k] = param[i];
          g[k] = widen(grad[i]);
          m[k] = avg[i];
          v[k] = avg_sq[i];
        }
      }
#pragma unroll
      for (int k = 0; k < kIlp; k++) {
        size_t i = base + (size_t)k * blockDim.x;
        if (i >= end) continue;
        loom_adamw_element(&p[k], g[k], &m[k], &v[k], beta1, beta2, eps, scalars);
        param[i] = p[k];
        avg[i] = m[k];
        avg_sq[i] = v[k];
        if (kCopy) t.copy[i] = loom_bf16_round(p[k]);
      }
    }
  }
}

int multi_blocks(int chunk_count) { return chunk_count < 8192 ? chunk_count : 8192; }

}  // namespace

extern "C" loom_status loom_sgd_update_device_multi(void *stream, const loom_optim_tensor *tensors,
                                                    const loom_optim_chunk *chunks,
                                                    int chunk_count, loom_dtype grad_dtype,
                                                    int with_copy, float lr, float momentum,
                                                    float weight_decay, int nesterov,
                                                    int first_step) {
  if (chunk_count <= 0) return LOOM_OK;
  cudaStream_t s = (cudaStream_t)stream;
  int blocks = multi_blocks(chunk_count);
#define SGD_MULTI(G, C)                                                                          \
  sgd_multi_kernel<G, C><<<blocks, kThreads, 0, s>>>(tensors, chunks, chunk_count, lr, momentum, \
                                                     weight_decay, nesterov, first_step)
  if (grad_dtype == LOOM_BFLOAT16) {
    if (with_copy) SGD_MULTI(uint16_t, true);
    else SGD_MULTI(uint16_t, false);
  } else {
    if (with_copy) SGD_MULTI(float, true);
    else SGD_MULTI(float, false);
  }
#undef SGD_MULTI
  return launch_status("SGD (multi-tensor)");
}

extern "C" loom_status loom_adamw_update_device_multi(void *stream, const loom_optim_tensor *tensors,
                                                      const loom_optim_chunk *chunks,
                                                      int chunk_count, loom_dtype grad_dtype,
                                                      int with_copy, int64_t step, float lr,
                                                      float beta1, float beta2, float eps,
                                                      float weight_decay) {
  if (chunk_count <= 0) return LOOM_OK;
  loom_adamw_step_scalars scalars = loom_adamw_scalars(step, lr, beta1, beta2, weight_decay);
  cudaStream_t s = (cudaStream_t)stream;
  int blocks = multi_blocks(chunk_count);
#define ADAMW_MULTI(G, C)                                                                        \
  adamw_multi_kernel<G, C><<<blocks, kThreads, 0, s>>>(tensors, chunks, chunk_count, beta1,     \
                                                       beta2, eps, scalars)
  if (grad_dtype == LOOM_BFLOAT16) {
    if (with_copy) ADAMW_MULTI(uint16_t, true);
    else ADAMW_MULTI(uint16_t, false);
  } else {
    if (with_copy) ADAMW_MULTI(float, true);
    else ADAMW_MULTI(float, false);
  }
#undef ADAMW_MULTI
  return launch_status("AdamW (multi-tensor)");
}

extern "C" loom_status loom_sgd_update_device_mixed(void *stream, size_t n, float *param,
                                                    const void *grad, loom_dtype grad_dtype,
                                                    float *momentum_buf, uint16_t *bf16_copy,
                                                    float lr, float momentum, float weight_decay,
                                                    int nesterov, int first_step) {
  if (n == 0) return LOOM_OK;
  cudaStream_t s = (cudaStream_t)stream;
  if (grad_dtype == LOOM_BFLOAT16)
    sgd_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, param, (const uint16_t *)grad, momentum_buf,
                                                  bf16_copy, lr, momentum, weight_decay, nesterov,
                                                  first_step);
  else
    sgd_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, param, (const float *)grad, momentum_buf,
                                                  bf16_copy, lr, momentum, weight_decay, nesterov,
                                                  first_step);
  return launch_status("SGD");
}

extern "C" loom_status loom_sgd_update_device(void *stream, size_t n, float *param,
                                              const float *grad, float *momentum_buf, float lr,
                                              float momentum, float weight_decay, int nesterov,
                                              int first_step) {
  return loom_sgd_update_device_mixed(stream, n, param, grad, LOOM_FLOAT32, momentum_buf, nullptr,
                                      lr, momentum, weight_decay, nesterov, first_step);
}

extern "C" loom_status loom_adamw_update_device_mixed(void *stream, size_t n, float *param,
                                                      const void *grad, loom_dtype grad_dtype,
                                                      float *exp_avg, float *exp_avg_sq,
                                                      uint16_t *bf16_copy, int64_t step, float lr,
                                                      float beta1, float beta2, float eps,
                                                      float weight_decay) {
  if (n == 0) return LOOM_OK;
  loom_adamw_step_scalars scalars = loom_adamw_scalars(step, lr, beta1, beta2, weight_decay);
  cudaStream_t s = (cudaStream_t)stream;
  if (grad_dtype == LOOM_BFLOAT16)
    adamw_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, param, (const uint16_t *)grad, exp_avg,
                                                    exp_avg_sq, bf16_copy, beta1, beta2, eps,
                                                    scalars);
  else
    adamw_kernel<<<blocks_for(n), kThreads, 0, s>>>(n, param, (const float *)grad, exp_avg,
                                                    exp_avg_sq, bf16_copy, beta1, beta2, eps,
                                                    scalars);
  return launch_status("AdamW");
}

extern "C" loom_status loom_adamw_update_device(void *stream, size_t n, float *param,
                                                const float *grad, float *exp_avg,
                                                float *exp_avg_sq, int64_t step, float lr,
                                                float beta1, float beta2, float eps,
                                                float weight_decay) {
  return loom_adamw_update_device_mixed(stream, n, param, grad, LOOM_FLOAT32, exp_avg, exp_avg_sq,
                                        nullptr, step, lr, beta1, beta2, eps, weight_decay);
}

extern "C" loom_status loom_sum_squares_device(void *stream, const void *x, size_t n,
                                               loom_dtype dtype, double *result) {
  *result = 0;
  if (n == 0) return LOOM_OK;
  if (dtype != LOOM_FLOAT32 && dtype != LOOM_FLOAT64)
    return loom_error_set(LOOM_ERR_ARG, "sum of squares on the GPU: dtype %s; float32 or float64",
                          loom_dtype_name(dtype));
  int blocks = blocks_for(n);
  double *block_sums = nullptr;
  cudaError_t e = cudaMallocAsync(&block_sums, sizeof(double) * blocks, (cudaStream_t)stream);
  if (e != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "sum of squares scratch: %s", cudaGetErrorString(e));
  if (dtype == LOOM_FLOAT32)
    sum_squares_kernel<float><<<blocks, kThreads, 0, (cudaStream_t)stream>>>(
        (const float *)x, n, block_sums);
  else
    sum_squares_kernel<double><<<blocks, kThreads, 0, (cudaStream_t)stream>>>(
        (const double *)x, n, block_sums);
  loom_status status = launch_status("sum of squares");
  double *host = (double *)malloc(sizeof(double) * blocks);
  if (status == LOOM_OK && !host) status = loom_error_set(LOOM_ERR_NOMEM, "sum of squares results");
  if (status == LOOM_OK) {
    e = cudaMemcpyAsync(host, block_sums, sizeof(double) * blocks, cudaMemcpyDeviceToHost,
                        (cudaStream_t)stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize((cudaStream_t)stream);
    if (e != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "sum of squares result: %s", cudaGetErrorString(e));
  }
  for (int b = 0; status == LOOM_OK && b < blocks; b++) *result += host[b];
  free(host);
  cudaFreeAsync(block_sums, (cudaStream_t)stream);
  return status;
}

extern "C" int loom_sum_squares_blocks(size_t n) { return n ? blocks_for(n) : 0; }

extern "C" loom_status loom_sum_squares_device_partials(void *stream, const void *x, size_t n,
                                                        loom_dtype dtype, double *partials) {
  if (n == 0) return LOOM_OK;
  if (dtype == LOOM_FLOAT32)
    sum_squares_kernel<float><<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(
        (const float *)x, n, partials);
  else if (dtype == LOOM_FLOAT64)
    sum_squares_kernel<double><<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(
        (const double *)x, n, partials);
  else
    return loom_error_set(LOOM_ERR_ARG, "sum of squares on the GPU: dtype %s; float32 or float64",
                          loom_dtype_name(dtype));
  return launch_status("sum of squares");
}

extern "C" loom_status loom_scale_device(void *stream, void *x, size_t n, loom_dtype dtype,
                                         double scale) {
  if (n == 0) return LOOM_OK;
  if (dtype == LOOM_FLOAT32)
    scale_kernel<float><<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>((float *)x, n, scale);
  else if (dtype == LOOM_FLOAT64)
    scale_kernel<double><<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>((double *)x, n, scale);
  else
    return loom_error_set(LOOM_ERR_ARG, "scale on the GPU: dtype %s; float32 or float64",
                          loom_dtype_name(dtype));
  return launch_status("scale");
}
