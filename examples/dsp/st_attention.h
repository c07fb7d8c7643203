/* Multi-head self-attention (no mask) with a residual, over groups of tokens laid out with a
 * stride, for the spatial-temporal block of the DSP example: the same code attends over the
 * space positions of a frame (tokens C apart) and over the frames of a space position (tokens
 * S C apart). CPU float32, plain loops; each group's arithmetic is the same whichever rank
 * computes it, so a sharded run reproduces the single-rank one bit for bit.
 *
 * Parameters (one flat array): wqkv (C, 3C), wo (C, C); x_out = x + softmax(Q K^T / sqrt(hd)) V
 * wo per head, with [Q K V] = x wqkv. */
#ifndef LOOM_EXAMPLES_DSP_ST_ATTENTION_H
#define LOOM_EXAMPLES_DSP_ST_ATTENTION_H

#include <stddef.h>

/* G groups of L tokens of C contiguous channels: group g's token j starts at float
 * (g / inner) outer_stride + (g % inner) group_stride + j token_stride. Frames of (B, T, S, C)
 * over space: inner = G, group_stride = S C, token_stride = C; space positions over time:
 * inner = S, outer_stride = T S C, group_stride = C, token_stride = S C. */
typedef struct {
  int groups, tokens, inner;
  size_t outer_stride, group_stride, token_stride;
} st_groups;

/* Floats of the parameters, and of what a forward keeps for its backward, for C channels, H
 * heads and G groups of L tokens. */
size_t st_attention_params(int C);
size_t st_attention_saved(int C, int H, const st_groups *g);

/* x_out = x + attention(x) for every group; `saved` keeps the inputs, Q K V, probabilities
 * and head outputs. x and x_out have the layout `g` describes and must not overlap. */
void st_attention_forward(const float *params, int C, int H, const st_groups *g, const float *x,
                          float *x_out, float *saved);
/* dx (overwritten) from dx_out, and the parameter gradients added into dparams. */
void st_attention_backward(const float *params, int C, int H, const st_groups *g,
                           const float *saved, const float *dx_out, float *dx, float *dparams);

#endif
