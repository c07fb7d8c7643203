/* The parallel mesh: world ranks laid out on pp x dp x sp (pp outermost, sp innermost), with
 * dp further split as edp x ep (ep inner) for expert parallelism. Inner axes are adjacent in
 * rank order, so the chattiest groups (sp, ep) stay within a node.
 *
 *   rank = ((pp_i * edp + edp_i) * ep + ep_i) * sp + sp_i,   dp_i = edp_i * ep + ep_i */
#ifndef LOOM_RUNTIME_MESH_H
#define LOOM_RUNTIME_MESH_H

#include <stdint.h>

#include "runtime/config.h"
#include "runtime/group.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  LOOM_AXIS_PP,    /* pipeline stages */
  LOOM_AXIS_DP,    /* data-parallel replicas */
  LOOM_AXIS_SP,    /* sequence-parallel shards */
  LOOM_AXIS_EP,    /* expert-parallel shards (inside dp) */
  LOOM_AXIS_EDP,   /* expert data parallel: replicas of one expert shard (dp / ep) */
  LOOM_AXIS_GRAD,  /* dp x sp: where dense gradients are reduced */
  LOOM_AXIS_NODE,  /* ranks sharing a (real or simulated) node */
  LOOM_AXIS_WORLD, /* every rank */
  LOOM_AXIS_COUNT
} loom_axis;

/* The fine axes of the mesh, outermost first. Every group axis above is the set of fine axes
 * that vary inside it; this list and the table in mesh.c are the one definition of axis
 * semantics (the state registry, checkpoints and groups all derive from them). */
typedef enum { LOOM_FINE_PP, LOOM_FINE_EDP, LOOM_FINE_EP, LOOM_FINE_SP, LOOM_FINE_COUNT } loom_fine_axis;
#define LOOM_FINE_BIT(fine) (1u << (fine))

typedef struct { int pp, dp, sp, ep; } loom_mesh_shape;
typedef struct { int pp, dp, sp, ep, edp; } loom_mesh_coords;
typedef struct loom_mesh loom_mesh;

const char *loom_axis_name(loom_axis axis);
/* Fine axes (LOOM_FINE_BIT mask) varying inside `axis`'s group; 0 for NODE or an invalid axis. */
unsigned loom_axis_fine_mask(loom_axis axis);

/* The mesh as an ordered list of named axes, outermost first: "pp", "dp", "sp", then "ep"
 * (which divides dp). One definition for the configuration (--pp/--dp/--sp/--ep), the
 * checkpoint attribute (mesh_axes) and messages; a new axis is one more entry. */
enum { LOOM_MESH_AXIS_COUNT = 4 };
const char *loom_mesh_axis_label(int index); /* "pp", "dp", "sp", "ep"; NULL outside */
int loom_mesh_shape_size(const loom_mesh_shape *shape, int index);
/* "pp=1 dp=4 sp=1 ep=2" into `out` (bytes >= 64 holds any shape). */
void loom_mesh_shape_format(const loom_mesh_shape *shape, char *out, size_t bytes);
/* The inverse, strict: every known axis once, sizes >= 1; an unknown axis of size 1 is
 * ignored, of another size refused (LOOM_ERR_ARG naming it: a layout this loom cannot load). */
loom_status loom_mesh_shape_parse(const char *text, loom_mesh_shape *out);

/* LOOM_OK if the shape fits `world_size` ranks; LOOM_ERR_ARG naming the numbers otherwise
 * (a size <= 0, pp*dp*sp != world size, ep not dividing dp). */
loom_status loom_mesh_shape_check(const loom_mesh_shape *shape, int world_size);
/* The shape the configuration asks for, with dp = 0 resolved to world / (pp * sp); checked. */
loom_status loom_mesh_shape_from_config(const loom_config *config, int world_size,
                                        loom_mesh_shape *out);
/* Coordinates of `rank` and back. The shape must be valid. */
loom_mesh_coords loom_mesh_coords_of(const loom_mesh_shape *shape, int rank);
int loom_mesh_rank_of(const loom_mesh_shape *shape, const loom_mesh_coords *coords);
/* The rank at `coords` within its group along `axis` (the group rank: the linear index over
 * the axis's fine axes, outermost first), and the group's size. Pure; NODE gives -1 and 0. */
void loom_mesh_axis_position(const loom_mesh_shape *shape, const loom_mesh_coords *coords,
                             loom_axis axis, int64_t *index, int64_t *size);
/* World ranks of `rank`'s group along `axis` in group-rank order, written to `members`
 * (capacity: world size); returns the count. Pure arithmetic, for every axis except NODE
 * (returns -1). */
int loom_mesh_group_members(const loom_mesh_shape *shape, loom_axis axis, int rank,
                            int *members);

/* Checks the shape against the world and creates the mesh; collective over the world. No
 * group exists yet: each is created when first asked for (loom_mesh_group, _group_of). */
loom_status loom_mesh_create(loom_ctx *ctx, const loom_mesh_shape *shape, loom_mesh **out);
loom_status loom_mesh_destroy(loom_mesh *mesh);
/* The group of this rank along `axis` (owned by the mesh or the context: WORLD and NODE),
 * created on first use like loom_mesh_group_of (the same group as its fine-axis mask, see
 * loom_axis_fine_mask), collective over its members then. NULL on failure
 * (loom_error_string says why). */
loom_group *loom_mesh_group(loom_mesh *mesh, loom_axis axis);
/* Groups the mesh has created so far (WORLD and NODE are the context's, not counted). */
int loom_mesh_groups_created(const loom_mesh *mesh);
/* The group of this rank over any set of fine axes (`fine_mask`: LOOM_FINE_BIT of each), e.g.
 * PP|EDP|EP for clipping across stages without SP: the ranks that differ from this one only on
 * those axes, in rank order. Created on first use and kept by the mesh; collective over the
 * group's members only (not the world), which must ask for their groups in the same order
 * (a member that never asks leaves the others blocked: the watchdog aborts the job at
 * LOOM_TIMEOUT naming the group). All axes (the world's mask) give the context's world.
 * The group's node-local and cross-node subgroups (loom_group_node_local / cross_node) give DP
 * within a node and DP across nodes for hierarchical partitions. */
loom_status loom_mesh_group_of(loom_mesh *mesh, unsigned fine_mask, loom_group **out);
loom_mesh_shape loom_mesh_get_shape(const loom_mesh *mesh);
loom_mesh_coords loom_mesh_my_coords(const loom_mesh *mesh);

#ifdef __cplusplus
}
#endif
#endif
