/* GPU kernels of the optimizers and of gradient norms, behind a C interface (defined in
 * kernels.cu, compiled only with CUDA). Every launcher enqueues on `stream` (a cudaStream_t,
 * NULL = the legacy default stream) and returns when the work is enqueued, except
 * loom_sum_squares_device, which waits for its result. Element-wise arithmetic matches the
 * CPU kernels of update.c (same formula, float32), so results agree within float32 rounding
 * (the GPU contracts multiply-adds into FMAs). */
#ifndef LOOM_OPTIM_KERNELS_H
#define LOOM_OPTIM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

loom_status loom_sgd_update_device(void *stream, size_t n, float *param, const float *grad,
                                   float *momentum_buf, float lr, float momentum,
                                   float weight_decay, int nesterov, int first_step);
loom_status loom_adamw_update_device(void *stream, size_t n, float *param, const float *grad,
                                     float *exp_avg, float *exp_avg_sq, int64_t step, float lr,
                                     float beta1, float beta2, float eps, float weight_decay);
/* The mixed-precision forms (see loom_adamw_update_mixed): float32 or bfloat16 gradients and
 * an optional bfloat16 copy of the updated parameters (NULL: none). */
loom_status loom_sgd_update_device_mixed(void *stream, size_t n, float *param, const void *grad,
                                         loom_dtype grad_dtype, float *momentum_buf,
                                         uint16_t *bf16_copy, float lr, float momentum,
                                         float weight_decay, int nesterov, int first_step);
loom_status loom_adamw_update_device_mixed(void *stream, size_t n, float *param, const void *grad,
                                           loom_dtype grad_dtype, float *exp_avg,
                                           float *exp_avg_sq, uint16_t *bf16_copy, int64_t step,
                                           float lr, float beta1, float beta2, float eps,
                                           float weight_decay);
/* Multi-tensor forms: one launch updates every tensor of an optimizer group on the GPU. The
 * descriptors (`tensors`) and the chunk table (`chunks`: which tensor, first element, for each
 * piece of at most LOOM_OPTIM_CHUNK elements) live in device memory, built once by the
 * optimizer; each block takes chunks, each thread elements, with the same element rule as the
 * single-tensor kernels. Every tensor of one launch has gradients of `grad_dtype` (float32 or
 * bfloat16) and, when `with_copy`, a bfloat16 copy; the optimizer groups them so. */
enum { LOOM_OPTIM_CHUNK = 65536 };
typedef struct {
  float *param;
  const void *grad;       /* float32 or bfloat16 bits (the launch's grad_dtype) */
  float *state0, *state1; /* SGD: momentum (NULL without); AdamW: exp_avg, exp_avg_sq */
  uint16_t *copy;         /* bfloat16 model copy (with_copy), or NULL */
  size_t n;
} loom_optim_tensor;
typedef struct {
  int tensor;
  size_t first;
} loom_optim_chunk;
loom_status loom_sgd_update_device_multi(void *stream, const loom_optim_tensor *tensors,
                                         const loom_optim_chunk *chunks, int chunk_count,
                                         loom_dtype grad_dtype, int with_copy, float lr,
                                         float momentum, float weight_decay, int nesterov,
                                         int first_step);
loom_status loom_adamw_update_device_multi(void *stream, const loom_optim_tensor *tensors,
                                           const loom_optim_chunk *chunks, int chunk_count,
                                           loom_dtype grad_dtype, int with_copy, int64_t step,
                                           float lr, float beta1, float beta2, float eps,
                                           float weight_decay);

/* Sum of squares of n float32 or float64 elements in double precision (one block-wise
 * reduction, then the host sums the block results). */
loom_status loom_sum_squares_device(void *stream, const void *x, size_t n, loom_dtype dtype,
                                    double *result);
/* The same without a host wait: the loom_sum_squares_blocks(n) block sums go to `partials`
 * (device memory of that many doubles), for a caller that sums many tensors with one copy. */
int loom_sum_squares_blocks(size_t n);
loom_status loom_sum_squares_device_partials(void *stream, const void *x, size_t n,
                                             loom_dtype dtype, double *partials);
/* x *= scale for n float32 or float64 elements. */
loom_status loom_scale_device(void *stream, void *x, size_t n, loom_dtype dtype, double scale);

#ifdef __cplusplus
}
#endif
#endif
