/* Mixed-length plans (parallel/sequence/mixed.h) on random long-tailed batches: every
 * sequence has ranks inside the world, a block size k that lets the zigzag split cut it
 * (2 k | L), the per-rank costs add up to the batch's, the planner's estimated max / mean
 * stays within 1.1 where the lengths allow it (power-of-two rank counts, so every long length
 * splits over any block, and tail sequences each at most a tenth of a rank's share) and never
 * above data parallelism by count's (or 1.05, where the planner stops); each rank's cost
 * recomputed from the assignment equals the plan's; the static split over all ranks refuses
 * lengths it cannot cut. */
#include <math.h>
#include <stdlib.h>

#include "parallel/sequence/mixed.h"
#include "unit.h"

static void test_mixed_random_batches(void) {
  loom_rng rng = input_rng(1);
  loom_mixed_cost cost = {.attention = 14.0 * 32, .linear = 12.0 * 32 * 32};
  for (int round = 0; round < 50; round++) {
    int ranks = round % 2 ? 1 << (1 + (int)loom_rng_below(&rng, 4)) : 2 + (int)loom_rng_below(&rng, 15), n_long = 1 + (int)loom_rng_below(&rng, 3);
    int n = n_long + 40 + (int)loom_rng_below(&rng, 200), lengths[256];
    double total = 0;
    for (int i = 0; i < n; i++) {
      lengths[i] = i < n_long ? 1024 * (4 + (int)loom_rng_below(&rng, 12)) : 64 * (1 + (int)loom_rng_below(&rng, 8));
      total += loom_mixed_cost_of(&cost, lengths[i]);
    }
    shuffle(&rng, lengths, n);
    loom_mixed_plan plan, by_count;
    CHECK(loom_mixed_plan_create(LOOM_MIXED_BALANCED, lengths, n, ranks, &cost, 2, &plan) == LOOM_OK, "%s", loom_error_string());
    CHECK(loom_mixed_plan_create(LOOM_MIXED_BY_COUNT, lengths, n, ranks, &cost, 2, &by_count) == LOOM_OK, "%s", loom_error_string());
    double sum = 0, largest_short = 0;
    for (int r = 0; r < ranks; r++) sum += plan.rank_cost[r];
    for (int i = 0; i < n; i++) {
      CHECK(plan.first[i] >= 0 && plan.count[i] >= 1 && plan.first[i] + plan.count[i] <= ranks,
            "round %d: sequence %d on ranks [%d, +%d) of %d", round, i, plan.first[i], plan.count[i], ranks);
      if (plan.count[i] == 1) {
        largest_short = fmax(largest_short, loom_mixed_cost_of(&cost, lengths[i]));
        continue;
      }
      CHECK(lengths[i] % (2 * plan.count[i]) == 0, "round %d: %d tokens over %d ranks", round, lengths[i], plan.count[i]);
    }
    CHECK(fabs(sum - total) <= 1e-9 * total, "round %d: rank costs add to %.6g, the batch's %.6g", round, sum, total);
    double recomputed[16] = {0}; /* each rank's cost from the assignment itself */
    for (int i = 0; i < n; i++)
      for (int r = plan.first[i]; r < plan.first[i] + plan.count[i]; r++)
        recomputed[r] += loom_mixed_cost_of(&cost, lengths[i]) / plan.count[i];
    for (int r = 0; r < ranks; r++)
      CHECK(fabs(recomputed[r] - plan.rank_cost[r]) <= 1e-9 * total, "round %d: rank %d costs %.6g by "
            "its parts, the plan says %.6g", round, r, recomputed[r], plan.rank_cost[r]);
    for (int i = 0; i < n; i++)
      CHECK(by_count.first[i] == i % ranks && by_count.count[i] == 1, "round %d: by count, sequence %d", round, i);
    if (largest_short <= total / ranks / 10 && (ranks & (ranks - 1)) == 0)
      CHECK(loom_mixed_plan_imbalance(&plan) <= 1.1, "round %d: %d ranks, planner's max/mean %.3f",
            round, ranks, loom_mixed_plan_imbalance(&plan));
    /* the planner stops at the first plan within 1.05, so it is never worse than by count
     * beyond that */
    CHECK(loom_mixed_plan_imbalance(&plan) <= fmax(loom_mixed_plan_imbalance(&by_count), 1.05) + 1e-12,
          "round %d: planner %.3f, by count %.3f", round, loom_mixed_plan_imbalance(&plan),
          loom_mixed_plan_imbalance(&by_count));
    loom_mixed_plan_free(&plan), loom_mixed_plan_free(&by_count);
  }
}

static void test_mixed_refusals(void) {
  loom_mixed_cost cost = {.attention = 1, .linear = 1};
  int lengths[3] = {4096, 256, 100};
  loom_mixed_plan plan;
  CHECK(loom_mixed_plan_create(LOOM_MIXED_ALL_RANKS, lengths, 3, 4, &cost, 2, &plan) == LOOM_ERR_ARG, "refused");
  CHECK_CONTAINS(loom_error_string(), "sequence 2's length 100 is not a multiple of 8");
  lengths[2] = 0;
  CHECK(loom_mixed_plan_create(LOOM_MIXED_BALANCED, lengths, 3, 4, &cost, 2, &plan) == LOOM_ERR_ARG, "refused");
  CHECK_CONTAINS(loom_error_string(), "sequence 2 has length 0");
}

int register_mixed_suite(void) {
  static const unit_test tests[] = {
      {"random long-tailed batches", test_mixed_random_batches},
      {"refusals", test_mixed_refusals},
      {NULL, NULL}};
  return unit_add_suite("mixed", tests);
}
