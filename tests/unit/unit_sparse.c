/* Unit tests of sparse exchange plans: the send side keeps the caller's nonzero pairs packed in
 * order, the receive side is sorted by source, and bad peers are rejected; random plans over
 * several group sizes and densities are checked against a per-peer reference. */
#include <stdlib.h>
#include <string.h>

#include "collectives/sparse.h"
#include "runtime/dtype.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#include "unit.h"

static void test_sparse_plan_fixed(void) {
  loom_sparse_plan plan;
  const int peers[] = {5, 2, 7, 0, 3};
  const size_t counts[] = {10, 0, 4, 6, 0};
  CHECK(loom_sparse_plan_init(&plan, LOOM_FLOAT32, 8, 5, peers, counts) == LOOM_OK, "%s",
        loom_error_string());
  CHECK(plan.dtype == LOOM_FLOAT32 && plan.send_count == 3 && plan.send_total == 20,
        "count %d total %zu", plan.send_count, plan.send_total);
  if (plan.send_count == 3) {
    CHECK(plan.send_peers[0] == 5 && plan.send_peers[1] == 7 && plan.send_peers[2] == 0,
          "peers %d %d %d (caller order, zeros dropped)", plan.send_peers[0],
          plan.send_peers[1], plan.send_peers[2]);
    CHECK(plan.send_counts[0] == 10 && plan.send_counts[1] == 4 && plan.send_counts[2] == 6,
          "counts");
    CHECK(plan.send_displs[0] == 0 && plan.send_displs[1] == 10 && plan.send_displs[2] == 14,
          "displs %zu %zu %zu", plan.send_displs[0], plan.send_displs[1], plan.send_displs[2]);
  }
  const int sources[] = {6, 1, 4, 3, 0};
  const size_t incoming[] = {3, 0, 8, 1, 2};
  CHECK(loom_sparse_plan_set_incoming(&plan, 5, sources, incoming) == LOOM_OK, "%s",
        loom_error_string());
  CHECK(plan.recv_count == 4 && plan.recv_total == 14, "recv count %d total %zu",
        plan.recv_count, plan.recv_total);
  if (plan.recv_count == 4) {
    CHECK(plan.recv_peers[0] == 0 && plan.recv_peers[1] == 3 && plan.recv_peers[2] == 4 &&
              plan.recv_peers[3] == 6,
          "sources %d %d %d %d", plan.recv_peers[0], plan.recv_peers[1], plan.recv_peers[2],
          plan.recv_peers[3]);
    CHECK(plan.recv_counts[0] == 2 && plan.recv_counts[1] == 1 && plan.recv_counts[2] == 8 &&
              plan.recv_counts[3] == 3,
          "recv counts");
    CHECK(plan.recv_displs[0] == 0 && plan.recv_displs[1] == 2 && plan.recv_displs[2] == 3 &&
              plan.recv_displs[3] == 11,
          "recv displs");
  }
  /* setting the receive side again replaces it (no leak under the sanitizer build) */
  const int again[] = {2};
  const size_t again_counts[] = {9};
  CHECK(loom_sparse_plan_set_incoming(&plan, 1, again, again_counts) == LOOM_OK &&
            plan.recv_count == 1 && plan.recv_total == 9 && plan.recv_peers[0] == 2,
        "second set_incoming");
  const int duplicate[] = {4, 1, 4};
  const size_t duplicate_counts[] = {1, 2, 3};
  CHECK(loom_sparse_plan_set_incoming(&plan, 3, duplicate, duplicate_counts) == LOOM_ERR_CORRUPT,
        "duplicate source accepted");
  CHECK_CONTAINS(loom_error_string(), "source 4");
  loom_sparse_plan_free(&plan);
  CHECK(plan.send_peers == NULL && plan.recv_peers == NULL && plan.send_count == 0 &&
            plan.recv_total == 0,
        "free left fields set");
  loom_sparse_plan_free(&plan); /* twice is harmless */
  loom_sparse_plan_free(NULL);

  /* rejections: peer out of range, a peer named twice (even with count 0) */
  const struct {
    int peers[3];
    size_t counts[3];
    const char *needle;
  } bad[] = {{{1, -1, 2}, {1, 1, 1}, "peer -1"},
             {{1, 8, 2}, {1, 1, 1}, "peer 8"},
             {{3, 1, 3}, {1, 1, 1}, "peer 3"},
             {{3, 1, 3}, {0, 1, 5}, "peer 3"}};
  for (int i = 0; i < 4; i++) {
    loom_sparse_plan p;
    CHECK(loom_sparse_plan_init(&p, LOOM_INT32, 8, 3, bad[i].peers, bad[i].counts) ==
              LOOM_ERR_ARG,
          "bad plan %d accepted", i);
    CHECK_CONTAINS(loom_error_string(), bad[i].needle);
    CHECK(p.send_peers == NULL && p.send_count == 0, "rejected plan %d kept memory", i);
    loom_sparse_plan_free(&p);
  }
  loom_sparse_plan empty;
  CHECK(loom_sparse_plan_init(&empty, LOOM_UINT8, 4, 0, NULL, NULL) == LOOM_OK &&
            empty.send_count == 0 && empty.send_total == 0,
        "empty plan");
  CHECK(loom_sparse_plan_set_incoming(&empty, 0, NULL, NULL) == LOOM_OK &&
            empty.recv_count == 0 && empty.recv_total == 0,
        "empty incoming");
  loom_sparse_plan_free(&empty);
  CHECK(loom_sparse_plan_init(&empty, LOOM_DTYPE_COUNT, 4, 0, NULL, NULL) == LOOM_ERR_ARG,
        "invalid dtype accepted");
  loom_sparse_plan_free(&empty);
  CHECK(loom_sparse_plan_init(NULL, LOOM_UINT8, 4, 0, NULL, NULL) == LOOM_ERR_ARG, "NULL plan");
}

static void test_sparse_plan_random(void) {
  loom_rng rng = input_rng(50);
  const double densities[] = {0.0, 0.1, 1.0};
  const int group_sizes[] = {1, 7, 64, 257};
  for (int di = 0; di < 3; di++) {
    for (int gi = 0; gi < 4; gi++) {
      for (int trial = 0; trial < 5; trial++) {
        const int g = group_sizes[gi];
        int *order = malloc(sizeof(int) * (size_t)g), *peers = malloc(sizeof(int) * (size_t)g);
        size_t *counts = malloc(sizeof(size_t) * (size_t)g);
        size_t *by_peer = calloc((size_t)g, sizeof(size_t)); /* reference: count per peer */
        for (int p = 0; p < g; p++) order[p] = p;
        shuffle(&rng, order, g);
        int pairs = 0;
        for (int i = 0; i < g; i++) {
          int with_data = loom_rng_uniform(&rng) < densities[di];
          if (!with_data && loom_rng_below(&rng, 2)) continue; /* omitted, or named with 0 */
          peers[pairs] = order[i];
          counts[pairs] = with_data ? 1 + loom_rng_below(&rng, 1000) : 0;
          by_peer[order[i]] = counts[pairs];
          pairs++;
        }
        loom_sparse_plan plan;
        CHECK(loom_sparse_plan_init(&plan, LOOM_BFLOAT16, g, pairs, peers, counts) == LOOM_OK,
              "%s", loom_error_string());
        /* reference: the nonzero pairs in caller order, packed back to back */
        int k = 0, bad = 0;
        size_t offset = 0;
        for (int i = 0; i < pairs; i++) {
          if (counts[i] == 0) continue;
          if (k >= plan.send_count || plan.send_peers[k] != peers[i] ||
              plan.send_counts[k] != counts[i] || plan.send_displs[k] != offset)
            bad++;
          offset += counts[i];
          k++;
        }
        CHECK(bad == 0 && k == plan.send_count && offset == plan.send_total,
              "g %d density %.1f: %d bad send entries, count %d/%d total %zu/%zu", g,
              densities[di], bad, plan.send_count, k, plan.send_total, offset);

        /* the receive side from the same pairs in another order: sorted by source */
        shuffle(&rng, order, g);
        int *sources = malloc(sizeof(int) * (size_t)g);
        size_t *incoming = malloc(sizeof(size_t) * (size_t)g);
        int n = 0;
        for (int i = 0; i < g; i++)
          if (by_peer[order[i]] > 0 || loom_rng_below(&rng, 4) == 0) {
            sources[n] = order[i];
            incoming[n++] = by_peer[order[i]];
          }
        CHECK(loom_sparse_plan_set_incoming(&plan, n, sources, incoming) == LOOM_OK, "%s",
              loom_error_string());
        k = 0, bad = 0, offset = 0;
        for (int source = 0; source < g; source++) {
          if (by_peer[source] == 0) continue;
          if (k >= plan.recv_count || plan.recv_peers[k] != source ||
              plan.recv_counts[k] != by_peer[source] || plan.recv_displs[k] != offset)
            bad++;
          offset += by_peer[source];
          k++;
        }
        CHECK(bad == 0 && k == plan.recv_count && offset == plan.recv_total &&
                  plan.recv_total == plan.send_total,
              "g %d density %.1f: %d bad recv entries, count %d/%d total %zu/%zu", g,
              densities[di], bad, plan.recv_count, k, plan.recv_total, offset);
        if (densities[di] == 0.0)
          CHECK(plan.send_count == 0 && plan.recv_count == 0, "density 0 kept pairs");
        if (densities[di] == 1.0)
          CHECK(plan.send_count == g && plan.recv_count == g, "density 1 dropped pairs");
        loom_sparse_plan_free(&plan);
        free(order);
        free(peers);
        free(counts);
        free(by_peer);
        free(sources);
        free(incoming);
      }
    }
  }
}

int register_sparse_suite(void) {
  static const unit_test tests[] = {
      {"fixed plan", test_sparse_plan_fixed},
      {"random plans", test_sparse_plan_random},
      {NULL, NULL}};
  return unit_add_suite("sparse", tests);
}
