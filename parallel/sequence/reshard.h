/* Resharding over a group: an N-dimensional tensor split along dimension `from` over the
 * group's ranks becomes the same tensor split along dimension `to`, in one all-to-all. The
 * primitive sequence parallelism is built from: Ulysses turns sequence-split Q, K, V into
 * head-split ones before attention and back after it; DSP switches the split dimension
 * between the stages of a multi-dimensional block.
 *
 * Split rule (the state registry's, runtime/state.h): a dimension of n over k ranks gives rank
 * r the rows [r c, min((r + 1) c, n)) with c = ceil(n / k), so the last shards are shorter or
 * empty. Nothing is padded on the wire: each pair moves exactly the elements the two shards
 * share. Buffers are row-major (the last dimension contiguous). */
#ifndef LOOM_PARALLEL_SEQUENCE_RESHARD_H
#define LOOM_PARALLEL_SEQUENCE_RESHARD_H

#include <stdint.h>

#include "collectives/coll.h"
#include "runtime/dtype.h"
#include "runtime/group.h"
#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_RESHARD_MAX_DIMS = 8 };

typedef struct {
  int ndims;                                 /* 1 .. LOOM_RESHARD_MAX_DIMS */
  int64_t shape[LOOM_RESHARD_MAX_DIMS];      /* global extents */
  int from, to;                              /* the split dimension before and after */
} loom_reshard_spec;

/* This rank's shard of dimension `dim` under the split rule: first row and row count. */
void loom_reshard_slice(const loom_reshard_spec *spec, int dim, int rank, int ranks,
                        int64_t *first, int64_t *count);

/* in: this rank's shard split along `from` (its element count must match), out: its shard
 * split along `to`; same dtype, both on the host or both on this rank's GPU (moved through
 * the host for now: correct, not fast). from == to copies. Collective over `group`; every
 * rank passes the same spec. in and out must not overlap. Arguments are checked on each rank
 * before the exchange, like the collectives': a rank whose arguments are wrong returns at once
 * and its peers end in LOOM_ERR_TIMEOUT; a failure during the exchange fails every rank. */
loom_status loom_reshard(loom_group *group, const loom_reshard_spec *spec, loom_buf in, loom_buf out);

#ifdef __cplusplus
}
#endif

#endif
