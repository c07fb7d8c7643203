/* The per-element update rules of SGD and AdamW, shared by the CPU kernels (update.c) and the
 * CUDA kernels (kernels.cu) so both apply the same arithmetic in the same order. Scalars that
 * do not depend on the element (bias corrections) are prepared once per step by
 * loom_adamw_scalars. Private to libloom. */
#ifndef LOOM_OPTIM_UPDATE_RULES_H
#define LOOM_OPTIM_UPDATE_RULES_H

#include <math.h>
#include <stdint.h>

#include "runtime/bf16.h" /* LOOM_HOST_DEVICE, bf16 rounding */

/* SGD on element i (see loom_sgd_update for the rule). */
LOOM_HOST_DEVICE static inline void loom_sgd_element(float *param, float grad, float *momentum_buf,
                                                     float lr, float momentum, float weight_decay,
                                                     int nesterov, int first_step) {
  float g = grad;
  if (weight_decay != 0.0f) g += weight_decay * *param;
  if (momentum != 0.0f) {
    float m = first_step ? g : momentum * *momentum_buf + g;
    *momentum_buf = m;
    g = nesterov ? g + momentum * m : m;
  }
  *param -= lr * g;
}

typedef struct {
  float step_size;        /* lr / (1 - beta1^t) */
  float correction2_sqrt; /* sqrt(1 - beta2^t) */
  float decay;            /* 1 - lr * weight_decay */
} loom_adamw_step_scalars;

/* Bias corrections in double: beta^t stays exact for small t and underflows gracefully. */
static inline loom_adamw_step_scalars loom_adamw_scalars(int64_t step, float lr, float beta1,
                                                         float beta2, float weight_decay) {
  loom_adamw_step_scalars s;
  double correction1 = 1.0 - pow((double)beta1, (double)step);
  double correction2 = 1.0 - pow((double)beta2, (double)step);
  s.step_size = (float)((double)lr / correction1);
  s.correction2_sqrt = (float)sqrt(correction2);
  s.decay = 1.0f - lr * weight_decay;
  return s;
}

/* AdamW on element i with the step's scalars. */
LOOM_HOST_DEVICE static inline void loom_adamw_element(float *param, float grad, float *exp_avg,
                                                       float *exp_avg_sq, float beta1,
                                                       float beta2, float eps,
                                                       loom_adamw_step_scalars s) {
  float m = beta1 * *exp_avg + (1.0f - beta1) * grad;
  float v = beta2 * *exp_avg_sq + (1.0f - beta2) * grad * grad;
  *exp_avg = m;
  *exp_avg_sq = v;
  float denom = sqrtf(v) / s.correction2_sqrt + eps;
  *param = *param * s.decay - s.step_size * (m / denom);
}

#endif
