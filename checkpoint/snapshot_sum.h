/* The checksum of snapshot slots, computed the same way on the host and on a GPU (so device
 * state is checksummed on the card, before it leaves over PCIe, and verified on the host at
 * restore). Over the little-endian 64-bit words w_i of a slot (its length a multiple of 8):
 *   sum = SUM_i ((w_i ^ (i * KEY)) * MUL)  mod 2^64,  MUL odd.
 * A change to any one word changes the sum (multiplying by an odd number is a bijection mod
 * 2^64); the position key catches words moved or swapped. Sums of consecutive ranges add, so
 * a slot is summed in parallel. It detects damage, as the crc did; it is not cryptographic. */
#ifndef LOOM_CHECKPOINT_SNAPSHOT_SUM_H
#define LOOM_CHECKPOINT_SNAPSHOT_SUM_H

#include <stdint.h>
#include <string.h>

#include "runtime/status.h"

#ifdef __CUDACC__
#define LOOM_SUM_HOST_DEVICE __host__ __device__
#else
#define LOOM_SUM_HOST_DEVICE
#endif

#define LOOM_SNAPSHOT_SUM_KEY 0x9e3779b97f4a7c15ull
#define LOOM_SNAPSHOT_SUM_MUL 0xff51afd7ed558ccdull

/* Word i's term. */
LOOM_SUM_HOST_DEVICE static inline uint64_t loom_snapshot_sum_term(uint64_t word, uint64_t i) {
  return (word ^ (i * LOOM_SNAPSHOT_SUM_KEY)) * LOOM_SNAPSHOT_SUM_MUL;
}

/* Sum of `bytes` (a multiple of 8) at p, whose first word is word `first` of the slot. */
static inline uint64_t loom_snapshot_sum(const void *p, uint64_t bytes, uint64_t first) {
  const unsigned char *c = (const unsigned char *)p;
  uint64_t sum = 0, words = bytes / 8;
  for (uint64_t i = 0; i < words; i++) {
    uint64_t w;
    memcpy(&w, c + 8 * i, 8);
    sum += loom_snapshot_sum_term(w, first + i);
  }
  return sum;
}

/* One range of a device copy plan: `bytes` at src (any alignment) go to byte dst_offset of the
 * destination (8-byte aligned), whose words are words `first`.. of the slot. */
typedef struct {
  const void *src;
  uint64_t dst_offset, bytes, first;
} loom_snapshot_range;

#ifdef __cplusplus
extern "C" {
#endif
/* Enqueues on `stream` (a cudaStream_t) the copy of every range of the device-resident table
 * `ranges` (count of them, the longest `longest` bytes) into dst, each range's last word
 * zero-padded, and adds the sum of the copied words to the device word *result: the copy and
 * its checksum in one pass over the data, one kernel launch for the whole plan. */
loom_status loom_snapshot_copy_sum_device(void *dst, const loom_snapshot_range *ranges, int count,
                                          uint64_t longest, uint64_t *result, void *stream);
#ifdef __cplusplus
}
#endif

#endif
