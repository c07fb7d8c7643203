// MLP on the GPU (see mlp_gpu.h). Row-major tensors as in mlp.c; cuBLAS is column-major, so
// every product is written for the transposed view: Y = X W^T becomes Y^T = W X^T, etc.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mlp_gpu.h"

namespace {

constexpr int kThreads = 256;

int blocks(size_t n) { return (int)((n + kThreads - 1) / kThreads); }

loom_status cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "mlp on the GPU: %s: %s", what, cudaGetErrorString(e));
}

loom_status blas_check(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "mlp on the GPU: %s: cuBLAS status %d", what, (int)s);
}

// y (rows, n) += bias (n), then ReLU unless last
__global__ void bias_activation(float *y, const float *bias, size_t rows, int n, int relu) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= rows * n) return;
  float v = y[i] + bias[i % n];
  y[i] = relu && v < 0 ? 0 : v;
}

// Softmax cross-entropy per row: loss[r], dlogits = (softmax - onehot) * scale
__global__ void softmax_cross_entropy(const float *logits, const int *labels, int rows, int classes,
                                      double scale, float *dlogits, float *loss) {
  int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float *z = logits + (size_t)r * classes;
  double top = z[0], sum = 0;
  for (int c = 1; c < classes; c++) top = z[c] > top ? z[c] : top;
  for (int c = 0; c < classes; c++) sum += exp((double)z[c] - top);
  double log_sum = log(sum) + top;
  loss[r] = (float)(log_sum - z[labels[r]]);
  for (int c = 0; c < classes; c++) {
    double p = exp((double)z[c] - log_sum);
    dlogits[(size_t)r * classes + c] = (float)((p - (c == labels[r])) * scale);
  }
}

__global__ void relu_backward(float *dx, const float *x, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n && x[i] <= 0) dx[i] = 0;
}

__global__ void fill(float *x, size_t n, float value) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) x[i] = value;
}

#define TRY(expr)                                                                          \
  do {                                                                                     \
    loom_status s_ = (expr);                                                               \
    if (s_ != LOOM_OK) return s_;                                                          \
  } while (0)

}  // namespace

extern "C" loom_status mlp_gpu_create(const mlp *init, int batch_capacity, void *stream,
                                      mlp_gpu *m) {
  memset(m, 0, sizeof *m);
  int L = init->layer_count;
  m->layer_count = L;
  m->batch_capacity = batch_capacity;
  m->stream = stream;
  m->widths = (int *)malloc(sizeof(int) * (L + 1));
  m->weight = (float **)calloc(L, sizeof(float *));
  m->bias = (float **)calloc(L, sizeof(float *));
  m->weight_grad = (float **)calloc(L, sizeof(float *));
  m->bias_grad = (float **)calloc(L, sizeof(float *));
  m->activation = (float **)calloc(L + 1, sizeof(float *));
  m->delta = (float **)calloc(L + 1, sizeof(float *));
  if (!m->widths || !m->weight || !m->bias || !m->weight_grad || !m->bias_grad || !m->activation ||
      !m->delta)
    return loom_error_set(LOOM_ERR_NOMEM, "mlp on the GPU: tables");
  memcpy(m->widths, init->widths, sizeof(int) * (L + 1));
  cudaStream_t s = (cudaStream_t)stream;
  cublasHandle_t handle;
  TRY(blas_check(cublasCreate(&handle), "cublasCreate"));
  m->cublas = handle;
  TRY(blas_check(cublasSetStream(handle, s), "cublasSetStream"));
  int widest = 0;
  for (int l = 0; l <= L; l++) {
    widest = m->widths[l] > widest ? m->widths[l] : widest;
    size_t bytes = sizeof(float) * (size_t)batch_capacity * m->widths[l];
    TRY(cuda_check(cudaMalloc(&m->activation[l], bytes), "activations"));
    TRY(cuda_check(cudaMalloc(&m->delta[l], bytes), "deltas"));
  }
  for (int l = 0; l < L; l++) {
    size_t n_weight = (size_t)m->widths[l + 1] * m->widths[l], n_bias = m->widths[l + 1];
    TRY(cuda_check(cudaMalloc(&m->weight[l], sizeof(float) * n_weight), "weights"));
    TRY(cuda_check(cudaMalloc(&m->bias[l], sizeof(float) * n_bias), "biases"));
    TRY(cuda_check(cudaMalloc(&m->weight_grad[l], sizeof(float) * n_weight), "weight gradients"));
    TRY(cuda_check(cudaMalloc(&m->bias_grad[l], sizeof(float) * n_bias), "bias gradients"));
    TRY(cuda_check(cudaMemcpyAsync(m->weight[l], init->weight[l], sizeof(float) * n_weight,
                                   cudaMemcpyHostToDevice, s), "weight upload"));
    TRY(cuda_check(cudaMemcpyAsync(m->bias[l], init->bias[l], sizeof(float) * n_bias,
                                   cudaMemcpyHostToDevice, s), "bias upload"));
  }
  TRY(cuda_check(cudaMalloc(&m->labels, sizeof(int) * batch_capacity), "labels"));
  TRY(cuda_check(cudaMalloc(&m->row_loss, sizeof(float) * batch_capacity), "losses"));
  TRY(cuda_check(cudaMalloc(&m->ones, sizeof(float) * batch_capacity), "ones"));
  fill<<<blocks(batch_capacity), kThreads, 0, s>>>(m->ones, batch_capacity, 1.0f);
  m->host_scratch = (float *)malloc(sizeof(float) * (size_t)batch_capacity * widest);
  if (!m->host_scratch) return loom_error_set(LOOM_ERR_NOMEM, "mlp on the GPU: host scratch");
  TRY(mlp_gpu_zero_grad(m));
  return cuda_check(cudaStreamSynchronize(s), "create");
}

extern "C" void mlp_gpu_destroy(mlp_gpu *m) {
  for (int l = 0; m->weight && l < m->layer_count; l++) {
    cudaFree(m->weight[l]), cudaFree(m->bias[l]);
    cudaFree(m->weight_grad[l]), cudaFree(m->bias_grad[l]);
  }
  for (int l = 0; m->activation && l <= m->layer_count; l++) {
    cudaFree(m->activation[l]);
    cudaFree(m->delta[l]);
  }
  cudaFree(m->labels), cudaFree(m->row_loss), cudaFree(m->ones);
  if (m->cublas) cublasDestroy((cublasHandle_t)m->cublas);
  free(m->weight), free(m->bias), free(m->weight_grad), free(m->bias_grad);
  free(m->activation), free(m->delta), free(m->widths), free(m->host_scratch);
  memset(m, 0, sizeof *m);
}

extern "C" loom_status mlp_gpu_forward(mlp_gpu *m, const float *input, int rows) {
  cudaStream_t s = (cudaStream_t)m->stream;
  cublasHandle_t h = (cublasHandle_t)m->cublas;
  TRY(cuda_check(cudaMemcpyAsync(m->activation[0], input, sizeof(float) * rows * m->widths[0],
                                 cudaMemcpyHostToDevice, s), "input upload"));
  const float one = 1.0f, zero = 0.0f;
  for (int l = 0; l < m->layer_count; l++) {
    int n_in = m->widths[l], n_out = m->widths[l + 1];
    // Y^T (n_out, rows) = W (n_out, n_in) X^T (n_in, rows)
    TRY(blas_check(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, n_in, &one, m->weight[l],
                               n_in, m->activation[l], n_in, &zero, m->activation[l + 1], n_out),
                   "forward product"));
    size_t n = (size_t)rows * n_out;
    bias_activation<<<blocks(n), kThreads, 0, s>>>(m->activation[l + 1], m->bias[l], rows, n_out,
                                                   l + 1 < m->layer_count);
  }
  return cuda_check(cudaGetLastError(), "forward kernels");
}

extern "C" loom_status mlp_gpu_loss(mlp_gpu *m, const int *labels, int rows, double scale,
                                    double *loss_sum) {
  cudaStream_t s = (cudaStream_t)m->stream;
  int L = m->layer_count;
  TRY(cuda_check(cudaMemcpyAsync(m->labels, labels, sizeof(int) * rows, cudaMemcpyHostToDevice, s),
                 "label upload"));
  softmax_cross_entropy<<<blocks(rows), kThreads, 0, s>>>(m->activation[L], m->labels, rows,
                                                          m->widths[L], scale, m->delta[L],
                                                          m->row_loss);
  TRY(cuda_check(cudaMemcpyAsync(m->host_scratch, m->row_loss, sizeof(float) * rows,
                                 cudaMemcpyDeviceToHost, s), "loss download"));
  TRY(cuda_check(cudaStreamSynchronize(s), "loss"));
  double total = 0;
  for (int r = 0; r < rows; r++) total += m->host_scratch[r];
  *loss_sum = total;
  return LOOM_OK;
}

extern "C" loom_status mlp_gpu_backward(mlp_gpu *m, int rows, mlp_grad_hook hook, void *user) {
  cudaStream_t s = (cudaStream_t)m->stream;
  cublasHandle_t h = (cublasHandle_t)m->cublas;
  const float one = 1.0f, zero = 0.0f;
  for (int l = m->layer_count - 1; l >= 0; l--) {
    int n_in = m->widths[l], n_out = m->widths[l + 1];
    const float *dz = m->delta[l + 1], *x = m->activation[l];
    // dW^T (n_in, n_out) += X^T (n_in, rows) dZ (rows, n_out)
    TRY(blas_check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, n_in, n_out, rows, &one, x, n_in, dz,
                               n_out, &one, m->weight_grad[l], n_in), "weight gradient"));
    // db (n_out) += dZ^T (n_out, rows) ones (rows)
    TRY(blas_check(cublasSgemv(h, CUBLAS_OP_N, n_out, rows, &one, dz, n_out, m->ones, 1, &one,
                               m->bias_grad[l], 1), "bias gradient"));
    if (hook) TRY(hook(user, l));
    if (l == 0) break;
    // dX^T (n_in, rows) = W^T (n_in, n_out) dZ^T (n_out, rows)
    TRY(blas_check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n_in, rows, n_out, &one, m->weight[l],
                               n_in, dz, n_out, &zero, m->delta[l], n_in), "input gradient"));
    size_t n = (size_t)rows * n_in;
    relu_backward<<<blocks(n), kThreads, 0, s>>>(m->delta[l], x, n);
  }
  return cuda_check(cudaGetLastError(), "backward kernels");
}

extern "C" loom_status mlp_gpu_zero_grad(mlp_gpu *m) {
  cudaStream_t s = (cudaStream_t)m->stream;
  for (int l = 0; l < m->layer_count; l++) {
    size_t n_weight = (size_t)m->widths[l + 1] * m->widths[l];
    TRY(cuda_check(cudaMemsetAsync(m->weight_grad[l], 0, sizeof(float) * n_weight, s), "zero"));
    TRY(cuda_check(cudaMemsetAsync(m->bias_grad[l], 0, sizeof(float) * m->widths[l + 1], s), "zero"));
  }
  return LOOM_OK;
}

extern "C" loom_status mlp_gpu_count_correct(mlp_gpu *m, const int *labels, int rows, int *correct) {
  int L = m->layer_count, classes = m->widths[L];
  cudaStream_t s = (cudaStream_t)m->stream;
  TRY(cuda_check(cudaMemcpyAsync(m->host_scratch, m->activation[L], sizeof(float) * rows * classes,
                                 cudaMemcpyDeviceToHost, s), "logits download"));
  TRY(cuda_check(cudaStreamSynchronize(s), "logits"));
  *correct = 0;
  for (int r = 0; r < rows; r++) {
    const float *z = m->host_scratch + (size_t)r * classes;
    int best = 0;
    for (int c = 1; c < classes; c++) best = z[c] > z[best] ? c : best;
    *correct += best == labels[r];
  }
  return LOOM_OK;
}
