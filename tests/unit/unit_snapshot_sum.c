/* The snapshot checksum (checkpoint/snapshot_sum.h) with fresh random data each run: it equals
 * a plain reference written from its definition (a 128-bit product reduced mod 2^64), sums of
 * consecutive ranges add up to the whole (what the GPU's parallel sum relies on), and every
 * single-byte change at any position, and every swap of two different words, changes it. */
#include <stdlib.h>
#include <string.h>

#include "checkpoint/snapshot_sum.h"
#include "unit.h"

enum { WORDS = 257 };

static uint64_t reference(const uint64_t *w, uint64_t n) {
  unsigned __int128 sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    unsigned __int128 keyed = w[i] ^ (uint64_t)((unsigned __int128)i * LOOM_SNAPSHOT_SUM_KEY);
    sum += (uint64_t)(keyed * LOOM_SNAPSHOT_SUM_MUL);
  }
  return (uint64_t)sum;
}

static void test_sum_definition(void) {
  loom_rng rng = input_rng(21);
  uint64_t w[WORDS];
  for (int i = 0; i < WORDS; i++) w[i] = loom_rng_u64(&rng);
  uint64_t whole = loom_snapshot_sum(w, sizeof w, 0);
  CHECK(whole == reference(w, WORDS), "sum differs from its definition");
  int cut = 1 + (int)loom_rng_below(&rng, WORDS - 1);
  uint64_t parts = loom_snapshot_sum(w, 8 * (uint64_t)cut, 0) +
                   loom_snapshot_sum(w + cut, 8 * (uint64_t)(WORDS - cut), (uint64_t)cut);
  CHECK(parts == whole, "ranges split at word %d do not add up", cut);
  CHECK(loom_snapshot_sum(w, 0, 0) == 0, "empty range");
}

static void test_sum_detects(void) {
  loom_rng rng = input_rng(22);
  uint64_t w[WORDS];
  for (int i = 0; i < WORDS; i++) w[i] = loom_rng_u64(&rng);
  uint64_t whole = loom_snapshot_sum(w, sizeof w, 0);
  unsigned char *bytes = (unsigned char *)w;
  int missed = 0;
  for (size_t b = 0; b < sizeof w; b++) {
    unsigned char flip = (unsigned char)(1 + loom_rng_below(&rng, 255));
    bytes[b] ^= flip;
    missed += loom_snapshot_sum(w, sizeof w, 0) == whole;
    bytes[b] ^= flip;
  }
  CHECK(missed == 0, "%d single-byte changes not detected", missed);
  for (int t = 0; t < 100; t++) {
    int a = (int)loom_rng_below(&rng, WORDS), b = (int)loom_rng_below(&rng, WORDS);
    if (w[a] == w[b]) continue;
    uint64_t x = w[a];
    w[a] = w[b], w[b] = x;
    missed += loom_snapshot_sum(w, sizeof w, 0) == whole;
    w[b] = w[a], w[a] = x;
  }
  CHECK(missed == 0, "%d swaps of two words not detected", missed);
}

int register_snapshot_sum_suite(void) {
  static const unit_test tests[] = {{"sum follows its definition; ranges add", test_sum_definition},
                                    {"single-byte changes and swaps detected", test_sum_detects},
                                    {NULL, NULL}};
  return unit_add_suite("snapshot checksum", tests);
}
