/* The GPT model as the training program sees it: parameters, gradients and the compute path
 * behind one interface: float32 on the CPU (gpt_cpu.h), or bfloat16 with float32 masters on
 * the rank's GPU (gpt_cuda.h) when the context computes there.
 *
 * Parameters are float32 in one flat array (gpt_layout order), registered in the runtime's
 * parameter table tensor by tensor with their Hugging Face names, reduced over GRAD. The
 * gradient of each micro-batch is computed in float32 and added into float64 gradients, which
 * DDP sums: with micro-batches of the same shape on every layout, np 1 and np N runs follow
 * the same trajectory bit for bit (the float64 sums of float32 terms are exact in practice,
 * as in the MNIST example). On a GPU, gradients are float32 on the device, reduced there,
 * and masters, gradients and the bfloat16 copy are the parameter table's device buffers;
 * sampling runs on the CPU from a copy of the masters. */
#ifndef LOOM_EXAMPLES_GPT_MODEL_H
#define LOOM_EXAMPLES_GPT_MODEL_H

#include "gpt_cpu.h"

typedef struct gpt_model gpt_model;

/* Initialised from `seed` (the same on every rank), for micro-batches of `chunk` sequences of
 * T tokens; `attention` chooses the GPU's kernels (the CPU has one way). LOOM_ERR_UNSUPPORTED
 * for a GPU context in a build without the CUDA path. */
loom_status gpt_model_create(loom_ctx *ctx, const gpt_layout *layout, int chunk, int T,
                             uint64_t seed, gpt_attention_kind attention, gpt_model **out);
void gpt_model_destroy(gpt_model *model);
const gpt_layout *gpt_model_layout(const gpt_model *model);

/* Every tensor into `params`: matrices into optimizer group `decay_group`, biases, LayerNorms
 * and embeddings into `no_decay_group`. */
loom_status gpt_model_add_params(gpt_model *model, loom_params *params, int decay_group,
                                 int no_decay_group);
loom_status gpt_model_zero_grad(gpt_model *model);
/* Sequence parallelism (CPU): this rank's micro-batches hold the tokens at `positions` (T as
 * created) of each sequence, and attention goes through `attention` (gpt_ulysses_attention,
 * gpt_sequence_attention), which gets what it needs from the other ranks. */
loom_status gpt_model_split_sequence(gpt_model *model, const int *positions,
                                     const gpt_attention *attention);
/* Bytes of activations the model keeps for one micro-batch (blocks and head; CPU models, 0 on
 * a GPU). */
size_t gpt_model_activation_bytes(const gpt_model *model);
/* The float32 parameters on the host (CPU models; NULL on a GPU). */
const float *gpt_model_host_params(const gpt_model *model);
/* Every parameter from `values` (layout.total float32, host): for evaluating and sampling a
 * model trained elsewhere (the stages of a pipeline, the sequence-split model). */
loom_status gpt_model_set_params(gpt_model *model, const float *values);
/* The parameters changed other than through the optimizer (a checkpoint was loaded): on a
 * GPU, the bfloat16 copy is made again from the masters. */
loom_status gpt_model_weights_changed(gpt_model *model);
/* On a GPU: device memory the run added since before the model (model, optimizer state,
 * gradient buckets, library workspaces), GiB; 0 on the CPU. */
double gpt_model_device_gib(const gpt_model *model);
/* One micro-batch (chunk, T): gradients of (loss sum * scale) accumulate; *loss_sum += the
 * summed cross-entropy. `last`: the step's last micro-batch; the gradients are then complete
 * and, with `ddp`, marked ready. */
loom_status gpt_model_train_chunk(gpt_model *model, const int *tokens, const int *targets,
                                  double scale, int last, loom_ddp *ddp, double *loss_sum);
/* Summed cross-entropy of a micro-batch, no gradient. */
loom_status gpt_model_eval_chunk(gpt_model *model, const int *tokens, const int *targets,
                                 double *loss_sum);
/* Continues `prompt` (prompt_len >= 1 tokens) by `count` tokens into `out`, sampling with
 * `temperature` (> 0) among the `top_k` most likely (0: all), from `seed`. */
loom_status gpt_model_sample(gpt_model *model, const int *prompt, int prompt_len, int count,
                             double temperature, int top_k, uint64_t seed, int *out);

#endif
