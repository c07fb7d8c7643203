// Kernels of the CUDA GPT (gpt_cuda.cu): bfloat16 activations, float32 arithmetic inside
// every kernel, float32 statistics and gradients. Every kernel is deterministic (no atomics:
// sums over rows go through fixed-order partial sums), so a run repeats bit for bit.
// Launchers queue on `stream` and return cudaGetLastError's status as a loom_status.
// Shapes: N = B T rows, d width, H heads, hd = d / H, V vocabulary, ld a row's stride.
#ifndef LOOM_EXAMPLES_GPT_KERNELS_CUH
#define LOOM_EXAMPLES_GPT_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <loom.h>

typedef __nv_bfloat16 bf16;

// x (N, d) = wte[tokens[n]] + wpe[n mod T]
loom_status gpt_k_embed_forward(const int *tokens, const bf16 *wte, const bf16 *wpe, int N, int T,
                                int d, bf16 *x, cudaStream_t stream);
// dwpe (T, d) += sum over the B sequences of dx; dwte[token] += the dx rows of that token,
// from the positions grouped by token: order (N) positions, starts (U + 1) segment bounds,
// token_of (U) each segment's token.
loom_status gpt_k_embed_backward(const bf16 *dx, int B, int T, int d, const int *order,
                                 const int *starts, const int *token_of, int U, float *dwte,
                                 float *dwpe, cudaStream_t stream);

// y (N, d) = LayerNorm(x) w + b (eps 1e-5); mean, rstd (N)
loom_status gpt_k_layernorm_forward(const bf16 *x, const bf16 *w, const bf16 *b, int N, int d,
                                    bf16 *y, float *mean, float *rstd, cudaStream_t stream);
// dx (N, d) = residual + d LayerNorm / dx applied to dy (dx may be residual)
loom_status gpt_k_layernorm_backward(const bf16 *dy, const bf16 *x, const bf16 *w,
                                     const float *mean, const float *rstd, int N, int d,
                                     const bf16 *residual, bf16 *dx, cudaStream_t stream);

// Column sums over N rows, added into float32 outputs: db (cols) += sum_r dy[r]; with x
// (LayerNorm weights) also dw (cols) += sum_r dy[r] xhat[r]. `partial` is scratch of
// gpt_k_column_scratch(cols) floats.
size_t gpt_k_column_scratch(int cols);
loom_status gpt_k_column_sums(const bf16 *dy, const bf16 *x, const float *mean, const float *rstd,
                              int N, int cols, float *partial, float *dw, float *db,
                              cudaStream_t stream);

// GPT-2's tanh GELU, y = gelu(v), and dv = dy gelu'(v) (dv may be dy); n elements
loom_status gpt_k_gelu_forward(const bf16 *v, size_t n, bf16 *y, cudaStream_t stream);
loom_status gpt_k_gelu_backward(const bf16 *dy, const bf16 *v, size_t n, bf16 *dv,
                                cudaStream_t stream);

// qkv (B, T, 3d) <-> q, k, v (B, H, T, hd); `to_heads` 1 splits, 0 merges back into qkv
loom_status gpt_k_qkv_heads(bf16 *qkv, bf16 *q, bf16 *k, bf16 *v, int B, int T, int H, int hd,
                            int to_heads, cudaStream_t stream);
// rows (B, T, d) <-> heads (B, H, T, hd); `to_heads` as above
loom_status gpt_k_rows_heads(bf16 *rows, bf16 *heads, int B, int T, int H, int hd, int to_heads,
                             cudaStream_t stream);

// P (R, T) = causal softmax of scale S over each row of a (T, T) block (R = B H T rows;
// row r is query position r mod T; keys after it get 0)
loom_status gpt_k_causal_softmax(const float *S, int R, int T, float scale, bf16 *P,
                                 cudaStream_t stream);
// dS = scale P (dP - sum_j P_j dP_j), zero above the diagonal
loom_status gpt_k_causal_softmax_backward(const float *dP, const bf16 *P, int R, int T,
                                          float scale, bf16 *dS, cudaStream_t stream);

// Softmax cross-entropy of logits (N, V, row stride ld) against targets (N): loss (N) per
// row; with `grad`, logits become (softmax - onehot) scale in place.
loom_status gpt_k_cross_entropy(bf16 *logits, int N, int V, int ld, const int *targets,
                                float scale, int grad, float *loss, cudaStream_t stream);

// dst (n) bfloat16 = src (n) float32, rounded to nearest even
loom_status gpt_k_to_bf16(const float *src, size_t n, bf16 *dst, cudaStream_t stream);

#endif
