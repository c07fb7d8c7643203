/* The optimizer object: a list of (parameter, gradient, state) entries updated by the
 * kernels of update.c, and the state exposed as named tensors for checkpoints. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/optim.h"
#include "runtime/state.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>

#include "optim/kernels.h"
#endif

typedef struct {
  char *name;
  loom_buf param, grad;
  loom_buf model_copy;     /* bfloat16 copy written after each update; count 0 = none */
  float *state[2];         /* SGD: momentum; AdamW: exp_avg, exp_avg_sq */
  char *state_name[2];
  int device;              /* parameter, gradient and state live on the GPU */
  double weight_decay;     /* this parameter's (its group's, or the optimizer's) */
  double lr_scale;         /* its group's: lr of the step times this */
  loom_state_spec spec;    /* the parameter's placement (from the table), or ndims = -1: none
                            * (loom_optim_add: the state is registered as replicated) */
} entry;

#ifdef LOOM_HAVE_CUDA
/* Device entries of one optimizer group (equal weight decay and lr scale) with the same
 * gradient dtype and bfloat16-copy presence: one launch a step (kernels.cu). */
typedef struct {
  double weight_decay, lr_scale;
  loom_dtype grad_dtype;
  int with_copy;
  loom_optim_tensor *tensors; /* device (count) */
  loom_optim_chunk *chunks;   /* device (chunk_count) */
  int chunk_count;
} launch_group;

static int same_launch(const launch_group *g, const entry *e) {
  return g->weight_decay == e->weight_decay && g->lr_scale == e->lr_scale &&
         g->grad_dtype == e->grad.dtype && g->with_copy == (e->model_copy.count != 0);
}
#endif

struct loom_optim {
  loom_optim_params params;
  entry *entries;
  int count, capacity;
#ifdef LOOM_HAVE_CUDA
  launch_group *launches;
  int launch_count;
  int launches_for; /* entry count the launches were built for (-1: none) */
#endif
  int64_t step; /* optimizer steps taken; exposed as "optim.step" */
};

static int states_per_param(const loom_optim *o) {
  if (o->params.kind == LOOM_OPTIM_ADAMW) return 2;
  return o->params.momentum != 0.0 ? 1 : 0;
}

loom_status loom_optim_create(const loom_optim_params *p, loom_optim **out) {
  if (!p || !out) return loom_error_set(LOOM_ERR_ARG, "loom_optim_create: NULL argument");
  if (p->kind != LOOM_OPTIM_SGD && p->kind != LOOM_OPTIM_ADAMW)
    return loom_error_set(LOOM_ERR_ARG, "optimizer kind=%d; accepted SGD or ADAMW", (int)p->kind);
  if (p->momentum < 0 || p->momentum >= 1)
    return loom_error_set(LOOM_ERR_ARG, "SGD momentum=%g outside [0, 1)", p->momentum);
  if (p->nesterov && p->momentum == 0)
    return loom_error_set(LOOM_ERR_ARG, "SGD Nesterov needs momentum > 0 (momentum=%g)",
                          p->momentum);
  if (p->beta1 < 0 || p->beta1 >= 1 || p->beta2 < 0 || p->beta2 >= 1)
    return loom_error_set(LOOM_ERR_ARG, "AdamW betas (%g, %g) outside [0, 1)", p->beta1, p->beta2);
  if (!(p->eps > 0)) return loom_error_set(LOOM_ERR_ARG, "AdamW eps=%g must be > 0", p->eps);
  if (p->weight_decay < 0)
    return loom_error_set(LOOM_ERR_ARG, "weight_decay=%g must be >= 0", p->weight_decay);
  loom_optim *o = calloc(1, sizeof *o);
  if (!o) return loom_error_set(LOOM_ERR_NOMEM, "allocating the optimizer");
  o->params = *p;
#ifdef LOOM_HAVE_CUDA
  o->launches_for = -1;
#endif
  *out = o;
  return LOOM_OK;
}

#ifdef LOOM_HAVE_CUDA
static void free_launches(loom_optim *o) {
  for (int g = 0; g < o->launch_count; g++) {
    cudaFree(o->launches[g].tensors);
    cudaFree(o->launches[g].chunks);
  }
  free(o->launches);
  o->launches = NULL;
  o->launch_count = 0;
  o->launches_for = -1;
}

/* Groups the device entries by hyper-parameters and uploads their descriptors and chunk
 * tables once (the entries do not move). */
static loom_status build_launches(loom_optim *o) {
  free_launches(o);
  o->launches = calloc((size_t)(o->count ? o->count : 1), sizeof *o->launches);
  loom_optim_tensor *tensors = malloc(sizeof *tensors * (size_t)(o->count ? o->count : 1));
  loom_status status = o->launches && tensors ? LOOM_OK
                       : loom_error_set(LOOM_ERR_NOMEM, "optimizer launch groups");
  for (int first = 0; first < o->count && status == LOOM_OK; first++) {
    entry *lead = &o->entries[first];
    launch_group key = {.weight_decay = lead->weight_decay, .lr_scale = lead->lr_scale,
                        .grad_dtype = lead->grad.dtype, .with_copy = lead->model_copy.count != 0};
    int taken = 0;
    for (int g = 0; g < o->launch_count; g++) taken |= same_launch(&o->launches[g], lead);
    if (!lead->device || taken) continue;
    int count = 0;
    size_t chunk_count = 0;
    for (int i = first; i < o->count; i++) {
      entry *e = &o->entries[i];
      if (!e->device || !same_launch(&key, e)) continue;
      tensors[count++] = (loom_optim_tensor){.param = e->param.ptr, .grad = e->grad.ptr,
                                             .state0 = e->state[0], .state1 = e->state[1],
                                             .copy = e->model_copy.count ? e->model_copy.ptr : NULL,
                                             .n = e->param.count};
      chunk_count += (e->param.count + LOOM_OPTIM_CHUNK - 1) / LOOM_OPTIM_CHUNK;
    }
    loom_optim_chunk *chunks = malloc(sizeof *chunks * (chunk_count ? chunk_count : 1));
    if (!chunks || chunk_count > (size_t)INT_MAX) {
      free(chunks);
      status = loom_error_set(LOOM_ERR_NOMEM, "optimizer chunk table (%zu chunks)", chunk_count);
      break;
    }
    size_t at = 0;
    for (int t = 0; t < count; t++)
      for (size_t first_element = 0; first_element < tensors[t].n; first_element += LOOM_OPTIM_CHUNK)
        chunks[at++] = (loom_optim_chunk){.tensor = t, .first = first_element};
    launch_group *g = &o->launches[o->launch_count++];
    *g = key;
    g->chunk_count = (int)chunk_count;
    cudaError_t e = cudaMalloc((void **)&g->tensors, sizeof *tensors * (size_t)count);
    if (e == cudaSuccess) e = cudaMalloc((void **)&g->chunks, sizeof *chunks * (chunk_count ? chunk_count : 1));
    if (e == cudaSuccess)
      e = cudaMemcpy(g->tensors, tensors, sizeof *tensors * (size_t)count, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && chunk_count)
      e = cudaMemcpy(g->chunks, chunks, sizeof *chunks * chunk_count, cudaMemcpyHostToDevice);
    free(chunks);
    if (e != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "optimizer launch tables: %s", cudaGetErrorString(e));
  }
  free(tensors);
  if (status < 0) {
    free_launches(o);
    return status;
  }
  o->launches_for = o->count;
  return LOOM_OK;
}
#endif

loom_status loom_optim_destroy(loom_optim *o) {
  if (!o) return LOOM_OK;
#ifdef LOOM_HAVE_CUDA
  free_launches(o);
#endif
  for (int i = 0; i < o->count; i++) {
    free(o->entries[i].name);
    for (int s = 0; s < 2; s++) {
#ifdef LOOM_HAVE_CUDA
      if (o->entries[i].device) cudaFree(o->entries[i].state[s]);
      else
#endif
        free(o->entries[i].state[s]);
      free(o->entries[i].state_name[s]);
    }
  }
  free(o->entries);
  free(o);
  return LOOM_OK;
}

static char *joined(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s.%s", a, b);
  return s;
}

loom_status loom_optim_add(loom_optim *o, const char *name, loom_buf param, loom_buf grad) {
  return loom_optim_add_mixed(o, name, param, grad, (loom_buf){0});
}

static loom_status add_entry(loom_optim *o, const char *name, loom_buf param, loom_buf grad,
                             loom_buf model_copy, double weight_decay, double lr_scale,
                             const loom_state_spec *spec);

loom_status loom_optim_add_mixed(loom_optim *o, const char *name, loom_buf param, loom_buf grad,
                                 loom_buf model_copy) {
  if (!o) return loom_error_set(LOOM_ERR_ARG, "loom_optim_add: optimizer missing");
  return add_entry(o, name, param, grad, model_copy, o->params.weight_decay, 1.0, NULL);
}

loom_status loom_optim_add_params(loom_optim *o, const loom_params *params) {
  if (!o || !params) return loom_error_set(LOOM_ERR_ARG, "loom_optim_add_params: NULL argument");
  for (int i = 0; i < loom_params_count(params); i++) {
    const loom_param *p = loom_params_at(params, i);
    const loom_param_group *g = loom_params_group_at(params, p->group);
    double decay = g->weight_decay >= 0 ? g->weight_decay : o->params.weight_decay;
    LOOM_CHECK(add_entry(o, p->name, p->value, p->grad, p->model_copy, decay, g->lr_scale,
                         &p->spec));
  }
  return LOOM_OK;
}

static loom_status add_entry(loom_optim *o, const char *name, loom_buf param, loom_buf grad,
                             loom_buf model_copy, double weight_decay, double lr_scale,
                             const loom_state_spec *spec) {
  if (!o || !name || !*name) return loom_error_set(LOOM_ERR_ARG, "loom_optim_add: optimizer or name missing");
  int host_double = grad.dtype == LOOM_FLOAT64 && grad.device.kind == LOOM_DEVICE_CPU;
  if (param.dtype != LOOM_FLOAT32 ||
      (grad.dtype != LOOM_FLOAT32 && grad.dtype != LOOM_BFLOAT16 && !host_double))
    return loom_error_set(LOOM_ERR_ARG, "loom_optim_add '%s': parameter is %s and gradient %s; "
                          "the optimizer updates float32 parameters with float32 or bfloat16 "
                          "gradients (float64 on the host)", name, loom_dtype_name(param.dtype),
                          loom_dtype_name(grad.dtype));
  if (!(weight_decay >= 0) || !(lr_scale >= 0))
    return loom_error_set(LOOM_ERR_ARG, "loom_optim_add '%s': weight_decay=%g and lr_scale=%g "
                          "must be >= 0", name, weight_decay, lr_scale);
  if (param.device.kind != grad.device.kind)
    return loom_error_set(LOOM_ERR_ARG, "loom_optim_add '%s': parameter and gradient are in "
                          "different memories (host/device)", name);
  if (model_copy.count != 0 &&
      (model_copy.dtype != LOOM_BFLOAT16 || model_copy.count != param.count || !model_copy.ptr ||
       model_copy.device.kind != param.device.kind))
    return loom_error_set(LOOM_ERR_ARG, "loom_optim_add '%s': the model copy must be a bfloat16 "
                          "buffer of %zu elements in the parameter's memory (got %s, %zu elements)",
                          name, param.count, loom_dtype_name(model_copy.dtype), model_copy.count);
  int device = param.device.kind == LOOM_DEVICE_CUDA;
#ifndef LOOM_HAVE_CUDA
  if (device)
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "loom_optim_add '%s': CUDA tensors need the GPU "
                          "optimizer kernels, absent from this build (no CUDA)", name);
#endif
  if (param.count != grad.count || (param.count && (!param.ptr || !grad.ptr)))
    return loom_error_set(LOOM_ERR_ARG, "loom_optim_add '%s': parameter has %zu elements, "
                          "gradient %zu (or a NULL pointer)", name, param.count, grad.count);
  for (int i = 0; i < o->count; i++)
    if (strcmp(o->entries[i].name, name) == 0)
      return loom_error_set(LOOM_ERR_ARG, "loom_optim_add: parameter '%s' added twice", name);
  if (o->count == o->capacity) {
    int capacity = o->capacity ? 2 * o->capacity : 16;
    entry *grown = realloc(o->entries, sizeof *grown * (size_t)capacity);
    if (!grown) return loom_error_set(LOOM_ERR_NOMEM, "optimizer entries (%d)", capacity);
    o->entries = grown;
    o->capacity = capacity;
  }
  entry e = {.name = strdup(name), .param = param, .grad = grad, .model_copy = model_copy,
             .device = device, .weight_decay = weight_decay, .lr_scale = lr_scale,
             .spec = {.ndims = -1}};
  if (spec) e.spec = *spec; /* the moments are split exactly like their parameter */
  static const char *const sgd_names[] = {"momentum"}, *const adam_names[] = {"exp_avg", "exp_avg_sq"};
  int states = states_per_param(o);
  int ok = e.name != NULL;
  for (int s = 0; s < states && ok; s++) {
    size_t bytes = (param.count ? param.count : 1) * sizeof(float);
#ifdef LOOM_HAVE_CUDA
    if (device) {
      e.state[s] = NULL;
      if (cudaMalloc((void **)&e.state[s], bytes) != cudaSuccess ||
          cudaMemset(e.state[s], 0, bytes) != cudaSuccess) {
        cudaFree(e.state[s]);
        e.state[s] = NULL;
      }
    } else
#endif
      e.state[s] = calloc(1, bytes);
    e.state_name[s] = joined(name, o->params.kind == LOOM_OPTIM_ADAMW ? adam_names[s] : sgd_names[s]);
    ok = e.state[s] && e.state_name[s];
  }
  if (!ok) {
    free(e.name);
    for (int s = 0; s < 2; s++) {
#ifdef LOOM_HAVE_CUDA
      if (device) cudaFree(e.state[s]);
      else
#endif
        free(e.state[s]);
      free(e.state_name[s]);
    }
    return loom_error_set(LOOM_ERR_NOMEM, "optimizer state for '%s' (%zu elements)", name,
                          param.count);
  }
  o->entries[o->count++] = e;
  return LOOM_OK;
}

loom_status loom_optim_step(loom_optim *o, double lr) {
  if (!o) return loom_error_set(LOOM_ERR_ARG, "loom_optim_step: optimizer is NULL");
  if (!(lr >= 0)) return loom_error_set(LOOM_ERR_ARG, "loom_optim_step: lr=%g must be >= 0", lr);
  const loom_optim_params *p = &o->params;
  o->step++;
#ifdef LOOM_HAVE_CUDA
  /* Device tensors: one multi-tensor launch per optimizer group (and gradient dtype) */
  int any_device = 0;
  for (int i = 0; i < o->count && !any_device; i++) any_device = o->entries[i].device;
  if (any_device && o->launches_for != o->count) LOOM_CHECK(build_launches(o));
  for (int g = 0; any_device && g < o->launch_count; g++) {
    const launch_group *l = &o->launches[g];
    float rate = (float)(lr * l->lr_scale), decay = (float)l->weight_decay;
    if (p->kind == LOOM_OPTIM_SGD)
      LOOM_CHECK(loom_sgd_update_device_multi(p->stream, l->tensors, l->chunks, l->chunk_count,
                                              l->grad_dtype, l->with_copy, rate,
                                              (float)p->momentum, decay, p->nesterov,
                                              o->step == 1));
    else
      LOOM_CHECK(loom_adamw_update_device_multi(p->stream, l->tensors, l->chunks, l->chunk_count,
                                                l->grad_dtype, l->with_copy, o->step, rate,
                                                (float)p->beta1, (float)p->beta2, (float)p->eps,
                                                decay));
  }
#endif
  for (int i = 0; i < o->count; i++) { /* host tensors */
    entry *e = &o->entries[i];
    if (e->device) continue;
    uint16_t *copy = e->model_copy.count ? e->model_copy.ptr : NULL;
    float rate = (float)(lr * e->lr_scale), decay = (float)e->weight_decay;
    if (p->kind == LOOM_OPTIM_SGD)
      loom_sgd_update_mixed(e->param.count, e->param.ptr, e->grad.ptr, e->grad.dtype, e->state[0],
                            copy, rate, (float)p->momentum, decay, p->nesterov, o->step == 1);
    else
      loom_adamw_update_mixed(e->param.count, e->param.ptr, e->grad.ptr, e->grad.dtype,
                              e->state[0], e->state[1], copy, o->step, rate, (float)p->beta1,
                              (float)p->beta2, (float)p->eps, decay);
  }
  return LOOM_OK;
}

int64_t loom_optim_step_count(const loom_optim *o) { return o->step; }

int loom_optim_state_count(const loom_optim *o) { return 1 + o->count * states_per_param(o); }

loom_status loom_optim_state_at(const loom_optim *o, int index, const char **name, loom_buf *buf) {
  int per = states_per_param(o);
  if (index < 0 || index >= loom_optim_state_count(o))
    return loom_error_set(LOOM_ERR_ARG, "optimizer state index %d outside [0, %d)", index,
                          loom_optim_state_count(o));
  if (index == 0) {
    *name = "optim.step";
    *buf = loom_buf_host((void *)&o->step, 1, LOOM_INT64);
    return LOOM_OK;
  }
  const entry *e = &o->entries[(index - 1) / per];
  int s = (index - 1) % per;
  *name = e->state_name[s];
  *buf = (loom_buf){e->state[s], e->param.count, LOOM_FLOAT32, e->param.device};
  return LOOM_OK;
}

loom_status loom_optim_register_state(const loom_optim *o, loom_state *state) {
  if (!o || !state) return loom_error_set(LOOM_ERR_ARG, "loom_optim_register_state: NULL argument");
  for (int i = 0; i < loom_optim_state_count(o); i++) {
    const char *name;
    loom_buf buf;
    LOOM_CHECK(loom_optim_state_at(o, i, &name, &buf));
    int scalar = i == 0; /* "optim.step" */
    loom_state_spec spec = {.dtype = buf.dtype, .ndims = scalar ? 0 : 1, .shape = {(int64_t)buf.count}};
    const entry *e = scalar ? NULL : &o->entries[(i - 1) / states_per_param(o)];
    /* moments of a split parameter are placed like it (float32 both); those of a replicated
     * one stay 1-D, the layout checkpoints have always had */
    if (e && e->spec.ndims >= 0 && e->spec.split_count > 0) spec = e->spec;
    LOOM_CHECK(loom_state_register(state, name, &spec, buf));
  }
  return LOOM_OK;
}
