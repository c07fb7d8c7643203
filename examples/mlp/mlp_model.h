/* The MLP behind one interface whether it trains on the CPU (float32 weights, float64
 * gradients, examples/mlp/mlp.h) or on the context's GPU (float32, cuBLAS, mlp_gpu.h): the
 * training program is model code only, with no #ifdef. The parameters enter the runtime's
 * parameter table as "layer<l>.weight" (widths[l+1], widths[l]) and "layer<l>.bias"
 * (widths[l+1]), replicated, reduced over GRAD. */
#ifndef LOOM_EXAMPLES_MLP_MODEL_H
#define LOOM_EXAMPLES_MLP_MODEL_H

#include <stdio.h>

#include "mlp.h"

typedef struct mlp_model mlp_model;

/* Initialised from `seed` (the same on every rank), with activation buffers of `chunk` rows;
 * on the GPU when the context computes there (LOOM_ERR_UNSUPPORTED when this build has no
 * GPU model). */
loom_status mlp_model_create(loom_ctx *ctx, const int *widths, int layer_count, int chunk,
                             uint64_t seed, mlp_model **out);
void mlp_model_destroy(mlp_model *model);
size_t mlp_model_parameter_count(const mlp_model *model);
int mlp_model_chunk(const mlp_model *model);
/* Adds every weight and bias to `params` (optimizer group 0). */
loom_status mlp_model_add_params(mlp_model *model, loom_params *params);
loom_status mlp_model_zero_grad(mlp_model *model);
/* Forward, loss (summed over the rows, gradients scaled by `scale`) and backward of one chunk;
 * gradients accumulate. With `ddp`, each layer's gradients are marked ready (table indices)
 * as backward finishes them: pass it for the step's last chunk. */
loom_status mlp_model_train_chunk(mlp_model *model, const float *inputs, const int *labels,
                                  int rows, double scale, loom_ddp *ddp, double *loss_sum);
/* Correct argmax predictions among `rows` samples. */
loom_status mlp_model_count_correct(mlp_model *model, const float *inputs, const int *labels,
                                    int rows, int *correct);
/* The float32 parameters in layer order (weight, bias) to `file`, raw. */
loom_status mlp_model_dump(mlp_model *model, FILE *file);

#endif
