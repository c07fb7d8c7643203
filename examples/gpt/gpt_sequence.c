/* Sequence parallelism for the GPT (see gpt_sequence.h): the modes built from two plug-ins,
 * Ulysses (gpt_ulysses.c) and the ring below, which wraps loom_ring_attention. The ring's
 * saved buffer holds its output (B, T, d) and log-sum-exp (B, H, T), what backward needs
 * besides qkv. */
#include "gpt_sequence.h"

#include <stdlib.h>
#include <string.h>

#include "gpt_ulysses.h"

struct gpt_sequence {
  gpt_sp_params params;
  int sp, rank, ulysses_ranks, ring_ranks; /* sp = ulysses_ranks x ring_ranks */
  loom_group *ulysses_group;               /* hybrid: created here */
  gpt_ulysses *ulysses;                    /* ulysses and hybrid */
  loom_ring_attention *ring;               /* ring and hybrid */
  loom_status status;                      /* the ring plug-in's first failure */
};

loom_status gpt_sp_mode_parse(const char *word, gpt_sp_mode *out) {
  if (word && strcmp(word, "ulysses") == 0) *out = GPT_SP_ULYSSES;
  else if (word && strcmp(word, "ring") == 0) *out = GPT_SP_RING;
  else if (word && strcmp(word, "hybrid") == 0) *out = GPT_SP_HYBRID;
  else return loom_error_set(LOOM_ERR_ARG, "--sp-mode %s: ulysses, ring or hybrid", word ? word : "(null)");
  return LOOM_OK;
}

loom_status gpt_sequence_check(const gpt_sp_params *p, int sp, int heads, int context) {
  if (sp < 1) return loom_error_set(LOOM_ERR_ARG, "sequence parallelism: sp=%d must be >= 1", sp);
  if (p->mode == GPT_SP_ULYSSES) return gpt_ulysses_check(sp, heads, context);
  if (p->mode == GPT_SP_RING) return loom_sp_split_check(p->split, context, sp);
  if (p->ring < 1 || sp % p->ring)
    return loom_error_set(LOOM_ERR_ARG, "hybrid sequence parallelism: the ring degree %d must "
                          "divide sp=%d", p->ring, sp);
  int u = sp / p->ring;
  LOOM_CHECK(loom_sp_split_check(p->split, context, p->ring));
  if (heads % u || (context / p->ring) % u)
    return loom_error_set(LOOM_ERR_ARG, "hybrid sequence parallelism: the Ulysses degree sp / "
                          "ring = %d must divide the heads (%d) and each ring position's %d "
                          "tokens", u, heads, context / p->ring);
  return LOOM_OK;
}

/* ---- the ring plug-in: attention over the ring for the tokens this rank (or its Ulysses
 * group) holds ---- */

static void keep(gpt_sequence *q, loom_status s) {
  if (s != LOOM_OK && q->status == LOOM_OK) q->status = s;
}

static size_t ring_saved(void *user, int B, int T, int d, int H) {
  (void)user;
  return (size_t)B * T * d + (size_t)B * H * T;
}

static void ring_forward(void *user, const float *qkv, int B, int T, int d, int H, float *out,
                         float *saved) {
  gpt_sequence *q = user;
  if (q->status != LOOM_OK) return;
  float *kept_out = saved, *lse = saved + (size_t)B * T * d;
  keep(q, loom_ring_attention_forward(q->ring, B, T, H, d / H, qkv, out, lse));
  memcpy(kept_out, out, sizeof(float) * (size_t)B * T * d);
}

static void ring_backward(void *user, const float *dout, const float *qkv, const float *saved,
                          int B, int T, int d, int H, float *dqkv) {
  gpt_sequence *q = user;
  if (q->status != LOOM_OK) return;
  keep(q, loom_ring_attention_backward(q->ring, B, T, H, d / H, qkv, saved,
                                       saved + (size_t)B * T * d, dout, dqkv));
}

static gpt_attention ring_attention(gpt_sequence *q) {
  return (gpt_attention){ring_saved, ring_forward, ring_backward, q};
}

/* ---- the modes ---- */

loom_status gpt_sequence_create(loom_ctx *ctx, loom_group *sp, const gpt_sp_params *p,
                                gpt_sequence **out) {
  *out = NULL;
  if (!sp || !p) return loom_error_set(LOOM_ERR_ARG, "gpt_sequence_create: the SP group and parameters are needed");
  int sp_size = loom_group_size(sp);
  if (p->mode == GPT_SP_HYBRID && (p->ring < 1 || sp_size % p->ring))
    return loom_error_set(LOOM_ERR_ARG, "hybrid sequence parallelism: the ring degree %d must "
                          "divide sp=%d", p->ring, sp_size);
  gpt_sequence *q = calloc(1, sizeof *q);
  if (!q) return loom_error_set(LOOM_ERR_NOMEM, "sequence parallelism");
  q->params = *p, q->sp = loom_group_size(sp), q->rank = loom_group_rank(sp);
  q->ring_ranks = p->mode == GPT_SP_ULYSSES ? 1 : p->mode == GPT_SP_RING ? q->sp : p->ring;
  q->ulysses_ranks = q->sp / q->ring_ranks;
  if (p->mode == GPT_SP_ULYSSES) q->params.split = LOOM_SP_CONTIGUOUS; /* shards concatenate in rank order */
  loom_status s = LOOM_OK;
  int *order = malloc(sizeof(int) * (size_t)q->ring_ranks);
  if (!order) s = loom_error_set(LOOM_ERR_NOMEM, "sequence parallelism");
  int u = q->ulysses_ranks, part = q->rank % u;
  if (s == LOOM_OK && p->mode != GPT_SP_ULYSSES) { /* the ring of this rank's part */
    for (int j = 0; j < q->ring_ranks; j++) order[j] = part + j * u;
    loom_ring_params rp = LOOM_RING_PARAMS_INIT;
    rp.group = sp, rp.size = q->ring_ranks, rp.order = order, rp.split = q->params.split;
    s = loom_ring_attention_create(&rp, &q->ring);
  }
  if (s == LOOM_OK && p->mode == GPT_SP_HYBRID)
    s = loom_group_create(ctx, sp, q->rank / u, part, "ulysses", &q->ulysses_group);
  if (s == LOOM_OK && p->mode != GPT_SP_RING) {
    gpt_attention inner = ring_attention(q);
    s = gpt_ulysses_create(p->mode == GPT_SP_HYBRID ? q->ulysses_group : sp,
                           p->mode == GPT_SP_HYBRID ? &inner : NULL, &q->ulysses);
  }
  free(order);
  if (s != LOOM_OK) {
    gpt_sequence_destroy(q);
    return s;
  }
  *out = q;
  return LOOM_OK;
}

void gpt_sequence_destroy(gpt_sequence *q) {
  if (!q) return;
  gpt_ulysses_destroy(q->ulysses);
  loom_ring_attention_destroy(q->ring);
  if (q->ulysses_group) loom_group_destroy(q->ulysses_group);
  free(q);
}

gpt_attention gpt_sequence_attention(gpt_sequence *q) {
  return q->ulysses ? gpt_ulysses_attention(q->ulysses) : ring_attention(q);
}

loom_status gpt_sequence_status(gpt_sequence *q) {
  loom_status s = q->ulysses ? gpt_ulysses_status(q->ulysses) : LOOM_OK;
  if (s == LOOM_OK) s = q->status;
  q->status = LOOM_OK;
  return s;
}

loom_status gpt_sequence_positions(const gpt_sequence *q, int T, int *positions) {
  int u = q->ulysses_ranks, block = T / q->ring_ranks, local = block / u;
  int *ring_block = malloc(sizeof(int) * (size_t)block); /* the ring position's tokens */
  if (!ring_block) return loom_error_set(LOOM_ERR_NOMEM, "positions of %d tokens", block);
  loom_sp_split_positions(q->params.split, T, q->ring_ranks, q->rank / u, ring_block);
  memcpy(positions, ring_block + (q->rank % u) * local, sizeof(int) * (size_t)local);
  free(ring_block);
  return LOOM_OK;
}

void gpt_sequence_traffic_get(const gpt_sequence *q, gpt_sequence_traffic *out) {
  memset(out, 0, sizeof *out);
  out->ulysses_ranks = q->ulysses_ranks, out->ring_ranks = q->ring_ranks;
  if (q->ulysses) gpt_ulysses_elements(q->ulysses, &out->alltoall_forward, &out->alltoall_backward, &out->passes);
  if (q->ring) loom_ring_attention_stats(q->ring, &out->ring);
  if (!q->ulysses) out->passes = out->ring.forwards;
}
