/* GPT-2 in float32 on the CPU, OpenBLAS GEMMs (threads from the BLAS), split into the units a
 * pipeline stage owns: the embedding (first stage), blocks, the head and loss (last stage).
 * Every unit has forward, backward-input and backward-weight entry points, so a zero-bubble
 * schedule can run the input gradient of a micro-batch now and its weight gradient later;
 * backward-input keeps what backward-weight needs in the unit's own buffers. Parameters and
 * gradients are flat arrays in gpt_layout order (gradients accumulate: +=).
 *
 * Activations are for one micro-batch of B sequences of T tokens, N = B*T rows:
 *   x (N, d) residual stream, qkv (N, 3d), attention probabilities (B, H, T, T), ...
 * A block keeps a pointer to its input x until its backward-weight: the caller keeps it. */
#ifndef LOOM_EXAMPLES_GPT_CPU_H
#define LOOM_EXAMPLES_GPT_CPU_H

#include "gpt_layout.h"

/* Causal self-attention of one block, the part sequence parallelism replaces (an all-to-all
 * around it, or a ring). forward: qkv (B, T, 3d) -> out (B, T, d), keeping what backward needs
 * in `saved` (saved_floats(user, B, T, d, H) floats); backward: dout -> dqkv (overwritten).
 * T is the tokens this rank holds of each sequence (all of them unless sequence parallelism
 * splits them: then the attention gathers what it needs, gpt_ulysses.h). */
typedef struct {
  size_t (*saved_floats)(void *user, int B, int T, int d, int H);
  void (*forward)(void *user, const float *qkv, int B, int T, int d, int H, float *out,
                  float *saved);
  void (*backward)(void *user, const float *dout, const float *qkv, const float *saved, int B,
                   int T, int d, int H, float *dqkv);
  void *user;
} gpt_attention;

/* Local causal attention: per (sequence, head) GEMMs for Q K^T and P V, softmax rows kept. */
extern const gpt_attention gpt_attention_local;

typedef struct gpt_cpu gpt_cpu;

/* Buffers for micro-batches of B sequences of T <= context tokens; `attention` may be NULL
 * (gpt_attention_local). */
loom_status gpt_cpu_create(const gpt_layout *layout, int B, int T, const gpt_attention *attention,
                           gpt_cpu **out);
/* Buffers for blocks [first_block, first_block + blocks) only, and the head's if `head`: what
 * one pipeline stage holds for one micro-batch in flight. The embedding needs none. Units
 * outside the part must not be called; gpt_cpu_train_step needs the whole model. */
loom_status gpt_cpu_create_part(const gpt_layout *layout, int B, int T, const gpt_attention *attention,
                                int first_block, int blocks, int head, gpt_cpu **out);
void gpt_cpu_destroy(gpt_cpu *model);
/* The positions in the context of the T tokens of each sequence (T of them; 0 .. T-1 unless
 * sequence parallelism gives this rank other parts): the position embedding rows they use. */
loom_status gpt_cpu_set_positions(gpt_cpu *model, const int *positions);
/* Bytes of activations one micro-batch keeps, per block and for the head (for memory plans). */
size_t gpt_cpu_block_activation_bytes(const gpt_cpu *model);
size_t gpt_cpu_head_activation_bytes(const gpt_cpu *model);

/* x (N, d) = wte[tokens] + wpe[position]. */
void gpt_embed_forward(gpt_cpu *m, const float *params, const int *tokens, float *x);
/* Embedding gradients from dx (N, d): wte rows of the tokens, wpe rows of the positions. */
void gpt_embed_backward_weight(gpt_cpu *m, const int *tokens, const float *dx, float *grads);

/* x_out (N, d) = block(x_in); x_in must stay until the block's backward-weight. */
void gpt_block_forward(gpt_cpu *m, int layer, const float *params, const float *x_in, float *x_out);
/* dx_in (N, d, overwritten) from dx_out (N, d); keeps the gradients backward-weight uses. */
void gpt_block_backward_input(gpt_cpu *m, int layer, const float *params, const float *dx_out,
                              float *dx_in);
void gpt_block_backward_weight(gpt_cpu *m, int layer, float *grads);

/* Final LayerNorm, logits against the tied wte, softmax cross-entropy with `targets` (N):
 * returns the loss summed over the N rows (double) and keeps d(loss sum * scale)/d logits. */
double gpt_head_forward(gpt_cpu *m, const float *params, const float *x, const int *targets,
                        double scale);
/* dx (N, d, overwritten) from the kept logit gradient. */
void gpt_head_backward_input(gpt_cpu *m, const float *params, float *dx);
void gpt_head_backward_weight(gpt_cpu *m, float *grads);
/* Logits (N, V) of the last gpt_head_forward with targets NULL (no loss, no gradient). */
const float *gpt_head_logits(const gpt_cpu *m);

/* The whole model on one micro-batch: forward, loss, backward of every unit; gradients of
 * (loss sum * scale) accumulate into `grads`, the embedding's (wte rows and wpe) into
 * `embed_grads` (may be `grads`: the tied wte then sums both parts in float32). Returns the
 * loss sum. */
double gpt_cpu_train_step(gpt_cpu *m, const float *params, const int *tokens, const int *targets,
                          double scale, float *grads, float *embed_grads);

#endif
