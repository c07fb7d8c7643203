/* Pipeline schedules as data. A schedule is, for every rank of the PP axis, the ordered list of
 * what it does in one training step: forward (F), backward (B), or backward split into its
 * input-gradient (I) and weight-gradient (W) halves, and the point-to-point transfers of
 * activations and gradients between neighbouring stages, each tagged with its micro-batch and
 * stage. Builders are pure functions of (kind, ranks, micro-batches, chunks); the checker
 * (check.h) simulates any schedule, and the executor runs one.
 *
 * Stages: the model is cut into stages = ranks x chunks pieces, numbered 0 (embedding side) to
 * stages - 1 (loss side). Rank r owns `chunks` of them: stages r, r + ranks, r + 2 ranks, ...
 * (the loop placement of GPipe, 1F1B, interleaved 1F1B, ZB-H1), or stages r and
 * 2 ranks - 1 - r for ZB-V (the V placement: rank 0 holds the first and the last stage).
 *
 * Papers: GPipe (Huang et al., NeurIPS'19), 1F1B (PipeDream-Flush, Narayanan et al., ICML'21),
 * interleaved 1F1B (Narayanan et al., SC'21), ZB-H1 (Qi et al., "Zero Bubble Pipeline
 * Parallelism", ICLR'24), ZB-V (Qi et al., "Pipeline Parallelism with Controllable Memory",
 * NeurIPS'24). */
#ifndef LOOM_PARALLEL_PIPELINE_SCHEDULE_H
#define LOOM_PARALLEL_PIPELINE_SCHEDULE_H

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  LOOM_PIPELINE_GPIPE,       /* all forwards, then all backwards: m micro-batches in flight */
  LOOM_PIPELINE_1F1B,        /* warm-up forwards, then one forward one backward */
  LOOM_PIPELINE_INTERLEAVED, /* 1F1B over v chunks per rank: the bubble divided by v */
  LOOM_PIPELINE_ZBH1,        /* 1F1B with B split in I and W, W filling the bubbles */
  LOOM_PIPELINE_ZBV,         /* two chunks per rank in a V, split backward */
  LOOM_PIPELINE_KIND_COUNT
} loom_pipeline_kind;

typedef enum {
  LOOM_PIPELINE_FORWARD,         /* F */
  LOOM_PIPELINE_BACKWARD,        /* B: input and weight gradients in one pass */
  LOOM_PIPELINE_BACKWARD_INPUT,  /* I: gradient of the stage input only */
  LOOM_PIPELINE_BACKWARD_WEIGHT, /* W: gradients of the stage's weights, after its I */
  LOOM_PIPELINE_SEND_ACTIVATION, /* stage's forward output to the rank of stage + 1 */
  LOOM_PIPELINE_RECV_ACTIVATION, /* stage's forward input from the rank of stage - 1 */
  LOOM_PIPELINE_SEND_GRADIENT,   /* gradient of stage's input to the rank of stage - 1 */
  LOOM_PIPELINE_RECV_GRADIENT,   /* gradient of stage's output from the rank of stage + 1 */
  LOOM_PIPELINE_OP_COUNT
} loom_pipeline_op;

/* One step of a rank's list. `stage` is the stage of this rank the action belongs to: the one
 * computed, the producer of what is sent, the consumer of what is received. Transfers between
 * two stages of one rank (ZB-V's turn at the last rank) are not actions: the value stays. */
typedef struct {
  loom_pipeline_op op;
  int microbatch; /* 0 .. microbatches - 1 */
  int stage;      /* 0 .. stages - 1 */
  int chunk;      /* which of the rank's chunks `stage` is: 0 .. chunks - 1 */
  int peer;       /* transfers: the other rank; compute: -1 */
} loom_pipeline_action;

typedef struct loom_pipeline_schedule loom_pipeline_schedule;

/* Builds the schedule of `kind` for `ranks` pipeline ranks and `microbatches` micro-batches
 * per step. chunks: stages per rank; 0 picks the kind's own (2 for interleaved and ZB-V, 1
 * otherwise); GPipe, 1F1B and ZB-H1 take 1, ZB-V exactly 2, interleaved 2 or more.
 * Interleaved 1F1B and ZB-V need microbatches >= ranks. Interleaved 1F1B takes micro-batches
 * in rounds of at least `ranks` (floor(m / ranks) rounds, the first m mod rounds one larger),
 * so m need not divide by ranks. ZB-H1 and ZB-V are list-scheduled at F = I = W by the rules of
 * zero_bubble.c (a W forced once enough are pending, else a ready F or I of the deepest stage,
 * else a W filling the gap); they reach the zero bubble papers' figures (ZB-V's within 0.05 for
 * pp < m <= 5 pp / 4). Sizes: pp <= 4096, m <= 65536, and pp <= 128, m <= 4096 for ZB-H1 and
 * ZB-V (their list scheduling costs grow with pp^2 m). */
loom_status loom_pipeline_schedule_create(loom_pipeline_kind kind, int ranks, int microbatches,
                                          int chunks, loom_pipeline_schedule **out);

/* A schedule with the shape and placement of `like` and the given lists (counts[r] actions
 * for rank r), copied: for checking hand-written or modified schedules. Not validated here;
 * loom_pipeline_check says what is wrong with it. */
loom_status loom_pipeline_schedule_from_actions(const loom_pipeline_schedule *like,
                                                const int *counts,
                                                const loom_pipeline_action *const *actions,
                                                loom_pipeline_schedule **out);

void loom_pipeline_schedule_destroy(loom_pipeline_schedule *schedule);

loom_pipeline_kind loom_pipeline_schedule_kind(const loom_pipeline_schedule *schedule);
int loom_pipeline_schedule_ranks(const loom_pipeline_schedule *schedule);
int loom_pipeline_schedule_microbatches(const loom_pipeline_schedule *schedule);
int loom_pipeline_schedule_chunks(const loom_pipeline_schedule *schedule);
int loom_pipeline_schedule_stages(const loom_pipeline_schedule *schedule);

/* The rank that owns `stage`, and the stage of (rank, chunk). */
int loom_pipeline_stage_rank(const loom_pipeline_schedule *schedule, int stage);
int loom_pipeline_rank_stage(const loom_pipeline_schedule *schedule, int rank, int chunk);

/* Rank `rank`'s actions in order (*count of them); owned by the schedule. */
const loom_pipeline_action *loom_pipeline_actions(const loom_pipeline_schedule *schedule,
                                                  int rank, int *count);

/* The boundary a transfer crosses (boundary b lies between stages b and b + 1): an activation
 * leaves `stage` forward and enters it from behind, a gradient the other way; -1 for a
 * compute action. */
int loom_pipeline_transfer_boundary(const loom_pipeline_action *action);

/* 1 when the kind splits backward into I and W. */
int loom_pipeline_kind_splits_backward(loom_pipeline_kind kind);

/* "gpipe", "1f1b", "interleaved", "zbh1", "zbv", and back; parse fails with the list. */
const char *loom_pipeline_kind_name(loom_pipeline_kind kind);
loom_status loom_pipeline_kind_parse(const char *name, loom_pipeline_kind *kind);

/* "F", "B", "I", "W", "send-act", "recv-act", "send-grad", "recv-grad". */
const char *loom_pipeline_op_name(loom_pipeline_op op);

#ifdef __cplusplus
}
#endif

#endif
