/* Plans for mixed-length batches (see mixed.h). Each rank runs its parts in sequence order,
 * so rings that share a rank are entered in one global order and never wait in a cycle. */
#include "parallel/sequence/mixed.h"

#include <math.h>
#include <stdlib.h>

double loom_mixed_cost_of(const loom_mixed_cost *c, int length) {
  return c->attention * (double)length * (length + 1) / 2 + c->linear * (double)length;
}

void loom_mixed_plan_free(loom_mixed_plan *p) {
  if (!p) return;
  free(p->first), free(p->count), free(p->rank_cost);
  *p = (loom_mixed_plan){0};
}

double loom_mixed_plan_imbalance(const loom_mixed_plan *p) {
  double max = 0, sum = 0;
  for (int r = 0; r < p->ranks; r++) max = fmax(max, p->rank_cost[r]), sum += p->rank_cost[r];
  return sum > 0 ? max / (sum / p->ranks) : 1;
}

// The sequences in decreasing cost (ties by index), into order (n); insertion sort, as
// batches hold hundreds of sequences, not millions.
static void sort_by_cost(const int *lengths, int n, const loom_mixed_cost *cost, int *order) {
  for (int i = 0; i < n; i++) {
    double c = loom_mixed_cost_of(cost, lengths[i]);
    int j = i;
    while (j > 0 && loom_mixed_cost_of(cost, lengths[order[j - 1]]) < c) order[j] = order[j - 1], j--;
    order[j] = i;
  }
}

// Ranks for a sequence of cost c needing at least `want` of them: the smallest k >= want that
// splits its length (multiple k | L), at most `ranks`; 1 when no k >= 2 does.
static int ranks_for(int length, double want, int ranks, int multiple) {
  int k = (int)ceil(want - 1e-9);
  if (k < 2) k = 2;
  for (; k <= ranks; k++)
    if (length % (multiple * k) == 0) return k;
  for (k = ranks; k >= 2; k--) /* none large enough: the largest that splits it */
    if (length % (multiple * k) == 0) return k;
  return 1;
}

// One balanced plan at degree factor f: long sequence i wants f c_i / share ranks and takes the
// block of consecutive ranks where the largest load after it is smallest (blocks may overlap:
// every rank runs its parts in sequence order, so rings never wait on each other in a cycle);
// short ones go, largest first, to the least loaded rank.
static void balanced(const int *lengths, int n, int ranks, const loom_mixed_cost *cost,
                     int multiple, const int *order, double f, loom_mixed_plan *p) {
  double total = 0;
  for (int i = 0; i < n; i++) total += loom_mixed_cost_of(cost, lengths[i]);
  double share = total / ranks;
  for (int r = 0; r < ranks; r++) p->rank_cost[r] = 0;
  for (int o = 0; o < n; o++) {
    int i = order[o];
    double c = loom_mixed_cost_of(cost, lengths[i]);
    int k = c > share && f > 0 ? ranks_for(lengths[i], f * c / share, ranks, multiple) : 1;
    if (k == 1) { /* short: whole, on the least loaded rank */
      int best = 0;
      for (int r = 1; r < ranks; r++)
        if (p->rank_cost[r] < p->rank_cost[best]) best = r;
      p->first[i] = best, p->count[i] = 1, p->rank_cost[best] += c;
      continue;
    }
    int best = 0;
    double best_max = INFINITY;
    for (int first = 0; first + k <= ranks; first++) {
      double max = 0;
      for (int r = first; r < first + k; r++) max = fmax(max, p->rank_cost[r]);
      if (max < best_max) best = first, best_max = max;
    }
    p->first[i] = best, p->count[i] = k;
    for (int r = best; r < best + k; r++) p->rank_cost[r] += c / k;
  }
}

loom_status loom_mixed_plan_create(loom_mixed_kind kind, const int *lengths, int n, int ranks,
                                   const loom_mixed_cost *cost, int multiple, loom_mixed_plan *out) {
  *out = (loom_mixed_plan){0};
  if (n < 1 || ranks < 1 || !lengths || !cost || multiple < 1 || cost->attention < 0 || cost->linear < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_mixed_plan_create: %d sequences over %d ranks, "
                          "multiple %d (each >= 1; lengths and a cost model >= 0 needed)", n, ranks, multiple);
  for (int i = 0; i < n; i++)
    if (lengths[i] < 1)
      return loom_error_set(LOOM_ERR_ARG, "loom_mixed_plan_create: sequence %d has length %d", i, lengths[i]);
  if (kind == LOOM_MIXED_ALL_RANKS)
    for (int i = 0; i < n; i++)
      if (lengths[i] % (multiple * ranks))
        return loom_error_set(LOOM_ERR_ARG, "static split over all %d ranks: sequence %d's length "
                              "%d is not a multiple of %d", ranks, i, lengths[i], multiple * ranks);
  loom_mixed_plan p = {.sequences = n, .ranks = ranks};
  p.first = malloc(sizeof(int) * (size_t)n), p.count = malloc(sizeof(int) * (size_t)n);
  p.rank_cost = calloc((size_t)ranks, sizeof(double));
  int *order = malloc(sizeof(int) * (size_t)n);
  if (!p.first || !p.count || !p.rank_cost || !order) {
    free(order);
    loom_mixed_plan_free(&p);
    return loom_error_set(LOOM_ERR_NOMEM, "a plan of %d sequences", n);
  }
  if (kind == LOOM_MIXED_BALANCED) {
    /* the fewest ranks per long sequence (the least ring traffic) whose plan is within 5 % of
     * even; else the most even plan found */
    sort_by_cost(lengths, n, cost, order);
    double best_f = 0, best = INFINITY;
    for (double f = 1;; f *= 1.25) {
      double use = f > ranks ? 0 : f; /* past p, the last candidate: every sequence whole (LPT) */
      balanced(lengths, n, ranks, cost, multiple, order, use, &p);
      double imbalance = loom_mixed_plan_imbalance(&p);
      if (imbalance < best - 1e-12) best = imbalance, best_f = use;
      if (imbalance <= 1.05 || use == 0) break;
    }
    balanced(lengths, n, ranks, cost, multiple, order, best_f, &p);
  } else {
    for (int i = 0; i < n; i++) {
      double c = loom_mixed_cost_of(cost, lengths[i]);
      p.first[i] = kind == LOOM_MIXED_BY_COUNT ? i % ranks : 0;
      p.count[i] = kind == LOOM_MIXED_BY_COUNT ? 1 : ranks;
      for (int r = p.first[i]; r < p.first[i] + p.count[i]; r++) p.rank_cost[r] += c / p.count[i];
    }
  }
  free(order);
  *out = p;
  return LOOM_OK;
}
