/* Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11): a stream is
 * (seed, purpose, stream id) and its whole state is a 64-bit position, so saving, restoring
 * and skipping are exact and streams never overlap by construction (purpose and stream id
 * live in the counter, the seed in the key). */
#ifndef LOOM_RUNTIME_RNG_H
#define LOOM_RUNTIME_RNG_H

#include <stdint.h>

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a stream is for; user code may use values >= LOOM_RNG_USER. */
enum {
  LOOM_RNG_PARAM_INIT = 1, /* parameter initialisation */
  LOOM_RNG_DATA = 2,       /* data shuffling and sampling */
  LOOM_RNG_DROPOUT = 3,    /* dropout masks and other training noise */
  LOOM_RNG_TEST = 4,       /* test inputs */
  LOOM_RNG_USER = 1000,
};

/* A plain value: copy it to save, copy it back to restore. */
typedef struct {
  uint64_t seed;
  uint32_t purpose;
  uint32_t stream;   /* usually the rank, or a rank-independent 0 for replicated streams */
  uint64_t position; /* 32-bit words drawn so far */
} loom_rng;

void loom_rng_init(loom_rng *rng, uint64_t seed, uint32_t purpose, uint32_t stream);

uint32_t loom_rng_u32(loom_rng *rng);
uint64_t loom_rng_u64(loom_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double loom_rng_uniform(loom_rng *rng);
/* Standard normal (Box-Muller over two uniforms). */
double loom_rng_normal(loom_rng *rng);
/* Uniform integer in [0, bound) without modulo bias; bound > 0. */
uint64_t loom_rng_below(loom_rng *rng, uint64_t bound);
/* Advances the stream by `words` 32-bit draws in O(1). */
void loom_rng_skip(loom_rng *rng, uint64_t words);

/* Portable save/restore (little-endian independent): 3 x uint64. A restore checks nothing
 * beyond shape: the caller's registry checks the tensor it came from. */
enum { LOOM_RNG_STATE_WORDS = 3 };
void loom_rng_save(const loom_rng *rng, uint64_t out[LOOM_RNG_STATE_WORDS]);
void loom_rng_restore(loom_rng *rng, const uint64_t in[LOOM_RNG_STATE_WORDS]);

/* Random access without a stream: the 32-bit word at `index` of stream (seed, purpose,
 * stream). loom_rng_u32 on a fresh stream yields words 0, 1, 2, ... of the same sequence. */
uint32_t loom_rng_word_at(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index);

/* Philox-4x32-10 block function: counter and key in, 4 words out. */
void loom_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

#ifdef __cplusplus
}
#endif
#endif
