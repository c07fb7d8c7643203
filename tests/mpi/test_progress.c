/* The progress model of collectives/coll.h: operations on different groups never wait on
 * each other, operations on one group keep their posting order.
 *
 * 1. Ring of groups: with n ranks, group k = {k, k+1 mod n} (for n = 2 two distinct groups of
 *    both ranks). Every rank posts an async allreduce on both of its groups, each rank in its
 *    own order (first the group it opens, then the one it closes), as MPI_Iallreduce allows.
 *    A single serial communication thread deadlocks here (every rank runs the group whose
 *    other member runs its other group first); the watchdog then aborts the run.
 * 2. Cross-group progress: rank 0 posts a large allreduce on group B, which the other ranks
 *    join only after a small all-to-all on group A has completed and rank 0 has told them
 *    so. Rank 0's all-to-all must complete while its allreduce on B is still in flight.
 * 3. Posting order on one group: several async allreduces on one group, waited for in
 *    reverse, each with its own inputs.
 * 4. A ring of sends and receives as one loom_p2p_batch (device buffers: issued at once, as
 *    one NCCL group, ordered after an event of the caller's), then a blocking allreduce
 *    ordered on a stream of the test's own (loom_group_set_stream).
 * 5. loom_status_agree: every member returns an error when any failed, the failed member's
 *    own message stands, the others name the failed rank and carry its code.
 * Buffers are host memory, or device memory under --device cuda. Inputs come from (seed,
 * rank, index) with a fresh seed per run (printed; LOOM_SEED replays one); references are
 * double-precision sums. */
#include <string.h>
#include <time.h>

#include "check.h"

enum { SMALL = 37, LARGE = 1 << 20 };

/* A float32 buffer of `count` elements on the test's device, filled with inputs of `rank`. */
typedef struct {
  float *host;
  void *device; /* NULL in host mode */
  loom_buf buf;
} test_buf;

static void buf_make(check_state *st, test_buf *b, size_t count, uint64_t seed) {
  b->host = malloc(count * sizeof(float));
  if (!b->host) {
    fprintf(stderr, "rank %d: out of memory\n", st->rank);
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
  fill_input(loom_buf_host(b->host, count, LOOM_FLOAT32), seed, st->rank, 0);
  b->device = NULL;
  b->buf = loom_buf_host(b->host, count, LOOM_FLOAT32);
  if (st->device_mode) {
    CHECK_OK(st, loom_device_alloc(st->ctx, count * sizeof(float), &b->device));
    CHECK_OK(st, loom_device_upload(st->ctx, b->device, b->host, count * sizeof(float)));
    b->buf = loom_buf_device(st->ctx, b->device, count, LOOM_FLOAT32);
  }
}

/* Brings the result home (device mode) and frees nothing. */
static void buf_fetch(check_state *st, test_buf *b) {
  if (st->device_mode)
    CHECK_OK(st, loom_device_download(st->ctx, b->host, b->device, b->buf.count * sizeof(float)));
}

static void buf_free(check_state *st, test_buf *b) {
  if (b->device) loom_device_free(st->ctx, b->device);
  free(b->host);
}

/* Element i of the sum over the group's members (world ranks `members`). */
static void check_sum(check_state *st, const char *what, const float *got, size_t count,
                      uint64_t seed, const int *members, int member_count) {
  for (size_t i = 0; i < count; i++) {
    double sum = 0, magnitude = 0;
    for (int m = 0; m < member_count; m++) {
      double v = input_value(LOOM_FLOAT32, seed, members[m], i);
      sum += v;
      magnitude += v < 0 ? -v : v;
    }
    /* float32 sums of <= 4 terms in any order: within 1e-6 of the magnitude */
    expect_near(st, what, i, got[i], sum, 1e-6 * magnitude + 1e-30);
  }
}

static void ring(check_state *st, size_t count) {
  int n = st->size, r = st->rank;
  /* group k = {k, k+1 mod n}; created by n splits of the world, every rank taking part */
  loom_group *opened = NULL, *closed = NULL; /* group r, group r-1 */
  for (int k = 0; k < n; k++) {
    int member = r == k || r == (k + 1) % n;
    char name[32];
    snprintf(name, sizeof name, "RING%d", k);
    loom_group *g = NULL;
    CHECK_OK(st, loom_group_create(st->ctx, NULL, member ? 0 : -1, r == k ? 0 : 1, name, &g));
    if (!member) continue;
    if (k == r) opened = g;
    else closed = g;
  }
  uint64_t seed_opened = st->seed + 2 * (uint64_t)r + 1;             /* of group r */
  uint64_t seed_closed = st->seed + 2 * (uint64_t)((r + n - 1) % n) + 1; /* of group r-1 */
  test_buf a, b;
  buf_make(st, &a, count, seed_opened);
  buf_make(st, &b, count, seed_closed);
  loom_req *first = NULL, *second = NULL;
  CHECK_OK(st, loom_allreduce_async(opened, a.buf, a.buf, LOOM_OP_SUM, &first));
  CHECK_OK(st, loom_allreduce_async(closed, b.buf, b.buf, LOOM_OP_SUM, &second));
  CHECK_OK(st, loom_wait(&second));
  CHECK_OK(st, loom_wait(&first));
  buf_fetch(st, &a);
  buf_fetch(st, &b);
  int members_opened[2] = {r, (r + 1) % n}, members_closed[2] = {(r + n - 1) % n, r};
  check_sum(st, "ring: group opened", a.host, count, seed_opened, members_opened, 2);
  check_sum(st, "ring: group closed", b.host, count, seed_closed, members_closed, 2);
  buf_free(st, &a);
  buf_free(st, &b);
  CHECK_OK(st, loom_group_destroy(opened));
  CHECK_OK(st, loom_group_destroy(closed));
}

static void cross_group(check_state *st) {
  loom_group *small = NULL, *large = NULL, *world = loom_ctx_world(st->ctx);
  CHECK_OK(st, loom_group_create(st->ctx, NULL, 0, 0, "A", &small));
  CHECK_OK(st, loom_group_create(st->ctx, NULL, 0, 0, "B", &large));
  uint64_t seed_small = st->seed + 1000, seed_large = st->seed + 2000;
  test_buf to_all, from_all, big;
  buf_make(st, &to_all, (size_t)SMALL * (size_t)st->size, seed_small);
  buf_make(st, &from_all, (size_t)SMALL * (size_t)st->size, seed_small);
  buf_make(st, &big, LARGE, seed_large);
  int go = 1;
  loom_req *big_req = NULL;
  if (st->rank == 0) {
    CHECK_OK(st, loom_allreduce_async(large, big.buf, big.buf, LOOM_OP_SUM, &big_req));
    CHECK_OK(st, loom_alltoall(small, to_all.buf, from_all.buf));
    int done = 0;
    loom_status s = loom_test(&big_req, &done);
    expect_near(st, "allreduce on B still in flight after the all-to-all on A", 0,
                s == LOOM_INPROGRESS && !done, 1, 0);
    for (int peer = 1; peer < st->size; peer++)
      CHECK_OK(st, loom_send(world, loom_buf_host(&go, 1, LOOM_INT32), peer, 5));
    CHECK_OK(st, loom_wait(&big_req));
  } else {
    CHECK_OK(st, loom_alltoall(small, to_all.buf, from_all.buf));
    CHECK_OK(st, loom_recv(world, loom_buf_host(&go, 1, LOOM_INT32), 0, 5));
    CHECK_OK(st, loom_allreduce(large, big.buf, big.buf, LOOM_OP_SUM));
  }
  buf_fetch(st, &from_all);
  buf_fetch(st, &big);
  /* all-to-all: block p of the result is block `rank` of member p's input */
  for (int p = 0; p < st->size; p++)
    for (size_t i = 0; i < SMALL; i++)
      expect_near(st, "cross: all-to-all block", (size_t)p * SMALL + i,
                  from_all.host[(size_t)p * SMALL + i],
                  input_value(LOOM_FLOAT32, seed_small, p, (size_t)st->rank * SMALL + i), 0);
  int *everyone = malloc(sizeof(int) * (size_t)st->size);
  for (int p = 0; p < st->size; p++) everyone[p] = p;
  check_sum(st, "cross: large allreduce", big.host, LARGE, seed_large, everyone, st->size);
  free(everyone);
  buf_free(st, &to_all);
  buf_free(st, &from_all);
  buf_free(st, &big);
  CHECK_OK(st, loom_group_destroy(small));
  CHECK_OK(st, loom_group_destroy(large));
}

static void posting_order(check_state *st) {
  enum { ROUNDS = 6 };
  loom_group *world = loom_ctx_world(st->ctx);
  test_buf bufs[ROUNDS];
  loom_req *reqs[ROUNDS];
  int *everyone = malloc(sizeof(int) * (size_t)st->size);
  for (int p = 0; p < st->size; p++) everyone[p] = p;
  for (int k = 0; k < ROUNDS; k++) {
    buf_make(st, &bufs[k], (size_t)(SMALL << k), st->seed + 3000 + (uint64_t)k);
    CHECK_OK(st, loom_allreduce_async(world, bufs[k].buf, bufs[k].buf, LOOM_OP_SUM, &reqs[k]));
  }
  for (int k = ROUNDS - 1; k >= 0; k--) CHECK_OK(st, loom_wait(&reqs[k]));
  for (int k = 0; k < ROUNDS; k++) {
    buf_fetch(st, &bufs[k]);
    check_sum(st, "posting order on one group", bufs[k].host, bufs[k].buf.count,
              st->seed + 3000 + (uint64_t)k, everyone, st->size);
    buf_free(st, &bufs[k]);
  }
  free(everyone);
}

static void batch_ring(check_state *st) {
  loom_group *world = loom_ctx_world(st->ctx);
  int n = st->size, r = st->rank, next = (r + 1) % n, prev = (r + n - 1) % n;
  size_t count = 1000 + (size_t)(st->seed % 1000);
  uint64_t seed = st->seed + 4000;
  test_buf out, in;
  buf_make(st, &out, count, seed);
  buf_make(st, &in, count, seed + 1); /* overwritten by the receive */
  loom_event *after = NULL;
  if (st->device_mode) {
    CHECK_OK(st, loom_event_create(st->ctx, &after));
    CHECK_OK(st, loom_event_record(after, NULL)); /* the upload above is on the compute stream */
  }
  loom_p2p ops[2] = {{.buf = out.buf, .peer = next, .tag = 11, .is_send = 1},
                     {.buf = in.buf, .peer = prev, .tag = 11, .is_send = 0}};
  loom_req *req = NULL;
  CHECK_OK(st, loom_p2p_batch(world, ops, 2, after, &req));
  CHECK_OK(st, loom_wait(&req));
  buf_fetch(st, &in);
  for (size_t i = 0; i < count; i++)
    expect_near(st, "batch ring: block from the previous rank", i, in.host[i],
                input_value(LOOM_FLOAT32, seed, prev, i), 0);
  /* an empty batch completes at once */
  CHECK_OK(st, loom_p2p_batch(world, ops, 0, NULL, &req));
  CHECK_OK(st, loom_wait(&req));
  if (st->device_mode) { /* a collective ordered on a stream of the caller's */
    loom_stream *side = NULL;
    CHECK_OK(st, loom_stream_create(st->ctx, &side));
    CHECK_OK(st, loom_group_set_stream(world, loom_stream_cuda(side)));
    CHECK_OK(st, loom_allreduce(world, out.buf, out.buf, LOOM_OP_SUM));
    CHECK_OK(st, loom_stream_synchronize(side));
    CHECK_OK(st, loom_group_set_stream(world, NULL));
    buf_fetch(st, &out);
    int *everyone = malloc(sizeof(int) * (size_t)n);
    for (int p = 0; p < n; p++) everyone[p] = p;
    check_sum(st, "allreduce on a side stream", out.host, count, seed, everyone, n);
    free(everyone);
    CHECK_OK(st, loom_stream_destroy(side));
    CHECK_OK(st, loom_event_destroy(after));
  }
  buf_free(st, &out);
  buf_free(st, &in);
}

static void agreement(check_state *st) {
  loom_group *world = loom_ctx_world(st->ctx);
  expect_near(st, "agree: all OK", 0, loom_status_agree(world, LOOM_OK, "step"), LOOM_OK, 0);
  for (int trial = 0; trial < 3; trial++) {
    /* the failing rank changes with the seed; with 2+ ranks a second, milder failure too */
    int failing = (int)((st->seed + (uint64_t)trial) % (uint64_t)st->size);
    int milder = (failing + 1) % st->size;
    loom_status mine = LOOM_OK;
    if (st->rank == failing) mine = loom_error_set(LOOM_ERR_CORRUPT, "own cause %d", trial);
    else if (st->rank == milder) mine = loom_error_set(LOOM_ERR_ARG, "milder cause %d", trial);
    loom_status got = loom_status_agree(world, mine, "the test step");
    const char *text = loom_error_string();
    if (st->rank == failing) {
      expect_near(st, "agree: failed rank keeps its status", 0, got, LOOM_ERR_CORRUPT, 0);
      expect_near(st, "agree: failed rank keeps its message", 0, strstr(text, "own cause") != NULL,
                  1, 0);
    } else if (st->rank == milder) {
      expect_near(st, "agree: milder failure keeps its own", 0, got, LOOM_ERR_ARG, 0);
    } else {
      char where[32];
      snprintf(where, sizeof where, "rank %d of", failing);
      expect_near(st, "agree: others get the worst code", 0, got, LOOM_ERR_CORRUPT, 0);
      expect_near(st, "agree: others name the rank and step", 0,
                  strstr(text, where) && strstr(text, "the test step"), 1, 0);
    }
  }
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  config.seed = (uint64_t)time(NULL); /* fresh per run unless LOOM_SEED says otherwise */
  check_state st = {0};
  int code = check_start(&st, &config, &argc, &argv, 1);
  if (code >= 0) return code;
  /* every rank must use rank 0's seed */
  MPI_Bcast(&st.seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  if (st.rank == 0)
    printf("test_progress: %d ranks, %s buffers, seed %llu (LOOM_SEED=%llu replays it)\n",
           st.size, st.device_mode ? "device" : "host", (unsigned long long)st.seed,
           (unsigned long long)st.seed);
  if (st.size >= 2) {
    ring(&st, SMALL);
    ring(&st, LARGE / 4);
    cross_group(&st);
  }
  posting_order(&st);
  if (st.size >= 2 || !st.device_mode) batch_ring(&st); /* NCCL refuses a transfer to oneself */
  agreement(&st);
  code = check_finish(&st, "test_progress");
  loom_finalize(st.ctx);
  return code;
}
