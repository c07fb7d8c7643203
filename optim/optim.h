/* Optimizers over float32 parameters: SGD (momentum, Nesterov, weight decay) and AdamW
 * (decoupled weight decay, bias correction), as element-wise update kernels and as an
 * optimizer object that owns its state tensors and exposes them by name, so checkpoints can
 * find them ("<param>.momentum", "<param>.exp_avg", "<param>.exp_avg_sq", "optim.step").
 * The update rules follow PyTorch's torch.optim.SGD and torch.optim.AdamW (Loshchilov &
 * Hutter, "Decoupled Weight Decay Regularization", ICLR'19). */
#ifndef LOOM_OPTIM_OPTIM_H
#define LOOM_OPTIM_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/dtype.h"
#include "runtime/params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* SGD on n elements: g' = g + wd * p; m = first ? g' : mu * m + g';
 * d = nesterov ? g' + mu * m : m (d = g' when mu = 0); p -= lr * d.
 * `momentum_buf` may be NULL when momentum == 0. */
void loom_sgd_update(size_t n, float *param, const float *grad, float *momentum_buf, float lr,
                     float momentum, float weight_decay, int nesterov, int first_step);

/* AdamW on n elements at step t >= 1: p *= 1 - lr * wd; m = b1 m + (1 - b1) g;
 * v = b2 v + (1 - b2) g^2; p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). */
void loom_adamw_update(size_t n, float *param, const float *grad, float *exp_avg,
                       float *exp_avg_sq, int64_t step, float lr, float beta1, float beta2,
                       float eps, float weight_decay);

/* Mixed precision (Micikevicius et al., "Mixed Precision Training", ICLR'18): the same rules on
 * float32 master parameters with a float32 or bfloat16 gradient (`grad_dtype`; on the CPU also
 * float64, rounded once to float32), and, when
 * `bf16_copy` is not NULL, the updated parameter rounded to bfloat16 (nearest even) written
 * there: the weights a bf16 forward pass reads. The kernels above are these with float32
 * gradients and no copy. */
void loom_sgd_update_mixed(size_t n, float *param, const void *grad, loom_dtype grad_dtype,
                           float *momentum_buf, uint16_t *bf16_copy, float lr, float momentum,
                           float weight_decay, int nesterov, int first_step);
void loom_adamw_update_mixed(size_t n, float *param, const void *grad, loom_dtype grad_dtype,
                             float *exp_avg, float *exp_avg_sq, uint16_t *bf16_copy, int64_t step,
                             float lr, float beta1, float beta2, float eps, float weight_decay);

typedef enum { LOOM_OPTIM_SGD, LOOM_OPTIM_ADAMW } loom_optim_kind;

typedef struct {
  loom_optim_kind kind;
  double momentum;     /* SGD */
  int nesterov;        /* SGD; needs momentum > 0 */
  double beta1, beta2; /* AdamW */
  double eps;          /* AdamW */
  double weight_decay; /* SGD: L2 added to the gradient; AdamW: decoupled */
  void *stream;        /* GPU parameters: cudaStream_t the update kernels run on (the
                        * context's compute stream, loom_ctx_stream); NULL for CPU ones */
} loom_optim_params;

#define LOOM_OPTIM_PARAMS_INIT                                                             \
  {.kind = LOOM_OPTIM_ADAMW, .momentum = 0.0, .nesterov = 0, .beta1 = 0.9, .beta2 = 0.999, \
   .eps = 1e-8, .weight_decay = 0.0, .stream = NULL}

typedef struct loom_optim loom_optim;

/* Checks the parameters (ranges named in the message) and creates an empty optimizer. */
loom_status loom_optim_create(const loom_optim_params *params, loom_optim **out);
loom_status loom_optim_destroy(loom_optim *optim);
/* Adds a float32 parameter and its float32 gradient (same count, same memory: host, or the
 * GPU in a CUDA build); the optimizer allocates its state beside them, zeroed. Names must be
 * unique. Buffers stay the caller's. */
loom_status loom_optim_add(loom_optim *optim, const char *name, loom_buf param, loom_buf grad);
/* loom_optim_add for mixed precision: `param` is the float32 master copy (what the optimizer
 * state and checkpoints hold), `grad` is float32 or bfloat16, and `model_copy` is either
 * empty ({0}: none) or a bfloat16 buffer of the same count in the same memory that every
 * step overwrites with the updated parameter rounded to bfloat16. */
loom_status loom_optim_add_mixed(loom_optim *optim, const char *name, loom_buf param,
                                 loom_buf grad, loom_buf model_copy);
/* Adds every parameter of the table (in table order) with its master value, gradient and model
 * copy, and its optimizer group's hyper-parameters: the group's weight decay (when >= 0) in
 * place of the optimizer's, and the step's learning rate times the group's lr_scale. Host
 * gradients may be float64 (read as float32, as a float32 copy would be). */
loom_status loom_optim_add_params(loom_optim *optim, const loom_params *params);
/* One update of every parameter with learning rate `lr`; increments the step count. */
loom_status loom_optim_step(loom_optim *optim, double lr);
int64_t loom_optim_step_count(const loom_optim *optim);

/* Registers every state tensor (moments, "optim.step") in the state registry so that
 * checkpoints and snapshots keep them: the moments of a split parameter from the table with
 * that parameter's spec (over the same axes, so each shard saves and reshards its own), all
 * others as replicated 1-D tensors (the layout of earlier checkpoints). */
struct loom_state;
loom_status loom_optim_register_state(const loom_optim *optim, struct loom_state *state);
/* Named state tensors (the step count is an int64 tensor of one element, "optim.step"). */
int loom_optim_state_count(const loom_optim *optim);
loom_status loom_optim_state_at(const loom_optim *optim, int index, const char **name,
                                loom_buf *buf);

#ifdef __cplusplus
}
#endif
#endif
