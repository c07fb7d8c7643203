/* GPT-2 on one GPU: bfloat16 activations and weights, float32 master weights and gradients
 * (loom's mixed optimizer updates the masters and refreshes the bfloat16 copy), cuBLASLt
 * products with bias and residual fused, kernels for embedding, LayerNorm, GELU, causal
 * softmax and cross-entropy (gpt_kernels.cu). The same units as the CPU model (gpt_cpu.h):
 * embedding, blocks, head, each with forward, backward-input and backward-weight. Attention
 * is flash-style by default (gpt_attention.cu: fused kernels, head sizes 32, 64, 128), or
 * cuBLAS batched products that keep the (B, H, T, T) bfloat16 probabilities.
 *
 * Everything runs on `stream` (the rank's compute stream, loom_ctx_stream); tokens and
 * targets come from host memory. Parameters and gradients are device arrays in gpt_layout
 * order; gradients accumulate (+=). Every kernel is deterministic, so a run repeats bit for
 * bit. Needs width divisible by 8 and the head size by 8 (16-byte rows for cuBLASLt). */
#ifndef LOOM_EXAMPLES_GPT_CUDA_H
#define LOOM_EXAMPLES_GPT_CUDA_H

#include "gpt_layout.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpt_cuda gpt_cuda;

/* Device memory for the parameters and for micro-batches of B sequences of T <= context
 * tokens. `split_backward` 1 keeps each block's gradients from backward-input until its
 * backward-weight (a zero-bubble pipeline's order); 0 shares one set (backward-weight of a
 * block must then follow its backward-input before the next block's). LOOM_ERR_ARG for flash
 * attention with a head size it is not built for. */
loom_status gpt_cuda_create(const gpt_layout *layout, int B, int T, int split_backward,
                            gpt_attention_kind attention, void *stream, gpt_cuda **out);
void gpt_cuda_destroy(gpt_cuda *model);
/* Bytes of activations one micro-batch keeps, per block and for the head. */
size_t gpt_cuda_block_activation_bytes(const gpt_cuda *model);
size_t gpt_cuda_head_activation_bytes(const gpt_cuda *model);
/* All device memory the model holds (parameters, gradients, activations, scratch). */
size_t gpt_cuda_device_bytes(const gpt_cuda *model);

/* Device memory in use on the current GPU (cudaMemGetInfo: total - free), all allocations of
 * the process and of others sharing the GPU. */
size_t gpt_cuda_memory_in_use(void);

/* Device arrays (layout.total elements): float32 masters and float32 gradients. */
float *gpt_cuda_master(gpt_cuda *model);
float *gpt_cuda_grads(gpt_cuda *model);
/* The bfloat16 copy (what the kernels read) of the element at layout offset `offset`. The copy
 * is not one flat array: the token embedding is padded with zero rows to a multiple of 128. */
void *gpt_cuda_weight(gpt_cuda *model, size_t offset);
/* Masters from host float32 values, and the bfloat16 copy from them. */
loom_status gpt_cuda_set_params(gpt_cuda *model, const float *host);
/* The bfloat16 copy from the masters (after they changed other than through the optimizer). */
loom_status gpt_cuda_refresh_weights(gpt_cuda *model);
/* Masters to host float32 (synchronises the stream). */
loom_status gpt_cuda_get_params(gpt_cuda *model, float *host);
/* Gradients to host float32 (synchronises the stream). */
loom_status gpt_cuda_get_grads(gpt_cuda *model, float *host);
loom_status gpt_cuda_zero_grads(gpt_cuda *model);

/* The units; x buffers are device bfloat16 (N, d), the caller's (gpt_cuda_residual gives
 * the model's own). tokens and targets: host (N). */
loom_status gpt_cuda_embed_forward(gpt_cuda *m, const int *tokens, void *x);
loom_status gpt_cuda_embed_backward_weight(gpt_cuda *m, const void *dx);
loom_status gpt_cuda_block_forward(gpt_cuda *m, int layer, const void *x_in, void *x_out);
loom_status gpt_cuda_block_backward_input(gpt_cuda *m, int layer, const void *dx_out, void *dx_in);
loom_status gpt_cuda_block_backward_weight(gpt_cuda *m, int layer);
/* Final LayerNorm, logits, cross-entropy: *loss_sum = the loss summed over the N rows
 * (synchronises the stream); with `grad`, keeps d(loss sum * scale)/d logits. */
loom_status gpt_cuda_head_forward(gpt_cuda *m, const void *x, const int *targets, double scale,
                                  int grad, double *loss_sum);
loom_status gpt_cuda_head_backward_input(gpt_cuda *m, void *dx);
loom_status gpt_cuda_head_backward_weight(gpt_cuda *m);
/* Residual-stream buffer i of the model: 0 .. L are the block inputs / outputs, L + 1 and
 * L + 2 the two gradient buffers. */
void *gpt_cuda_residual(gpt_cuda *m, int i);

/* The whole model on one micro-batch; gradients of (loss sum * scale) accumulate.
 * `split` 1 (needs split_backward): every backward-input first, then every backward-weight. */
loom_status gpt_cuda_train_step(gpt_cuda *m, const int *tokens, const int *targets, double scale,
                                int split, double *loss_sum);
/* Summed cross-entropy of a micro-batch, no gradient. */
loom_status gpt_cuda_eval(gpt_cuda *m, const int *tokens, const int *targets, double *loss_sum);

#ifdef __cplusplus
}
#endif
#endif
