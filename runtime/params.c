/* The parameter table (see params.h): a growable array of entries with copied names, checked
 * once at registration so that its readers (DDP, the optimizer, clipping, the registry) can
 * trust it. */
#include "runtime/params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  loom_param param; /* name points to `name` below */
  char *name;
  int counts_once;
} entry;

typedef struct {
  loom_param_group group;
  char *name;
} group_entry;

struct loom_params {
  loom_mesh *mesh;
  entry *entries;
  int count, capacity;
  group_entry *groups;
  int group_count, group_capacity;
};

static loom_status grow(void **array, int *capacity, int needed, size_t element, const char *what) {
  if (needed <= *capacity) return LOOM_OK;
  int next = *capacity ? 2 * *capacity : 16;
  void *grown = realloc(*array, element * (size_t)next);
  if (!grown) return loom_error_set(LOOM_ERR_NOMEM, "parameter table: %s (%d)", what, next);
  *array = grown;
  *capacity = next;
  return LOOM_OK;
}

loom_status loom_params_create(loom_mesh *mesh, loom_params **out) {
  if (!mesh || !out) return loom_error_set(LOOM_ERR_ARG, "loom_params_create: NULL argument");
  loom_params *p = calloc(1, sizeof *p);
  if (!p) return loom_error_set(LOOM_ERR_NOMEM, "allocating the parameter table");
  p->mesh = mesh;
  loom_param_group defaults = LOOM_PARAM_GROUP_INIT;
  loom_status status = loom_params_add_group(p, &defaults, NULL);
  if (status < 0) {
    loom_params_destroy(p);
    return status;
  }
  *out = p;
  return LOOM_OK;
}

loom_status loom_params_destroy(loom_params *p) {
  if (!p) return LOOM_OK;
  for (int i = 0; i < p->count; i++) free(p->entries[i].name);
  for (int g = 0; g < p->group_count; g++) free(p->groups[g].name);
  free(p->entries);
  free(p->groups);
  free(p);
  return LOOM_OK;
}

loom_status loom_params_add_group(loom_params *p, const loom_param_group *group, int *index) {
  if (!p || !group || !group->name || !*group->name)
    return loom_error_set(LOOM_ERR_ARG, "loom_params_add_group: table, group or name missing");
  if (!(group->lr_scale >= 0))
    return loom_error_set(LOOM_ERR_ARG, "optimizer group '%s': lr_scale=%g must be >= 0",
                          group->name, group->lr_scale);
  for (int g = 0; g < p->group_count; g++)
    if (strcmp(p->groups[g].name, group->name) == 0)
      return loom_error_set(LOOM_ERR_ARG, "optimizer group '%s' added twice", group->name);
  LOOM_CHECK(grow((void **)&p->groups, &p->group_capacity, p->group_count + 1,
                  sizeof *p->groups, "groups"));
  char *name = strdup(group->name);
  if (!name) return loom_error_set(LOOM_ERR_NOMEM, "optimizer group name");
  group_entry *e = &p->groups[p->group_count];
  e->group = *group;
  e->name = name;
  e->group.name = name;
  if (index) *index = p->group_count;
  p->group_count++;
  return LOOM_OK;
}

static loom_status check(const loom_params *p, const loom_param *q) {
  if (!q->name || !*q->name) return loom_error_set(LOOM_ERR_ARG, "loom_params_add: name missing");
  const char *n = q->name;
  if (loom_params_find(p, n) >= 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_params_add: parameter '%s' added twice", n);
  if (q->value.dtype != LOOM_FLOAT32 || q->spec.dtype != LOOM_FLOAT32)
    return loom_error_set(LOOM_ERR_ARG, "parameter '%s': value is %s and spec %s; parameters "
                          "are float32 (master) values", n, loom_dtype_name(q->value.dtype),
                          loom_dtype_name(q->spec.dtype));
  int host = q->grad.device.kind == LOOM_DEVICE_CPU;
  if (q->grad.dtype != LOOM_FLOAT32 && q->grad.dtype != LOOM_BFLOAT16 &&
      !(host && q->grad.dtype == LOOM_FLOAT64))
    return loom_error_set(LOOM_ERR_ARG, "parameter '%s': gradient is %s; float32 or bfloat16 "
                          "(float64 on the host)", n, loom_dtype_name(q->grad.dtype));
  if (q->grad.count != q->value.count || q->grad.device.kind != q->value.device.kind ||
      (q->value.count && (!q->value.ptr || !q->grad.ptr)))
    return loom_error_set(LOOM_ERR_ARG, "parameter '%s': value has %zu elements and gradient "
                          "%zu, in %s and %s memory (they must match; no NULL pointers)", n,
                          q->value.count, q->grad.count,
                          q->value.device.kind == LOOM_DEVICE_CPU ? "host" : "device",
                          host ? "host" : "device");
  if (q->model_copy.count &&
      (q->model_copy.dtype != LOOM_BFLOAT16 || q->model_copy.count != q->value.count ||
       !q->model_copy.ptr || q->model_copy.device.kind != q->value.device.kind))
    return loom_error_set(LOOM_ERR_ARG, "parameter '%s': the model copy must be a bfloat16 "
                          "buffer of %zu elements in the value's memory", n, q->value.count);
  if (q->group < 0 || q->group >= p->group_count)
    return loom_error_set(LOOM_ERR_ARG, "parameter '%s': optimizer group %d outside [0, %d)", n,
                          q->group, p->group_count);
  if (q->reduce_axis < 0 || q->reduce_axis > LOOM_AXIS_COUNT ||
      q->reduce_axis == LOOM_AXIS_NODE)
    return loom_error_set(LOOM_ERR_ARG, "parameter '%s': reduce axis %d is not a mesh group axis "
                          "(GRAD, EDP, DP, ... or LOOM_AXIS_COUNT for none)", n,
                          (int)q->reduce_axis);
  loom_mesh_shape shape = loom_mesh_get_shape(p->mesh);
  loom_mesh_coords coords = loom_mesh_my_coords(p->mesh);
  int64_t offsets[LOOM_STATE_MAX_DIMS], extents[LOOM_STATE_MAX_DIMS];
  loom_status status = loom_state_slice(&q->spec, &shape, &coords, offsets, extents);
  if (status < 0) {
    char cause[512];
    snprintf(cause, sizeof cause, "%s", loom_error_string());
    return loom_error_set(status, "parameter '%s': %s", n, cause);
  }
  int64_t elements = 1;
  for (int d = 0; d < q->spec.ndims; d++) elements *= extents[d];
  if ((size_t)elements != q->value.count)
    return loom_error_set(LOOM_ERR_ARG, "parameter '%s': this rank's slice of the spec holds "
                          "%lld elements but the value has %zu", n, (long long)elements,
                          q->value.count);
  return LOOM_OK;
}

loom_status loom_params_add(loom_params *p, const loom_param *param, int *index) {
  if (!p || !param) return loom_error_set(LOOM_ERR_ARG, "loom_params_add: NULL argument");
  LOOM_CHECK(check(p, param));
  LOOM_CHECK(grow((void **)&p->entries, &p->capacity, p->count + 1, sizeof *p->entries,
                  "parameters"));
  char *name = strdup(param->name);
  if (!name) return loom_error_set(LOOM_ERR_NOMEM, "parameter name '%s'", param->name);
  entry *e = &p->entries[p->count];
  e->param = *param;
  e->name = name;
  e->param.name = name;
  loom_mesh_coords coords = loom_mesh_my_coords(p->mesh);
  e->counts_once = loom_state_is_writer(&param->spec, &coords);
  if (index) *index = p->count;
  p->count++;
  return LOOM_OK;
}

int loom_params_count(const loom_params *p) { return p ? p->count : 0; }
const loom_param *loom_params_at(const loom_params *p, int i) {
  return p && i >= 0 && i < p->count ? &p->entries[i].param : NULL;
}
int loom_params_group_count(const loom_params *p) { return p ? p->group_count : 0; }
const loom_param_group *loom_params_group_at(const loom_params *p, int g) {
  return p && g >= 0 && g < p->group_count ? &p->groups[g].group : NULL;
}
int loom_params_find(const loom_params *p, const char *name) {
  for (int i = 0; p && name && i < p->count; i++)
    if (strcmp(p->entries[i].name, name) == 0) return i;
  return -1;
}
loom_mesh *loom_params_mesh(const loom_params *p) { return p ? p->mesh : NULL; }
int loom_params_counts_once(const loom_params *p, int i) {
  return p && i >= 0 && i < p->count ? p->entries[i].counts_once : 0;
}
