/* ZB-H1 and ZB-V compute orders by list scheduling at unit costs (F = I = W = 1, transfers
 * free), the setting the zero bubble papers hand-craft their schedules for (Qi et al., ICLR'24,
 * section 3; Qi et al., NeurIPS'24, the V schedule). Every rank r, whenever it is free, runs
 * the first of:
 *   1. its oldest weight-gradient W, if `limit` of them are pending (r + 1 for ZB-H1, ranks
 *      for ZB-V): deferred W passes hold memory, so they may fill bubbles but not pile up;
 *   2. a ready forward F or input-gradient I, deepest stage first, F before I on a tie, an F
 *      only while the rank's micro-batches in flight stay under its cap: for ZB-H1 ranks - r
 *      counted from F to I (1F1B's activations; with the W limit at most ranks + 1 from F to
 *      W), for ZB-V 2 x ranks chunks counted from F to W (1F1B's rank 0, W's memory included);
 *   3. its oldest pending W, which fills what would be a bubble;
 *   4. else it idles until the earliest of its F and I becomes ready.
 * The earliest-starting choice over all ranks is taken first, so no later choice can enable an
 * earlier one. The result is the order only; timing at other costs is the checker's business.
 * At unit costs it gives ZB-H1's bubble (p - 1) / (3 m) for every m >= p, and ZB-V's bound
 * (p - 1) / (6 m) (the last rank's first forward cannot start before p - 1 half-stage
 * forwards, the least any V schedule can do) at m = p and m > 5 p / 4; in between it stays
 * within 0.05 of it (tests/unit/unit_pipeline.c). (The caps and limits were chosen by searching the rules above for the ones that
 * reach these bubbles over pp 2..8 and m p..32 at the least memory.) */
#include <stdlib.h>

#include "parallel/pipeline/schedule_impl.h"

typedef struct {
  int start;         // unit time it can start
  int rank_priority; // 0 a forced W, 1 F or I, 2 a W filling a gap
  int stage;
  int microbatch;
  loom_pipeline_op op;
} candidate;

// a before b: earlier start, then the priority class, then the deeper stage, then F before I
static int candidate_before(const candidate *a, const candidate *b) {
  if (a->start != b->start) return a->start < b->start;
  if (a->rank_priority != b->rank_priority) return a->rank_priority < b->rank_priority;
  if (a->stage != b->stage) return a->stage > b->stage;
  return a->op == LOOM_PIPELINE_FORWARD && b->op != LOOM_PIPELINE_FORWARD;
}

typedef struct {
  const loom_pipeline_schedule *s;
  int *forward_done, *input_done; // (microbatches x stages) finish time, -1 before
  int *next_forward, *next_input; // (stages) next micro-batch of each stage
  int *pending, *pending_head, *pending_tail; // per rank FIFO of (microbatch x stages + stage)
  int *clock, *in_flight, *cap, *limit; // (ranks); in_flight as the cap counts it
  int count_until_weight;         // 1: in flight from F to W (ZB-V); 0: from F to I (ZB-H1)
} zb_state;

// This rank's best choice by the rules above, or 0 if it has nothing it could ever start now.
static int best_candidate(const zb_state *z, int r, candidate *best) {
  const loom_pipeline_schedule *s = z->s;
  int S = s->stages, m = s->microbatches, found = 0, now = z->clock[r];
  candidate c = {0};
  for (int chunk = 0; chunk < s->chunks; chunk++) {
    int stage = loom_pipeline_rank_stage(s, r, chunk);
    int j = z->next_input[stage];
    if (j < m && z->forward_done[j * S + stage] >= 0) {
      int ready = stage == S - 1 ? z->forward_done[j * S + stage] : z->input_done[j * S + stage + 1];
      if (ready >= 0) {
        c = (candidate){ready > now ? ready : now, 1, stage, j, LOOM_PIPELINE_BACKWARD_INPUT};
        if (!found || candidate_before(&c, best)) *best = c, found = 1;
      }
    }
    j = z->next_forward[stage];
    if (j < m && z->in_flight[r] < z->cap[r]) {
      int ready = stage == 0 ? 0 : z->forward_done[j * S + stage - 1];
      if (ready >= 0) {
        c = (candidate){ready > now ? ready : now, 1, stage, j, LOOM_PIPELINE_FORWARD};
        if (!found || candidate_before(&c, best)) *best = c, found = 1;
      }
    }
  }
  int pending = z->pending_tail[r] - z->pending_head[r];
  if (pending > 0) {
    int key = z->pending[r * m * s->chunks + z->pending_head[r]];
    c = (candidate){now, pending >= z->limit[r] ? 0 : 2, key % S, key / S, LOOM_PIPELINE_BACKWARD_WEIGHT};
    // a W waits for nothing: it beats any later-starting I or F
    if (!found || candidate_before(&c, best)) *best = c, found = 1;
  }
  return found;
}

loom_status pipeline_zero_bubble_orders(const loom_pipeline_schedule *s, pipeline_order *orders) {
  int p = s->ranks, m = s->microbatches, S = s->stages, per_rank = m * s->chunks;
  zb_state z = {.s = s};
  z.forward_done = malloc(sizeof(int) * (size_t)m * S);
  z.input_done = malloc(sizeof(int) * (size_t)m * S);
  z.next_forward = calloc((size_t)S, sizeof(int));
  z.next_input = calloc((size_t)S, sizeof(int));
  z.pending = malloc(sizeof(int) * (size_t)per_rank * p);
  z.pending_head = calloc((size_t)p, sizeof(int));
  z.pending_tail = calloc((size_t)p, sizeof(int));
  z.clock = calloc((size_t)p, sizeof(int));
  z.in_flight = calloc((size_t)p, sizeof(int));
  z.cap = malloc(sizeof(int) * (size_t)p);
  z.limit = malloc(sizeof(int) * (size_t)p);
  z.count_until_weight = s->kind == LOOM_PIPELINE_ZBV;
  loom_status status = LOOM_OK;
  if (!z.forward_done || !z.input_done || !z.next_forward || !z.next_input || !z.pending ||
      !z.pending_head || !z.pending_tail || !z.clock || !z.in_flight || !z.cap || !z.limit) {
    status = loom_error_set(LOOM_ERR_NOMEM, "%s schedule of %d ranks x %d micro-batches",
                            loom_pipeline_kind_name(s->kind), p, m);
    goto done;
  }
  for (int i = 0; i < m * S; i++) z.forward_done[i] = z.input_done[i] = -1;
  for (int r = 0; r < p; r++) {
    z.cap[r] = z.count_until_weight ? 2 * p : p - r;
    z.limit[r] = z.count_until_weight ? p : r + 1;
  }
  for (int left = 3 * per_rank * p; left > 0; left--) {
    int rank = -1;
    candidate best = {0}, c = {0};
    for (int r = 0; r < p; r++)
      if (best_candidate(&z, r, &c) && (rank < 0 || c.start < best.start)) best = c, rank = r;
    if (rank < 0) { // cannot happen with caps >= 1; kept so a wrong cap fails loudly
      status = loom_error_set(LOOM_ERR_INTERNAL, "%s schedule: list scheduling stalled with %d "
                              "actions left", loom_pipeline_kind_name(s->kind), left);
      goto done;
    }
    int key = best.microbatch * S + best.stage, finish = best.start + 1;
    z.clock[rank] = finish;
    pipeline_order_add(s, &orders[rank], best.op, best.microbatch, best.stage);
    if (best.op == LOOM_PIPELINE_FORWARD) {
      z.forward_done[key] = finish, z.next_forward[best.stage]++, z.in_flight[rank]++;
    } else if (best.op == LOOM_PIPELINE_BACKWARD_INPUT) {
      z.input_done[key] = finish, z.next_input[best.stage]++;
      z.in_flight[rank] -= !z.count_until_weight;
      z.pending[rank * per_rank + z.pending_tail[rank]++] = key;
    } else {
      z.pending_head[rank]++;
      z.in_flight[rank] -= z.count_until_weight;
    }
  }
done:
  free(z.forward_done), free(z.input_done), free(z.next_forward), free(z.next_input);
  free(z.pending), free(z.pending_head), free(z.pending_tail);
  free(z.clock), free(z.in_flight), free(z.cap), free(z.limit);
  return status;
}
