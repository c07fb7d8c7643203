/* Unit tests of the counter-based rng: Philox4x32-10 against the Random123 known answers,
 * independence of seeds, purposes and streams, skip / word_at / save-restore agreeing with
 * sequential draws, and the moments and bounds of the distributions. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rng.h"
#include "unit.h"

static void test_rng_philox_known_answers(void) {
  /* Random123 kat_vectors, philox4x32 with 10 rounds */
  static const struct {
    uint32_t counter[4], key[2], out[4];
  } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (int i = 0; i < 3; i++) {
    uint32_t out[4] = {0xdeadbeef, 0xdeadbeef, 0xdeadbeef, 0xdeadbeef};
    loom_philox4x32(kat[i].counter, kat[i].key, out);
    CHECK(memcmp(out, kat[i].out, sizeof out) == 0,
          "KAT %d: got %08x %08x %08x %08x want %08x %08x %08x %08x", i, out[0], out[1], out[2],
          out[3], kat[i].out[0], kat[i].out[1], kat[i].out[2], kat[i].out[3]);
  }
}

static int equal_draws(loom_rng a, loom_rng b, int n) {
  int equal = 0;
  for (int i = 0; i < n; i++) equal += loom_rng_u32(&a) == loom_rng_u32(&b);
  return equal;
}

static void test_rng_streams(void) {
  loom_rng pick = input_rng(30);
  for (int trial = 0; trial < 20; trial++) {
    uint64_t seed = loom_rng_u64(&pick);
    uint32_t purpose = loom_rng_u32(&pick), stream = loom_rng_u32(&pick);
    loom_rng a, b, other;
    loom_rng_init(&a, seed, purpose, stream);
    loom_rng_init(&b, seed, purpose, stream);
    CHECK(equal_draws(a, b, 1000) == 1000, "same stream differs");
    loom_rng_init(&other, seed, purpose, stream + 1);
    CHECK(equal_draws(a, other, 1000) < 3, "stream+1 matches");
    loom_rng_init(&other, seed, purpose ^ 1, stream);
    CHECK(equal_draws(a, other, 1000) < 3, "purpose^1 matches");
    loom_rng_init(&other, seed ^ (1ull << (trial % 64)), purpose, stream);
    CHECK(equal_draws(a, other, 1000) < 3, "seed bit %d flip matches", trial % 64);
    loom_rng_init(&other, seed, stream, purpose); /* purpose and stream are not symmetric */
    if (purpose != stream) CHECK(equal_draws(a, other, 1000) < 3, "swapped purpose/stream");

    /* random access and skipping agree with sequential draws */
    loom_rng seq = a;
    int mismatches = 0;
    for (uint64_t i = 0; i < 1000; i++)
      mismatches += loom_rng_u32(&seq) != loom_rng_word_at(seed, purpose, stream, i);
    CHECK(mismatches == 0, "word_at differs from draws at %d indices", mismatches);
    CHECK(seq.position == 1000, "position %" PRIu64 " after 1000 draws", seq.position);
    const uint64_t skips[] = {0, 1, 3, 4, 5, 7, 8, 1 + loom_rng_below(&pick, 5000)};
    for (int k = 0; k < 8; k++) {
      loom_rng skipped = a, drawn = a;
      loom_rng_skip(&skipped, skips[k]);
      for (uint64_t i = 0; i < skips[k]; i++) loom_rng_u32(&drawn);
      CHECK(skipped.position == drawn.position && equal_draws(skipped, drawn, 64) == 64,
            "skip(%" PRIu64 ") differs from draws", skips[k]);
    }
    uint64_t far = loom_rng_u64(&pick) >> 1;
    loom_rng jump = a;
    loom_rng_skip(&jump, far);
    CHECK(loom_rng_u32(&jump) == loom_rng_word_at(seed, purpose, stream, far),
          "word %" PRIu64, far);

    /* save/restore mid-sequence */
    loom_rng original = a;
    uint64_t before = loom_rng_below(&pick, 777);
    for (uint64_t i = 0; i < before; i++) loom_rng_u32(&original);
    uint64_t state[LOOM_RNG_STATE_WORDS];
    loom_rng_save(&original, state);
    loom_rng restored;
    loom_rng_init(&restored, ~seed, purpose + 7, stream + 9);
    loom_rng_u32(&restored);
    loom_rng_restore(&restored, state);
    CHECK(restored.seed == seed && restored.purpose == purpose && restored.stream == stream &&
              restored.position == before,
          "restored fields differ");
    uint64_t x = loom_rng_u64(&original), y = loom_rng_u64(&restored);
    CHECK(x == y && equal_draws(original, restored, 256) == 256, "restore diverges");
  }
}

static void test_rng_distributions(void) {
  loom_rng rng = input_rng(31);
  enum { N = 100000 };
  double sum = 0, sum_sq = 0;
  int outside = 0;
  for (int i = 0; i < N; i++) {
    double u = loom_rng_uniform(&rng);
    outside += !(u >= 0.0 && u < 1.0);
    sum += u;
    sum_sq += u * u;
  }
  double mean = sum / N, variance = sum_sq / N - mean * mean;
  /* standard error of the mean is 0.29 / sqrt(N) = 0.0009: 0.01 is 11 sigma */
  CHECK(outside == 0, "%d uniforms outside [0, 1)", outside);
  CHECK(fabs(mean - 0.5) < 0.01, "uniform mean %.5f", mean);
  CHECK(fabs(variance - 1.0 / 12) < 0.005, "uniform variance %.5f", variance);

  sum = sum_sq = 0;
  int not_finite = 0, beyond_3 = 0;
  for (int i = 0; i < N; i++) {
    double z = loom_rng_normal(&rng);
    not_finite += !isfinite(z);
    beyond_3 += fabs(z) > 3;
    sum += z;
    sum_sq += z * z;
  }
  mean = sum / N;
  double std = sqrt(sum_sq / N - mean * mean);
  /* standard errors: mean 0.003, std 0.0022; 0.02 is over 6 sigma */
  CHECK(not_finite == 0, "%d non-finite normals", not_finite);
  CHECK(fabs(mean) < 0.02, "normal mean %.5f", mean);
  CHECK(fabs(std - 1) < 0.02, "normal std %.5f", std);
  CHECK(beyond_3 > 150 && beyond_3 < 400, "%d normals beyond 3 sigma (expect 270)", beyond_3);

  const uint64_t bounds[] = {1, 2, 3, 7, 1000, (1ull << 33) + 1, UINT64_MAX,
                             1 + loom_rng_below(&rng, 1u << 30)};
  for (int b = 0; b < 8; b++) {
    int outside_bound = 0;
    for (int i = 0; i < 10000; i++) outside_bound += loom_rng_below(&rng, bounds[b]) >= bounds[b];
    CHECK(outside_bound == 0, "%d draws >= %" PRIu64, outside_bound, bounds[b]);
  }
  /* every value of a small bound is hit about equally: counts 10000 +- 93 (1 sigma) */
  int hits[7] = {0};
  for (int i = 0; i < 70000; i++) hits[loom_rng_below(&rng, 7)]++;
  for (int v = 0; v < 7; v++)
    CHECK(abs(hits[v] - 10000) < 800, "value %d hit %d times", v, hits[v]);
}

int register_rng_suite(void) {
  static const unit_test tests[] = {
      {"philox known answers", test_rng_philox_known_answers},
      {"streams, skip, save/restore", test_rng_streams},
      {"distributions", test_rng_distributions},
      {NULL, NULL}};
  return unit_add_suite("rng", tests);
}
