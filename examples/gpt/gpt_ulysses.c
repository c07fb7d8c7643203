/* Ulysses attention (see gpt_ulysses.h): reshard, the inner attention on the rank's heads,
 * reshard back. The saved buffer holds the head-split Q, K, V (B, T sp, 3 d / sp) and the inner
 * attention's own (for the local one, its probabilities for H / sp heads); scratch for the
 * head-split output and gradients lives here, grown on first use. */
#include "gpt_ulysses.h"

#include <stdlib.h>

#include "parallel/sequence/reshard.h"

struct gpt_ulysses {
  loom_group *sp;
  gpt_attention inner; /* on whole sequences (of the group's tokens) for H / sp heads */
  int ranks;
  loom_status status;  /* first failure since the last gpt_ulysses_status */
  float *scratch;      /* (B, T sp, 3 d / sp): head-split output or gradients */
  size_t scratch_floats;
  double forward_elements, backward_elements; /* this rank's shards through the all-to-alls */
  int64_t forwards;                           /* forward passes */
};

loom_status gpt_ulysses_check(int sp, int heads, int context) {
  if (sp < 1 || heads % sp || context % sp)
    return loom_error_set(LOOM_ERR_ARG, "Ulysses sequence parallelism: sp=%d must divide the heads "
                          "(%d) and the context (%d)", sp, heads, context);
  return LOOM_OK;
}

loom_status gpt_ulysses_create(loom_group *sp, const gpt_attention *inner, gpt_ulysses **out) {
  *out = NULL;
  if (!sp) return loom_error_set(LOOM_ERR_ARG, "gpt_ulysses_create: the SP group is needed");
  gpt_ulysses *u = calloc(1, sizeof *u);
  if (!u) return loom_error_set(LOOM_ERR_NOMEM, "Ulysses attention");
  u->sp = sp, u->ranks = loom_group_size(sp), u->inner = inner ? *inner : gpt_attention_local;
  *out = u;
  return LOOM_OK;
}

void gpt_ulysses_destroy(gpt_ulysses *u) {
  if (!u) return;
  free(u->scratch), free(u);
}

loom_status gpt_ulysses_status(gpt_ulysses *u) {
  loom_status s = u->status;
  u->status = LOOM_OK;
  return s;
}

static void keep(gpt_ulysses *u, loom_status s) {
  if (s != LOOM_OK && u->status == LOOM_OK) u->status = s;
}

static float *scratch(gpt_ulysses *u, size_t floats) {
  if (floats > u->scratch_floats) {
    float *grown = realloc(u->scratch, sizeof(float) * floats);
    if (!grown) {
      keep(u, loom_error_set(LOOM_ERR_NOMEM, "Ulysses scratch of %zu floats", floats));
      return NULL;
    }
    u->scratch = grown, u->scratch_floats = floats;
  }
  return u->scratch;
}

// q, k, v (B, T, 3, H, hd) between split by tokens (dim 1) and split by heads (dim 3)
static loom_status move_qkv(gpt_ulysses *u, int B, int T, int H, int hd, const float *in, float *out,
                            int to_heads) {
  loom_reshard_spec spec = {.ndims = 5, .shape = {B, T, 3, H, hd}, .from = to_heads ? 1 : 3, .to = to_heads ? 3 : 1};
  size_t tokens = (size_t)B * T * 3 * H * hd / (size_t)u->ranks;
  *(to_heads ? &u->forward_elements : &u->backward_elements) += (double)tokens;
  return loom_reshard(u->sp, &spec, loom_buf_host((void *)in, tokens, LOOM_FLOAT32),
                      loom_buf_host(out, tokens, LOOM_FLOAT32));
}

// an output (B, T, H, hd) between split by tokens (dim 1) and by heads (dim 2)
static loom_status move_out(gpt_ulysses *u, int B, int T, int H, int hd, const float *in, float *out,
                            int to_heads) {
  loom_reshard_spec spec = {.ndims = 4, .shape = {B, T, H, hd}, .from = to_heads ? 1 : 2, .to = to_heads ? 2 : 1};
  size_t count = (size_t)B * T * H * hd / (size_t)u->ranks;
  *(to_heads ? &u->backward_elements : &u->forward_elements) += (double)count;
  return loom_reshard(u->sp, &spec, loom_buf_host((void *)in, count, LOOM_FLOAT32),
                      loom_buf_host(out, count, LOOM_FLOAT32));
}

static size_t ulysses_saved(void *user, int B, int T_local, int d, int H) {
  gpt_ulysses *u = user;
  int p = u->ranks, T = T_local * p;
  return (size_t)B * T * 3 * d / p + u->inner.saved_floats(u->inner.user, B, T, d / p, H / p);
}

static void ulysses_forward(void *user, const float *qkv, int B, int T_local, int d, int H,
                            float *out, float *saved) {
  gpt_ulysses *u = user;
  int p = u->ranks, T = T_local * p, hd = d / H;
  float *qkv_heads = saved, *local = saved + (size_t)B * T * 3 * d / p;
  float *out_heads = scratch(u, (size_t)B * T * 3 * d / p);
  if (!out_heads || u->status != LOOM_OK) return;
  u->forwards++;
  keep(u, move_qkv(u, B, T, H, hd, qkv, qkv_heads, 1));
  if (u->status != LOOM_OK) return;
  u->inner.forward(u->inner.user, qkv_heads, B, T, d / p, H / p, out_heads, local);
  keep(u, move_out(u, B, T, H, hd, out_heads, out, 0));
}

static void ulysses_backward(void *user, const float *dout, const float *qkv, const float *saved,
                             int B, int T_local, int d, int H, float *dqkv) {
  gpt_ulysses *u = user;
  (void)qkv; /* its head-split copy is in `saved` */
  int p = u->ranks, T = T_local * p, hd = d / H;
  const float *qkv_heads = saved, *local = saved + (size_t)B * T * 3 * d / p;
  size_t out_floats = (size_t)B * T * d / p;
  float *work = scratch(u, out_floats + (size_t)B * T * 3 * d / p);
  if (!work || u->status != LOOM_OK) return;
  float *dout_heads = work, *dqkv_heads = work + out_floats;
  keep(u, move_out(u, B, T, H, hd, dout, dout_heads, 1));
  if (u->status != LOOM_OK) return;
  u->inner.backward(u->inner.user, dout_heads, qkv_heads, local, B, T, d / p, H / p, dqkv_heads);
  keep(u, move_qkv(u, B, T, H, hd, dqkv_heads, dqkv, 0));
}

void gpt_ulysses_elements(const gpt_ulysses *u, double *forward, double *backward, int64_t *passes) {
  *forward = u->forward_elements, *backward = u->backward_elements, *passes = u->forwards;
}

gpt_attention gpt_ulysses_attention(gpt_ulysses *u) {
  return (gpt_attention){ulysses_saved, ulysses_forward, ulysses_backward, u};
}
