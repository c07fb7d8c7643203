/* Ring attention (Liu et al., "Ring Attention with Blockwise Transformers for Near-Infinite
 * Context"): causal self-attention over a sequence split across the R ranks of a ring. Each
 * rank keeps its query block; the key/value blocks travel round the ring, the transfer of the
 * next block posted before the computation on this one so the two overlap, and the partial
 * results of the blocks merge by the log-sum-exp rule (the online softmax). Backward sends the
 * key/value blocks round again; the gradient partials dK, dV follow them one step behind and
 * arrive complete at the block's owner after R hops.
 *
 * Causal balance (zigzag, as in Megatron's context parallelism): the sequence is cut into 2 R
 * chunks and ring position i holds chunks i and 2R-1-i, so every rank computes the same number
 * of query-key pairs. The contiguous split (position i holds chunk i of R) gives the last rank
 * about twice the mean and the first almost nothing.
 *
 * The ring is any ordered list of ranks of a group, so a hybrid (Ulysses inside, ring across)
 * and per-sequence rings of a mixed-length batch can use it. Per layer and rank, forward sends
 * key/value blocks of 2 N d / R elements (N = B T tokens of the replica, d = H hd), and
 * backward the same again plus R gradient blocks of the same size. Host float32 buffers; the
 * block kernel is plain C. */
#ifndef LOOM_PARALLEL_SEQUENCE_RING_H
#define LOOM_PARALLEL_SEQUENCE_RING_H

#include <stdint.h>

#include "runtime/group.h"
#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which positions of a sequence each of its ranks holds (see above). */
typedef enum { LOOM_SP_CONTIGUOUS, LOOM_SP_ZIGZAG } loom_sp_split;

/* "contiguous" or "zigzag" into *out; LOOM_ERR_ARG naming the word otherwise. */
loom_status loom_sp_split_parse(const char *word, loom_sp_split *out);
/* LOOM_ERR_ARG naming the numbers unless `ranks` ranks split T tokens evenly: contiguous needs
 * ranks | T, zigzag 2 ranks | T. */
loom_status loom_sp_split_check(loom_sp_split split, int T, int ranks);
/* The positions in [0, T) of the T / ranks tokens rank `rank` holds, in its local order
 * (increasing; for zigzag its first chunk, then its second). */
void loom_sp_split_positions(loom_sp_split split, int T, int ranks, int rank, int *positions);

typedef struct {
  loom_group *group;   /* the ranks of the ring are ranks of this group */
  int size;            /* R >= 1; 0: the whole group */
  const int *order;    /* R group ranks in ring order, this rank among them (copied);
                          NULL: group ranks 0 .. R-1 */
  loom_sp_split split; /* which positions each ring position holds */
  int tag;             /* its point-to-point uses tags tag and tag + 1 (>= 0) */
} loom_ring_params;

#define LOOM_RING_PARAMS_INIT {NULL, 0, NULL, LOOM_SP_ZIGZAG, 4242}

typedef struct loom_ring_attention loom_ring_attention;

loom_status loom_ring_attention_create(const loom_ring_params *params, loom_ring_attention **out);
void loom_ring_attention_destroy(loom_ring_attention *ring);
/* This rank's position in the ring and the ring's length. */
int loom_ring_attention_position(const loom_ring_attention *ring);
int loom_ring_attention_size(const loom_ring_attention *ring);

/* Causal attention for this rank's T_local tokens of B sequences of T = T_local R tokens:
 *   qkv (B, T_local, 3, H, hd)  queries, keys, values (host float32)
 *   out (B, T_local, H, hd)     softmax(Q K^T / sqrt(hd), causal) V over the whole sequences
 *   lse (B, H, T_local)         each query's log-sum-exp of scaled scores (for backward)
 * Collective over the ring (every member calls it with the same shape); returns when `out` is
 * complete. T must split as the ring's split requires (loom_sp_split_check). */
loom_status loom_ring_attention_forward(loom_ring_attention *ring, int B, int T_local, int H,
                                        int hd, const float *qkv, float *out, float *lse);
/* dqkv (B, T_local, 3, H, hd, overwritten) from dout (B, T_local, H, hd), given the forward's
 * qkv, out and lse. Collective over the ring. */
loom_status loom_ring_attention_backward(loom_ring_attention *ring, int B, int T_local, int H,
                                         int hd, const float *qkv, const float *out,
                                         const float *lse, const float *dout, float *dqkv);

/* Since create: seconds computing blocks (wall, and this thread's CPU time, which ranks
 * sharing cores do not inflate), seconds waiting for transfers after the computation they
 * overlapped (the part not hidden), elements sent, query-key pairs computed (the work the
 * causal balance evens out), forward and backward passes; incoming block transfers, and how
 * many of them had completed before the computation they overlapped ended (hidden). */
typedef struct {
  double compute_seconds, compute_cpu_seconds, wait_seconds, elements_sent, pairs;
  int64_t transfers, transfers_hidden;
  int64_t forwards, backwards;
} loom_ring_stats;

void loom_ring_attention_stats(const loom_ring_attention *ring, loom_ring_stats *out);

#ifdef __cplusplus
}
#endif

#endif
