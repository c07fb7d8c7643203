/* The GPT-2 model's shape and parameter layout, shared by the double-precision reference
 * (gpt_ref.c), the float32 CPU model (gpt_cpu.c), the data-parallel program and the tools.
 *
 * All parameters live in one flat float array in the order below; each tensor is named as in
 * Hugging Face's GPT-2 (without the "transformer." prefix) so that an export is a renaming of
 * nothing. Linear weights are stored (out, in) like torch.nn.Linear: y = x W^T + b (GPT-2's
 * Conv1D stores (in, out); an export transposes). Tensor shapes, with d = width, V = vocab,
 * C = context, L = layers:
 *   wte (V, d)  wpe (C, d)
 *   h.<l>.ln_1.weight (d)  h.<l>.ln_1.bias (d)
 *   h.<l>.attn.c_attn.weight (3d, d)  h.<l>.attn.c_attn.bias (3d)    q, k, v in that order
 *   h.<l>.attn.c_proj.weight (d, d)   h.<l>.attn.c_proj.bias (d)
 *   h.<l>.ln_2.weight (d)  h.<l>.ln_2.bias (d)
 *   h.<l>.mlp.c_fc.weight (4d, d)     h.<l>.mlp.c_fc.bias (4d)
 *   h.<l>.mlp.c_proj.weight (d, 4d)   h.<l>.mlp.c_proj.bias (d)
 *   ln_f.weight (d)  ln_f.bias (d)
 * The output projection is tied to wte (logits = x wte^T). */
#ifndef LOOM_EXAMPLES_GPT_LAYOUT_H
#define LOOM_EXAMPLES_GPT_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include <loom.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int layers, width, heads, vocab, context;
} gpt_shape;

/* Per-block tensors, in layout order. */
enum {
  GPT_LN1_W, GPT_LN1_B, GPT_QKV_W, GPT_QKV_B, GPT_PROJ_W, GPT_PROJ_B,
  GPT_LN2_W, GPT_LN2_B, GPT_FC_W, GPT_FC_B, GPT_FCPROJ_W, GPT_FCPROJ_B, GPT_BLOCK_TENSORS
};

/* How the GPU computes attention: flash-style fused kernels (scores never leave shared
 * memory), or cuBLAS batched products around a softmax kernel (scores in device memory). */
typedef enum { GPT_ATTENTION_FLASH = 0, GPT_ATTENTION_BATCHED = 1 } gpt_attention_kind;

enum { GPT_MAX_TENSORS = 2 + 12 * 128 + 2, GPT_NAME_MAX = 48 };

typedef struct {
  char name[GPT_NAME_MAX];
  size_t offset, count; /* in elements of the flat array */
  int ndims;
  int64_t shape[2];
  int decay; /* 1: weight decay applies (matrices); 0: biases, LayerNorms, embeddings */
} gpt_tensor;

typedef struct {
  gpt_shape shape;
  int count;                 /* tensors: 2 + 12 L + 2 */
  size_t total;              /* parameters */
  gpt_tensor tensor[GPT_MAX_TENSORS];
} gpt_layout;

/* Checks the shape (every field >= 1, width divisible by heads, layers <= 128) and lays out
 * its tensors; LOOM_ERR_ARG naming the bad field. */
loom_status gpt_layout_init(const gpt_shape *shape, gpt_layout *out);
/* Index of the tensor of block `layer` (or -1 for the embeddings and the final LayerNorm). */
int gpt_tensor_index(const gpt_layout *layout, int layer, int which);
enum { GPT_WTE = -1, GPT_WPE = -2, GPT_LNF_W = -3, GPT_LNF_B = -4 };
/* GPT-2's initialisation from `seed`: normal(0, 0.02) matrices and embeddings, c_proj
 * weights scaled by 1/sqrt(2 L), zero biases, LayerNorm weight 1 and bias 0. */
void gpt_init_params(const gpt_layout *layout, uint64_t seed, float *params);

#ifdef __cplusplus
}
#endif
#endif
