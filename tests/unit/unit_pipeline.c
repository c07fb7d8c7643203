/* Unit tests of pipeline schedules (parallel/pipeline): every builder over a grid of pp,
 * micro-batches and chunks passes the checker, and at F = I = W its bubble and peak
 * activations equal the textbook figures; random costs (from the run's seed) never deadlock;
 * small schedules equal lists written out by hand; the checker reports each kind of broken
 * list (deadlock, missing receive, wrong peer, missing pass); bad shapes are refused with the
 * numbers and the rule. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/pipeline/check.h"
#include "parallel/pipeline/offload.h"
#include "parallel/pipeline/schedule.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#include "unit.h"

static const loom_pipeline_kind all_kinds[] = {LOOM_PIPELINE_GPIPE, LOOM_PIPELINE_1F1B,
                                               LOOM_PIPELINE_INTERLEAVED, LOOM_PIPELINE_ZBH1,
                                               LOOM_PIPELINE_ZBV};

// Rank r's list as text: compute "F0", transfers "sa0" / "ra0" / "sg0" / "rg0" (micro-batch),
// with ".stage" after each when `stages` is set.
static void list_text(const loom_pipeline_schedule *s, int r, int stages, char *text, size_t size) {
  static const char *const short_names[] = {"F", "B", "I", "W", "sa", "ra", "sg", "rg"};
  int count;
  const loom_pipeline_action *a = loom_pipeline_actions(s, r, &count);
  size_t used = 0;
  text[0] = 0;
  for (int i = 0; i < count && used < size; i++) {
    if (stages)
      used += (size_t)snprintf(text + used, size - used, "%s%s%d.%d", i ? " " : "",
                               short_names[a[i].op], a[i].microbatch, a[i].stage);
    else
      used += (size_t)snprintf(text + used, size - used, "%s%s%d", i ? " " : "",
                               short_names[a[i].op], a[i].microbatch);
  }
}

static void expect_list(const loom_pipeline_schedule *s, int r, int stages, const char *expected) {
  char text[1024];
  list_text(s, r, stages, text, sizeof text);
  CHECK(strcmp(text, expected) == 0, "rank %d: '%s', expected '%s'", r, text, expected);
}

// Small schedules written out by hand, rank 0's and rank 1's lists ("stages": with ".stage").
static const struct {
  loom_pipeline_kind kind;
  int pp, microbatches, chunks, stages;
  const char *rank0, *rank1;
} hand_written[] = {
    // 1F1B, pp 2, 3 micro-batches: rank 0 warms up with one forward
    {LOOM_PIPELINE_1F1B, 2, 3, 0, 0, "F0 sa0 F1 sa1 rg0 B0 F2 sa2 rg1 B1 rg2 B2",
     "ra0 F0 B0 sg0 ra1 F1 B1 sg1 ra2 F2 B2 sg2"},
    {LOOM_PIPELINE_GPIPE, 2, 2, 1, 0, "F0 sa0 F1 sa1 rg0 B0 rg1 B1", "ra0 F0 ra1 F1 B0 sg0 B1 sg1"},
    // interleaved, 2 chunks (stages 0, 2 on rank 0; 1, 3 on rank 1): rank 0 warms up with
    // (v - 1) p + 2 (p - 1) = 4 forwards, rank 1 with 2
    {LOOM_PIPELINE_INTERLEAVED, 2, 2, 2, 1,
     "F0.0 sa0.0 F1.0 sa1.0 ra0.2 F0.2 sa0.2 ra1.2 F1.2 sa1.2 rg0.2 B0.2 sg0.2 rg1.2 B1.2 sg1.2 "
     "rg0.0 B0.0 rg1.0 B1.0",
     "ra0.1 F0.1 sa0.1 ra1.1 F1.1 sa1.1 ra0.3 F0.3 B0.3 sg0.3 ra1.3 F1.3 B1.3 sg1.3 rg0.1 B0.1 "
     "sg0.1 rg1.1 B1.1 sg1.1"},
    // ZB-H1, the rules of zero_bubble.c played out by hand at unit costs: rank r keeps at
    // most r + 1 W pending (rank 0 runs each W right after its I; rank 1 defers one), and
    // pp - r micro-batches between F and I
    {LOOM_PIPELINE_ZBH1, 2, 3, 0, 0, "F0 sa0 F1 sa1 rg0 I0 W0 F2 sa2 rg1 I1 W1 rg2 I2 W2",
     "ra0 F0 I0 sg0 ra1 F1 I1 sg1 W0 ra2 F2 I2 sg2 W1 W2"},
    // ZB-V: rank 0 holds stages 0 and 3, rank 1 stages 1 and 2 (the turn from 1 to 2 stays
    // on rank 1, no transfer); W forced at 2 pending, W0.0 fills rank 0's wait for gradient 1
    {LOOM_PIPELINE_ZBV, 2, 2, 0, 1,
     "F0.0 sa0.0 F1.0 sa1.0 ra0.3 F0.3 I0.3 sg0.3 ra1.3 F1.3 I1.3 sg1.3 W0.3 rg0.0 I0.0 W1.3 "
     "W0.0 rg1.0 I1.0 W1.0",
     "ra0.1 F0.1 F0.2 sa0.2 ra1.1 F1.1 F1.2 sa1.2 rg0.2 I0.2 I0.1 sg0.1 W0.2 rg1.2 I1.2 W0.1 "
     "I1.1 sg1.1 W1.2 W1.1"},
};

static void test_pipeline_hand_written(void) {
  for (size_t i = 0; i < sizeof hand_written / sizeof *hand_written; i++) {
    loom_pipeline_schedule *s;
    if (loom_pipeline_schedule_create(hand_written[i].kind, hand_written[i].pp, hand_written[i].microbatches,
                                      hand_written[i].chunks, &s) != LOOM_OK) {
      CHECK(0, "%s", loom_error_string());
      continue;
    }
    expect_list(s, 0, hand_written[i].stages, hand_written[i].rank0);
    expect_list(s, 1, hand_written[i].stages, hand_written[i].rank1);
    loom_pipeline_schedule_destroy(s);
  }
}

// Each kind over pp 1..8 (and 16), micro-batches from pp to 3 pp + 1 (and fewer where the
// kind allows), chunks 2..4 for interleaved: sound, and at unit costs the theory exactly
// (the simulation is exact arithmetic on small integers and halves). ZB-V's figure is a lower
// bound (the last rank's late start); its list scheduling meets it at m = pp and m > 5 pp / 4
// and stays within 0.05 of it in between (pp 8, m 9; pp 16, m 17..20).
static void test_pipeline_theory_grid(void) {
  const int pps[] = {1, 2, 3, 4, 5, 8, 16};
  int built = 0;
  for (size_t k = 0; k < sizeof all_kinds / sizeof *all_kinds; k++)
    for (size_t i = 0; i < sizeof pps / sizeof *pps; i++) {
      int p = pps[i], needs = all_kinds[k] == LOOM_PIPELINE_INTERLEAVED || all_kinds[k] == LOOM_PIPELINE_ZBV;
      for (int m = needs ? p : 1; m <= 3 * p + 1; m++)
        for (int v = 2; v <= (all_kinds[k] == LOOM_PIPELINE_INTERLEAVED ? 4 : 2); v++) {
          int chunks = all_kinds[k] == LOOM_PIPELINE_INTERLEAVED ? v : 0;
          loom_pipeline_schedule *s;
          loom_status st = loom_pipeline_schedule_create(all_kinds[k], p, m, chunks, &s);
          CHECK(st == LOOM_OK, "%s p=%d m=%d: %s", loom_pipeline_kind_name(all_kinds[k]), p, m,
                loom_error_string());
          if (st != LOOM_OK) continue;
          built++;
          loom_pipeline_report report = {0};
          st = loom_pipeline_check(s, NULL, &report);
          CHECK(st == LOOM_OK, "%s", loom_error_string());
          double bubble, peak;
          loom_pipeline_theory(all_kinds[k], p, m, loom_pipeline_schedule_chunks(s), &bubble, &peak);
          int bound_only = all_kinds[k] == LOOM_PIPELINE_ZBV && m > p && 4 * m <= 5 * p;
          if (st == LOOM_OK && bound_only) {
            CHECK(report.bubble > bubble - 1e-12 && report.bubble < bubble + 0.05,
                  "zbv p=%d m=%d: bubble %.6f, bound %.6f", p, m, report.bubble, bubble);
          } else if (st == LOOM_OK && m >= p) {
            CHECK(fabs(report.bubble - bubble) < 1e-12, "%s p=%d m=%d v=%d: bubble %.6f, theory %.6f",
                  loom_pipeline_kind_name(all_kinds[k]), p, m, loom_pipeline_schedule_chunks(s),
                  report.bubble, bubble);
            CHECK(fabs(report.peak_activations - peak) < 1e-12, "%s p=%d m=%d v=%d: peak %.4f, theory %.4f",
                  loom_pipeline_kind_name(all_kinds[k]), p, m, loom_pipeline_schedule_chunks(s),
                  report.peak_activations, peak);
          }
          loom_pipeline_schedule_destroy(s);
        }
    }
  CHECK(built > 300, "only %d schedules built", built);
}

// Random costs and transfer times: every schedule stays sound (soundness is a property of
// the order), and no rank works more than its share.
static void test_pipeline_random_costs(void) {
  loom_rng rng = input_rng(61);
  for (int trial = 0; trial < 200; trial++) {
    loom_pipeline_kind kind = all_kinds[loom_rng_below(&rng, 5)];
    int p = 1 + (int)loom_rng_below(&rng, 8), m = p + (int)loom_rng_below(&rng, 2 * (uint64_t)p + 1);
    int chunks = kind == LOOM_PIPELINE_INTERLEAVED ? 2 + (int)loom_rng_below(&rng, 3) : 0;
    loom_pipeline_costs costs = {.forward = 0.5 + loom_rng_uniform(&rng),
                                 .backward_input = 0.5 + 1.5 * loom_rng_uniform(&rng),
                                 .backward_weight = 0.2 + loom_rng_uniform(&rng),
                                 .transfer = 0.3 * loom_rng_uniform(&rng)};
    loom_pipeline_schedule *s;
    if (loom_pipeline_schedule_create(kind, p, m, chunks, &s) != LOOM_OK) {
      CHECK(0, "%s p=%d m=%d: %s", loom_pipeline_kind_name(kind), p, m, loom_error_string());
      continue;
    }
    loom_pipeline_report report = {0};
    CHECK(loom_pipeline_check(s, &costs, &report) == LOOM_OK, "%s p=%d m=%d: %s",
          loom_pipeline_kind_name(kind), p, m, loom_error_string());
    double work = m * loom_pipeline_schedule_chunks(s) *
                  (costs.forward + costs.backward_input + costs.backward_weight);
    CHECK(fabs(report.busiest - work) < 1e-9 * work && report.step_time >= work - 1e-9,
          "%s p=%d m=%d: busiest %.6f, work per rank %.6f, step %.6f", loom_pipeline_kind_name(kind),
          p, m, report.busiest, work, report.step_time);
    loom_pipeline_schedule_destroy(s);
  }
}

// A copy of s's lists with rank r's action `from` moved to position `to` (or removed when to < 0,
// or its peer set to `peer` when peer >= 0), checked; returns the checker's status.
static loom_status check_changed(const loom_pipeline_schedule *s, int r, int from, int to, int peer) {
  int p = loom_pipeline_schedule_ranks(s), counts[8];
  const loom_pipeline_action *lists[8];
  loom_pipeline_action *changed = NULL;
  for (int q = 0; q < p; q++) lists[q] = loom_pipeline_actions(s, q, &counts[q]);
  changed = malloc(sizeof *changed * (size_t)counts[r]);
  memcpy(changed, lists[r], sizeof *changed * (size_t)counts[r]);
  if (peer >= 0) {
    changed[from].peer = peer;
  } else if (to < 0) {
    memmove(&changed[from], &changed[from + 1], sizeof *changed * (size_t)(counts[r] - from - 1));
    counts[r]--;
  } else {
    loom_pipeline_action moved = changed[from];
    memmove(&changed[to + 1], &changed[to], sizeof *changed * (size_t)(from - to)); // to < from
    changed[to] = moved;
  }
  lists[r] = changed;
  loom_pipeline_schedule *t;
  loom_status st = loom_pipeline_schedule_from_actions(s, counts, lists, &t);
  if (st == LOOM_OK) st = loom_pipeline_check(t, NULL, NULL);
  loom_pipeline_schedule_destroy(t);
  free(changed);
  return st;
}

static int find(const loom_pipeline_schedule *s, int r, loom_pipeline_op op, int microbatch) {
  int count;
  const loom_pipeline_action *a = loom_pipeline_actions(s, r, &count);
  for (int i = 0; i < count; i++)
    if (a[i].op == op && a[i].microbatch == microbatch) return i;
  return -1;
}

static void test_pipeline_checker_finds_faults(void) {
  loom_pipeline_schedule *s;
  CHECK(loom_pipeline_schedule_create(LOOM_PIPELINE_1F1B, 4, 6, 0, &s) == LOOM_OK, "%s", loom_error_string());
  CHECK(loom_pipeline_check(s, NULL, NULL) == LOOM_OK, "%s", loom_error_string());
  // rank 0 waits for gradient 0 before sending any activation: a cycle of receives
  int at = find(s, 0, LOOM_PIPELINE_RECV_GRADIENT, 0);
  CHECK(check_changed(s, 0, at, 0, -1) == LOOM_ERR_STATE, "%s", loom_error_string());
  CHECK_CONTAINS(loom_error_string(), "deadlock");
  CHECK_CONTAINS(loom_error_string(), "rank 0 at action 0 (recv-grad micro-batch 0 stage 0 from rank 1)");
  // a send dropped: its receiver waits forever
  CHECK(check_changed(s, 1, find(s, 1, LOOM_PIPELINE_SEND_ACTIVATION, 2), -1, -1) == LOOM_ERR_STATE,
        "%s", loom_error_string());
  // a receive dropped: its forward has no input
  CHECK(check_changed(s, 2, find(s, 2, LOOM_PIPELINE_RECV_ACTIVATION, 3), -1, -1) == LOOM_ERR_ARG,
        "%s", loom_error_string());
  CHECK_CONTAINS(loom_error_string(), "rank 2");
  CHECK_CONTAINS(loom_error_string(), "neither computed here nor received before");
  // a backward dropped
  CHECK(check_changed(s, 3, find(s, 3, LOOM_PIPELINE_BACKWARD, 5), -1, -1) != LOOM_OK, "accepted");
  // a send to the wrong rank
  CHECK(check_changed(s, 1, find(s, 1, LOOM_PIPELINE_SEND_ACTIVATION, 0), 0, 3) == LOOM_ERR_ARG,
        "%s", loom_error_string());
  CHECK_CONTAINS(loom_error_string(), "peer is not the rank of stage + 1");
  // a backward moved before its forward
  CHECK(check_changed(s, 3, find(s, 3, LOOM_PIPELINE_BACKWARD, 0), 0, -1) == LOOM_ERR_ARG, "%s",
        loom_error_string());
  CHECK_CONTAINS(loom_error_string(), "backward before its forward");
  loom_pipeline_schedule_destroy(s);
  // ZB-V with a chunk outside the rank's two: refused before anything indexes by it
  CHECK(loom_pipeline_schedule_create(LOOM_PIPELINE_ZBV, 2, 2, 0, &s) == LOOM_OK, "%s", loom_error_string());
  {
    int counts[2];
    const loom_pipeline_action *lists[2] = {loom_pipeline_actions(s, 0, &counts[0]), loom_pipeline_actions(s, 1, &counts[1])};
    loom_pipeline_action *changed = malloc(sizeof *changed * (size_t)counts[0]);
    memcpy(changed, lists[0], sizeof *changed * (size_t)counts[0]);
    changed[0].chunk = 5;
    lists[0] = changed;
    loom_pipeline_schedule *t;
    CHECK(loom_pipeline_schedule_from_actions(s, counts, lists, &t) == LOOM_OK, "%s", loom_error_string());
    CHECK(loom_pipeline_check(t, NULL, NULL) == LOOM_ERR_ARG, "chunk 5 accepted");
    CHECK_CONTAINS(loom_error_string(), "chunk does not hold that stage");
    loom_pipeline_schedule_destroy(t);
    free(changed);
  }
  loom_pipeline_schedule_destroy(s);
  // ZB-H1 without one W: the pass is missing
  CHECK(loom_pipeline_schedule_create(LOOM_PIPELINE_ZBH1, 3, 4, 0, &s) == LOOM_OK, "%s", loom_error_string());
  CHECK(check_changed(s, 1, find(s, 1, LOOM_PIPELINE_BACKWARD_WEIGHT, 2), -1, -1) == LOOM_ERR_ARG,
        "%s", loom_error_string());
  CHECK_CONTAINS(loom_error_string(), "micro-batch 2 never runs its weight gradient on stage 1 (rank 1)");
  loom_pipeline_schedule_destroy(s);
}

static void expect_refused(loom_pipeline_kind kind, int p, int m, int chunks, const char *needle) {
  loom_pipeline_schedule *s = (loom_pipeline_schedule *)&s; // poisoned: must come back NULL
  CHECK(loom_pipeline_schedule_create(kind, p, m, chunks, &s) == LOOM_ERR_ARG && s == NULL,
        "%s p=%d m=%d chunks=%d accepted", loom_pipeline_kind_name(kind), p, m, chunks);
  CHECK_CONTAINS(loom_error_string(), needle);
}

static void test_pipeline_bad_shapes(void) {
  expect_refused(LOOM_PIPELINE_ZBV, 4, 3, 0, "micro-batches=3 is fewer than pp=4");
  expect_refused(LOOM_PIPELINE_INTERLEAVED, 8, 7, 2, "micro-batches=7 is fewer than pp=8");
  expect_refused(LOOM_PIPELINE_INTERLEAVED, 2, 4, 1, "chunks=1 per rank must be in [2, 64]");
  expect_refused(LOOM_PIPELINE_ZBV, 2, 4, 3, "exactly 2 chunks");
  expect_refused(LOOM_PIPELINE_1F1B, 2, 4, 2, "1f1b schedule: chunks=2");
  expect_refused(LOOM_PIPELINE_GPIPE, 0, 4, 0, "pp=0");
  expect_refused(LOOM_PIPELINE_ZBH1, 2, 0, 0, "micro-batches=0");
  loom_pipeline_kind kind;
  CHECK(loom_pipeline_kind_parse("zb-v", &kind) == LOOM_ERR_ARG, "accepted zb-v");
  CHECK_CONTAINS(loom_error_string(), "gpipe, 1f1b, interleaved, zbh1, zbv");
  for (size_t k = 0; k < sizeof all_kinds / sizeof *all_kinds; k++)
    CHECK(loom_pipeline_kind_parse(loom_pipeline_kind_name(all_kinds[k]), &kind) == LOOM_OK &&
              kind == all_kinds[k], "%s does not parse back", loom_pipeline_kind_name(all_kinds[k]));
}

// PipeOffload's choice by lifetime (computes between a stash's forward and its last backward
// pass), against lifetimes counted by hand.
static void test_pipeline_offload_plan(void) {
  loom_pipeline_schedule *s;
  unsigned char plan[8];
  // 1F1B pp 2, m 3, rank 0 computes F0 F1 B0 F2 B1 B2: lives 2, 3, 2; a third goes: micro-batch
  // 1 (the even spread would take 2)
  CHECK(loom_pipeline_schedule_create(LOOM_PIPELINE_1F1B, 2, 3, 0, &s) == LOOM_OK, "%s", loom_error_string());
  CHECK(loom_offload_plan(s, 0, 1.0 / 3, plan) == LOOM_OK, "%s", loom_error_string());
  CHECK(plan[0] == 0 && plan[1] == 1 && plan[2] == 0, "plan %d %d %d", plan[0], plan[1], plan[2]);
  CHECK(loom_offload_plan(s, 0, 1.5, plan) == LOOM_ERR_ARG, "ratio 1.5 accepted");
  loom_pipeline_schedule_destroy(s);
  // interleaved pp 2, m 2, v 2, rank 0 computes F0.0 F1.0 F0.2 F1.2 B0.2 B1.2 B0.0 B1.0: chunk 0
  // lives 6, chunk 1 lives 2; half goes: chunk 0's
  CHECK(loom_pipeline_schedule_create(LOOM_PIPELINE_INTERLEAVED, 2, 2, 2, &s) == LOOM_OK, "%s", loom_error_string());
  CHECK(loom_offload_plan(s, 0, 0.5, plan) == LOOM_OK, "%s", loom_error_string());
  CHECK(plan[0] == 1 && plan[1] == 1 && plan[2] == 0 && plan[3] == 0, "plan %d %d %d %d", plan[0],
        plan[1], plan[2], plan[3]);
  CHECK(loom_offload_plan(s, 0, 1.0, plan) == LOOM_OK && plan[0] + plan[1] + plan[2] + plan[3] == 4, "all");
  loom_pipeline_schedule_destroy(s);
  // split backward: the window ends at I. ZB-H1 rank 0 (pp 2, m 3) computes F0 F1 I0 W0 F2 I1
  // W1 I2 W2: micro-batch 0 lives 2, 1 lives 4, 2 lives 3; rank 1 computes F0 I0 F1 I1 ...:
  // every I right after its F, so nothing is worth offloading there
  CHECK(loom_pipeline_schedule_create(LOOM_PIPELINE_ZBH1, 2, 3, 0, &s) == LOOM_OK, "%s", loom_error_string());
  CHECK(loom_offload_plan(s, 0, 2.0 / 3, plan) == LOOM_OK, "%s", loom_error_string());
  CHECK(plan[0] == 0 && plan[1] == 1 && plan[2] == 1, "plan %d %d %d", plan[0], plan[1], plan[2]);
  CHECK(loom_offload_plan(s, 1, 1.0, plan) == LOOM_OK, "%s", loom_error_string());
  CHECK(plan[0] == 0 && plan[1] == 0 && plan[2] == 0, "plan %d %d %d", plan[0], plan[1], plan[2]);
  loom_pipeline_schedule_destroy(s);
}

int register_pipeline_suite(void) {
  static const unit_test tests[] = {
      {"hand-written lists", test_pipeline_hand_written},
      {"theory grid", test_pipeline_theory_grid},
      {"random costs", test_pipeline_random_costs},
      {"checker finds faults", test_pipeline_checker_finds_faults},
      {"bad shapes", test_pipeline_bad_shapes},
      {"offload plan by lifetime", test_pipeline_offload_plan},
      {NULL, NULL}};
  return unit_add_suite("pipeline", tests);
}
