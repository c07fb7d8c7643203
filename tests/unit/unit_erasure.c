/* Reed-Solomon erasure coding (checkpoint/erasure.h) against its defining property, with fresh
 * random data each run: for k data fragments and m parity, losing any set of up to m fragments
 * (every such set is tried for small k + m) rebuilds the data bit for bit; losing m + 1 is
 * refused. Also checked: parity is linear (parity of a XOR b = parity a XOR parity b), which a
 * wrong table would break, and replication for k = 1. */
#include <stdlib.h>
#include <string.h>

#include "checkpoint/erasure.h"
#include "unit.h"

enum { LEN = 1000 };

static void fill(loom_rng *rng, uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)loom_rng_u32(rng);
}

/* Every loss pattern of at most m of the k + m fragments. */
static void check_code(int k, int m, uint32_t stream) {
  loom_rng rng = input_rng(stream);
  uint8_t *buffers = malloc((size_t)(k + m) * LEN), *rebuilt_store = malloc((size_t)k * LEN);
  const uint8_t *data[LOOM_EC_MAX_FRAGMENTS];
  uint8_t *parity[LOOM_EC_MAX_FRAGMENTS];
  fill(&rng, buffers, (size_t)k * LEN);
  for (int j = 0; j < k; j++) data[j] = buffers + (size_t)j * LEN;
  for (int i = 0; i < m; i++) parity[i] = buffers + (size_t)(k + i) * LEN;
  CHECK(loom_ec_encode(k, m, LEN, data, parity) == LOOM_OK, "encode k=%d m=%d: %s", k, m, loom_error_string());
  int n = k + m;
  for (unsigned mask = 0; mask < (1u << n); mask++) {
    int lost = __builtin_popcount(mask);
    const uint8_t *fragments[LOOM_EC_MAX_FRAGMENTS];
    uint8_t *rebuilt[LOOM_EC_MAX_FRAGMENTS];
    for (int f = 0; f < n; f++) fragments[f] = (mask >> f) & 1 ? NULL : buffers + (size_t)f * LEN;
    for (int j = 0; j < k; j++) {
      rebuilt[j] = rebuilt_store + (size_t)j * LEN;
      memset(rebuilt[j], 0xee, LEN);
    }
    loom_status s = loom_ec_rebuild(k, m, LEN, fragments, rebuilt);
    if (lost > m) {
      CHECK(s == LOOM_ERR_CORRUPT, "k=%d m=%d: %d lost (mask %x) not refused", k, m, lost, mask);
      continue;
    }
    CHECK(s == LOOM_OK, "k=%d m=%d mask %x: %s", k, m, mask, loom_error_string());
    for (int j = 0; j < k; j++)
      if ((mask >> j) & 1)
        CHECK(memcmp(rebuilt[j], data[j], LEN) == 0, "k=%d m=%d mask %x: fragment %d differs", k, m, mask, j);
  }
  free(buffers);
  free(rebuilt_store);
}

static void test_erasure_patterns(void) {
  check_code(1, 1, 1); /* replication */
  check_code(2, 1, 2);
  check_code(3, 2, 3);
  check_code(4, 3, 4);
  check_code(5, 0, 5); /* no parity: nothing may be lost */
}

static void test_erasure_linear(void) {
  loom_rng rng = input_rng(9);
  enum { K = 3, M = 2 };
  uint8_t a[K][LEN], b[K][LEN], c[K][LEN], pa[M][LEN], pb[M][LEN], pc[M][LEN];
  fill(&rng, &a[0][0], sizeof a);
  fill(&rng, &b[0][0], sizeof b);
  for (int j = 0; j < K; j++)
    for (int x = 0; x < LEN; x++) c[j][x] = a[j][x] ^ b[j][x];
  const uint8_t *da[K] = {a[0], a[1], a[2]}, *db[K] = {b[0], b[1], b[2]}, *dc[K] = {c[0], c[1], c[2]};
  uint8_t *qa[M] = {pa[0], pa[1]}, *qb[M] = {pb[0], pb[1]}, *qc[M] = {pc[0], pc[1]};
  CHECK(loom_ec_encode(K, M, LEN, da, qa) == LOOM_OK, "encode a");
  CHECK(loom_ec_encode(K, M, LEN, db, qb) == LOOM_OK, "encode b");
  CHECK(loom_ec_encode(K, M, LEN, dc, qc) == LOOM_OK, "encode c");
  int linear = 1;
  for (int i = 0; i < M; i++)
    for (int x = 0; x < LEN; x++) linear &= pc[i][x] == (pa[i][x] ^ pb[i][x]);
  CHECK(linear, "parity of a ^ b differs from parity a ^ parity b");
  CHECK(loom_ec_encode(0, 1, LEN, da, qa) == LOOM_ERR_ARG, "k = 0 accepted");
}

int register_erasure_suite(void) {
  static const unit_test tests[] = {{"every loss pattern up to m rebuilds", test_erasure_patterns},
                                    {"parity is linear; bad shapes refused", test_erasure_linear},
                                    {NULL, NULL}};
  return unit_add_suite("erasure", tests);
}
