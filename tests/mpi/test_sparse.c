/* Sparse all-to-all at 0%, 10% and 100% pair density: the plan's receive side (sources and
 * counts learned by NBX) and the data are checked against what every rank can recompute from
 * (seed, source, destination). Plans are reused, and exchanged asynchronously. */
#include <string.h>

#include "check.h"

/* Whether member s sends to member d, and how many elements (0 = no pair). */
static size_t pair_count(uint64_t seed, int s, int d, int permille, size_t large) {
  uint32_t word = loom_rng_word_at(seed, LOOM_RNG_TEST + 2, (uint32_t)s, (uint64_t)d);
  if ((int)(word % 1000) >= permille) return 0;
  return large ? large + (word >> 20) % 5 : 1 + (word >> 16) % 23;
}

/* Data element i of the block s -> d. */
static double block_value(loom_dtype dt, uint64_t seed, int s, int d, size_t i) {
  return input_value(dt, seed + 1 + (uint64_t)d, s, i);
}

static void run_case(check_state *st, loom_group *g, loom_dtype dt, int permille, size_t large,
                     int async) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt);
  uint64_t seed = (st->seed += 1000);
  int *peers = malloc(sizeof(int) * (size_t)size);
  size_t *counts = malloc(sizeof(size_t) * (size_t)size);
  /* Pairs in descending peer order: the plan keeps the caller's order on the send side. */
  int pairs = 0;
  for (int d = size - 1; d >= 0; d--) {
    peers[pairs] = d;
    counts[pairs++] = pair_count(seed, me, d, permille, large);
  }
  loom_sparse_plan plan;
  CHECK_OK(st, loom_sparse_plan_create(g, dt, pairs, peers, counts, &plan));

  char what[128];
  snprintf(what, sizeof what, "sparse %s %s density=%d%% %s%s", loom_group_name(g),
           loom_dtype_name(dt), permille / 10, large ? "large " : "", async ? "async" : "");
  /* Receive side: every source with a non-empty pair to me, ascending, with its count. */
  int expected_sources = 0;
  for (int s = 0; s < size; s++) {
    size_t c = pair_count(seed, s, me, permille, large);
    if (!c) continue;
    int k = expected_sources++;
    expect_near(st, what, (size_t)k, k < plan.recv_count ? plan.recv_peers[k] : -1, s, 0);
    expect_near(st, what, (size_t)k, k < plan.recv_count ? (double)plan.recv_counts[k] : -1,
                (double)c, 0);
  }
  expect_near(st, "sparse recv_count", 0, plan.recv_count, expected_sources, 0);

  char *send = malloc(plan.send_total * es + 1), *recv = malloc(plan.recv_total * es + 1);
  for (int k = 0; k < plan.send_count; k++)
    for (size_t i = 0; i < plan.send_counts[k]; i++)
      loom_dtype_store(send, dt, plan.send_displs[k] + i,
                       block_value(dt, seed, me, plan.send_peers[k], i));
  /* Device mode: the exchange runs on GPU copies of the buffers. */
  void *dsend = NULL, *drecv = NULL;
  if (st->device_mode) {
    CHECK_OK(st, loom_device_alloc(st->ctx, plan.send_total * es + 1, &dsend));
    CHECK_OK(st, loom_device_alloc(st->ctx, plan.recv_total * es + 1, &drecv));
    CHECK_OK(st, loom_device_upload(st->ctx, dsend, send, plan.send_total * es));
  }
  for (int round = 0; round < 2; round++) { /* the same plan twice */
    poison(recv, plan.recv_total * es);
    loom_buf sb = loom_buf_host(send, plan.send_total, dt), rb = loom_buf_host(recv, plan.recv_total, dt);
    if (st->device_mode) {
      CHECK_OK(st, loom_device_upload(st->ctx, drecv, recv, plan.recv_total * es));
      sb = loom_buf_device(st->ctx, dsend, plan.send_total, dt);
      rb = loom_buf_device(st->ctx, drecv, plan.recv_total, dt);
    }
    if (async) {
      loom_req *req = NULL;
      CHECK_OK(st, loom_alltoall_sparse_async(g, &plan, sb, rb, &req));
      CHECK_OK(st, loom_wait(&req));
    } else {
      CHECK_OK(st, loom_alltoall_sparse(g, &plan, sb, rb));
    }
    if (st->device_mode)
      CHECK_OK(st, loom_device_download(st->ctx, recv, drecv, plan.recv_total * es));
    for (int k = 0; k < plan.recv_count; k++)
      for (size_t i = 0; i < plan.recv_counts[k]; i++)
        expect_near(st, what, plan.recv_displs[k] + i,
                    loom_dtype_load(recv, dt, plan.recv_displs[k] + i),
                    block_value(dt, seed, plan.recv_peers[k], me, i), 0);
  }
  free(send), free(recv), free(peers), free(counts);
  loom_device_free(st->ctx, dsend);
  loom_device_free(st->ctx, drecv);
  loom_sparse_plan_free(&plan);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  int early = check_start(&st, &config, &argc, &argv, 7919u);
  if (early >= 0) return early;
  loom_group *world = loom_ctx_world(st.ctx);
  static const int densities[] = {0, 100, 1000};
  static const loom_dtype dtypes[] = {LOOM_FLOAT32, LOOM_FLOAT64, LOOM_BFLOAT16, LOOM_UINT8,
                                      LOOM_INT64};
  for (int d = 0; d < 3; d++)
    for (size_t t = 0; t < sizeof dtypes / sizeof dtypes[0]; t++)
      for (int async = 0; async < 2; async++)
        for (int repeat = 0; repeat < 3; repeat++) /* consecutive NBX rounds, fresh patterns */
          run_case(&st, world, dtypes[t], densities[d], 0, async);
  /* Large blocks (rendezvous protocol) at 10% and 100% */
  run_case(&st, world, LOOM_FLOAT32, 100, 200000, 0);
  run_case(&st, world, LOOM_FLOAT32, 1000, 100000, 1);

  /* A subgroup: the world split in two halves (odd sizes give uneven halves). */
  loom_group *half = NULL;
  CHECK_OK(&st, loom_group_create(st.ctx, world, st.rank < (st.size + 1) / 2, st.rank, "HALF",
                                  &half));
  for (int d = 0; d < 3; d++) run_case(&st, half, LOOM_FLOAT32, densities[d], 0, d == 1);
  CHECK_OK(&st, loom_group_destroy(half));

  /* Bad input: a peer out of range and a peer named twice. */
  int bad_peers[2] = {0, st.size};
  size_t bad_counts[2] = {1, 1};
  loom_sparse_plan plan;
  loom_status s = loom_sparse_plan_init(&plan, LOOM_FLOAT32, st.size, 2, bad_peers, bad_counts);
  expect_near(&st, "sparse peer out of range -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
  bad_peers[1] = 0;
  s = loom_sparse_plan_init(&plan, LOOM_FLOAT32, st.size, 2, bad_peers, bad_counts);
  expect_near(&st, "sparse duplicate peer -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);

  int code = check_finish(&st, "test_sparse");
  loom_finalize(st.ctx);
  return code;
}
