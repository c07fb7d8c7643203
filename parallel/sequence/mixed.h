/* Hybrid data parallelism for batches of mixed lengths (ByteScale, Ge et al.): instead of a
 * static mesh where every sequence is split over the same SP group, each sequence gets a
 * number of ranks in proportion to its estimated cost, so a long sequence runs ring-parallel
 * over several ranks while short ones stay whole on one rank each, data-parallel, and every
 * rank's estimated work is about the same.
 *
 * Cost of a sequence of L tokens: attention L (L + 1) / 2 + linear L (the causal attention
 * grows with the pairs, the projections and MLP with the tokens), in any unit.
 * Plans (loom_mixed_kind):
 *   BALANCED  the planner: sequences in decreasing cost; one whose cost c exceeds a rank's
 *             share s (1 / p of the total) gets the fewest ranks k >= f c / s that split it
 *             (L a multiple of `multiple` k; if no k up to p does, the largest k that does,
 *             or 1: whole), on the block of consecutive ranks where the
 *             largest load stays smallest; the rest go, largest first, to the least loaded
 *             rank (longest-processing-time first). The degree factor f grows from 1 by 1.25
 *             until the estimated max / mean is within 1.05 (more ranks per long sequence,
 *             more ring traffic, only where balance needs it); past f = p, every sequence
 *             whole (longest first) is the last candidate; the most even plan found wins.
 *   BY_COUNT  plain data parallelism: sequence i on rank i mod p.
 *   ALL_RANKS a static SP group of all p ranks: every sequence split over all of them.
 * A sequence's ranks are the world ranks [first, first + ranks); the ring runs in that order.
 * Blocks of long sequences may overlap: each rank runs its parts in sequence order. */
#ifndef LOOM_PARALLEL_SEQUENCE_MIXED_H
#define LOOM_PARALLEL_SEQUENCE_MIXED_H

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_MIXED_BALANCED, LOOM_MIXED_BY_COUNT, LOOM_MIXED_ALL_RANKS } loom_mixed_kind;

typedef struct {
  double attention, linear; /* cost(L) = attention L (L + 1) / 2 + linear L */
} loom_mixed_cost;

typedef struct {
  int sequences, ranks;
  int *first, *count; /* (sequences): each sequence's ranks */
  double *rank_cost;  /* (ranks): estimated cost of each rank's parts */
} loom_mixed_plan;

double loom_mixed_cost_of(const loom_mixed_cost *cost, int length);
/* A plan of `kind` for `n` sequences of `lengths` over `ranks` ranks. A sequence split over k
 * ranks must have a length that `multiple` k divides (2 for the zigzag ring, 1 for the
 * contiguous one); ALL_RANKS fails with the numbers for a length that does not. */
loom_status loom_mixed_plan_create(loom_mixed_kind kind, const int *lengths, int n, int ranks,
                                   const loom_mixed_cost *cost, int multiple, loom_mixed_plan *out);
void loom_mixed_plan_free(loom_mixed_plan *plan);
/* max / mean of the plan's estimated per-rank costs. */
double loom_mixed_plan_imbalance(const loom_mixed_plan *plan);

#ifdef __cplusplus
}
#endif

#endif
