/* Philox-4x32-10 streams. Counter layout: (block index low, block index high, stream,
 * purpose); key: the 64-bit seed. One block yields 4 words, so word w of a stream is lane
 * w % 4 of block w / 4. */
#include "runtime/rng.h"

#include <math.h>

enum { PHILOX_ROUNDS = 10 };
static const uint32_t PHILOX_M0 = 0xD2511F53u, PHILOX_M1 = 0xCD9E8D57u;
static const uint32_t PHILOX_W0 = 0x9E3779B9u, PHILOX_W1 = 0xBB67AE85u;

void loom_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < PHILOX_ROUNDS; round++) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = (uint32_t)p1;
    c2 = n2;
    c3 = (uint32_t)p0;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

uint32_t loom_rng_word_at(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index) {
  uint64_t block = index >> 2;
  const uint32_t counter[4] = {(uint32_t)block, (uint32_t)(block >> 32), stream, purpose};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t out[4];
  loom_philox4x32(counter, key, out);
  return out[index & 3];
}

void loom_rng_init(loom_rng *rng, uint64_t seed, uint32_t purpose, uint32_t stream) {
  rng->seed = seed;
  rng->purpose = purpose;
  rng->stream = stream;
  rng->position = 0;
}

uint32_t loom_rng_u32(loom_rng *rng) {
  return loom_rng_word_at(rng->seed, rng->purpose, rng->stream, rng->position++);
}

uint64_t loom_rng_u64(loom_rng *rng) {
  uint64_t lo = loom_rng_u32(rng);
  return lo | ((uint64_t)loom_rng_u32(rng) << 32);
}

double loom_rng_uniform(loom_rng *rng) {
  return (double)(loom_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
}

double loom_rng_normal(loom_rng *rng) {
  /* 1 - u keeps the logarithm's argument in (0, 1]. */
  double u1 = 1.0 - loom_rng_uniform(rng);
  double u2 = loom_rng_uniform(rng);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

uint64_t loom_rng_below(loom_rng *rng, uint64_t bound) {
  /* Rejection of the top partial range: accepted draws are uniform over a multiple of bound. */
  uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t draw;
  do draw = loom_rng_u64(rng);
  while (draw >= limit);
  return draw % bound;
}

void loom_rng_skip(loom_rng *rng, uint64_t words) { rng->position += words; }

void loom_rng_save(const loom_rng *rng, uint64_t out[LOOM_RNG_STATE_WORDS]) {
  out[0] = rng->seed;
  out[1] = ((uint64_t)rng->purpose << 32) | rng->stream;
  out[2] = rng->position;
}

void loom_rng_restore(loom_rng *rng, const uint64_t in[LOOM_RNG_STATE_WORDS]) {
  rng->seed = in[0];
  rng->purpose = (uint32_t)(in[1] >> 32);
  rng->stream = (uint32_t)in[1];
  rng->position = in[2];
}
