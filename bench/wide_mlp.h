/* The benchmark model of the GPU DDP and checkpoint benchmarks: L layers of Linear(W, W) +
 * ReLU on a batch of B synthetic rows, loss = sum(y^2) / (2 B) over the last activations.
 * Compute in bfloat16 (cuBLAS, float32 accumulation) with float32 master weights kept by the
 * optimizer (Micikevicius et al., "Mixed Precision Training", ICLR'18), or float32 throughout
 * (no TF32). Everything runs on the rank's compute stream. The PyTorch peer
 * (bench/peers/torch_ddp.py) builds the same model. */
#ifndef LOOM_BENCH_WIDE_MLP_H
#define LOOM_BENCH_WIDE_MLP_H

#include <loom.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int layers, width, batch;
  int grad_chunks;       /* weight gradients computed in this many row blocks (default 1) */
  loom_dtype dtype;      /* LOOM_BFLOAT16 or LOOM_FLOAT32: weights the GEMMs read, activations,
                          * gradients */
  void *stream;          /* cudaStream_t */
  void *cublas;          /* cublasHandle_t */
  void **weight;         /* (L) device (W, W) row-major (out, in), dtype */
  void **bias;           /* (L) device (W), dtype */
  float **master_weight; /* (L) float32 masters: separate in bf16 mode, == weight in float32 */
  float **master_bias;   /* (L) */
  void **weight_grad;    /* (L) device (W, W), dtype */
  void **bias_grad;      /* (L) device (W), dtype */
  void **act;            /* (L + 1) device (B, W), dtype; act[0] is the synthetic input */
  void *delta[2];        /* device (B, W), dtype: gradient of the current activation */
  void *ones;            /* device (B), dtype: for bias gradients as a GEMM */
} wide_mlp;

/* Called in backward right after a gradient is enqueued (layers in reverse order): first the
 * bias gradient (chunk -1), then each of the grad_chunks row blocks of the weight gradient
 * (chunk 0, 1, ...: rows [chunk W / C, (chunk + 1) W / C) of the (W, W) gradient). Blocks let a
 * data-parallel runtime reduce the first rows of the last layer while the GPU computes the
 * others, so less communication is left exposed after backward. */
typedef loom_status (*wide_mlp_hook)(int layer, int chunk, void *user);

/* Allocates the model on the current GPU and initialises weights (uniform +-1/sqrt(W), the same
 * on every rank for a given seed) and the input (uniform +-1, from seed + rank). */
loom_status wide_mlp_create(int layers, int width, int batch, loom_dtype dtype, void *stream,
                            uint64_t seed, int rank, wide_mlp *out);
void wide_mlp_destroy(wide_mlp *m);
loom_status wide_mlp_forward(wide_mlp *m);
loom_status wide_mlp_backward(wide_mlp *m, wide_mlp_hook hook, void *user);
/* Parameters of the model (weights and biases). */
size_t wide_mlp_param_count(const wide_mlp *m);

#ifdef __cplusplus
}
#endif
#endif
