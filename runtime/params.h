/* loom_params: the one table of a model's parameters. Each entry names a parameter and holds
 * its value (this rank's slice), gradient, optional bfloat16 model copy, global shape and
 * placement on the mesh (a loom_state_spec), the mesh axis over which replicas reduce its
 * gradient, and its optimizer group. Data parallelism (loom_ddp_add_params), the optimizer
 * (loom_optim_add_params), clipping (loom_clip_params) and the state registry
 * (loom_state_register_params) all read this table, so a parameter is described once.
 *
 * Optimizer groups carry their own hyper-parameters: a language model turns weight decay off
 * for biases, norms and embeddings by putting them in a group with weight_decay = 0. Group 0,
 * "default", exists from creation and uses the optimizer's own settings. */
#ifndef LOOM_RUNTIME_PARAMS_H
#define LOOM_RUNTIME_PARAMS_H

#include "runtime/dtype.h"
#include "runtime/mesh.h"
#include "runtime/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char *name;    /* copied */
  double weight_decay; /* < 0: the optimizer's (LOOM_PARAM_GROUP_INIT) */
  double lr_scale;     /* this group's learning rate = the step's lr * lr_scale */
} loom_param_group;
#define LOOM_PARAM_GROUP_INIT {.name = "default", .weight_decay = -1.0, .lr_scale = 1.0}

typedef struct {
  const char *name;      /* unique; copied */
  loom_buf value;        /* this rank's slice: the float32 (master) values the optimizer updates */
  loom_buf grad;         /* its gradient, same count and memory: float32 or bfloat16 (float64
                          * on the host) */
  loom_buf model_copy;   /* bfloat16 copy the optimizer refreshes after each update; {0}: none */
  loom_state_spec spec;  /* global shape and placement of `value` (spec.dtype = value's dtype) */
  loom_axis reduce_axis; /* replicas' gradients are reduced over this axis's group: GRAD for
                          * dense parameters, EDP for experts, LOOM_AXIS_COUNT for none */
  int group;             /* optimizer group index; 0 = default */
} loom_param;

typedef struct loom_params loom_params;

/* An empty table (with group 0) for `mesh` (borrowed; must outlive the table). */
loom_status loom_params_create(loom_mesh *mesh, loom_params **out);
loom_status loom_params_destroy(loom_params *params);
/* A new optimizer group; *index receives its index. Names are unique. */
loom_status loom_params_add_group(loom_params *params, const loom_param_group *group, int *index);
/* Adds a parameter (checked: name, dtypes, counts against the spec's slice on this rank, the
 * group and axis); *index (may be NULL) receives its index, the order of registration. */
loom_status loom_params_add(loom_params *params, const loom_param *param, int *index);

int loom_params_count(const loom_params *params);
const loom_param *loom_params_at(const loom_params *params, int index);
int loom_params_group_count(const loom_params *params);
const loom_param_group *loom_params_group_at(const loom_params *params, int index);
/* Index of the parameter named `name`, or -1. */
int loom_params_find(const loom_params *params, const char *name);
loom_mesh *loom_params_mesh(const loom_params *params);
/* 1 if this rank counts parameter `index` once in global sums (the gradient norm): the one
 * replica of its slice that loom_state_is_writer picks. */
int loom_params_counts_once(const loom_params *params, int index);

#ifdef __cplusplus
}
#endif
#endif
