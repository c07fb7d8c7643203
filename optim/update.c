/* The element-wise SGD and AdamW update kernels on the CPU (float32 with float32 state); the
 * arithmetic of one element lives in update_rules.h, shared with the CUDA kernels. The rules
 * follow PyTorch's single-tensor ("foreach=False") implementations. */
#include "optim/optim.h"
#include "optim/update_rules.h"

/* Gradient element i as float32 (bfloat16 gradients are widened exactly; float64 ones are
 * rounded once, as a float32 copy of them would be). */
static inline float grad_at(const void *grad, loom_dtype dtype, size_t i) {
  switch (dtype) {
    case LOOM_BFLOAT16: return loom_bf16_widen(((const uint16_t *)grad)[i]);
    case LOOM_FLOAT64: return (float)((const double *)grad)[i];
    default: return ((const float *)grad)[i];
  }
}

void loom_sgd_update_mixed(size_t n, float *param, const void *grad, loom_dtype grad_dtype,
                           float *momentum_buf, uint16_t *bf16_copy, float lr, float momentum,
                           float weight_decay, int nesterov, int first_step) {
  for (size_t i = 0; i < n; i++) {
    loom_sgd_element(&param[i], grad_at(grad, grad_dtype, i), momentum_buf ? &momentum_buf[i] : NULL,
                     lr, momentum, weight_decay, nesterov, first_step);
    if (bf16_copy) bf16_copy[i] = loom_bf16_round(param[i]);
  }
}

void loom_adamw_update_mixed(size_t n, float *param, const void *grad, loom_dtype grad_dtype,
                             float *exp_avg, float *exp_avg_sq, uint16_t *bf16_copy, int64_t step,
                             float lr, float beta1, float beta2, float eps, float weight_decay) {
  loom_adamw_step_scalars s = loom_adamw_scalars(step, lr, beta1, beta2, weight_decay);
  for (size_t i = 0; i < n; i++) {
    loom_adamw_element(&param[i], grad_at(grad, grad_dtype, i), &exp_avg[i], &exp_avg_sq[i], beta1,
                       beta2, eps, s);
    if (bf16_copy) bf16_copy[i] = loom_bf16_round(param[i]);
  }
}

void loom_sgd_update(size_t n, float *param, const float *grad, float *momentum_buf, float lr,
                     float momentum, float weight_decay, int nesterov, int first_step) {
  loom_sgd_update_mixed(n, param, grad, LOOM_FLOAT32, momentum_buf, NULL, lr, momentum,
                        weight_decay, nesterov, first_step);
}

void loom_adamw_update(size_t n, float *param, const float *grad, float *exp_avg,
                       float *exp_avg_sq, int64_t step, float lr, float beta1, float beta2,
                       float eps, float weight_decay) {
  loom_adamw_update_mixed(n, param, grad, LOOM_FLOAT32, exp_avg, exp_avg_sq, NULL, step, lr,
                          beta1, beta2, eps, weight_decay);
}
