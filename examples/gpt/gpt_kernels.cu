// Kernels of the CUDA GPT (see gpt_kernels.cuh). Row kernels give a row to a warp (LayerNorm,
// attention softmax) or a block (cross-entropy over the vocabulary) and reduce with shuffles;
// column sums split the rows into fixed chunks, then add the chunks in order.
#include "gpt_kernels.cuh"

#include <math.h>

namespace {

constexpr int kThreads = 256;
constexpr int kChunks = 128; // row chunks of a column sum

unsigned blocks_for(size_t n, int threads = kThreads) { return (unsigned)((n + threads - 1) / threads); }

loom_status launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: kernel %s: %s", what, cudaGetErrorString(e));
}

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over the block; every thread gets the result. `shared` holds 32 floats.
__device__ float block_reduce(float v, float *shared, bool is_max) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = is_max ? warp_max(v) : warp_sum(v);
  __syncthreads(); // shared may still be read from a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : (is_max ? -INFINITY : 0.0f);
  return is_max ? warp_max(v) : warp_sum(v);
}

__global__ void embed_forward(const int *tokens, const bf16 *wte, const bf16 *wpe, int N, int T,
                              int d, bf16 *x) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)N * d) return;
  int n = (int)(i / d), c = (int)(i % d);
  x[i] = __float2bfloat16(__bfloat162float(wte[(size_t)tokens[n] * d + c]) +
                          __bfloat162float(wpe[(size_t)(n % T) * d + c]));
}

__global__ void embed_backward_positions(const bf16 *dx, int B, int T, int d, float *dwpe) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)T * d) return;
  float s = 0;
  for (int b = 0; b < B; b++) s += __bfloat162float(dx[(size_t)b * T * d + i]);
  dwpe[i] += s;
}

// one block per distinct token; its positions in order
__global__ void embed_backward_tokens(const bf16 *dx, int d, const int *order, const int *starts,
                                      const int *token_of, float *dwte) {
  int u = blockIdx.x;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float s = 0;
    for (int j = starts[u]; j < starts[u + 1]; j++) s += __bfloat162float(dx[(size_t)order[j] * d + c]);
    dwte[(size_t)token_of[u] * d + c] += s;
  }
}

__global__ void layernorm_forward(const bf16 *x, const bf16 *w, const bf16 *b, int N, int d,
                                  bf16 *y, float *mean, float *rstd) {
  int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16 *xr = x + (size_t)row * d;
  float s = 0;
  for (int c = lane; c < d; c += 32) s += __bfloat162float(xr[c]);
  float m = warp_sum(s) / d, v = 0;
  for (int c = lane; c < d; c += 32) {
    float t = __bfloat162float(xr[c]) - m;
    v += t * t;
  }
  float r = rsqrtf(warp_sum(v) / d + 1e-5f);
  for (int c = lane; c < d; c += 32)
    y[(size_t)row * d + c] = __float2bfloat16((__bfloat162float(xr[c]) - m) * r * __bfloat162float(w[c]) +
                                              __bfloat162float(b[c]));
  if (lane == 0) mean[row] = m, rstd[row] = r;
}

// dx = residual + rstd (g - mean(g) - xhat mean(g xhat)), g = dy w
__global__ void layernorm_backward(const bf16 *dy, const bf16 *x, const bf16 *w, const float *mean,
                                   const float *rstd, int N, int d, const bf16 *residual, bf16 *dx) {
  int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  size_t o = (size_t)row * d;
  float m = mean[row], r = rstd[row], sg = 0, sgx = 0;
  for (int c = lane; c < d; c += 32) {
    float g = __bfloat162float(dy[o + c]) * __bfloat162float(w[c]);
    float xh = (__bfloat162float(x[o + c]) - m) * r;
    sg += g, sgx += g * xh;
  }
  sg = warp_sum(sg) / d, sgx = warp_sum(sgx) / d;
  for (int c = lane; c < d; c += 32) {
    float g = __bfloat162float(dy[o + c]) * __bfloat162float(w[c]);
    float xh = (__bfloat162float(x[o + c]) - m) * r;
    dx[o + c] = __float2bfloat16(__bfloat162float(residual[o + c]) + r * (g - sg - xh * sgx));
  }
}

// partial sums of chunk blockIdx.y over columns; pw only with x
__global__ void column_partials(const bf16 *dy, const bf16 *x, const float *mean,
                                const float *rstd, int N, int cols, int rows_per_chunk,
                                float *pw, float *pb) {
  int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (c >= cols) return;
  int r0 = chunk * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  float sw = 0, sb = 0;
  for (int r = r0; r < r1; r++) {
    float g = __bfloat162float(dy[(size_t)r * cols + c]);
    sb += g;
    if (x) sw += g * (__bfloat162float(x[(size_t)r * cols + c]) - mean[r]) * rstd[r];
  }
  pb[(size_t)chunk * cols + c] = sb;
  if (x) pw[(size_t)chunk * cols + c] = sw;
}

__global__ void column_finish(const float *partial, int chunks, int cols, float *out) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0;
  for (int k = 0; k < chunks; k++) s += partial[(size_t)k * cols + c];
  out[c] += s;
}

constexpr float kGeluC = 0.7978845608f; // sqrt(2 / pi)

__global__ void gelu_forward(const bf16 *v, size_t n, bf16 *y) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  float x = __bfloat162float(v[i]);
  y[i] = __float2bfloat16(0.5f * x * (1.0f + tanhf(kGeluC * (x + 0.044715f * x * x * x))));
}

__global__ void gelu_backward(const bf16 *dy, const bf16 *v, size_t n, bf16 *dv) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  float x = __bfloat162float(v[i]), t = tanhf(kGeluC * (x + 0.044715f * x * x * x));
  float g = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * 0.044715f * x * x);
  dv[i] = __float2bfloat16(__bfloat162float(dy[i]) * g);
}

// element i of the (B, H, T, hd) layout and its place in (B, T, stride) rows at column offset
__device__ size_t head_to_row(size_t i, int T, int H, int hd, int stride) {
  int e = (int)(i % hd);
  size_t rest = i / hd;
  int t = (int)(rest % T);
  rest /= T;
  int h = (int)(rest % H), b = (int)(rest / H);
  return ((size_t)b * T + t) * stride + (size_t)h * hd + e;
}

__global__ void qkv_heads(bf16 *qkv, bf16 *q, bf16 *k, bf16 *v, int B, int T, int H, int hd,
                          int to_heads) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x, n = (size_t)B * H * T * hd;
  if (i >= n) return;
  int d = H * hd;
  size_t r = head_to_row(i, T, H, hd, 3 * d);
  if (to_heads) q[i] = qkv[r], k[i] = qkv[r + d], v[i] = qkv[r + 2 * d];
  else qkv[r] = q[i], qkv[r + d] = k[i], qkv[r + 2 * d] = v[i];
}

__global__ void rows_heads(bf16 *rows, bf16 *heads, int B, int T, int H, int hd, int to_heads) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x, n = (size_t)B * H * T * hd;
  if (i >= n) return;
  size_t r = head_to_row(i, T, H, hd, H * hd);
  if (to_heads) heads[i] = rows[r];
  else rows[r] = heads[i];
}

__global__ void causal_softmax(const float *S, int R, int T, float scale, bf16 *P) {
  int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= R) return;
  int q = row % T;
  const float *s = S + (size_t)row * T;
  float m = -INFINITY;
  for (int j = lane; j <= q; j += 32) m = fmaxf(m, s[j] * scale);
  m = warp_max(m);
  float sum = 0;
  for (int j = lane; j <= q; j += 32) sum += expf(s[j] * scale - m);
  float inv = 1.0f / warp_sum(sum);
  for (int j = lane; j < T; j += 32)
    P[(size_t)row * T + j] = __float2bfloat16(j <= q ? expf(s[j] * scale - m) * inv : 0.0f);
}

__global__ void causal_softmax_backward(const float *dP, const bf16 *P, int R, int T, float scale,
                                        bf16 *dS) {
  int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= R) return;
  int q = row % T;
  size_t o = (size_t)row * T;
  float dot = 0;
  for (int j = lane; j <= q; j += 32) dot += __bfloat162float(P[o + j]) * dP[o + j];
  dot = warp_sum(dot);
  for (int j = lane; j < T; j += 32)
    dS[o + j] = __float2bfloat16(j <= q ? scale * __bfloat162float(P[o + j]) * (dP[o + j] - dot) : 0.0f);
}

__global__ void cross_entropy(bf16 *logits, int V, int ld, const int *targets, float scale,
                              int grad, float *loss) {
  __shared__ float shared[32];
  bf16 *z = logits + (size_t)blockIdx.x * ld;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < V; c += blockDim.x) m = fmaxf(m, __bfloat162float(z[c]));
  m = block_reduce(m, shared, true);
  float s = 0;
  for (int c = threadIdx.x; c < V; c += blockDim.x) s += expf(__bfloat162float(z[c]) - m);
  float lse = logf(block_reduce(s, shared, false)) + m;
  int target = targets[blockIdx.x];
  if (threadIdx.x == 0) loss[blockIdx.x] = lse - __bfloat162float(z[target]);
  __syncthreads(); // z[target] read before it is overwritten
  if (!grad) return;
  for (int c = threadIdx.x; c < V; c += blockDim.x) {
    float p = expf(__bfloat162float(z[c]) - lse);
    z[c] = __float2bfloat16((p - (c == target ? 1.0f : 0.0f)) * scale);
  }
}

__global__ void to_bf16(const float *src, size_t n, bf16 *dst) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16(src[i]);
}

}  // namespace

loom_status gpt_k_embed_forward(const int *tokens, const bf16 *wte, const bf16 *wpe, int N, int T,
                                int d, bf16 *x, cudaStream_t stream) {
  embed_forward<<<blocks_for((size_t)N * d), kThreads, 0, stream>>>(tokens, wte, wpe, N, T, d, x);
  return launched("embed_forward");
}

loom_status gpt_k_embed_backward(const bf16 *dx, int B, int T, int d, const int *order,
                                 const int *starts, const int *token_of, int U, float *dwte,
                                 float *dwpe, cudaStream_t stream) {
  embed_backward_positions<<<blocks_for((size_t)T * d), kThreads, 0, stream>>>(dx, B, T, d, dwpe);
  LOOM_CHECK(launched("embed_backward_positions"));
  if (U > 0) embed_backward_tokens<<<U, kThreads, 0, stream>>>(dx, d, order, starts, token_of, dwte);
  return launched("embed_backward_tokens");
}

loom_status gpt_k_layernorm_forward(const bf16 *x, const bf16 *w, const bf16 *b, int N, int d,
                                    bf16 *y, float *mean, float *rstd, cudaStream_t stream) {
  layernorm_forward<<<blocks_for((size_t)N, kThreads / 32), kThreads, 0, stream>>>(x, w, b, N, d, y, mean, rstd);
  return launched("layernorm_forward");
}

loom_status gpt_k_layernorm_backward(const bf16 *dy, const bf16 *x, const bf16 *w,
                                     const float *mean, const float *rstd, int N, int d,
                                     const bf16 *residual, bf16 *dx, cudaStream_t stream) {
  layernorm_backward<<<blocks_for((size_t)N, kThreads / 32), kThreads, 0, stream>>>(dy, x, w, mean, rstd, N, d, residual, dx);
  return launched("layernorm_backward");
}

size_t gpt_k_column_scratch(int cols) { return 2 * (size_t)kChunks * cols; }

loom_status gpt_k_column_sums(const bf16 *dy, const bf16 *x, const float *mean, const float *rstd,
                              int N, int cols, float *partial, float *dw, float *db,
                              cudaStream_t stream) {
  int rows_per_chunk = (N + kChunks - 1) / kChunks;
  float *pb = partial, *pw = partial + (size_t)kChunks * cols;
  dim3 grid(blocks_for((size_t)cols), kChunks);
  column_partials<<<grid, kThreads, 0, stream>>>(dy, x, mean, rstd, N, cols, rows_per_chunk, pw, pb);
  LOOM_CHECK(launched("column_partials"));
  column_finish<<<blocks_for((size_t)cols), kThreads, 0, stream>>>(pb, kChunks, cols, db);
  if (x) column_finish<<<blocks_for((size_t)cols), kThreads, 0, stream>>>(pw, kChunks, cols, dw);
  return launched("column_finish");
}

loom_status gpt_k_gelu_forward(const bf16 *v, size_t n, bf16 *y, cudaStream_t stream) {
  gelu_forward<<<blocks_for(n), kThreads, 0, stream>>>(v, n, y);
  return launched("gelu_forward");
}

loom_status gpt_k_gelu_backward(const bf16 *dy, const bf16 *v, size_t n, bf16 *dv,
                                cudaStream_t stream) {
  gelu_backward<<<blocks_for(n), kThreads, 0, stream>>>(dy, v, n, dv);
  return launched("gelu_backward");
}

loom_status gpt_k_qkv_heads(bf16 *qkv, bf16 *q, bf16 *k, bf16 *v, int B, int T, int H, int hd,
                            int to_heads, cudaStream_t stream) {
  qkv_heads<<<blocks_for((size_t)B * H * T * hd), kThreads, 0, stream>>>(qkv, q, k, v, B, T, H, hd, to_heads);
  return launched("qkv_heads");
}

loom_status gpt_k_rows_heads(bf16 *rows, bf16 *heads, int B, int T, int H, int hd, int to_heads,
                             cudaStream_t stream) {
  rows_heads<<<blocks_for((size_t)B * H * T * hd), kThreads, 0, stream>>>(rows, heads, B, T, H, hd, to_heads);
  return launched("rows_heads");
}

loom_status gpt_k_causal_softmax(const float *S, int R, int T, float scale, bf16 *P,
                                 cudaStream_t stream) {
  causal_softmax<<<blocks_for((size_t)R, kThreads / 32), kThreads, 0, stream>>>(S, R, T, scale, P);
  return launched("causal_softmax");
}

loom_status gpt_k_causal_softmax_backward(const float *dP, const bf16 *P, int R, int T,
                                          float scale, bf16 *dS, cudaStream_t stream) {
  causal_softmax_backward<<<blocks_for((size_t)R, kThreads / 32), kThreads, 0, stream>>>(dP, P, R, T, scale, dS);
  return launched("causal_softmax_backward");
}

loom_status gpt_k_cross_entropy(bf16 *logits, int N, int V, int ld, const int *targets,
                                float scale, int grad, float *loss, cudaStream_t stream) {
  cross_entropy<<<N, 512, 0, stream>>>(logits, V, ld, targets, scale, grad, loss);
  return launched("cross_entropy");
}

loom_status gpt_k_to_bf16(const float *src, size_t n, bf16 *dst, cudaStream_t stream) {
  to_bf16<<<blocks_for(n), kThreads, 0, stream>>>(src, n, dst);
  return launched("to_bf16");
}
