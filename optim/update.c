/* The element-wise SGD and AdamW update kernels (CPU, float32 with float32 state). Each
 * element's arithmetic follows PyTorch's single-tensor ("foreach=False") implementations, so
 * the same inputs give the same floats. */
#include <math.h>

#include "optim/optim.h"

void loom_sgd_update(size_t n, float *param, const float *grad, float *momentum_buf, float lr,
                     float momentum, float weight_decay, int nesterov, int first_step) {
  for (size_t i = 0; i < n; i++) {
    float g = grad[i];
    if (weight_decay != 0.0f) g += weight_decay * param[i];
    if (momentum != 0.0f) {
      float m = first_step ? g : momentum * momentum_buf[i] + g;
      momentum_buf[i] = m;
      g = nesterov ? g + momentum * m : m;
    }
    param[i] -= lr * g;
  }
}

void loom_adamw_update(size_t n, float *param, const float *grad, float *exp_avg,
                       float *exp_avg_sq, int64_t step, float lr, float beta1, float beta2,
                       float eps, float weight_decay) {
  /* Bias corrections in double: beta^t underflows gracefully and stays exact for small t. */
  double correction1 = 1.0 - pow((double)beta1, (double)step);
  double correction2 = 1.0 - pow((double)beta2, (double)step);
  float step_size = (float)((double)lr / correction1);
  float correction2_sqrt = (float)sqrt(correction2);
  float decay = 1.0f - lr * weight_decay;
  for (size_t i = 0; i < n; i++) {
    float g = grad[i];
    float m = beta1 * exp_avg[i] + (1.0f - beta1) * g;
    float v = beta2 * exp_avg_sq[i] + (1.0f - beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    float denom = sqrtf(v) / correction2_sqrt + eps;
    param[i] = param[i] * decay - step_size * (m / denom);
  }
}
