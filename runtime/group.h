/* loom_group: one communicator (an MPI_Comm; later also a lazily created NCCL communicator)
 * with its node layout: which members share a node, and the node-local and cross-node
 * subgroups that hierarchical collectives run over. */
#ifndef LOOM_RUNTIME_GROUP_H
#define LOOM_RUNTIME_GROUP_H

#include <mpi.h>

#include "runtime/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Splits `parent` (NULL = world): ranks passing the same color >= 0 form one group, ordered
 * by key then parent rank; color < 0 returns *out = NULL. Collective over `parent`. The
 * node-local and cross-node subgroups are created with it. `name` labels messages. */
loom_status loom_group_create(loom_ctx *ctx, loom_group *parent, int color, int key,
                              const char *name, loom_group **out);
/* Frees a group created by loom_group_create (not the mesh's or the context's). Collective. */
loom_status loom_group_destroy(loom_group *group);

int loom_group_rank(const loom_group *group);
int loom_group_size(const loom_group *group);
const char *loom_group_name(const loom_group *group);
loom_ctx *loom_group_ctx(const loom_group *group);
MPI_Comm loom_group_comm(const loom_group *group);
/* World rank of group member `group_rank`. */
int loom_group_world_rank(const loom_group *group, int group_rank);

/* Device traffic of this group (collectives and point-to-point on device buffers) is ordered
 * after the work queued on `stream` (a loom_stream's cudaStream_t, see runtime/stream.h;
 * NULL: the context's compute stream) when it is posted, and a blocking call makes that
 * stream wait for its result. Applies to calls posted after this returns. */
loom_status loom_group_set_stream(loom_group *group, void *stream);

/* Agreement on an outcome: every member passes its own status; all return an error when any
 * member failed, so that every member takes the same path (cleanup, or the next message) and
 * no one waits for a peer that gave up. A member that failed returns its own status with its
 * own message; the others return the failed member's code (the most negative one; the
 * lowest group rank among equals) with "<what> failed on rank R of group G (its message
 * there names the cause)". LOOM_OK only when every member passed LOOM_OK (or a positive,
 * non-error status). One allreduce of two ints; collective over the group. */
loom_status loom_status_agree(loom_group *group, loom_status status, const char *what);
/* The same over a plain communicator (objects that keep their own MPI_Comm). */
loom_status loom_status_agree_comm(MPI_Comm comm, loom_status status, const char *what);

/* Nodes this group spans, and whether each holds the same number of its members. */
int loom_group_node_count(const loom_group *group);
int loom_group_nodes_uniform(const loom_group *group);
/* Members of this group on this rank's node (ordered by group rank), and the members with
 * this rank's node-local index on every node (ordered by node, the same order for every
 * local index). NULL for a subgroup itself (subgroups have no subgroups). */
loom_group *loom_group_node_local(const loom_group *group);
loom_group *loom_group_cross_node(const loom_group *group);

#ifdef __cplusplus
}
#endif
#endif
