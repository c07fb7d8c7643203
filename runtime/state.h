/* The state registry: every tensor that must survive a restart (parameters, optimizer
 * moments, RNG streams, step, schedule and data-loader positions, user scalars) registered
 * once by name with its global shape, dtype and placement on the mesh. Placement is a list
 * of (mesh axis, tensor dimension) pairs: the tensor is split along that dimension over that
 * axis's group, and replicated over every axis not listed. The rank's local slice (offset and
 * extent per dimension) follows from its mesh coordinates: a dimension of n split k ways gives
 * shards of ceil(n / k) (the last ones shorter, possibly empty), so every shard is one
 * rectangular hyperslab of the global tensor. Checkpoints, resharding and snapshots work from
 * this registry alone. */
#ifndef LOOM_RUNTIME_STATE_H
#define LOOM_RUNTIME_STATE_H

#include <stdint.h>

#include "runtime/dtype.h"
#include "runtime/mesh.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_STATE_MAX_DIMS = 8, LOOM_STATE_MAX_SPLITS = 4 };

typedef struct {
  loom_axis axis; /* a mesh group axis (DP, SP, EP, EDP, GRAD, PP); not NODE or WORLD */
  int dim;        /* tensor dimension split over that axis's group */
} loom_state_split;

typedef struct {
  loom_dtype dtype;
  int ndims;                               /* 0 for a scalar */
  int64_t shape[LOOM_STATE_MAX_DIMS];      /* global extents */
  int split_count;                         /* 0: replicated everywhere */
  loom_state_split splits[LOOM_STATE_MAX_SPLITS]; /* several axes on one dim nest, in order */
} loom_state_spec;

/* The local slice of `spec` for the rank at `coords` of a mesh `shape`: offset and extent per
 * dimension. Pure. LOOM_ERR_ARG naming the problem for a bad spec (dims, shape, axis, a
 * dimension out of range, an axis listed twice). */
loom_status loom_state_slice(const loom_state_spec *spec, const loom_mesh_shape *shape,
                             const loom_mesh_coords *coords, int64_t *offsets, int64_t *extents);

/* 1 if the rank at `coords` is the one that writes its slice: among ranks holding identical
 * slices (replicas over the axes not split) the one at coordinate 0 on each of them. Every
 * pipeline stage writes its own tensors. Pure. */
int loom_state_is_writer(const loom_state_spec *spec, const loom_mesh_coords *coords);

typedef struct loom_state loom_state;

/* An empty registry for `mesh` (borrowed; must outlive the registry). */
loom_status loom_state_create(loom_mesh *mesh, loom_state **out);
loom_status loom_state_destroy(loom_state *state);

/* Registers `local` (this rank's slice, borrowed) under a unique name. The slice's element
 * count must equal the product of the extents from loom_state_slice; the dtype must match. */
loom_status loom_state_register(loom_state *state, const char *name, const loom_state_spec *spec,
                                loom_buf local);

/* Registers every parameter of a parameter table (runtime/params.h) under its name with its
 * spec and value. (A declaration of the table type, to keep this header free of it.) */
struct loom_params;
loom_status loom_state_register_params(loom_state *state, const struct loom_params *params);
int loom_state_count(const loom_state *state);
/* Entry `index` in registration order: name, spec, local buffer, slice. NULL outputs skipped. */
loom_status loom_state_entry(const loom_state *state, int index, const char **name,
                             const loom_state_spec **spec, loom_buf *local, const int64_t **offsets,
                             const int64_t **extents);
/* The mesh the registry was created for. */
loom_mesh *loom_state_mesh(const loom_state *state);
/* Index of `name`, or -1. */
int loom_state_find(const loom_state *state, const char *name);

#ifdef __cplusplus
}
#endif
#endif
