/* The group's fields, for collectives. Private to libloom. */
#ifndef LOOM_RUNTIME_GROUP_IMPL_H
#define LOOM_RUNTIME_GROUP_IMPL_H

#include "runtime/ctx_impl.h"
#include "runtime/group.h"

struct loom_group {
  loom_ctx *ctx;
  char name[48];
  MPI_Comm comm;     /* collectives and user point-to-point */
  MPI_Comm internal; /* loom's own point-to-point (sparse exchanges), never matches users' */
  MPI_Comm parent_channel; /* subgroups only: the parent group's hierarchical phases run here,
                            * on the parent's lane, never mixed with the subgroup's own
                            * collectives (which run on its lane, over `comm`) */
  int rank, size;
  int is_subgroup;
  loom_group *node_local, *cross_node; /* NULL for subgroups */
  int node_count;    /* nodes spanned */
  int uniform;       /* every node holds the same number of members */
  int *member_node;  /* (size) node ordinal in this group, by first appearance in rank order */
  int *member_local; /* (size) index among the members on the same node */
  int *world_ranks;  /* (size) world rank of each member */
  int algo;          /* loom_algo for hierarchical-capable collectives (config default) */
  /* The group's lane (collectives/coll.h, progress model): a serial executor that runs this
   * group's host collectives in posting order, beside the other groups' lanes. Created on
   * first use by loom_group_lane; destroyed with the group. */
  loom_executor *lane;
  /* Host scratch of the job running on the lane (fusion's flat buffer): one job runs at a
   * time per lane, so one buffer per group suffices. Grows; freed with the group. */
  void *scratch;
  size_t scratch_bytes;
  unsigned sparse_round; /* NBX rounds run; alternates the count tag between rounds */
  /* NCCL state of the device backend (collectives/nccl.c), created on first use; freed by
   * nccl_free when the group goes. */
  void *nccl;
  void (*nccl_free)(loom_group *group);
  /* cudaStream_t that this group's device traffic is ordered after, and that a blocking
   * device call makes wait for its result (loom_group_set_stream); NULL: the compute stream. */
  void *order_stream;
  /* State of the staged device path (collectives/staged.c), created on first use. */
  void *staged;
  void (*staged_free)(loom_group *group);
};

/* Wraps `comm` (adopted: freed with the group) into a group; collective over `comm`.
 * Subgroups are built unless `is_subgroup`. */
loom_status loom_group_from_comm(loom_ctx *ctx, MPI_Comm comm, const char *name,
                                 int is_subgroup, loom_group **out);
/* The stream the group's device traffic is ordered after (a cudaStream_t). */
static inline void *loom_group_order_stream(const loom_group *g) {
  return g->order_stream ? g->order_stream : g->ctx->stream;
}
/* The group's lane, created on first call (thread-safe). */
loom_status loom_group_lane(loom_group *group, loom_executor **out);
/* Frees the group and its subgroups (collective only through MPI_Comm_free). */
void loom_group_free(loom_group *group);

#endif
