/* Sparse all-to-all (the Grendel pattern): each member sends variable-size blocks only to the
 * members it has data for. A plan learns who sends what to whom with a non-blocking consensus
 * (NBX: synchronous sends of the counts, then a non-blocking barrier; Hoefler et al., PPoPP'10),
 * so no dense count matrix is exchanged and empty pairs cost nothing. A plan can be reused
 * while the pattern holds. */
#ifndef LOOM_COLLECTIVES_SPARSE_H
#define LOOM_COLLECTIVES_SPARSE_H

#include "collectives/coll.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  loom_dtype dtype;
  /* send side, in the caller's order; blocks packed back to back in that order */
  int send_count;
  int *send_peers;      /* (send_count) group ranks, distinct, count > 0 */
  size_t *send_counts;  /* (send_count) elements */
  size_t *send_displs;  /* (send_count) element offsets into the packed send buffer */
  size_t send_total;
  /* receive side, by ascending source rank; blocks packed back to back in that order */
  int recv_count;
  int *recv_peers;
  size_t *recv_counts;
  size_t *recv_displs;
  size_t recv_total;
} loom_sparse_plan;

/* Builds the send side from (peer, count) pairs; pairs with count 0 are dropped. Local and
 * pure: LOOM_ERR_ARG for a peer outside [0, group_size) or a peer named twice. */
loom_status loom_sparse_plan_init(loom_sparse_plan *plan, loom_dtype dtype, int group_size,
                                  int pair_count, const int *peers, const size_t *counts);
/* Sets the receive side from (source, count) pairs in any order: sorted by source,
 * displacements by prefix sum. Local and pure. */
loom_status loom_sparse_plan_set_incoming(loom_sparse_plan *plan, int pair_count,
                                          const int *sources, const size_t *counts);
void loom_sparse_plan_free(loom_sparse_plan *plan);

/* loom_sparse_plan_init, then the NBX discovery of what this member receives. Collective over
 * `g`. On return the receive side is known: allocate recv_total elements. */
loom_status loom_sparse_plan_create(loom_group *g, loom_dtype dtype, int pair_count,
                                    const int *peers, const size_t *counts,
                                    loom_sparse_plan *plan);

/* Moves the data of a plan: `send` holds send_total elements packed in plan order, `recv`
 * receives recv_total elements packed by ascending source. Collective over the members that
 * take part in the plan's pairs (every member must call it when the plan was built by all). */
loom_status loom_alltoall_sparse(loom_group *g, const loom_sparse_plan *plan, loom_buf send,
                                 loom_buf recv);
loom_status loom_alltoall_sparse_async(loom_group *g, const loom_sparse_plan *plan,
                                       loom_buf send, loom_buf recv, loom_req **req);

#ifdef __cplusplus
}
#endif
#endif
