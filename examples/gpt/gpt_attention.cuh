// Fused causal attention of the CUDA GPT, flash-style (FlashAttention-2, Dao 2023): scores
// are computed tile by tile in shared memory with an online softmax and never written to
// device memory; the backward pass recomputes them from the saved row log-sum-exp. Tensor
// cores through WMMA (bfloat16 in, float32 accumulate). Deterministic: dK and dV are summed
// by the block that owns a key tile, dQ by the block that owns a query tile (a second
// recomputation instead of atomics).
//
// Layouts are those of the model, so no permutation kernels run: qkv (B, T, 3d) rows with
// q, k, v of head h at columns h hd, d + h hd, 2d + h hd; out and dout (B, T, d); lse and
// delta (B, H, T) float32.
#ifndef LOOM_EXAMPLES_GPT_ATTENTION_CUH
#define LOOM_EXAMPLES_GPT_ATTENTION_CUH

#include "gpt_kernels.cuh"

// 1 when the kernels are built for head size hd (32, 64 or 128).
int gpt_flash_supported(int hd);

// out = softmax(scale q k^T, causal) v per (sequence, head); lse = the rows' log-sum-exp of
// the scaled scores.
loom_status gpt_flash_forward(const bf16 *qkv, int B, int T, int H, int hd, float scale,
                              bf16 *out, float *lse, cudaStream_t stream);

// dqkv (B, T, 3d, overwritten) from dout; `delta` is scratch of B H T floats.
loom_status gpt_flash_backward(const bf16 *qkv, const bf16 *out, const bf16 *dout,
                               const float *lse, int B, int T, int H, int hd, float scale,
                               float *delta, bf16 *dqkv, cudaStream_t stream);

#endif
