/* Reed-Solomon erasure coding over GF(2^8) with a Cauchy generator matrix (ISA-L), the code of
 * loom's in-memory snapshots ("Reliable and Efficient In-Memory Fault Tolerance of Large
 * Language Model Pretraining": erasure coding protects snapshots against node failures). k data
 * fragments of `len` bytes (any length: ISA-L is called on pieces of at most 1 GiB) give m
 * parity fragments; any k of the k + m fragments rebuild the rest. Pure functions, no MPI. In a build without ISA-L every call is LOOM_ERR_UNSUPPORTED. */
#ifndef LOOM_CHECKPOINT_ERASURE_H
#define LOOM_CHECKPOINT_ERASURE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_EC_MAX_FRAGMENTS = 64 };

/* parity[i] (i < m) = row k + i of the Cauchy matrix applied to data[0..k). 1 <= k, 0 <= m,
 * k + m <= LOOM_EC_MAX_FRAGMENTS. */
loom_status loom_ec_encode(int k, int m, size_t len, const uint8_t *const *data, uint8_t **parity);

/* fragments[0..k+m): data then parity, NULL where lost. Rebuilds every lost data fragment into
 * rebuilt[j] (j < k, where fragments[j] is NULL; rebuilt[j] ignored otherwise).
 * LOOM_ERR_CORRUPT when fewer than k fragments survive. */
loom_status loom_ec_rebuild(int k, int m, size_t len, const uint8_t *const *fragments,
                            uint8_t **rebuilt);

/* 1 when this build has ISA-L. */
int loom_ec_available(void);

#ifdef __cplusplus
}
#endif
#endif
