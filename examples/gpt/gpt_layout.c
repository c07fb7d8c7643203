/* GPT-2's parameter layout and initialisation (see gpt_layout.h). */
#include "gpt_layout.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void add(gpt_layout *l, const char *name, int64_t rows, int64_t cols, int decay) {
  gpt_tensor *t = &l->tensor[l->count++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->offset = l->total;
  t->ndims = cols ? 2 : 1;
  t->shape[0] = rows, t->shape[1] = cols;
  t->count = (size_t)rows * (size_t)(cols ? cols : 1);
  t->decay = decay;
  l->total += t->count;
}

loom_status gpt_layout_init(const gpt_shape *s, gpt_layout *out) {
  const struct { const char *name; int value, max; } fields[] = {
      {"layers", s->layers, 128}, {"width", s->width, 1 << 16}, {"heads", s->heads, 1 << 10},
      {"vocab", s->vocab, 1 << 20}, {"context", s->context, 1 << 16}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (fields[i].value < 1 || fields[i].value > fields[i].max)
      return loom_error_set(LOOM_ERR_ARG, "GPT %s=%d outside [1, %d]", fields[i].name,
                            fields[i].value, fields[i].max);
  if (s->width % s->heads)
    return loom_error_set(LOOM_ERR_ARG, "GPT width %d is not divisible by heads %d", s->width,
                          s->heads);
  memset(out, 0, sizeof *out);
  out->shape = *s;
  int64_t d = s->width;
  add(out, "wte", s->vocab, d, 0);
  add(out, "wpe", s->context, d, 0);
  static const char *const names[GPT_BLOCK_TENSORS] = {
      "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
      "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
      "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"};
  const int64_t rows[GPT_BLOCK_TENSORS] = {d, d, 3 * d, 3 * d, d, d, d, d, 4 * d, 4 * d, d, d};
  const int64_t cols[GPT_BLOCK_TENSORS] = {0, 0, d, 0, d, 0, 0, 0, d, 0, 4 * d, 0};
  for (int layer = 0; layer < s->layers; layer++)
    for (int w = 0; w < GPT_BLOCK_TENSORS; w++) {
      char name[GPT_NAME_MAX];
      snprintf(name, sizeof name, "h.%d.%s", layer, names[w]);
      add(out, name, rows[w], cols[w], cols[w] != 0);
    }
  add(out, "ln_f.weight", d, 0, 0);
  add(out, "ln_f.bias", d, 0, 0);
  return LOOM_OK;
}

int gpt_tensor_index(const gpt_layout *l, int layer, int which) {
  switch (which) {
  case GPT_WTE: return 0;
  case GPT_WPE: return 1;
  case GPT_LNF_W: return l->count - 2;
  case GPT_LNF_B: return l->count - 1;
  default: return 2 + layer * GPT_BLOCK_TENSORS + which;
  }
}

void gpt_init_params(const gpt_layout *l, uint64_t seed, float *params) {
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_PARAM_INIT, 0);
  double proj_scale = 1.0 / sqrt(2.0 * l->shape.layers);
  for (int i = 0; i < l->count; i++) {
    const gpt_tensor *t = &l->tensor[i];
    float *p = params + t->offset;
    int is_norm_weight = strstr(t->name, "ln_") && strstr(t->name, ".weight");
    int is_bias = strstr(t->name, ".bias") != NULL;
    double scale = strstr(t->name, "c_proj.weight") ? 0.02 * proj_scale : 0.02;
    for (size_t k = 0; k < t->count; k++)
      p[k] = is_norm_weight ? 1.0f : is_bias ? 0.0f : (float)(scale * loom_rng_normal(&rng));
  }
}
