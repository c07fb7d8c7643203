/* The element-wise SGD and AdamW update kernels on the CPU (float32 with float32 state); the
 * arithmetic of one element lives in update_rules.h, shared with the CUDA kernels. The rules
 * follow PyTorch's single-tensor ("foreach=False") implementations. */
#include "optim/optim.h"
#include "optim/update_rules.h"

void loom_sgd_update(size_t n, float *param, const float *grad, float *momentum_buf, float lr,
                     float momentum, float weight_decay, int nesterov, int first_step) {
  for (size_t i = 0; i < n; i++)
    loom_sgd_element(&param[i], grad[i], momentum_buf ? &momentum_buf[i] : NULL, lr, momentum,
                     weight_decay, nesterov, first_step);
}

void loom_adamw_update(size_t n, float *param, const float *grad, float *exp_avg,
                       float *exp_avg_sq, int64_t step, float lr, float beta1, float beta2,
                       float eps, float weight_decay) {
  loom_adamw_step_scalars s = loom_adamw_scalars(step, lr, beta1, beta2, weight_decay);
  for (size_t i = 0; i < n; i++)
    loom_adamw_element(&param[i], grad[i], &exp_avg[i], &exp_avg_sq[i], beta1, beta2, eps, s);
}
