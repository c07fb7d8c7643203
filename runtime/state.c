/* State registry: named tensors, their placement, and each rank's slice (see state.h). */
#include "runtime/state.h"

#include "runtime/params.h"

#include <stdlib.h>
#include <string.h>

/* The fine axes a tensor can be split over along `axis`: the axis's own (runtime/mesh.h), for
 * the group axes PP, DP, SP, EP, EDP and GRAD; 0 for NODE and WORLD. */
static unsigned fine_axes(loom_axis axis) {
  return axis >= LOOM_AXIS_PP && axis <= LOOM_AXIS_GRAD ? loom_axis_fine_mask(axis) : 0;
}

static loom_status check_spec(const loom_state_spec *spec) {
  if (!spec) return loom_error_set(LOOM_ERR_ARG, "state spec is NULL");
  if (spec->dtype < 0 || spec->dtype >= LOOM_DTYPE_COUNT)
    return loom_error_set(LOOM_ERR_ARG, "state spec dtype=%d is not a loom_dtype", (int)spec->dtype);
  if (spec->ndims < 0 || spec->ndims > LOOM_STATE_MAX_DIMS)
    return loom_error_set(LOOM_ERR_ARG, "state spec ndims=%d outside [0, %d]", spec->ndims,
                          LOOM_STATE_MAX_DIMS);
  for (int d = 0; d < spec->ndims; d++)
    if (spec->shape[d] < 0)
      return loom_error_set(LOOM_ERR_ARG, "state spec shape[%d]=%lld is negative", d,
                            (long long)spec->shape[d]);
  if (spec->split_count < 0 || spec->split_count > LOOM_STATE_MAX_SPLITS)
    return loom_error_set(LOOM_ERR_ARG, "state spec split_count=%d outside [0, %d]",
                          spec->split_count, LOOM_STATE_MAX_SPLITS);
  unsigned covered = 0;
  for (int i = 0; i < spec->split_count; i++) {
    loom_state_split split = spec->splits[i];
    unsigned fine = fine_axes(split.axis);
    if (!fine)
      return loom_error_set(LOOM_ERR_ARG, "state spec split %d: axis %s cannot split a tensor "
                            "(use PP, DP, SP, EP, EDP or GRAD)", i, loom_axis_name(split.axis));
    if (split.dim < 0 || split.dim >= spec->ndims)
      return loom_error_set(LOOM_ERR_ARG, "state spec split %d: dimension %d outside the "
                            "tensor's %d dimensions", i, split.dim, spec->ndims);
    if (covered & fine)
      return loom_error_set(LOOM_ERR_ARG, "state spec split %d: axis %s overlaps an axis "
                            "already listed (a mesh axis can split a tensor once)", i,
                            loom_axis_name(split.axis));
    covered |= fine;
  }
  return LOOM_OK;
}

loom_status loom_state_slice(const loom_state_spec *spec, const loom_mesh_shape *shape,
                             const loom_mesh_coords *coords, int64_t *offsets, int64_t *extents) {
  LOOM_CHECK(check_spec(spec));
  for (int d = 0; d < spec->ndims; d++) {
    int64_t index = 0, parts = 1;
    for (int i = 0; i < spec->split_count; i++) {
      if (spec->splits[i].dim != d) continue;
      int64_t axis_index, axis_size;
      loom_mesh_axis_position(shape, coords, spec->splits[i].axis, &axis_index, &axis_size);
      index = index * axis_size + axis_index; /* nested in listed order */
      parts *= axis_size;
    }
    int64_t n = spec->shape[d], piece = (n + parts - 1) / parts;
    int64_t begin = index * piece < n ? index * piece : n;
    int64_t end = begin + piece < n ? begin + piece : n;
    offsets[d] = begin;
    extents[d] = end - begin;
  }
  return LOOM_OK;
}

int loom_state_is_writer(const loom_state_spec *spec, const loom_mesh_coords *coords) {
  unsigned covered = 0;
  for (int i = 0; spec && i < spec->split_count; i++) covered |= fine_axes(spec->splits[i].axis);
  return (coords->edp == 0 || (covered & LOOM_FINE_BIT(LOOM_FINE_EDP))) &&
         (coords->ep == 0 || (covered & LOOM_FINE_BIT(LOOM_FINE_EP))) &&
         (coords->sp == 0 || (covered & LOOM_FINE_BIT(LOOM_FINE_SP)));
}

typedef struct {
  char *name;
  loom_state_spec spec;
  loom_buf local;
  int64_t offsets[LOOM_STATE_MAX_DIMS], extents[LOOM_STATE_MAX_DIMS];
} state_entry;

struct loom_state {
  loom_mesh *mesh;
  state_entry *entries;
  int count, capacity;
};

loom_status loom_state_create(loom_mesh *mesh, loom_state **out) {
  if (!mesh || !out) return loom_error_set(LOOM_ERR_ARG, "loom_state_create: mesh or out is NULL");
  loom_state *state = calloc(1, sizeof *state);
  if (!state) return loom_error_set(LOOM_ERR_NOMEM, "allocating the state registry");
  state->mesh = mesh;
  *out = state;
  return LOOM_OK;
}

loom_status loom_state_destroy(loom_state *state) {
  if (!state) return LOOM_OK;
  for (int i = 0; i < state->count; i++) free(state->entries[i].name);
  free(state->entries);
  free(state);
  return LOOM_OK;
}

int loom_state_find(const loom_state *state, const char *name) {
  for (int i = 0; state && name && i < state->count; i++)
    if (strcmp(state->entries[i].name, name) == 0) return i;
  return -1;
}

loom_status loom_state_register(loom_state *state, const char *name, const loom_state_spec *spec,
                                loom_buf local) {
  if (!state || !name || !*name)
    return loom_error_set(LOOM_ERR_ARG, "loom_state_register: registry or name missing");
  if (loom_state_find(state, name) >= 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_state_register: '%s' registered twice", name);
  state_entry e = {0};
  loom_mesh_shape shape = loom_mesh_get_shape(state->mesh);
  loom_mesh_coords coords = loom_mesh_my_coords(state->mesh);
  loom_status status = loom_state_slice(spec, &shape, &coords, e.offsets, e.extents);
  if (status < 0)
    return loom_error_set(status, "loom_state_register '%s': %s", name, loom_error_string());
  int64_t elements = 1;
  for (int d = 0; d < spec->ndims; d++) elements *= e.extents[d];
  if (local.dtype != spec->dtype || (int64_t)local.count != elements ||
      (local.count && !local.ptr))
    return loom_error_set(LOOM_ERR_ARG, "loom_state_register '%s': local buffer is %zu x %s but "
                          "this rank's slice is %lld x %s", name, local.count,
                          loom_dtype_name(local.dtype), (long long)elements,
                          loom_dtype_name(spec->dtype));
  if (state->count == state->capacity) {
    int capacity = state->capacity ? 2 * state->capacity : 32;
    state_entry *grown = realloc(state->entries, sizeof *grown * (size_t)capacity);
    if (!grown) return loom_error_set(LOOM_ERR_NOMEM, "state registry (%d entries)", capacity);
    state->entries = grown;
    state->capacity = capacity;
  }
  e.name = strdup(name);
  if (!e.name) return loom_error_set(LOOM_ERR_NOMEM, "state name '%s'", name);
  e.spec = *spec;
  e.local = local;
  state->entries[state->count++] = e;
  return LOOM_OK;
}

int loom_state_count(const loom_state *state) { return state ? state->count : 0; }

loom_status loom_state_entry(const loom_state *state, int index, const char **name,
                             const loom_state_spec **spec, loom_buf *local, const int64_t **offsets,
                             const int64_t **extents) {
  if (!state || index < 0 || index >= state->count)
    return loom_error_set(LOOM_ERR_ARG, "loom_state_entry: index %d outside [0, %d)", index,
                          loom_state_count(state));
  const state_entry *e = &state->entries[index];
  if (name) *name = e->name;
  if (spec) *spec = &e->spec;
  if (local) *local = e->local;
  if (offsets) *offsets = e->offsets;
  if (extents) *extents = e->extents;
  return LOOM_OK;
}

loom_mesh *loom_state_mesh(const loom_state *state) { return state->mesh; }

loom_status loom_state_register_params(loom_state *state, const loom_params *params) {
  if (!state || !params)
    return loom_error_set(LOOM_ERR_ARG, "loom_state_register_params: NULL argument");
  for (int i = 0; i < loom_params_count(params); i++) {
    const loom_param *p = loom_params_at(params, i);
    LOOM_CHECK(loom_state_register(state, p->name, &p->spec, p->value));
  }
  return LOOM_OK;
}
