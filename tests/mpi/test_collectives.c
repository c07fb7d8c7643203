/* Every collective x dtype x op, in place and out of place, over odd sizes (0, 1, primes, not
 * divisible by the rank count), flat and hierarchical, on the world group and on mesh
 * subgroups, against double-precision references computed from (seed, rank, index).
 * Run under mpirun with 1..8 ranks; LOOM_RANKS_PER_NODE simulates several nodes. */
#include <string.h>

#include "check.h"

static const size_t sizes[] = {0, 1, 2, 7, 13, 97, 1031};
enum { SIZE_COUNT = sizeof sizes / sizeof sizes[0] };

/* Device mode (--device cuda): every test buffer is allocated on the host and mirrored on
 * the GPU; B() maps a host pointer inside a mirrored allocation to the device address at the
 * same offset, so in-place layouts carry over. push() uploads every mirror before a call,
 * pull() downloads them after, so the host-side checks (and poisoned, unwritten elements)
 * work unchanged. */
enum { MAX_MIRRORS = 64 };
static struct {
  char *host;
  char *device;
  size_t bytes;
} mirrors[MAX_MIRRORS];
static check_state *state; /* the one state of this process, for the mirror helpers */

static void *alloc_bytes(size_t bytes) {
  char *p = malloc(bytes + 16);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    MPI_Abort(MPI_COMM_WORLD, 4);
  }
  if (state->device_mode) {
    int slot = 0;
    while (slot < MAX_MIRRORS && mirrors[slot].host) slot++;
    if (slot == MAX_MIRRORS) MPI_Abort(MPI_COMM_WORLD, 5);
    void *device = NULL;
    CHECK_OK(state, loom_device_alloc(state->ctx, bytes + 16, &device));
    mirrors[slot].host = p;
    mirrors[slot].device = device;
    mirrors[slot].bytes = bytes + 16;
  }
  return p;
}

static void release(void *p) {
  for (int i = 0; i < MAX_MIRRORS; i++)
    if (mirrors[i].host && mirrors[i].host == p) {
      loom_device_free(state->ctx, mirrors[i].device);
      mirrors[i].host = NULL;
    }
  free(p);
}

static loom_buf B(void *host, size_t count, loom_dtype dtype) {
  if (!state->device_mode) return loom_buf_host(host, count, dtype);
  for (int i = 0; i < MAX_MIRRORS; i++)
    if (mirrors[i].host && (char *)host >= mirrors[i].host &&
        (char *)host < mirrors[i].host + mirrors[i].bytes)
      return loom_buf_device(state->ctx, mirrors[i].device + ((char *)host - mirrors[i].host),
                             count, dtype);
  fprintf(stderr, "test bug: %p is not a mirrored allocation\n", host);
  MPI_Abort(MPI_COMM_WORLD, 6);
  return loom_buf_host(host, count, dtype);
}

static void push(void) {
  for (int i = 0; state->device_mode && i < MAX_MIRRORS; i++)
    if (mirrors[i].host)
      CHECK_OK(state, loom_device_upload(state->ctx, mirrors[i].device, mirrors[i].host, mirrors[i].bytes));
}

static void pull(void) {
  for (int i = 0; state->device_mode && i < MAX_MIRRORS; i++)
    if (mirrors[i].host)
      CHECK_OK(state, loom_device_download(state->ctx, mirrors[i].host, mirrors[i].device, mirrors[i].bytes));
}

/* NCCL reduces bfloat16/float16 natively, rounding at each of the ring's size - 1 steps (and
 * AVG premultiplies in the dtype), so device results of 16-bit floats may sit a few ulps from
 * the once-rounded reference: the tolerance grows with the rank count there. */
static double device_tolerance(const check_state *st, loom_dtype dt, int ranks, double tolerance) {
  if (st->device_mode && (dt == LOOM_BFLOAT16 || dt == LOOM_FLOAT16) && ranks > 2)
    return tolerance * ranks / 2.0;
  return tolerance;
}

static void label(char *out, size_t bytes, const char *coll, const loom_group *g, loom_dtype dt,
                  const char *op, size_t n, int in_place) {
  snprintf(out, bytes, "%s %s %s %s n=%zu %s", coll, loom_group_name(g), loom_dtype_name(dt), op,
           n, in_place ? "in-place" : "out-of-place");
}

static void test_allreduce(check_state *st, loom_group *g, loom_dtype dt, loom_op op, size_t n,
                           int in_place) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt);
  uint64_t seed = ++st->seed;
  void *send = alloc_bytes(n * es), *recv = in_place ? send : alloc_bytes(n * es);
  fill_input(loom_buf_host(send, n, dt), seed, me, 0);
  if (!in_place) poison(recv, n * es);
  push();
  CHECK_OK(st, loom_allreduce(g, B(send, n, dt), B(recv, n, dt), op));
  pull();
  char what[160];
  label(what, sizeof what, "allreduce", g, dt, loom_op_name(op), n, in_place);
  for (size_t i = 0; i < n; i++) {
    double expected, tolerance;
    reference_reduction(dt, op, seed, size, i, &expected, &tolerance);
    tolerance = device_tolerance(st, dt, size, tolerance);
    expect_near(st, what, i, loom_dtype_load(recv, dt, i), expected, tolerance);
  }
  if (!in_place) release(recv);
  release(send);
}

static void test_reduce(check_state *st, loom_group *g, loom_dtype dt, loom_op op, size_t n,
                        int in_place, int root) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt);
  uint64_t seed = ++st->seed;
  int use_in_place = in_place && me == root;
  void *send = alloc_bytes(n * es), *recv = use_in_place ? send : alloc_bytes(n * es);
  fill_input(loom_buf_host(send, n, dt), seed, me, 0);
  if (!use_in_place) poison(recv, n * es);
  push();
  CHECK_OK(st, loom_reduce(g, B(send, n, dt), B(recv, n, dt), op, root));
  pull();
  char what[160];
  label(what, sizeof what, "reduce", g, dt, loom_op_name(op), n, in_place);
  for (size_t i = 0; me == root && i < n; i++) {
    double expected, tolerance;
    reference_reduction(dt, op, seed, size, i, &expected, &tolerance);
    tolerance = device_tolerance(st, dt, size, tolerance);
    expect_near(st, what, i, loom_dtype_load(recv, dt, i), expected, tolerance);
  }
  /* The send buffer of a non-root must be left alone. */
  for (size_t i = 0; me != root && i < n; i++)
    expect_near(st, "reduce keeps send", i, loom_dtype_load(send, dt, i),
                input_value(dt, seed, me, i), 0);
  if (!use_in_place) release(recv);
  release(send);
}

static void test_broadcast(check_state *st, loom_group *g, loom_dtype dt, size_t n, int root) {
  int me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt);
  uint64_t seed = ++st->seed;
  void *buf = alloc_bytes(n * es);
  if (me == root) fill_input(loom_buf_host(buf, n, dt), seed, root, 0);
  else poison(buf, n * es);
  push();
  CHECK_OK(st, loom_broadcast(g, B(buf, n, dt), root));
  pull();
  char what[160];
  label(what, sizeof what, "broadcast", g, dt, "-", n, 1);
  for (size_t i = 0; i < n; i++)
    expect_near(st, what, i, loom_dtype_load(buf, dt, i), input_value(dt, seed, root, i), 0);
  release(buf);
}

static void test_allgather(check_state *st, loom_group *g, loom_dtype dt, size_t n, int in_place) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt), total = n * (size_t)size;
  uint64_t seed = ++st->seed;
  char *recv = alloc_bytes(total * es);
  poison(recv, total * es);
  char *send = in_place ? recv + (size_t)me * n * es : alloc_bytes(n * es);
  fill_input(loom_buf_host(send, n, dt), seed, me, 0);
  push();
  CHECK_OK(st, loom_allgather(g, B(send, n, dt), B(recv, total, dt)));
  pull();
  char what[160];
  label(what, sizeof what, "allgather", g, dt, "-", n, in_place);
  for (int r = 0; r < size; r++)
    for (size_t i = 0; i < n; i++)
      expect_near(st, what, (size_t)r * n + i, loom_dtype_load(recv, dt, (size_t)r * n + i),
                  input_value(dt, seed, r, i), 0);
  if (!in_place) release(send);
  release(recv);
}

static void test_reduce_scatter(check_state *st, loom_group *g, loom_dtype dt, loom_op op,
                                size_t n, int in_place) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt), total = n * (size_t)size;
  uint64_t seed = ++st->seed;
  char *send = alloc_bytes(total * es);
  fill_input(loom_buf_host(send, total, dt), seed, me, 0);
  char *recv = in_place ? send + (size_t)me * n * es : alloc_bytes(n * es);
  if (!in_place) poison(recv, n * es);
  push();
  CHECK_OK(st, loom_reduce_scatter(g, B(send, total, dt), B(recv, n, dt),
                                   op));
  pull();
  char what[160];
  label(what, sizeof what, "reduce_scatter", g, dt, loom_op_name(op), n, in_place);
  for (size_t i = 0; i < n; i++) {
    double expected, tolerance;
    reference_reduction(dt, op, seed, size, (size_t)me * n + i, &expected, &tolerance);
    tolerance = device_tolerance(st, dt, size, tolerance);
    expect_near(st, what, i, loom_dtype_load(recv, dt, i), expected, tolerance);
  }
  if (!in_place) release(recv);
  release(send);
}

static void test_alltoall(check_state *st, loom_group *g, loom_dtype dt, size_t n, int in_place) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt), total = n * (size_t)size;
  uint64_t seed = ++st->seed;
  char *send = alloc_bytes(total * es), *recv = in_place ? send : alloc_bytes(total * es);
  fill_input(loom_buf_host(send, total, dt), seed, me, 0);
  if (!in_place) poison(recv, total * es);
  push();
  CHECK_OK(st, loom_alltoall(g, B(send, total, dt), B(recv, total, dt)));
  pull();
  char what[160];
  label(what, sizeof what, "alltoall", g, dt, "-", n, in_place);
  for (int r = 0; r < size; r++)
    for (size_t i = 0; i < n; i++)
      expect_near(st, what, (size_t)r * n + i, loom_dtype_load(recv, dt, (size_t)r * n + i),
                  input_value(dt, seed, r, (size_t)me * n + i), 0);
  if (!in_place) release(recv);
  release(send);
}

/* Elements member s sends member d in the alltoallv case: 0..5, many zeros. */
static size_t v_count(uint64_t seed, int s, int d) {
  return loom_rng_word_at(seed, LOOM_RNG_TEST + 1, (uint32_t)s, (uint64_t)d) % 6;
}

static void test_alltoallv(check_state *st, loom_group *g, loom_dtype dt) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt);
  uint64_t seed = ++st->seed;
  size_t *sc = calloc((size_t)size, sizeof *sc), *sd = calloc((size_t)size, sizeof *sd);
  size_t *rc = calloc((size_t)size, sizeof *rc), *rd = calloc((size_t)size, sizeof *rd);
  size_t send_total = 0, recv_total = 0;
  for (int d = 0; d < size; d++) {
    sc[d] = v_count(seed, me, d);
    sd[d] = send_total;
    send_total += sc[d];
  }
  for (int s = 0; s < size; s++) {
    rc[s] = v_count(seed, s, me);
    rd[s] = recv_total + 1; /* a gap of one element between blocks: displs are honoured */
    recv_total += rc[s] + 1;
  }
  char *send = alloc_bytes(send_total * es), *recv = alloc_bytes(recv_total * es);
  fill_input(loom_buf_host(send, send_total, dt), seed, me, 0);
  poison(recv, recv_total * es);
  push();
  CHECK_OK(st, loom_alltoallv(g, B(send, send_total, dt), sc, sd,
                              B(recv, recv_total, dt), rc, rd));
  pull();
  char what[160];
  label(what, sizeof what, "alltoallv", g, dt, "-", recv_total, 0);
  for (int s = 0; s < size; s++) {
    size_t offset = 0; /* where my block starts in s's send buffer */
    for (int d = 0; d < me; d++) offset += v_count(seed, s, d);
    for (size_t i = 0; i < rc[s]; i++)
      expect_near(st, what, rd[s] + i, loom_dtype_load(recv, dt, rd[s] + i),
                  input_value(dt, seed, s, offset + i), 0);
  }
  release(send), release(recv), free(sc), free(sd), free(rc), free(rd);
}

static void test_send_recv(check_state *st, loom_group *g, loom_dtype dt, size_t n) {
  int size = loom_group_size(g), me = loom_group_rank(g);
  if (st->device_mode && size == 1) { /* device self point-to-point is refused */
    float x;
    loom_req *req = NULL;
    loom_status s = loom_send_async(g, loom_buf_device(st->ctx, &x, 1, LOOM_FLOAT32), 0, 0, &req);
    expect_near(st, "device send to self -> ERR_UNSUPPORTED", 0, s, LOOM_ERR_UNSUPPORTED, 0);
    return;
  }
  size_t es = loom_dtype_size(dt);
  uint64_t seed = ++st->seed;
  int to = (me + 1) % size, from = (me + size - 1) % size;
  char *send = alloc_bytes(n * es), *recv = alloc_bytes(n * es);
  fill_input(loom_buf_host(send, n, dt), seed, me, 0);
  poison(recv, n * es);
  loom_req *reqs[2] = {NULL, NULL};
  push();
  CHECK_OK(st, loom_recv_async(g, B(recv, n, dt), from, 7, &reqs[0]));
  CHECK_OK(st, loom_send_async(g, B(send, n, dt), to, 7, &reqs[1]));
  CHECK_OK(st, loom_wait_all(reqs, 2));
  pull();
  for (size_t i = 0; i < n; i++)
    expect_near(st, "send/recv ring", i, loom_dtype_load(recv, dt, i),
                input_value(dt, seed, from, i), 0);
  release(send), release(recv);
}

/* Several tensors of one dtype reduced by one fused call. */
static void test_fused(check_state *st, loom_group *g, loom_dtype dt, loom_op op) {
  static const size_t counts[] = {1, 7, 0, 33, 128, 5};
  enum { TENSORS = sizeof counts / sizeof counts[0] };
  int size = loom_group_size(g), me = loom_group_rank(g);
  size_t es = loom_dtype_size(dt);
  uint64_t seeds[TENSORS];
  loom_buf bufs[TENSORS];
  for (int t = 0; t < TENSORS; t++) {
    seeds[t] = ++st->seed;
    bufs[t] = loom_buf_host(alloc_bytes(counts[t] * es), counts[t], dt);
    fill_input(bufs[t], seeds[t], me, 0);
  }
  loom_buf mapped[TENSORS];
  for (int t = 0; t < TENSORS; t++) mapped[t] = B(bufs[t].ptr, counts[t], dt);
  push();
  CHECK_OK(st, loom_allreduce_fused(g, mapped, TENSORS, op));
  pull();
  char what[160];
  label(what, sizeof what, "allreduce_fused", g, dt, loom_op_name(op), TENSORS, 1);
  for (int t = 0; t < TENSORS; t++) {
    for (size_t i = 0; i < counts[t]; i++) {
      double expected, tolerance;
      reference_reduction(dt, op, seeds[t], size, i, &expected, &tolerance);
    tolerance = device_tolerance(st, dt, size, tolerance);
      expect_near(st, what, i, loom_dtype_load(bufs[t].ptr, dt, i), expected, tolerance);
    }
    release(bufs[t].ptr);
  }
}

/* Non-blocking forms: several operations in flight at once complete correctly, in order. */
static void test_async(check_state *st, loom_group *g) {
  enum { N = 257, OPS = 4 };
  int size = loom_group_size(g), me = loom_group_rank(g);
  uint64_t seeds[OPS];
  float *bufs[OPS];
  loom_req *reqs[OPS + 2];
  for (int k = 0; k < OPS; k++) {
    seeds[k] = ++st->seed;
    bufs[k] = alloc_bytes(N * sizeof(float));
    fill_input(loom_buf_host(bufs[k], N, LOOM_FLOAT32), seeds[k], me, 0);
  }
  uint64_t gather_seed = ++st->seed;
  double *mine = alloc_bytes(sizeof(double));
  *mine = input_value(LOOM_FLOAT64, gather_seed, me, 0);
  double *gathered = alloc_bytes(sizeof(double) * (size_t)size);
  push(); /* once: uploads must not touch buffers of operations in flight */
  for (int k = 0; k < OPS; k++)
    CHECK_OK(st, loom_allreduce_async(g, B(bufs[k], N, LOOM_FLOAT32), B(bufs[k], N, LOOM_FLOAT32),
                                      LOOM_OP_SUM, &reqs[k]));
  CHECK_OK(st, loom_allgather_async(g, B(mine, 1, LOOM_FLOAT64),
                                    B(gathered, (size_t)size, LOOM_FLOAT64), &reqs[OPS]));
  CHECK_OK(st, loom_barrier_async(g, &reqs[OPS + 1]));
  /* loom_test until done, on one of them, then wait for the rest */
  int done = 0;
  while (!done) {
    loom_status s = loom_test(&reqs[OPS + 1], &done);
    if (s < 0) CHECK_OK(st, s);
  }
  CHECK_OK(st, loom_wait_all(reqs, OPS + 1));
  pull();
  for (int k = 0; k < OPS; k++) {
    for (size_t i = 0; i < N; i++) {
      double expected, tolerance;
      reference_reduction(LOOM_FLOAT32, LOOM_OP_SUM, seeds[k], size, i, &expected, &tolerance);
    tolerance = device_tolerance(st, LOOM_FLOAT32, size, tolerance);
      expect_near(st, "allreduce_async", i, bufs[k][i], expected, tolerance);
    }
    release(bufs[k]);
  }
  for (int r = 0; r < size; r++)
    expect_near(st, "allgather_async", (size_t)r, gathered[r],
                input_value(LOOM_FLOAT64, gather_seed, r, 0), 0);
  release(gathered);
  release(mine);
}

/* Bad arguments fail with LOOM_ERR_ARG / LOOM_ERR_UNSUPPORTED before any communication. */
static void test_bad_arguments(check_state *st, loom_group *g) {
  float a[4] = {0}, b[8] = {0};
  loom_status s;
  s = loom_allreduce(g, loom_buf_host(a, 4, LOOM_FLOAT32), loom_buf_host(b, 3, LOOM_FLOAT32),
                     LOOM_OP_SUM);
  expect_near(st, "allreduce count mismatch -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
  s = loom_allreduce(g, loom_buf_host(a, 4, LOOM_FLOAT32), loom_buf_host(b, 4, LOOM_INT32),
                     LOOM_OP_SUM);
  expect_near(st, "allreduce dtype mismatch -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
  s = loom_allreduce(g, loom_buf_host(a, 4, LOOM_FLOAT32), loom_buf_host(b, 4, LOOM_FLOAT32),
                     (loom_op)9);
  expect_near(st, "allreduce bad op -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
  s = loom_broadcast(g, loom_buf_host(a, 4, LOOM_FLOAT32), loom_group_size(g));
  expect_near(st, "broadcast bad root -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
  s = loom_allgather(g, loom_buf_host(a, 4, LOOM_FLOAT32),
                     loom_buf_host(b, 4 * (size_t)loom_group_size(g) + 1, LOOM_FLOAT32));
  expect_near(st, "allgather recv size -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
  loom_buf device = loom_buf_host(a, 4, LOOM_FLOAT32);
  device.device.kind = LOOM_DEVICE_CUDA;
  if (st->device_mode) { /* a GPU this rank does not drive */
    device.device.ordinal = loom_ctx_device(st->ctx).ordinal + 1;
    s = loom_allreduce(g, device, device, LOOM_OP_SUM);
    expect_near(st, "buffer on another GPU -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
  } else {
    s = loom_allreduce(g, device, device, LOOM_OP_SUM);
    expect_near(st, "CUDA buffer on a CPU rank -> ERR_UNSUPPORTED", 0, s, LOOM_ERR_UNSUPPORTED, 0);
  }
  s = loom_allreduce(g, loom_buf_host(a, 4, LOOM_FLOAT32), device, LOOM_OP_SUM);
  expect_near(st, "host and device mixed -> error", 0, s < 0, 1, 0);
  expect_near(st, "message names the call", 0, strstr(loom_error_string(), "loom_allreduce") != NULL,
              1, 0);
  s = loom_send(g, loom_buf_host(a, 4, LOOM_FLOAT32), -1, 0);
  expect_near(st, "send bad peer -> ERR_ARG", 0, s, LOOM_ERR_ARG, 0);
}

static const loom_dtype all_dtypes[] = {LOOM_FLOAT32, LOOM_FLOAT64, LOOM_BFLOAT16, LOOM_FLOAT16,
                                        LOOM_INT32,   LOOM_INT64,   LOOM_UINT8};
enum { DTYPE_COUNT = sizeof all_dtypes / sizeof all_dtypes[0] };

/* Every reduction-capable collective on `g` with the current algorithm choice. */
static void run_reductions(check_state *st, loom_group *g) {
  for (int d = 0; d < DTYPE_COUNT; d++)
    for (int op = 0; op < LOOM_OP_COUNT; op++)
      for (int k = 0; k < SIZE_COUNT; k++)
        for (int in_place = 0; in_place < 2; in_place++) {
          test_allreduce(st, g, all_dtypes[d], (loom_op)op, sizes[k], in_place);
          test_reduce_scatter(st, g, all_dtypes[d], (loom_op)op, sizes[k], in_place);
        }
  for (int d = 0; d < DTYPE_COUNT; d++)
    for (int k = 0; k < SIZE_COUNT; k++)
      for (int in_place = 0; in_place < 2; in_place++)
        test_allgather(st, g, all_dtypes[d], sizes[k], in_place);
  for (int d = 0; d < DTYPE_COUNT; d++)
    for (int op = 0; op < LOOM_OP_COUNT; op++) test_fused(st, g, all_dtypes[d], (loom_op)op);
}

static void run_all(check_state *st, loom_group *g) {
  int size = loom_group_size(g);
  for (int algo = LOOM_ALGO_FLAT; algo <= LOOM_ALGO_HIER; algo++) {
    CHECK_OK(st, loom_group_set_algo(g, (loom_algo)algo));
    run_reductions(st, g);
  }
  CHECK_OK(st, loom_group_set_algo(g, LOOM_ALGO_AUTO));
  for (int d = 0; d < DTYPE_COUNT; d++) {
    for (int op = 0; op < LOOM_OP_COUNT; op++)
      for (int k = 0; k < SIZE_COUNT; k++)
        for (int in_place = 0; in_place < 2; in_place++)
          test_reduce(st, g, all_dtypes[d], (loom_op)op, sizes[k], in_place,
                      (k + op) % size);
    for (int k = 0; k < SIZE_COUNT; k++) {
      test_broadcast(st, g, all_dtypes[d], sizes[k], k % size);
      test_alltoall(st, g, all_dtypes[d], sizes[k], 0);
      test_alltoall(st, g, all_dtypes[d], sizes[k], 1);
      test_send_recv(st, g, all_dtypes[d], sizes[k]);
    }
    test_alltoallv(st, g, all_dtypes[d]);
  }
  test_async(st, g);
  test_bad_arguments(st, g);
  CHECK_OK(st, loom_barrier(g));
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  state = &st;
  int early = check_start(&st, &config, &argc, &argv, 1000003u);
  if (early >= 0) return early;

  run_all(&st, loom_ctx_world(st.ctx));

  /* Mesh subgroups: with pp = 2 the DP groups are halves of the world (uneven across
   * simulated nodes for some rank counts), exercising non-world and uneven groups. */
  if (st.size % 2 == 0) {
    loom_mesh_shape shape = {.pp = 2, .dp = st.size / 2, .sp = 1, .ep = 1};
    loom_mesh *mesh = NULL;
    CHECK_OK(&st, loom_mesh_create(st.ctx, &shape, &mesh));
    loom_group *dp = loom_mesh_group(mesh, LOOM_AXIS_DP);
    for (int algo = LOOM_ALGO_FLAT; algo <= LOOM_ALGO_HIER; algo++) {
      CHECK_OK(&st, loom_group_set_algo(dp, (loom_algo)algo));
      for (int k = 0; k < SIZE_COUNT; k++) {
        test_allreduce(&st, dp, LOOM_FLOAT32, LOOM_OP_SUM, sizes[k], 0);
        test_allreduce(&st, dp, LOOM_BFLOAT16, LOOM_OP_AVG, sizes[k], 1);
        test_allgather(&st, dp, LOOM_INT32, sizes[k], 0);
        test_reduce_scatter(&st, dp, LOOM_FLOAT64, LOOM_OP_SUM, sizes[k], 1);
      }
    }
    CHECK_OK(&st, loom_mesh_destroy(mesh));
  }
  int code = check_finish(&st, "test_collectives");
  loom_finalize(st.ctx);
  return code;
}
