/* Bucketed, overlapped gradient reduction. Invariants: bucket b is posted only after buckets
 * 0..b-1 (same collective order on every rank); a bucket's flat buffer is owned by its
 * reduction from post until finish has waited for it. Buckets are built at the first step in
 * reverse registration order, splitting where the dtype changes or the byte budget is full. */
#include "parallel/ddp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/device.h"
#include "runtime/log.h"

typedef struct {
  char *name;
  loom_buf grad;
  int bucket;
  size_t offset; /* elements into the bucket's flat buffer */
  int ready;     /* marked in this step */
} ddp_param;

typedef struct {
  loom_dtype dtype;
  size_t count;   /* elements */
  size_t *offsets; /* (member_count) element offsets of the members, for the reducer */
  void *flat;     /* (count) packed gradients; for a bucket of one gradient, that gradient's
                   * own buffer (reduced in place: no packing copies, no extra memory) */
  int in_place;
  int *members;   /* (member_count) parameter indices */
  int member_count;
  int pending;    /* members not yet ready in this step */
  int posted;
  loom_req *req;
} ddp_bucket;

struct loom_ddp {
  loom_group *group;
  loom_ddp_params params;
  ddp_param *params_list;
  int param_count, param_capacity;
  ddp_bucket *buckets;
  loom_req_times *bucket_times; /* (bucket_count) timestamps of the last synced step */
  int bucket_count;
  int next_to_post; /* first bucket not posted yet in this step */
  int in_step, sync;
  int on_device; /* gradients (and bucket buffers) live on the GPU; copies on its stream */
  const loom_ddp_reducer *reducer;
  int *from_param; /* (from_param_count) DDP index of each table parameter, -1 if not here */
  int from_param_count;
  double backward_end, finish_end, wait_seconds;
};

loom_status loom_ddp_create(loom_group *group, const loom_ddp_params *params, loom_ddp **out) {
  if (!group || !out) return loom_error_set(LOOM_ERR_ARG, "loom_ddp_create: group or out is NULL");
  loom_ddp_params defaults = LOOM_DDP_PARAMS_INIT;
  if (!params) params = &defaults;
  if (params->bucket_bytes == 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_create: bucket_bytes must be > 0");
  if (params->op != LOOM_OP_AVG && params->op != LOOM_OP_SUM)
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_create: op=%s; gradients are reduced with avg "
                          "or sum", loom_op_name(params->op));
  loom_ddp *ddp = calloc(1, sizeof *ddp);
  if (!ddp) return loom_error_set(LOOM_ERR_NOMEM, "allocating the DDP state");
  ddp->group = group;
  ddp->params = *params;
  ddp->reducer = params->reducer ? params->reducer : loom_ddp_allreduce_reducer();
  if (!ddp->reducer->post) {
    free(ddp);
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_create: reducer '%s' has no post function",
                          params->reducer->name ? params->reducer->name : "?");
  }
  *out = ddp;
  return LOOM_OK;
}

/* Waits for every posted bucket; returns the first failure. */
static loom_status drain(loom_ddp *ddp) {
  loom_status first = LOOM_OK;
  for (int b = 0; b < ddp->bucket_count; b++) {
    ddp_bucket *bucket = &ddp->buckets[b];
    if (!bucket->req) continue;
    loom_status s = loom_wait_timed(&bucket->req, &ddp->bucket_times[b]);
    if (s < 0 && first == LOOM_OK) first = s;
  }
  return first;
}

loom_status loom_ddp_destroy(loom_ddp *ddp) {
  if (!ddp) return LOOM_OK;
  loom_status status = drain(ddp); /* the last reductions' outcome */
  for (int b = 0; b < ddp->bucket_count; b++) {
    if (ddp->buckets[b].in_place) { /* the user's gradient */
    } else if (ddp->on_device) {
      loom_device_free(loom_group_ctx(ddp->group), ddp->buckets[b].flat);
    } else {
      free(ddp->buckets[b].flat);
    }
    free(ddp->buckets[b].members);
    free(ddp->buckets[b].offsets);
  }
  for (int p = 0; p < ddp->param_count; p++) free(ddp->params_list[p].name);
  free(ddp->buckets);
  free(ddp->bucket_times);
  free(ddp->params_list);
  free(ddp->from_param);
  free(ddp);
  return status;
}

loom_status loom_ddp_register(loom_ddp *ddp, const char *name, loom_buf grad, int *index) {
  if (!ddp || !name || !*name || !index)
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_register: NULL argument or empty name");
  if (ddp->buckets)
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_register '%s': registration closed when the "
                          "first step began; register every parameter before training", name);
  if (grad.dtype < 0 || grad.dtype >= LOOM_DTYPE_COUNT || (grad.count && !grad.ptr))
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_register '%s': invalid dtype or NULL pointer",
                          name);
  loom_ctx *ctx = loom_group_ctx(ddp->group);
  if (grad.device.kind == LOOM_DEVICE_CUDA && loom_ctx_device(ctx).kind != LOOM_DEVICE_CUDA)
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "loom_ddp_register '%s': a CUDA gradient needs a "
                          "GPU rank (--device cuda)", name);
  int device = grad.device.kind == LOOM_DEVICE_CUDA;
  if (ddp->param_count > 0 && device != ddp->on_device)
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_register '%s': gradient in %s memory but earlier "
                          "ones in %s; one DDP reduces gradients of one kind of memory", name,
                          device ? "device" : "host", ddp->on_device ? "device" : "host");
  ddp->on_device = device;
  for (int p = 0; p < ddp->param_count; p++)
    if (strcmp(ddp->params_list[p].name, name) == 0)
      return loom_error_set(LOOM_ERR_ARG, "loom_ddp_register: '%s' registered twice", name);
  if (ddp->param_count == ddp->param_capacity) {
    int capacity = ddp->param_capacity ? 2 * ddp->param_capacity : 16;
    ddp_param *grown = realloc(ddp->params_list, sizeof *grown * (size_t)capacity);
    if (!grown) return loom_error_set(LOOM_ERR_NOMEM, "DDP parameter table (%d)", capacity);
    ddp->params_list = grown;
    ddp->param_capacity = capacity;
  }
  char *copy = strdup(name);
  if (!copy) return loom_error_set(LOOM_ERR_NOMEM, "DDP parameter name '%s'", name);
  ddp->params_list[ddp->param_count] = (ddp_param){.name = copy, .grad = grad, .bucket = -1};
  *index = ddp->param_count++;
  return LOOM_OK;
}

/* Assigns parameters to buckets in reverse registration order and allocates the buffers. */
static loom_status build_buckets(loom_ddp *ddp) {
  int capacity = ddp->param_count ? ddp->param_count : 1;
  ddp->buckets = calloc((size_t)capacity, sizeof *ddp->buckets);
  ddp->bucket_times = calloc((size_t)capacity, sizeof *ddp->bucket_times);
  if (!ddp->buckets || !ddp->bucket_times) return loom_error_set(LOOM_ERR_NOMEM, "DDP buckets");
  ddp_bucket *current = NULL;
  size_t current_bytes = 0;
  for (int p = ddp->param_count - 1; p >= 0; p--) {
    ddp_param *param = &ddp->params_list[p];
    size_t bytes = loom_buf_bytes(param->grad);
    if (!current || current->dtype != param->grad.dtype ||
        (current_bytes > 0 && current_bytes + bytes > ddp->params.bucket_bytes)) {
      current = &ddp->buckets[ddp->bucket_count++];
      current->dtype = param->grad.dtype;
      current->members = malloc(sizeof(int) * (size_t)capacity);
      current->offsets = malloc(sizeof(size_t) * (size_t)capacity);
      if (!current->members || !current->offsets)
        return loom_error_set(LOOM_ERR_NOMEM, "DDP bucket members");
      current_bytes = 0;
    }
    param->bucket = (int)(current - ddp->buckets);
    param->offset = current->count;
    current->offsets[current->member_count] = param->offset;
    current->members[current->member_count++] = p;
    current->count += param->grad.count;
    current_bytes += bytes;
  }
  for (int b = 0; b < ddp->bucket_count; b++) {
    ddp_bucket *bucket = &ddp->buckets[b];
    size_t bytes = bucket->count * loom_dtype_size(bucket->dtype) + 1;
    if (bucket->member_count == 1) {
      bucket->in_place = 1;
      bucket->flat = ddp->params_list[bucket->members[0]].grad.ptr;
    } else if (ddp->on_device) {
      LOOM_CHECK(loom_device_alloc(loom_group_ctx(ddp->group), bytes, &bucket->flat));
    } else {
      bucket->flat = malloc(bytes);
      if (!bucket->flat)
        return loom_error_set(LOOM_ERR_NOMEM, "DDP bucket %d of %zu elements", b, bucket->count);
    }
  }
  loom_log(loom_group_ctx(ddp->group), LOOM_LOG_INFO, "DDP on %s: %d parameters in %d buckets of "
           "<= %zu bytes", loom_group_name(ddp->group), ddp->param_count, ddp->bucket_count,
           ddp->params.bucket_bytes);
  return LOOM_OK;
}

loom_status loom_ddp_begin(loom_ddp *ddp, int sync) {
  if (!ddp) return loom_error_set(LOOM_ERR_ARG, "loom_ddp_begin: ddp is NULL");
  if (ddp->in_step)
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_begin: the previous step was not finished; "
                          "call loom_ddp_finish first");
  if (!ddp->buckets) LOOM_CHECK(build_buckets(ddp));
  LOOM_CHECK(drain(ddp)); /* device reductions of the previous step: reap, report failures */
  for (int p = 0; p < ddp->param_count; p++) ddp->params_list[p].ready = 0;
  for (int b = 0; b < ddp->bucket_count; b++) {
    ddp->buckets[b].pending = ddp->buckets[b].member_count;
    ddp->buckets[b].posted = 0;
    if (sync) memset(&ddp->bucket_times[b], 0, sizeof ddp->bucket_times[b]);
  }
  ddp->next_to_post = 0;
  ddp->in_step = 1;
  ddp->sync = sync;
  return LOOM_OK;
}

/* Copies a gradient into or out of its bucket: memcpy on the host, or a copy on the
 * compute stream on the GPU (ordered before the bucket's reduction, which waits for it). */
static loom_status copy(loom_ddp *ddp, void *dst, const void *src, size_t bytes) {
  if (ddp->on_device) return loom_device_copy_async(loom_group_ctx(ddp->group), dst, src, bytes);
  memcpy(dst, src, bytes);
  return LOOM_OK;
}

static loom_status post_bucket(loom_ddp *ddp, ddp_bucket *bucket) {
  size_t element = loom_dtype_size(bucket->dtype);
  for (int m = 0; m < bucket->member_count && !bucket->in_place; m++) {
    ddp_param *param = &ddp->params_list[bucket->members[m]];
    LOOM_CHECK(copy(ddp, (char *)bucket->flat + param->offset * element, param->grad.ptr,
                    loom_buf_bytes(param->grad)));
  }
  loom_buf flat = ddp->on_device
                      ? loom_buf_device(loom_group_ctx(ddp->group), bucket->flat, bucket->count,
                                        bucket->dtype)
                      : loom_buf_host(bucket->flat, bucket->count, bucket->dtype);
  bucket->posted = 1;
  loom_ddp_bucket_view view = {.index = (int)(bucket - ddp->buckets), .flat = flat,
                               .members = bucket->members, .offsets = bucket->offsets,
                               .member_count = bucket->member_count};
  return ddp->reducer->post(ddp->reducer->state, ddp->group, ddp->params.op, &view, &bucket->req);
}

static loom_status allreduce_post(void *state, loom_group *group, loom_op op,
                                  const loom_ddp_bucket_view *bucket, loom_req **req) {
  return loom_allreduce_async(group, bucket->flat, bucket->flat, op, req);
}

const loom_ddp_reducer *loom_ddp_allreduce_reducer(void) {
  static const loom_ddp_reducer allreduce = {.name = "allreduce", .post = allreduce_post};
  return &allreduce;
}

loom_status loom_ddp_add_params(loom_ddp *ddp, const loom_params *params, loom_axis axis) {
  if (!ddp || !params) return loom_error_set(LOOM_ERR_ARG, "loom_ddp_add_params: NULL argument");
  if (ddp->from_param)
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_add_params on %s: a table was added already",
                          loom_group_name(ddp->group));
  int n = loom_params_count(params);
  ddp->from_param = malloc(sizeof(int) * (size_t)(n ? n : 1));
  if (!ddp->from_param) return loom_error_set(LOOM_ERR_NOMEM, "DDP parameter map (%d)", n);
  ddp->from_param_count = n;
  for (int i = 0; i < n; i++) {
    const loom_param *p = loom_params_at(params, i);
    ddp->from_param[i] = -1;
    if (p->reduce_axis != axis) continue;
    LOOM_CHECK(loom_ddp_register(ddp, p->name, p->grad, &ddp->from_param[i]));
  }
  return LOOM_OK;
}

loom_status loom_ddp_param_ready(loom_ddp *ddp, int param_index) {
  if (!ddp || !ddp->from_param)
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_param_ready: no parameter table added "
                          "(loom_ddp_add_params)");
  if (param_index < 0 || param_index >= ddp->from_param_count)
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_param_ready: parameter %d outside [0, %d)",
                          param_index, ddp->from_param_count);
  int index = ddp->from_param[param_index];
  return index < 0 ? LOOM_OK : loom_ddp_grad_ready(ddp, index);
}

/* Posts every full bucket from next_to_post on, stopping at the first one not full. */
static loom_status post_ready_buckets(loom_ddp *ddp) {
  while (ddp->next_to_post < ddp->bucket_count && ddp->buckets[ddp->next_to_post].pending == 0) {
    LOOM_CHECK(post_bucket(ddp, &ddp->buckets[ddp->next_to_post]));
    ddp->next_to_post++;
  }
  return LOOM_OK;
}

loom_status loom_ddp_grad_ready(loom_ddp *ddp, int index) {
  if (!ddp || !ddp->in_step)
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_grad_ready: no step begun (loom_ddp_begin)");
  if (index < 0 || index >= ddp->param_count)
    return loom_error_set(LOOM_ERR_ARG, "loom_ddp_grad_ready: index %d outside [0, %d)", index,
                          ddp->param_count);
  ddp_param *param = &ddp->params_list[index];
  if (param->ready)
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_grad_ready: gradient '%s' marked twice in one "
                          "step", param->name);
  param->ready = 1;
  ddp->backward_end = loom_now();
  if (!ddp->sync) return LOOM_OK;
  ddp->buckets[param->bucket].pending--;
  if (ddp->params.overlap) return post_ready_buckets(ddp);
  return LOOM_OK;
}

/* Copies every bucket's reduced gradients back into the registered buffers. */
static loom_status unpack(loom_ddp *ddp) {
  for (int b = 0; b < ddp->bucket_count; b++) {
    ddp_bucket *bucket = &ddp->buckets[b];
    size_t element = loom_dtype_size(bucket->dtype);
    for (int m = 0; m < bucket->member_count && !bucket->in_place; m++) {
      ddp_param *param = &ddp->params_list[bucket->members[m]];
      LOOM_CHECK(copy(ddp, param->grad.ptr, (char *)bucket->flat + param->offset * element,
                      loom_buf_bytes(param->grad)));
    }
  }
  return LOOM_OK;
}

loom_status loom_ddp_finish(loom_ddp *ddp) {
  if (!ddp || !ddp->in_step)
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_finish: no step begun (loom_ddp_begin)");
  double start = loom_now();
  ddp->in_step = 0;
  for (int p = 0; p < ddp->param_count; p++) {
    if (ddp->params_list[p].ready) continue;
    loom_status drained = drain(ddp); /* leave nothing in flight */
    (void)drained;
    return loom_error_set(LOOM_ERR_STATE, "loom_ddp_finish on %s: gradient '%s' was never marked "
                          "ready in this step; call loom_ddp_grad_ready for every registered "
                          "parameter (or register only trained ones)",
                          loom_group_name(ddp->group), ddp->params_list[p].name);
  }
  if (!ddp->sync) return LOOM_OK;
  loom_status status = post_ready_buckets(ddp); /* the non-overlapped path posts all here */
  if (status == LOOM_OK && ddp->on_device) {
    /* The compute stream is made to wait for every bucket's reduction on the GPU (events), so
     * the copies back, and the optimizer's kernels after them, queue behind the last bucket
     * while the host runs ahead; backward kernels enqueued earlier were free to overlap the
     * reductions. The requests are reaped (and any failure or timeout reported) at the next
     * loom_ddp_begin. */
    for (int b = 0; b < ddp->bucket_count && status == LOOM_OK; b++)
      status = loom_req_order_stream(ddp->buckets[b].req, NULL);
    if (status == LOOM_OK) status = unpack(ddp);
    ddp->finish_end = loom_now();
    ddp->wait_seconds = ddp->finish_end - start;
    return status;
  }
  loom_status waited = drain(ddp);
  if (status == LOOM_OK) status = waited;
  if (status < 0) return status;
  if (ddp->reducer->finish)
    LOOM_CHECK(ddp->reducer->finish(ddp->reducer->state, ddp->group, ddp->bucket_count));
  LOOM_CHECK(unpack(ddp));
  ddp->finish_end = loom_now();
  ddp->wait_seconds = ddp->finish_end - start;
  return LOOM_OK;
}

loom_status loom_ddp_get_stats(const loom_ddp *ddp, loom_ddp_stats *stats) {
  if (!ddp || !stats) return loom_error_set(LOOM_ERR_ARG, "loom_ddp_get_stats: NULL argument");
  static const loom_req_times none = {0, 0, 0};
  stats->bucket_count = ddp->bucket_count;
  stats->buckets = ddp->bucket_count ? ddp->bucket_times : &none;
  stats->backward_end = ddp->backward_end;
  stats->finish_end = ddp->finish_end;
  stats->wait_seconds = ddp->wait_seconds;
  return LOOM_OK;
}
