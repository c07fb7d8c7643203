/* Sequence parallelism for the GPT: which attention runs across the SP group and which
 * positions of each sequence a rank holds.
 *   ulysses: the all-to-all of gpt_ulysses.h; contiguous positions (rank s holds T / sp tokens
 *            from s T / sp).
 *   ring:    ring attention (parallel/sequence/ring.h) over the SP group in rank order;
 *            zigzag (default) or contiguous positions.
 *   hybrid:  both (USP, Fang and Zhao): sp = u x r; the ranks s with the same s / u form a
 *            Ulysses group, which holds the tokens of ring position s / u; rank s holds part
 *            s % u of them. Ulysses reshards to H / u heads over the group's tokens and the ring
 *            runs across the r groups (ranks s % u, s % u + u, ...). The all-to-all stays in a
 *            group of u ranks (a node, when u is the ranks per node) and the ring carries
 *            blocks of H / u heads.
 * Per layer, micro-batch and rank (N = B T tokens, d width), forward: Ulysses moves 4 N d / sp
 * elements through the all-to-alls; the ring sends (r - 1) blocks of 2 N d / sp. */
#ifndef LOOM_EXAMPLES_GPT_SEQUENCE_H
#define LOOM_EXAMPLES_GPT_SEQUENCE_H

#include "gpt_cpu.h"
#include "parallel/sequence/ring.h"

typedef enum { GPT_SP_ULYSSES, GPT_SP_RING, GPT_SP_HYBRID } gpt_sp_mode;

typedef struct {
  gpt_sp_mode mode;
  int ring;            /* hybrid: the ring degree r (divides sp); otherwise ignored */
  loom_sp_split split; /* ring and hybrid: the positions of each ring position */
} gpt_sp_params;

/* "ulysses", "ring" or "hybrid"; LOOM_ERR_ARG naming the word otherwise. */
loom_status gpt_sp_mode_parse(const char *word, gpt_sp_mode *out);
/* LOOM_ERR_ARG with the numbers unless the mode can split `heads` and a context of `context`
 * over sp ranks: Ulysses needs sp | heads and sp | context; the ring needs the split's
 * multiple (loom_sp_split_check); the hybrid needs r | sp, sp / r | heads, and the ring split
 * of the context divisible by sp / r. */
loom_status gpt_sequence_check(const gpt_sp_params *params, int sp, int heads, int context);

typedef struct gpt_sequence gpt_sequence;

/* For the SP group `sp`; collective over it (the hybrid creates its Ulysses groups). */
loom_status gpt_sequence_create(loom_ctx *ctx, loom_group *sp, const gpt_sp_params *params,
                                gpt_sequence **out);
void gpt_sequence_destroy(gpt_sequence *seq);
/* The attention plug-in for gpt_cpu_create; valid while `seq` lives. Its calls cannot return
 * a status, so a failure is kept: check gpt_sequence_status after a pass. A rank whose pass
 * failed stops taking part, so its SP peers end in LOOM_ERR_TIMEOUT (LOOM_TIMEOUT) rather than
 * learning the cause: the failing rank's message is the one to read. */
gpt_attention gpt_sequence_attention(gpt_sequence *seq);
/* LOOM_OK, or the first failure of a pass since the last call (then cleared). */
loom_status gpt_sequence_status(gpt_sequence *seq);
/* The positions in [0, T) of this rank's T / sp tokens of each sequence, in its order. */
loom_status gpt_sequence_positions(const gpt_sequence *seq, int T, int *positions);

/* Since create, on this rank: the degrees, attention forward passes (one per layer and
 * micro-batch this rank computes), elements through the Ulysses all-to-alls (forward,
 * backward), and the ring's figures (elements sent, seconds computing and waiting, pairs). */
typedef struct {
  int ulysses_ranks, ring_ranks;
  int64_t passes;
  double alltoall_forward, alltoall_backward;
  loom_ring_stats ring;
} gpt_sequence_traffic;

void gpt_sequence_traffic_get(const gpt_sequence *seq, gpt_sequence_traffic *out);

#endif
