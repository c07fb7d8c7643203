/* The pipeline schedule checker (see check.h): one pass per rank until it blocks on a receive
 * whose send has not been posted, repeated until every rank is done (sound) or a full round
 * moves nobody (deadlock). Each action is checked against the rules when it runs, so the first
 * broken rule is the one reported. Tables are (microbatch x stages), -1 for "not yet". */
#include "parallel/pipeline/check.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
  const loom_pipeline_schedule *s;
  loom_pipeline_costs costs;
  int m, S, p;
  double *forward_done, *input_done, *weight_done;  // finish times
  double *activation_arrival, *gradient_arrival;    // by boundary: when the data is there
  char *activation_received, *gradient_received;    // by boundary
  int *next, *live, *pending, *peak_live, *peak_pending; // (ranks)
  double *clock, *busy;                             // (ranks)
} sim;

static const char *kind_name(const sim *z) {
  return loom_pipeline_kind_name(loom_pipeline_schedule_kind(z->s));
}

static void describe(const loom_pipeline_action *a, char *text, size_t size) {
  if (a->peer >= 0)
    snprintf(text, size, "%s micro-batch %d stage %d %s rank %d", loom_pipeline_op_name(a->op),
             a->microbatch, a->stage, a->op == LOOM_PIPELINE_SEND_ACTIVATION ||
             a->op == LOOM_PIPELINE_SEND_GRADIENT ? "to" : "from", a->peer);
  else
    snprintf(text, size, "%s micro-batch %d stage %d", loom_pipeline_op_name(a->op), a->microbatch,
             a->stage);
}

static loom_status broken(const sim *z, int rank, int index, const loom_pipeline_action *a,
                          const char *rule) {
  char text[128];
  describe(a, text, sizeof text);
  return loom_error_set(LOOM_ERR_ARG, "%s schedule (pp=%d, micro-batches=%d, chunks=%d): rank %d, "
                        "action %d (%s): %s", kind_name(z),
                        z->p, z->m, loom_pipeline_schedule_chunks(z->s), rank, index, text, rule);
}

// A transfer must cross a boundary next to its stage, to the rank of the stage on the other
// side, which is another rank.
static int wrong_peer(const sim *z, int rank, const loom_pipeline_action *a, int boundary) {
  if (boundary < 0 || boundary >= z->S - 1) return 1;
  int owner = loom_pipeline_stage_rank(z->s, boundary == a->stage ? boundary + 1 : boundary);
  return owner == rank || a->peer != owner;
}

// Runs rank r's next action: 1 done, 0 blocked on a receive, or an error status (< 0).
static int step(sim *z, int r, double *start) {
  int count, index = z->next[r];
  const loom_pipeline_action *a = &loom_pipeline_actions(z->s, r, &count)[index];
  int j = a->microbatch, st = a->stage, S = z->S;
  if (a->op < 0 || a->op >= LOOM_PIPELINE_OP_COUNT) return broken(z, r, index, a, "unknown op");
  if (j < 0 || j >= z->m || st < 0 || st >= S)
    return broken(z, r, index, a, "micro-batch or stage out of range");
  if (loom_pipeline_stage_rank(z->s, st) != r) return broken(z, r, index, a, "stage is another rank's");
  if (a->chunk < 0 || a->chunk >= loom_pipeline_schedule_chunks(z->s) ||
      loom_pipeline_rank_stage(z->s, r, a->chunk) != st)
    return broken(z, r, index, a, "chunk does not hold that stage");
  int at = j * S + st;
  double now = z->clock[r], cost = 0;
  switch (a->op) {
  case LOOM_PIPELINE_FORWARD:
    if (z->forward_done[at] >= 0) return broken(z, r, index, a, "second forward");
    if (st > 0 && !(loom_pipeline_stage_rank(z->s, st - 1) == r ? z->forward_done[at - 1] >= 0
                                                               : z->activation_received[at - 1]))
      return broken(z, r, index, a, "its input activation is neither computed here nor received before");
    cost = z->costs.forward;
    z->forward_done[at] = now + cost;
    if (++z->live[r] > z->peak_live[r]) z->peak_live[r] = z->live[r];
    break;
  case LOOM_PIPELINE_BACKWARD:
  case LOOM_PIPELINE_BACKWARD_INPUT:
    if (z->forward_done[at] < 0) return broken(z, r, index, a, "backward before its forward");
    if (z->input_done[at] >= 0) return broken(z, r, index, a, "second backward");
    if (st < S - 1 && !(loom_pipeline_stage_rank(z->s, st + 1) == r ? z->input_done[at + 1] >= 0
                                                                   : z->gradient_received[at]))
      return broken(z, r, index, a, "its output gradient is neither computed here nor received before");
    cost = z->costs.backward_input;
    if (a->op == LOOM_PIPELINE_BACKWARD) {
      cost += z->costs.backward_weight;
      z->weight_done[at] = now + cost;
    } else if (++z->pending[r] > z->peak_pending[r]) {
      z->peak_pending[r] = z->pending[r];
    }
    z->input_done[at] = now + cost;
    z->live[r] -= a->op == LOOM_PIPELINE_BACKWARD; // a split backward frees at its W
    break;
  case LOOM_PIPELINE_BACKWARD_WEIGHT:
    if (z->input_done[at] < 0) return broken(z, r, index, a, "weight gradient before its input gradient");
    if (z->weight_done[at] >= 0) return broken(z, r, index, a, "second weight gradient");
    cost = z->costs.backward_weight;
    z->weight_done[at] = now + cost;
    z->pending[r]--;
    z->live[r]--;
    break;
  case LOOM_PIPELINE_SEND_ACTIVATION:
  case LOOM_PIPELINE_SEND_GRADIENT: {
    int activation = a->op == LOOM_PIPELINE_SEND_ACTIVATION, b = loom_pipeline_transfer_boundary(a);
    if (wrong_peer(z, r, a, b))
      return broken(z, r, index, a, activation ? "peer is not the rank of stage + 1"
                                               : "peer is not the rank of stage - 1");
    if ((activation ? z->forward_done[at] : z->input_done[at]) < 0)
      return broken(z, r, index, a, activation ? "sent before its forward" : "sent before its backward");
    double *arrival = activation ? &z->activation_arrival[j * S + b] : &z->gradient_arrival[j * S + b];
    if (*arrival >= 0) return broken(z, r, index, a, "sent twice");
    *arrival = now + z->costs.transfer;
    break;
  }
  case LOOM_PIPELINE_RECV_ACTIVATION:
  case LOOM_PIPELINE_RECV_GRADIENT: {
    int activation = a->op == LOOM_PIPELINE_RECV_ACTIVATION, b = loom_pipeline_transfer_boundary(a);
    if (wrong_peer(z, r, a, b))
      return broken(z, r, index, a, "peer is not the rank of the neighbouring stage");
    char *received = activation ? &z->activation_received[j * S + b] : &z->gradient_received[j * S + b];
    double arrival = activation ? z->activation_arrival[j * S + b] : z->gradient_arrival[j * S + b];
    if (*received) return broken(z, r, index, a, "received twice");
    if (arrival < 0) return 0; // its send is not posted yet: wait
    *received = 1;
    if (arrival > now) z->clock[r] = now = arrival;
    break;
  }
  default:
    break;
  }
  if (start) start[index] = now;
  z->clock[r] = now + cost;
  z->busy[r] += cost;
  z->next[r]++;
  return 1;
}

static loom_status deadlock(const sim *z) {
  char text[512] = "";
  size_t used = 0;
  int shown = 0;
  for (int r = 0; r < z->p && shown < 4; r++) {
    int count;
    const loom_pipeline_action *list = loom_pipeline_actions(z->s, r, &count);
    if (z->next[r] >= count) continue;
    char action[128];
    describe(&list[z->next[r]], action, sizeof action);
    used += (size_t)snprintf(text + used, sizeof text - used, "%srank %d at action %d (%s)",
                             shown++ ? "; " : "", r, z->next[r], action);
    if (used >= sizeof text) break;
  }
  return loom_error_set(LOOM_ERR_STATE, "%s schedule (pp=%d, micro-batches=%d): deadlock, every "
                        "unfinished rank waits on a receive: %s",
                        kind_name(z), z->p, z->m, text);
}

// After the run: every pass of every micro-batch on every stage, every send received.
static loom_status complete(const sim *z) {
  for (int j = 0; j < z->m; j++)
    for (int st = 0; st < z->S; st++) {
      int at = j * z->S + st, r = loom_pipeline_stage_rank(z->s, st);
      const char *missing = z->forward_done[at] < 0 ? "forward"
                            : z->input_done[at] < 0  ? "backward"
                            : z->weight_done[at] < 0 ? "weight gradient" : NULL;
      if (missing)
        return loom_error_set(LOOM_ERR_ARG, "%s schedule: micro-batch %d never runs its %s on "
                              "stage %d (rank %d)",
                              kind_name(z), j,
                              missing, st, r);
      int lost_activation = z->activation_arrival[at] >= 0 && !z->activation_received[at];
      if (lost_activation || (z->gradient_arrival[at] >= 0 && !z->gradient_received[at]))
        return loom_error_set(LOOM_ERR_ARG, "%s schedule: the %s of micro-batch %d across "
                              "boundary %d (after stage %d) is never received",
                              kind_name(z),
                              lost_activation ? "activation" : "gradient", j, st, st);
    }
  return LOOM_OK;
}

// Whether each pair's sends (sender's list order) and receives (receiver's) are the same
// sequence: the k-th send from r to q carries what q's k-th receive from r expects.
static int transfers_in_order(const loom_pipeline_schedule *s) {
  int p = loom_pipeline_schedule_ranks(s);
  for (int r = 0; r < p; r++) {
    int sends;
    const loom_pipeline_action *from = loom_pipeline_actions(s, r, &sends);
    for (int q = 0; q < p; q++) {
      if (q == r) continue;
      int receives, i = 0, k = 0;
      const loom_pipeline_action *to = loom_pipeline_actions(s, q, &receives);
      for (;; i++, k++) {
        while (i < sends && !((from[i].op == LOOM_PIPELINE_SEND_ACTIVATION || from[i].op == LOOM_PIPELINE_SEND_GRADIENT) && from[i].peer == q)) i++;
        while (k < receives && !((to[k].op == LOOM_PIPELINE_RECV_ACTIVATION || to[k].op == LOOM_PIPELINE_RECV_GRADIENT) && to[k].peer == r)) k++;
        if (i == sends || k == receives) {
          if (i != sends || k != receives) return 0;
          break;
        }
        int activation = from[i].op == LOOM_PIPELINE_SEND_ACTIVATION;
        if (activation != (to[k].op == LOOM_PIPELINE_RECV_ACTIVATION) || from[i].microbatch != to[k].microbatch ||
            to[k].stage != from[i].stage + (activation ? 1 : -1))
          return 0;
      }
    }
  }
  return 1;
}

loom_status loom_pipeline_check(const loom_pipeline_schedule *schedule,
                                const loom_pipeline_costs *costs, loom_pipeline_report *report) {
  sim z = {.s = schedule,
           .m = loom_pipeline_schedule_microbatches(schedule),
           .S = loom_pipeline_schedule_stages(schedule),
           .p = loom_pipeline_schedule_ranks(schedule)};
  loom_pipeline_costs unit = LOOM_PIPELINE_COSTS_INIT;
  z.costs = costs ? *costs : unit;
  if (z.costs.forward < 0 || z.costs.backward_input < 0 || z.costs.backward_weight < 0 ||
      z.costs.transfer < 0)
    return loom_error_set(LOOM_ERR_ARG, "pipeline check: costs must be >= 0 (forward %g, "
                          "backward input %g, weight %g, transfer %g)", z.costs.forward,
                          z.costs.backward_input, z.costs.backward_weight, z.costs.transfer);
  size_t cells = (size_t)z.m * z.S, ranks = (size_t)z.p;
  double *times = malloc(sizeof(double) * cells * 5);
  char *flags = calloc(cells * 2, 1);
  int *counters = calloc(ranks * 5, sizeof(int));
  double *clocks = calloc(ranks * 2, sizeof(double));
  loom_status status = LOOM_OK;
  if (!times || !flags || !counters || !clocks) {
    status = loom_error_set(LOOM_ERR_NOMEM, "pipeline check of %d ranks x %d micro-batches", z.p, z.m);
    goto done;
  }
  for (size_t i = 0; i < cells * 5; i++) times[i] = -1;
  z.forward_done = times, z.input_done = times + cells, z.weight_done = times + 2 * cells;
  z.activation_arrival = times + 3 * cells, z.gradient_arrival = times + 4 * cells;
  z.activation_received = flags, z.gradient_received = flags + cells;
  z.next = counters, z.live = counters + ranks, z.pending = counters + 2 * ranks;
  z.peak_live = counters + 3 * ranks, z.peak_pending = counters + 4 * ranks;
  z.clock = clocks, z.busy = clocks + ranks;
  for (int moved = 1; moved;) {
    moved = 0;
    size_t offset = 0;
    for (int r = 0; r < z.p; r++) {
      int count, result = 1;
      loom_pipeline_actions(schedule, r, &count);
      while (z.next[r] < count && (result = step(&z, r, report && report->start ? report->start + offset : NULL)) > 0)
        moved = 1;
      if (result < 0) {
        status = (loom_status)result;
        goto done;
      }
      offset += (size_t)count;
    }
  }
  for (int r = 0; r < z.p; r++) {
    int count;
    loom_pipeline_actions(schedule, r, &count);
    if (z.next[r] < count) {
      status = deadlock(&z);
      goto done;
    }
  }
  status = complete(&z);
  if (status != LOOM_OK || !report) goto done;
  double step_time = 0, busiest = 0, chunks = loom_pipeline_schedule_chunks(schedule);
  report->peak_activations = 0, report->peak_pending_weights = 0;
  for (int r = 0; r < z.p; r++) {
    if (z.clock[r] > step_time) step_time = z.clock[r];
    if (z.busy[r] > busiest) busiest = z.busy[r];
    if (z.peak_live[r] / chunks > report->peak_activations) report->peak_activations = z.peak_live[r] / chunks;
    if (z.peak_pending[r] > report->peak_pending_weights) report->peak_pending_weights = z.peak_pending[r];
    if (report->rank_peak) report->rank_peak[r] = z.peak_live[r] / chunks;
  }
  for (int r = 0; r < z.p && report->rank_idle; r++) report->rank_idle[r] = step_time - z.busy[r];
  report->step_time = step_time, report->busiest = busiest;
  report->transfers_in_order = transfers_in_order(schedule);
  report->bubble = busiest > 0 ? step_time / busiest - 1 : 0;
done:
  free(times), free(flags), free(counters), free(clocks);
  return status;
}

void loom_pipeline_theory(loom_pipeline_kind kind, int ranks, int microbatches, int chunks,
                          double *bubble, double *peak_activations) {
  double p = ranks, m = microbatches, v = chunks > 0 ? chunks : 1;
  double b = 0, peak = 0;
  switch (kind) {
  case LOOM_PIPELINE_GPIPE: b = (p - 1) / m, peak = m; break;
  case LOOM_PIPELINE_1F1B: b = (p - 1) / m, peak = p < m ? p : m; break;
  case LOOM_PIPELINE_ZBH1: b = (p - 1) / (3 * m), peak = p < m ? p : m; break;
  case LOOM_PIPELINE_ZBV: b = (p - 1) / (6 * m), peak = p; break;
  case LOOM_PIPELINE_INTERLEAVED: {
    // the first round's size g (schedule.c): rounds of at least p micro-batches
    int rounds = microbatches / ranks > 0 ? microbatches / ranks : 1;
    double g = microbatches / rounds + (microbatches % rounds > 0);
    double chunks_in_flight = (v - 1) * g + 2 * p - 1;
    b = (p - 1) / (v * m), peak = (chunks_in_flight < v * m ? chunks_in_flight : v * m) / v;
    break;
  }
  default: break;
  }
  if (bubble) *bubble = b;
  if (peak_activations) *peak_activations = peak;
}
