/* The MLP of mlp.h on a GPU: the same layers and initial weights (copied from a CPU mlp),
 * float32 everywhere, cuBLAS products and small kernels, all on the rank's compute stream
 * (loom_ctx_stream), so loom's collectives and optimizer kernels order after it. */
#ifndef LOOM_EXAMPLES_MLP_GPU_H
#define LOOM_EXAMPLES_MLP_GPU_H

#include "mlp.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int layer_count;
  int *widths;          /* (L + 1), host */
  int batch_capacity;
  void *stream;         /* cudaStream_t */
  void *cublas;         /* cublasHandle_t */
  float **weight;       /* (L) device (widths[l+1], widths[l]) */
  float **bias;         /* (L) device */
  float **weight_grad;  /* (L) device, float32 */
  float **bias_grad;    /* (L) device */
  float **activation;   /* (L + 1) device (batch, widths[l]) */
  float **delta;        /* (L + 1) device */
  int *labels;          /* (batch) device */
  float *row_loss;      /* (batch) device */
  float *ones;          /* (batch) device, for bias gradients */
  float *host_scratch;  /* (batch * max(widths)) pinned-free host buffer */
} mlp_gpu;

/* Copies `init`'s widths and weights to the GPU; `stream` is the compute stream. */
loom_status mlp_gpu_create(const mlp *init, int batch_capacity, void *stream, mlp_gpu *out);
void mlp_gpu_destroy(mlp_gpu *m);
/* Same contracts as the CPU functions of mlp.h; inputs and labels come from host memory. */
loom_status mlp_gpu_forward(mlp_gpu *m, const float *input, int rows);
loom_status mlp_gpu_loss(mlp_gpu *m, const int *labels, int rows, double scale, double *loss_sum);
loom_status mlp_gpu_backward(mlp_gpu *m, int rows, mlp_grad_hook hook, void *user);
loom_status mlp_gpu_zero_grad(mlp_gpu *m);
loom_status mlp_gpu_count_correct(mlp_gpu *m, const int *labels, int rows, int *correct);

#ifdef __cplusplus
}
#endif
#endif
