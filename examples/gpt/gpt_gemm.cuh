// Matrix products of the CUDA GPT (gpt_cuda.cu), row-major as in gpt_cpu.c:
//   C (M, N) = alpha op(A) (M, K) op(B) (K, N) + beta C  [+ bias (N) per row]
// A and B bfloat16, C bfloat16 or float32, accumulation in float32. cuBLAS is column-major;
// a row-major C is the column-major C^T = op(B)^T op(A)^T, so each call swaps the operands.
// Linear layers go through cuBLASLt (bias and residual fused: D = AB + bias + C with C and D
// different buffers); the attention's per-head products through cuBLAS's strided batches.
#ifndef LOOM_EXAMPLES_GPT_GEMM_CUH
#define LOOM_EXAMPLES_GPT_GEMM_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <loom.h>

struct gpt_blas;

// Handles and a 32 MiB workspace for `stream`; the plan cache starts empty.
loom_status gpt_gemm_create(cudaStream_t stream, gpt_blas **out);
void gpt_gemm_destroy(gpt_blas *g);

// D (M, N) = op(A) op(B) + bias + beta C (bias: (N) bfloat16 or NULL; C: NULL for none, may
// equal D). lda, ldb, ldc: row-major leading dimensions (elements). c_fp32 selects float32
// for C and D (gradients accumulate there with beta = 1), else bfloat16.
loom_status gpt_gemm(gpt_blas *g, int trans_a, int trans_b, int M, int N, int K, const void *A,
                     int lda, const void *B, int ldb, float beta, const void *C, void *D, int ldc,
                     int c_fp32, const void *bias);

// batch x (C_i = alpha op(A_i) op(B_i) + beta C_i), strides in elements, A and B bfloat16.
loom_status gpt_gemm_batched(gpt_blas *g, int trans_a, int trans_b, int M, int N, int K,
                             float alpha, const void *A, int lda, long long stride_a,
                             const void *B, int ldb, long long stride_b, float beta, void *C,
                             int ldc, long long stride_c, int batch, int c_fp32);

#endif
