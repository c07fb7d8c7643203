/* The pipeline schedule checker: simulates every rank's action list with given costs and says
 * whether the schedule is sound (each input there before its compute, every send received by
 * the rank it names, no deadlock, every micro-batch through every stage forward and backward
 * once) and what it costs (step time, bubble, activations in flight). It runs any schedule,
 * built or hand-written (loom_pipeline_schedule_from_actions), so a schedule is checked before
 * a GPU hour is spent on it; loom-pipeline prints its timeline.
 *
 * Model: a rank runs its list in order. A compute starts when the rank is free (its inputs are
 * there by construction: a receive before it, or the same rank's compute earlier), a send is
 * posted when reached and its data arrives `transfer` later, a receive waits for that arrival. */
#ifndef LOOM_PARALLEL_PIPELINE_CHECK_H
#define LOOM_PARALLEL_PIPELINE_CHECK_H

#include "parallel/pipeline/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Costs of one micro-batch on one stage (a chunk), in any one unit of time. A whole backward B
 * costs backward_input + backward_weight. */
typedef struct {
  double forward;
  double backward_input;
  double backward_weight;
  double transfer; /* from a send's posting to its data at the receiver */
} loom_pipeline_costs;
#define LOOM_PIPELINE_COSTS_INIT {.forward = 1, .backward_input = 1, .backward_weight = 1, .transfer = 0}

typedef struct {
  double step_time;        /* when the last rank finishes */
  double busiest;          /* compute time of the busiest rank */
  double bubble;           /* step_time / busiest - 1: idle time per unit of useful work */
  /* Micro-batches in flight (F done, its backward not complete: B, or W when split), as a
   * whole rank's worth: a chunk counts 1 / chunks. Counted until W because W needs the inputs
   * of the stage's products, which are most of what F saved. */
  double peak_activations;  /* the largest over ranks */
  int peak_pending_weights; /* chunks with I done and W not, the largest over ranks */
  /* 1 when, for every ordered pair of ranks, the sender's sends and the receiver's receives
   * come in the same order: what transports that match by order (NCCL) need. */
  int transfers_in_order;
  double *rank_peak;        /* optional, caller's (ranks): each rank's peak, same unit */
  double *rank_idle;        /* optional, caller's (ranks): step_time minus its compute time */
  double *start;            /* optional, caller's (all actions, rank 0's first): start times;
                               a receive's is when its data is there */
} loom_pipeline_report;

/* Simulates `schedule` at `costs` (NULL: LOOM_PIPELINE_COSTS_INIT) into *report (may be NULL).
 * LOOM_ERR_ARG with the rank, the action and the rule for a list that breaks one (missing
 * input, wrong peer, duplicate, missing pass); LOOM_ERR_STATE naming the waiting ranks for a
 * deadlock. */
loom_status loom_pipeline_check(const loom_pipeline_schedule *schedule,
                                const loom_pipeline_costs *costs, loom_pipeline_report *report);

/* The textbook figures at F = I = W (costs ignored otherwise), for comparison with the
 * checker's: bubble (p - 1) / m (GPipe, 1F1B), (p - 1) / (v m) (interleaved), (p - 1) / (3 m)
 * (ZB-H1), (p - 1) / (6 m) (ZB-V: a lower bound, the last rank's late start); peak
 * activations m (GPipe), min(p, m) (1F1B, ZB-H1), p + (p - 1) / v (interleaved, when p divides
 * m), p (ZB-V). Meaningful for m >= p. */
void loom_pipeline_theory(loom_pipeline_kind kind, int ranks, int microbatches, int chunks,
                          double *bubble, double *peak_activations);

#ifdef __cplusplus
}
#endif

#endif
