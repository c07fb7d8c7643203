/* Pipeline schedule builders (see schedule.h): GPipe, 1F1B and interleaved 1F1B written out
 * directly, ZB-H1 and ZB-V from zero_bubble.c; then every rank's compute order gets its
 * transfers: a receive right before the compute that consumes it (the executor posts
 * receives ahead, so "right before" is the latest point, not the posting time), a send right
 * after the compute that produces it. Invariant: every list holds each of its stages'
 * forwards and backwards exactly once per micro-batch. */
#include "parallel/pipeline/schedule.h"

#include <stdlib.h>
#include <string.h>

#include "parallel/pipeline/schedule_impl.h"

static const char *const kind_names[LOOM_PIPELINE_KIND_COUNT] = {"gpipe", "1f1b", "interleaved",
                                                                 "zbh1", "zbv"};

const char *loom_pipeline_kind_name(loom_pipeline_kind kind) {
  return kind >= 0 && kind < LOOM_PIPELINE_KIND_COUNT ? kind_names[kind] : "unknown";
}

loom_status loom_pipeline_kind_parse(const char *name, loom_pipeline_kind *kind) {
  for (int k = 0; k < LOOM_PIPELINE_KIND_COUNT; k++)
    if (name && strcmp(name, kind_names[k]) == 0) {
      *kind = (loom_pipeline_kind)k;
      return LOOM_OK;
    }
  return loom_error_set(LOOM_ERR_ARG, "pipeline schedule '%s' is not one of gpipe, 1f1b, "
                        "interleaved, zbh1, zbv", name ? name : "(null)");
}

const char *loom_pipeline_op_name(loom_pipeline_op op) {
  static const char *const names[LOOM_PIPELINE_OP_COUNT] = {
      "F", "B", "I", "W", "send-act", "recv-act", "send-grad", "recv-grad"};
  return op >= 0 && op < LOOM_PIPELINE_OP_COUNT ? names[op] : "?";
}

int loom_pipeline_transfer_boundary(const loom_pipeline_action *a) {
  switch (a->op) {
  case LOOM_PIPELINE_SEND_ACTIVATION:
  case LOOM_PIPELINE_RECV_GRADIENT: return a->stage;
  case LOOM_PIPELINE_RECV_ACTIVATION:
  case LOOM_PIPELINE_SEND_GRADIENT: return a->stage - 1;
  default: return -1;
  }
}

int loom_pipeline_kind_splits_backward(loom_pipeline_kind kind) {
  return kind == LOOM_PIPELINE_ZBH1 || kind == LOOM_PIPELINE_ZBV;
}

loom_pipeline_kind loom_pipeline_schedule_kind(const loom_pipeline_schedule *s) { return s->kind; }
int loom_pipeline_schedule_ranks(const loom_pipeline_schedule *s) { return s->ranks; }
int loom_pipeline_schedule_microbatches(const loom_pipeline_schedule *s) { return s->microbatches; }
int loom_pipeline_schedule_chunks(const loom_pipeline_schedule *s) { return s->chunks; }
int loom_pipeline_schedule_stages(const loom_pipeline_schedule *s) { return s->stages; }

int loom_pipeline_stage_rank(const loom_pipeline_schedule *s, int stage) {
  if (s->v_placement) return stage < s->ranks ? stage : 2 * s->ranks - 1 - stage;
  return stage % s->ranks;
}

int loom_pipeline_rank_stage(const loom_pipeline_schedule *s, int rank, int chunk) {
  if (s->v_placement) return chunk == 0 ? rank : 2 * s->ranks - 1 - rank;
  return chunk * s->ranks + rank;
}

static int stage_chunk(const loom_pipeline_schedule *s, int stage) {
  if (s->v_placement) return stage < s->ranks ? 0 : 1;
  return stage / s->ranks;
}

const loom_pipeline_action *loom_pipeline_actions(const loom_pipeline_schedule *s, int rank,
                                                  int *count) {
  if (rank < 0 || rank >= s->ranks) {
    *count = 0;
    return NULL;
  }
  *count = s->counts[rank];
  return s->actions[rank];
}

void pipeline_order_add(const loom_pipeline_schedule *s, pipeline_order *order,
                        loom_pipeline_op op, int microbatch, int stage) {
  order->items[order->count++] = (loom_pipeline_action){
      .op = op, .microbatch = microbatch, .stage = stage, .chunk = stage_chunk(s, stage), .peer = -1};
}

void loom_pipeline_schedule_destroy(loom_pipeline_schedule *s) {
  if (!s) return;
  if (s->actions)
    for (int r = 0; r < s->ranks; r++) free(s->actions[r]);
  free(s->actions);
  free(s->counts);
  free(s);
}

static loom_status schedule_alloc(loom_pipeline_kind kind, int ranks, int microbatches,
                                  int chunks, int v_placement, loom_pipeline_schedule **out) {
  loom_pipeline_schedule *s = calloc(1, sizeof *s);
  if (!s) return loom_error_set(LOOM_ERR_NOMEM, "allocating a pipeline schedule");
  s->kind = kind, s->ranks = ranks, s->microbatches = microbatches, s->chunks = chunks;
  s->stages = ranks * chunks, s->v_placement = v_placement;
  s->counts = calloc((size_t)ranks, sizeof *s->counts);
  s->actions = calloc((size_t)ranks, sizeof *s->actions);
  if (!s->counts || !s->actions) {
    loom_pipeline_schedule_destroy(s);
    return loom_error_set(LOOM_ERR_NOMEM, "allocating a pipeline schedule of %d ranks", ranks);
  }
  *out = s;
  return LOOM_OK;
}

// Rank r: all forwards, then all backwards, in micro-batch order.
static void gpipe_order(const loom_pipeline_schedule *s, int r, pipeline_order *o) {
  for (int j = 0; j < s->microbatches; j++) pipeline_order_add(s, o, LOOM_PIPELINE_FORWARD, j, r);
  for (int j = 0; j < s->microbatches; j++) pipeline_order_add(s, o, LOOM_PIPELINE_BACKWARD, j, r);
}

// Rank r: ranks - r - 1 warm-up forwards, then forward j + warm-up with backward j, then the
// remaining backwards. At most ranks - r micro-batches in flight.
static void one_f_one_b_order(const loom_pipeline_schedule *s, int r, pipeline_order *o) {
  int m = s->microbatches, warmup = s->ranks - r - 1 < m ? s->ranks - r - 1 : m;
  for (int j = 0; j < warmup; j++) pipeline_order_add(s, o, LOOM_PIPELINE_FORWARD, j, r);
  for (int j = 0; j < m - warmup; j++) {
    pipeline_order_add(s, o, LOOM_PIPELINE_FORWARD, j + warmup, r);
    pipeline_order_add(s, o, LOOM_PIPELINE_BACKWARD, j, r);
  }
  for (int j = m - warmup; j < m; j++) pipeline_order_add(s, o, LOOM_PIPELINE_BACKWARD, j, r);
}

// Walks a rank's forwards (or backwards) of interleaved 1F1B: rounds of micro-batches, within
// a round chunk by chunk (reversed for backwards), within a chunk the round's micro-batches.
typedef struct {
  int base, larger;              // round sizes: base + 1 for the first `larger` rounds, else base
  int start, round, in_round;    // first micro-batch of the round, its index, position in it
} round_walk;

static void round_walk_next(const loom_pipeline_schedule *s, int r, round_walk *w, int reverse,
                            loom_pipeline_op op, pipeline_order *o) {
  int size = w->base + (w->round < w->larger), c = w->in_round / size;
  pipeline_order_add(s, o, op, w->start + w->in_round % size,
                     loom_pipeline_rank_stage(s, r, reverse ? s->chunks - 1 - c : c));
  if (++w->in_round == size * s->chunks) w->start += size, w->round++, w->in_round = 0;
}

// Interleaved 1F1B (Megatron-LM's order). Micro-batches go in rounds of g >= ranks; rank r
// warms up with (v - 1) g + 2 (ranks - r - 1) forwards, alternates forward and backward, then
// drains. With g = ranks this is Megatron's schedule exactly; larger first rounds (m not a
// multiple of ranks) keep the bubble at (p - 1) / (v m) and hold (v - 1) g + 2 p - 1 chunks
// in flight instead of v p + p - 1.
static void interleaved_order(const loom_pipeline_schedule *s, int r, pipeline_order *o) {
  int p = s->ranks, m = s->microbatches, v = s->chunks, total = m * v;
  int rounds = m / p; // m >= p, so at least 1
  round_walk forwards = {.base = m / rounds, .larger = m % rounds}, backwards = forwards;
  int warmup = (v - 1) * (forwards.base + (forwards.larger > 0)) + 2 * (p - r - 1);
  if (warmup > total) warmup = total;
  for (int k = 0; k < warmup; k++) round_walk_next(s, r, &forwards, 0, LOOM_PIPELINE_FORWARD, o);
  for (int k = warmup; k < total; k++) {
    round_walk_next(s, r, &forwards, 0, LOOM_PIPELINE_FORWARD, o);
    round_walk_next(s, r, &backwards, 1, LOOM_PIPELINE_BACKWARD, o);
  }
  for (int k = 0; k < warmup; k++) round_walk_next(s, r, &backwards, 1, LOOM_PIPELINE_BACKWARD, o);
}

// The transfer a compute action needs before it (its input from a neighbouring stage) or makes
// after it (its output for the other neighbour): forwards take from stage - 1 and give to
// stage + 1, backwards the other way. 0 when there is none, or the neighbour is on this rank.
static int transfer_of(const loom_pipeline_schedule *s, int rank, const loom_pipeline_action *a,
                       int after, loom_pipeline_action *transfer) {
  int forward = a->op == LOOM_PIPELINE_FORWARD;
  if (!forward && a->op != LOOM_PIPELINE_BACKWARD && a->op != LOOM_PIPELINE_BACKWARD_INPUT) return 0;
  int neighbour = a->stage + (forward == after ? 1 : -1);
  if (neighbour < 0 || neighbour >= s->stages) return 0;
  int peer = loom_pipeline_stage_rank(s, neighbour);
  if (peer == rank) return 0;
  *transfer = *a;
  transfer->op = forward ? (after ? LOOM_PIPELINE_SEND_ACTIVATION : LOOM_PIPELINE_RECV_ACTIVATION)
                         : (after ? LOOM_PIPELINE_SEND_GRADIENT : LOOM_PIPELINE_RECV_GRADIENT);
  transfer->peer = peer;
  return 1;
}

static loom_status add_transfers(loom_pipeline_schedule *s, int rank, const pipeline_order *o) {
  loom_pipeline_action *list = malloc(sizeof *list * (size_t)(3 * o->count));
  if (!list) return loom_error_set(LOOM_ERR_NOMEM, "pipeline schedule of rank %d", rank);
  int n = 0;
  for (int i = 0; i < o->count; i++) {
    n += transfer_of(s, rank, &o->items[i], 0, &list[n]);
    list[n++] = o->items[i];
    n += transfer_of(s, rank, &o->items[i], 1, &list[n]);
  }
  s->actions[rank] = list, s->counts[rank] = n;
  return LOOM_OK;
}

static loom_status check_shape(loom_pipeline_kind kind, int ranks, int microbatches, int *chunks) {
  if (kind < 0 || kind >= LOOM_PIPELINE_KIND_COUNT)
    return loom_error_set(LOOM_ERR_ARG, "pipeline schedule kind %d is not one of the %d kinds",
                          (int)kind, LOOM_PIPELINE_KIND_COUNT);
  const char *name = kind_names[kind];
  if (ranks < 1 || ranks > 4096 || microbatches < 1 || microbatches > 65536)
    return loom_error_set(LOOM_ERR_ARG, "%s schedule: pp=%d must be in [1, 4096] and "
                          "micro-batches=%d in [1, 65536]", name, ranks, microbatches);
  int split_default = kind == LOOM_PIPELINE_INTERLEAVED || kind == LOOM_PIPELINE_ZBV ? 2 : 1;
  if (*chunks == 0) *chunks = split_default;
  if (kind == LOOM_PIPELINE_INTERLEAVED && (*chunks < 2 || *chunks > 64))
    return loom_error_set(LOOM_ERR_ARG, "interleaved schedule: chunks=%d per rank must be in "
                          "[2, 64] (1 chunk is plain 1f1b)", *chunks);
  if (kind == LOOM_PIPELINE_ZBV && *chunks != 2)
    return loom_error_set(LOOM_ERR_ARG, "zbv schedule: chunks=%d, but the V puts exactly 2 "
                          "chunks on every rank", *chunks);
  if (kind != LOOM_PIPELINE_INTERLEAVED && kind != LOOM_PIPELINE_ZBV && *chunks != 1)
    return loom_error_set(LOOM_ERR_ARG, "%s schedule: chunks=%d, but it runs 1 chunk per rank "
                          "(use interleaved or zbv for more)", name, *chunks);
  if (loom_pipeline_kind_splits_backward(kind) && (ranks > 128 || microbatches > 4096))
    return loom_error_set(LOOM_ERR_ARG, "%s schedule: pp=%d and micro-batches=%d; list scheduling "
                          "takes pp <= 128 and micro-batches <= 4096", name, ranks, microbatches);
  if ((kind == LOOM_PIPELINE_INTERLEAVED || kind == LOOM_PIPELINE_ZBV) && microbatches < ranks)
    return loom_error_set(LOOM_ERR_ARG, "%s schedule: micro-batches=%d is fewer than pp=%d; it "
                          "needs at least one micro-batch per rank (micro-batches >= pp)", name,
                          microbatches, ranks);
  return LOOM_OK;
}

loom_status loom_pipeline_schedule_create(loom_pipeline_kind kind, int ranks, int microbatches,
                                          int chunks, loom_pipeline_schedule **out) {
  *out = NULL;
  LOOM_CHECK(check_shape(kind, ranks, microbatches, &chunks));
  loom_pipeline_schedule *s;
  LOOM_CHECK(schedule_alloc(kind, ranks, microbatches, chunks, kind == LOOM_PIPELINE_ZBV, &s));
  size_t per_rank = 3 * (size_t)microbatches * (size_t)chunks; // F, I, W at most
  pipeline_order *orders = calloc((size_t)ranks, sizeof *orders);
  loom_pipeline_action *items = malloc(sizeof *items * per_rank * (size_t)ranks);
  loom_status status = LOOM_OK;
  if (!orders || !items) {
    status = loom_error_set(LOOM_ERR_NOMEM, "building a %s schedule of %d ranks x %d "
                            "micro-batches", kind_names[kind], ranks, microbatches);
    goto done;
  }
  for (int r = 0; r < ranks; r++) orders[r].items = items + per_rank * (size_t)r;
  if (loom_pipeline_kind_splits_backward(kind)) {
    status = pipeline_zero_bubble_orders(s, orders);
  } else {
    for (int r = 0; r < ranks; r++) {
      if (kind == LOOM_PIPELINE_GPIPE) gpipe_order(s, r, &orders[r]);
      else if (kind == LOOM_PIPELINE_1F1B) one_f_one_b_order(s, r, &orders[r]);
      else interleaved_order(s, r, &orders[r]);
    }
  }
  for (int r = 0; status == LOOM_OK && r < ranks; r++) status = add_transfers(s, r, &orders[r]);
done:
  free(items);
  free(orders);
  if (status != LOOM_OK) {
    loom_pipeline_schedule_destroy(s);
    return status;
  }
  *out = s;
  return LOOM_OK;
}

loom_status loom_pipeline_schedule_from_actions(const loom_pipeline_schedule *like,
                                                const int *counts,
                                                const loom_pipeline_action *const *actions,
                                                loom_pipeline_schedule **out) {
  *out = NULL;
  loom_pipeline_schedule *s;
  LOOM_CHECK(schedule_alloc(like->kind, like->ranks, like->microbatches, like->chunks,
                            like->v_placement, &s));
  for (int r = 0; r < s->ranks; r++) {
    if (counts[r] < 0) {
      loom_pipeline_schedule_destroy(s);
      return loom_error_set(LOOM_ERR_ARG, "pipeline schedule: rank %d has %d actions", r, counts[r]);
    }
    s->actions[r] = malloc(sizeof *s->actions[r] * (size_t)(counts[r] > 0 ? counts[r] : 1));
    if (!s->actions[r]) {
      loom_pipeline_schedule_destroy(s);
      return loom_error_set(LOOM_ERR_NOMEM, "copying the actions of rank %d", r);
    }
    if (counts[r] > 0) memcpy(s->actions[r], actions[r], sizeof *s->actions[r] * (size_t)counts[r]);
    s->counts[r] = counts[r];
  }
  *out = s;
  return LOOM_OK;
}
