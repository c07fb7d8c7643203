/* The GPT model as the training program sees it: parameters, gradients and the compute path
 * behind one interface (CPU float32 today; the CUDA path joins behind the same calls).
 *
 * Parameters are float32 in one flat array (gpt_layout order), registered in the runtime's
 * parameter table tensor by tensor with their Hugging Face names, reduced over GRAD. The
 * gradient of each micro-batch is computed in float32 and added into float64 gradients, which
 * DDP sums: with micro-batches of the same shape on every layout, np 1 and np N runs follow
 * the same trajectory bit for bit (the float64 sums of float32 terms are exact in practice,
 * as in the MNIST example). */
#ifndef LOOM_EXAMPLES_GPT_MODEL_H
#define LOOM_EXAMPLES_GPT_MODEL_H

#include "gpt_cpu.h"

typedef struct gpt_model gpt_model;

/* Initialised from `seed` (the same on every rank), for micro-batches of `chunk` sequences of
 * T tokens; LOOM_ERR_UNSUPPORTED when the context computes on a GPU (no CUDA path yet). */
loom_status gpt_model_create(loom_ctx *ctx, const gpt_layout *layout, int chunk, int T,
                             uint64_t seed, gpt_model **out);
void gpt_model_destroy(gpt_model *model);
const gpt_layout *gpt_model_layout(const gpt_model *model);
float *gpt_model_params(gpt_model *model);

/* Every tensor into `params`: matrices into optimizer group `decay_group`, biases, LayerNorms
 * and embeddings into `no_decay_group`. */
loom_status gpt_model_add_params(gpt_model *model, loom_params *params, int decay_group,
                                 int no_decay_group);
void gpt_model_zero_grad(gpt_model *model);
/* One micro-batch (chunk, T): gradients of (loss sum * scale) accumulate; *loss_sum += the
 * summed cross-entropy. With `ddp`, every gradient is marked ready afterwards (pass it for the
 * step's last micro-batch). */
loom_status gpt_model_train_chunk(gpt_model *model, const int *tokens, const int *targets,
                                  double scale, loom_ddp *ddp, double *loss_sum);
/* Summed cross-entropy of a micro-batch, no gradient. */
loom_status gpt_model_eval_chunk(gpt_model *model, const int *tokens, const int *targets,
                                 double *loss_sum);
/* Continues `prompt` (prompt_len >= 1 tokens) by `count` tokens into `out`, sampling with
 * `temperature` (> 0) among the `top_k` most likely (0: all), from `seed`. */
loom_status gpt_model_sample(gpt_model *model, const int *prompt, int prompt_len, int count,
                             double temperature, int top_k, uint64_t seed, int *out);

#endif
