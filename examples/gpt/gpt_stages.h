/* The GPT split into pipeline stages on the CPU: this rank's stages of a schedule
 * (parallel/pipeline/schedule.h) as the executor's stage callbacks.
 *
 * Split rule: S = pp x chunks stages share the L blocks as evenly as whole blocks allow:
 * stage s holds blocks [s L / S, (s + 1) L / S) (integer division, so sizes differ by at most
 * one and the larger stages come later); the embedding is on stage 0, the final LayerNorm,
 * the tied output projection and the loss on stage S - 1. S > L is refused.
 *
 * Parameters: every rank keeps the whole float32 array; the tensors of its stages are its own
 * (registered in the parameter table, reduced over GRAD, updated by its optimizer), the rest
 * are stale copies, refreshed by gpt_stages_gather_params for evaluation and sampling. The
 * tied wte belongs to stage 0; the last stage gets its values at the start of every step and
 * hands back its part of the gradient at the end (one transfer each way when the two stages
 * are on different ranks).
 *
 * Gradients: each stage's backward-weight of a micro-batch runs in float32 from zero and is
 * added into float64, micro-batch by micro-batch in order 0..m-1 (every schedule keeps that
 * order per stage), wte's head and embedding parts summed apart: the same arithmetic as
 * gpt_model's plain run, so pipelined and plain runs agree bit for bit.
 *
 * Activations: each stage keeps, per micro-batch in flight, its blocks' buffers and their
 * inputs (gpt_cpu_create_part), in as many slots as the schedule ever has in flight there. */
#ifndef LOOM_EXAMPLES_GPT_STAGES_H
#define LOOM_EXAMPLES_GPT_STAGES_H

#include "gpt_cpu.h"
#include "parallel/pipeline/executor.h"

typedef struct gpt_stages gpt_stages;

/* This rank's stages of `schedule` (kept by pointer) over the PP group `pp`, for micro-batches
 * of B sequences of T tokens, parameters initialised from `seed` like gpt_model's. With
 * sequence parallelism, the T tokens are this rank's part, at `positions` (T of them), and
 * attention goes through `attention` (gpt_sequence_attention); both are kept by pointer and
 * may be NULL (whole sequences). The SP peers of a rank are at the same pipeline rank and run
 * the same schedule, so their attention collectives meet in the same order. */
loom_status gpt_stages_create(loom_group *pp, const gpt_layout *layout,
                              const loom_pipeline_schedule *schedule, int B, int T, uint64_t seed,
                              const gpt_attention *attention, const int *positions,
                              gpt_stages **out);
void gpt_stages_destroy(gpt_stages *stages);

/* The tensors of this rank's stages into `params` (groups as gpt_model_add_params). */
loom_status gpt_stages_add_params(gpt_stages *stages, loom_params *params, int decay_group,
                                  int no_decay_group);
/* Executor parameters: the callbacks (user = stages), the boundary tensors (N x d float32). */
void gpt_stages_executor_params(gpt_stages *stages, loom_pipeline_executor_params *params);

/* Before a step: micro-batch j's tokens and targets (B x T each, copied), for j in 0..m-1. */
loom_status gpt_stages_set_microbatch(gpt_stages *stages, int microbatch, const int *tokens,
                                      const int *targets);
/* Before the executor's step: zero the gradients, set the loss scale, bring wte to the last
 * stage. `ddp` (may be NULL): each stage's gradients are marked ready as its last micro-batch's
 * weight pass ends (stage 0's wte after gpt_stages_end_step adds the head's part). */
loom_status gpt_stages_begin_step(gpt_stages *stages, double scale, loom_ddp *ddp);
/* After the executor's step: wte's head part to stage 0; *loss_sum = the step's summed
 * cross-entropy on every rank of the PP group. */
loom_status gpt_stages_end_step(gpt_stages *stages, double *loss_sum);
/* Every tensor from the rank that owns it, into every rank's array (collective over PP). */
loom_status gpt_stages_gather_params(gpt_stages *stages);
/* The whole float32 parameter array (current after gpt_stages_gather_params). */
const float *gpt_stages_params(const gpt_stages *stages);
/* Activation bytes this rank holds for micro-batches in flight (all slots of all stages), and
 * how many micro-batches that is as a whole rank's worth (a chunk's slot counts 1 / chunks):
 * the schedule's peak in flight on this rank. */
size_t gpt_stages_activation_bytes(const gpt_stages *stages);
double gpt_stages_microbatches_in_flight(const gpt_stages *stages);

#endif
