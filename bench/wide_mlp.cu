// The wide MLP of wide_mlp.h: cuBLAS GEMMs (row-major tensors seen as column-major transposes)
// and a few element-wise kernels, all on the compute stream.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/bf16.h"
#include "wide_mlp.h"

namespace {

constexpr int kThreads = 256;

int blocks_for(size_t n) {
  size_t blocks = (n + kThreads - 1) / kThreads;
  return (int)(blocks > 8192 ? 8192 : blocks < 1 ? 1 : blocks);
}

__device__ inline float load(const float *p, size_t i) { return p[i]; }
__device__ inline float load(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ inline void store(float *p, size_t i, float v) { p[i] = v; }
__device__ inline void store(__nv_bfloat16 *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Uniform in [-scale, scale) from a counter hash (splitmix64): the same values on every rank.
__device__ inline float uniform(uint64_t seed, size_t i, float scale) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return scale * (2.0f * (float)(z >> 40) / 16777216.0f - 1.0f);
}

template <typename T>
__global__ void fill_uniform(T *x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    store(x, i, uniform(seed, i, scale));
}

__global__ void round_bf16(uint16_t *out, const float *in, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = loom_bf16_round(in[i]);
}

// y(rows, cols) = max(y + b(cols), 0)
template <typename T>
__global__ void bias_relu(T *y, const T *b, size_t rows, int cols) {
  size_t n = rows * (size_t)cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    store(y, i, fmaxf(load(y, i) + load(b, i % cols), 0.0f));
}

// d = y > 0 ? d : 0 (ReLU backward; y is the ReLU output)
template <typename T>
__global__ void relu_backward(T *d, const T *y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    if (!(load(y, i) > 0.0f)) store(d, i, 0.0f);
}

// d = y * scale: gradient of sum(y^2) / (2 B) with scale = 1 / B
template <typename T>
__global__ void loss_grad(T *d, const T *y, size_t n, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    store(d, i, load(y, i) * scale);
}

loom_status cuda_status(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "wide MLP: %s: %s", what, cudaGetErrorString(e));
}

loom_status cublas_status(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "wide MLP: %s: cuBLAS status %d", what, (int)s);
}

// C(m, n) = op(A) op(B) in column-major terms, float32 accumulation.
loom_status gemm(const wide_mlp *m, cublasOperation_t ta, cublasOperation_t tb, int rows, int cols,
                 int inner, const void *a, int lda, const void *b, int ldb, void *c, int ldc) {
  const float one = 1.0f, zero = 0.0f;
  cudaDataType_t t = m->dtype == LOOM_BFLOAT16 ? CUDA_R_16BF : CUDA_R_32F;
  return cublas_status(cublasGemmEx((cublasHandle_t)m->cublas, ta, tb, rows, cols, inner, &one, a,
                                    t, lda, b, t, ldb, &zero, c, t, ldc, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT),
                       "GEMM");
}

template <typename T>
loom_status launch_elementwise(const wide_mlp *m, int which, void *x, const void *y, size_t n,
                               float scale) {
  cudaStream_t s = (cudaStream_t)m->stream;
  int blocks = blocks_for(n);
  if (which == 0) bias_relu<<<blocks, kThreads, 0, s>>>((T *)x, (const T *)y, n / m->width, m->width);
  else if (which == 1) relu_backward<<<blocks, kThreads, 0, s>>>((T *)x, (const T *)y, n);
  else loss_grad<<<blocks, kThreads, 0, s>>>((T *)x, (const T *)y, n, scale);
  return cuda_status(cudaGetLastError(), "element-wise kernel launch");
}

loom_status elementwise(const wide_mlp *m, int which, void *x, const void *y, size_t n, float scale) {
  return m->dtype == LOOM_BFLOAT16 ? launch_elementwise<__nv_bfloat16>(m, which, x, y, n, scale)
                                   : launch_elementwise<float>(m, which, x, y, n, scale);
}

}  // namespace

extern "C" size_t wide_mlp_param_count(const wide_mlp *m) {
  return (size_t)m->layers * ((size_t)m->width * m->width + m->width);
}

extern "C" loom_status wide_mlp_create(int layers, int width, int batch, loom_dtype dtype,
                                       void *stream, uint64_t seed, int rank, wide_mlp *out) {
  memset(out, 0, sizeof *out);
  if (layers < 1 || width < 1 || batch < 1 || (dtype != LOOM_BFLOAT16 && dtype != LOOM_FLOAT32))
    return loom_error_set(LOOM_ERR_ARG, "wide MLP: layers=%d width=%d batch=%d dtype=%s; need "
                          "positive sizes and bfloat16 or float32", layers, width, batch,
                          loom_dtype_name(dtype));
  wide_mlp *m = out;
  m->layers = layers, m->width = width, m->batch = batch, m->dtype = dtype, m->stream = stream;
  m->grad_chunks = 1;
  size_t element = loom_dtype_size(dtype), wsize = (size_t)width * width,
         asize = (size_t)batch * width;
  cublasHandle_t handle;
  LOOM_CHECK(cublas_status(cublasCreate(&handle), "cublasCreate"));
  m->cublas = handle;
  LOOM_CHECK(cublas_status(cublasSetStream(handle, (cudaStream_t)stream), "cublasSetStream"));
  m->weight = (void **)calloc(layers, sizeof(void *));
  m->bias = (void **)calloc(layers, sizeof(void *));
  m->master_weight = (float **)calloc(layers, sizeof(float *));
  m->master_bias = (float **)calloc(layers, sizeof(float *));
  m->weight_grad = (void **)calloc(layers, sizeof(void *));
  m->bias_grad = (void **)calloc(layers, sizeof(void *));
  m->act = (void **)calloc(layers + 1, sizeof(void *));
  if (!m->weight || !m->bias || !m->master_weight || !m->master_bias || !m->weight_grad ||
      !m->bias_grad || !m->act)
    return loom_error_set(LOOM_ERR_NOMEM, "wide MLP tables");
  cudaStream_t s = (cudaStream_t)stream;
  float scale = 1.0f / sqrtf((float)width);
  for (int l = 0; l < layers; l++) {
    LOOM_CHECK(cuda_status(cudaMalloc((void **)&m->master_weight[l], wsize * 4), "weights"));
    LOOM_CHECK(cuda_status(cudaMalloc((void **)&m->master_bias[l], (size_t)width * 4), "biases"));
    fill_uniform<<<blocks_for(wsize), kThreads, 0, s>>>(m->master_weight[l], wsize, seed + 2 * l, scale);
    fill_uniform<<<blocks_for(width), kThreads, 0, s>>>(m->master_bias[l], (size_t)width, seed + 2 * l + 1, scale);
    if (dtype == LOOM_BFLOAT16) {
      LOOM_CHECK(cuda_status(cudaMalloc(&m->weight[l], wsize * 2), "bf16 weights"));
      LOOM_CHECK(cuda_status(cudaMalloc(&m->bias[l], (size_t)width * 2), "bf16 biases"));
      round_bf16<<<blocks_for(wsize), kThreads, 0, s>>>((uint16_t *)m->weight[l], m->master_weight[l], wsize);
      round_bf16<<<blocks_for(width), kThreads, 0, s>>>((uint16_t *)m->bias[l], m->master_bias[l], width);
    } else {
      m->weight[l] = m->master_weight[l];
      m->bias[l] = m->master_bias[l];
    }
    LOOM_CHECK(cuda_status(cudaMalloc(&m->weight_grad[l], wsize * element), "weight gradients"));
    LOOM_CHECK(cuda_status(cudaMalloc(&m->bias_grad[l], (size_t)width * element), "bias gradients"));
  }
  for (int l = 0; l <= layers; l++)
    LOOM_CHECK(cuda_status(cudaMalloc(&m->act[l], asize * element), "activations"));
  for (int i = 0; i < 2; i++)
    LOOM_CHECK(cuda_status(cudaMalloc(&m->delta[i], asize * element), "activation gradients"));
  LOOM_CHECK(cuda_status(cudaMalloc(&m->ones, (size_t)batch * element), "ones"));
  if (dtype == LOOM_BFLOAT16) {
    fill_uniform<<<blocks_for(asize), kThreads, 0, s>>>((__nv_bfloat16 *)m->act[0], asize, seed * 7919 + rank + 1, 1.0f);
  } else {
    fill_uniform<<<blocks_for(asize), kThreads, 0, s>>>((float *)m->act[0], asize, seed * 7919 + rank + 1, 1.0f);
  }
  // the ones vector of the bias-gradient GEMM
  {
    size_t bytes = (size_t)batch * element;
    void *host = malloc(bytes);
    if (!host) return loom_error_set(LOOM_ERR_NOMEM, "wide MLP ones");
    for (int i = 0; i < batch; i++) {
      if (dtype == LOOM_BFLOAT16) ((uint16_t *)host)[i] = loom_bf16_round(1.0f);
      else ((float *)host)[i] = 1.0f;
    }
    cudaError_t e = cudaMemcpyAsync(m->ones, host, bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    free(host);
    LOOM_CHECK(cuda_status(e, "initialising"));
  }
  return LOOM_OK;
}

extern "C" void wide_mlp_destroy(wide_mlp *m) {
  if (!m) return;
  for (int l = 0; l < m->layers; l++) {
    if (m->dtype == LOOM_BFLOAT16) {
      if (m->weight) cudaFree(m->weight[l]);
      if (m->bias) cudaFree(m->bias[l]);
    }
    if (m->master_weight) cudaFree(m->master_weight[l]);
    if (m->master_bias) cudaFree(m->master_bias[l]);
    if (m->weight_grad) cudaFree(m->weight_grad[l]);
    if (m->bias_grad) cudaFree(m->bias_grad[l]);
  }
  for (int l = 0; m->act && l <= m->layers; l++) cudaFree(m->act[l]);
  cudaFree(m->delta[0]);
  cudaFree(m->delta[1]);
  cudaFree(m->ones);
  if (m->cublas) cublasDestroy((cublasHandle_t)m->cublas);
  free(m->weight), free(m->bias), free(m->master_weight), free(m->master_bias);
  free(m->weight_grad), free(m->bias_grad), free(m->act);
  memset(m, 0, sizeof *m);
}

// Row-major X (B, W) is column-major X^T (W, B); a weight (out, in) row-major is (in, out)
// column-major. Forward: Y^T(out, B) = W(out, in) X^T(in, B).
extern "C" loom_status wide_mlp_forward(wide_mlp *m) {
  int w = m->width, b = m->batch;
  for (int l = 0; l < m->layers; l++) {
    LOOM_CHECK(gemm(m, CUBLAS_OP_T, CUBLAS_OP_N, w, b, w, m->weight[l], w, m->act[l], w,
                    m->act[l + 1], w));
    LOOM_CHECK(elementwise(m, 0, m->act[l + 1], m->bias[l], (size_t)b * w, 0));
  }
  return LOOM_OK;
}

extern "C" loom_status wide_mlp_backward(wide_mlp *m, wide_mlp_hook hook, void *user) {
  int w = m->width, b = m->batch, cur = 0;
  size_t n = (size_t)b * w;
  LOOM_CHECK(elementwise(m, 2, m->delta[cur], m->act[m->layers], n, 1.0f / (float)b));
  for (int l = m->layers - 1; l >= 0; l--) {
    void *dz = m->delta[cur];
    LOOM_CHECK(elementwise(m, 1, dz, m->act[l + 1], n, 0));
    // db (out) = dZ^T(out, B) 1(B)
    LOOM_CHECK(gemm(m, CUBLAS_OP_N, CUBLAS_OP_N, w, 1, b, dz, w, m->ones, b, m->bias_grad[l], w));
    if (hook) LOOM_CHECK(hook(l, -1, user));
    // dW (out, in) = dZ^T(out, B) X(B, in): column-major (in, out) = X^T(in, B) dZ(B, out);
    // rows [r0, r1) of dW are columns [r0, r1) of the column-major product: dZ columns r0..r1
    size_t element = loom_dtype_size(m->dtype);
    for (int c = 0; c < m->grad_chunks; c++) {
      int r0 = (int)((long long)w * c / m->grad_chunks), r1 = (int)((long long)w * (c + 1) / m->grad_chunks);
      LOOM_CHECK(gemm(m, CUBLAS_OP_N, CUBLAS_OP_T, w, r1 - r0, b, m->act[l], w,
                      (char *)dz + (size_t)r0 * element, w,
                      (char *)m->weight_grad[l] + (size_t)r0 * w * element, w));
      if (hook) LOOM_CHECK(hook(l, c, user));
    }
    if (l > 0) {  // dX (B, in) = dZ(B, out) W(out, in): column-major dX^T(in, B) = W(in, out) dZ^T(out, B)
      LOOM_CHECK(gemm(m, CUBLAS_OP_N, CUBLAS_OP_N, w, b, w, m->weight[l], w, dz, w, m->delta[1 - cur], w));
      cur = 1 - cur;
    }
  }
  return LOOM_OK;
}
