/* Ulysses sequence parallelism for the GPT's attention (DeepSpeed-Ulysses, Jacobs et al.): the
 * sequence is split over the SP group (every rank holds T / sp tokens of each sequence), and
 * attention, which needs whole sequences, gets them by resharding: Q, K, V go from split by
 * tokens to split by heads (loom_reshard), the local causal attention runs on whole sequences
 * for H / sp heads, and the output goes back to split by tokens. Backward mirrors it. Per layer
 * and rank, forward moves 3 N d / sp elements in and N d / sp out (N = B T tokens of the
 * replica), backward the same again.
 *
 * A gpt_attention plug-in (gpt_cpu.h): pass gpt_ulysses_attention(u) to gpt_cpu_create. Its
 * calls cannot return a status, so a failure is kept: check gpt_ulysses_status after a pass. */
#ifndef LOOM_EXAMPLES_GPT_ULYSSES_H
#define LOOM_EXAMPLES_GPT_ULYSSES_H

#include "gpt_cpu.h"

typedef struct gpt_ulysses gpt_ulysses;

/* For `sp` (its size divides the heads and the context; the caller checks with
 * gpt_ulysses_check). `inner` (copied; NULL: gpt_attention_local) computes attention on the
 * group's tokens for H / sp heads: the local one when the group holds whole sequences, a ring
 * across the other groups in the hybrid (gpt_sequence.h). */
loom_status gpt_ulysses_create(loom_group *sp, const gpt_attention *inner, gpt_ulysses **out);
void gpt_ulysses_destroy(gpt_ulysses *u);
/* The plug-in; valid while `u` lives. */
gpt_attention gpt_ulysses_attention(gpt_ulysses *u);
/* LOOM_OK, or the first failure of a pass since the last call (then cleared). */
loom_status gpt_ulysses_status(gpt_ulysses *u);
/* Elements of this rank's shards that went through the all-to-alls so far, in forwards (Q, K,
 * V and the output: 4 N d / sp per layer and micro-batch) and in backwards (the same), and
 * the forward passes (one per layer and micro-batch). */
void gpt_ulysses_elements(const gpt_ulysses *u, double *forward, double *backward, int64_t *passes);
/* LOOM_ERR_ARG naming the numbers unless sp divides both heads and context. */
loom_status gpt_ulysses_check(int sp, int heads, int context);

#endif
