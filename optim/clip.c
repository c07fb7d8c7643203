/* Global gradient norm (sum of squares in double, summed over the shard group) and clipping. */
#include "optim/clip.h"

#include <math.h>
#include <stdlib.h>

#include "collectives/coll.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>

#include "optim/kernels.h"
#endif

loom_status loom_grad_norm(loom_group *shard_group, void *stream, const loom_buf *grads,
                           int count, double *norm) {
  if (!norm || count < 0 || (count > 0 && !grads))
    return loom_error_set(LOOM_ERR_ARG, "loom_grad_norm: %d gradients, NULL array or result", count);
  double squares = 0;
  for (int t = 0; t < count; t++) {
    loom_buf g = grads[t];
    if (g.device.kind != LOOM_DEVICE_CPU) {
#ifdef LOOM_HAVE_CUDA
      double part = 0;
      LOOM_CHECK(loom_sum_squares_device(stream, g.ptr, g.count, g.dtype, &part));
      squares += part;
      continue;
#else
      return loom_error_set(LOOM_ERR_UNSUPPORTED, "loom_grad_norm: gradient %d is a CUDA buffer; "
                            "this build has no GPU kernels", t);
#endif
    }
    if (g.dtype == LOOM_FLOAT32)
      for (size_t i = 0; i < g.count; i++) squares += (double)((float *)g.ptr)[i] * ((float *)g.ptr)[i];
    else if (g.dtype == LOOM_FLOAT64)
      for (size_t i = 0; i < g.count; i++) squares += ((double *)g.ptr)[i] * ((double *)g.ptr)[i];
    else
      return loom_error_set(LOOM_ERR_ARG, "loom_grad_norm: gradient %d is %s; float32 or float64 "
                            "expected", t, loom_dtype_name(g.dtype));
  }
  if (shard_group)
    LOOM_CHECK(loom_allreduce(shard_group, loom_buf_host(&squares, 1, LOOM_FLOAT64),
                              loom_buf_host(&squares, 1, LOOM_FLOAT64), LOOM_OP_SUM));
  *norm = sqrt(squares);
  return LOOM_OK;
}

loom_status loom_clip_grad_norm(loom_group *shard_group, void *stream, const loom_buf *grads,
                                int count, double max_norm, double *norm_out) {
  if (!(max_norm > 0))
    return loom_error_set(LOOM_ERR_ARG, "loom_clip_grad_norm: max_norm=%g must be > 0", max_norm);
  double norm = 0;
  LOOM_CHECK(loom_grad_norm(shard_group, stream, grads, count, &norm));
  if (norm_out) *norm_out = norm;
  if (!isfinite(norm))
    return loom_error_set(LOOM_ERR_ARG, "loom_clip_grad_norm: gradient norm is %g (inf or NaN "
                          "in a gradient); skip this step or lower the learning rate", norm);
  if (norm <= max_norm) return LOOM_OK;
  double scale = max_norm / (norm + 1e-6);
  for (int t = 0; t < count; t++) {
    loom_buf g = grads[t];
#ifdef LOOM_HAVE_CUDA
    if (g.device.kind != LOOM_DEVICE_CPU) {
      LOOM_CHECK(loom_scale_device(stream, g.ptr, g.count, g.dtype, scale));
      continue;
    }
#endif
    if (g.dtype == LOOM_FLOAT32)
      for (size_t i = 0; i < g.count; i++) ((float *)g.ptr)[i] = (float)(((float *)g.ptr)[i] * scale);
    else
      for (size_t i = 0; i < g.count; i++) ((double *)g.ptr)[i] *= scale;
  }
  return LOOM_OK;
}

/* Squares of the device gradients in `grads` that `take` selects, with one copy to the host:
 * every tensor's block sums land in one device array, summed on the host in order (the same
 * result every run). */
static loom_status device_squares(void *stream, const loom_buf *grads, const int *take,
                                  int count, double *squares) {
#ifdef LOOM_HAVE_CUDA
  int total = 0;
  for (int t = 0; t < count; t++)
    if (take[t] && grads[t].device.kind == LOOM_DEVICE_CUDA)
      total += loom_sum_squares_blocks(grads[t].count);
  if (total == 0) return LOOM_OK;
  double *partials = NULL, *host = malloc(sizeof(double) * (size_t)total);
  cudaError_t e = cudaMallocAsync((void **)&partials, sizeof(double) * (size_t)total,
                                  (cudaStream_t)stream);
  loom_status status = LOOM_OK;
  if (!host || e != cudaSuccess)
    status = loom_error_set(LOOM_ERR_NOMEM, "gradient norm: %d block sums (%s)", total,
                            e != cudaSuccess ? cudaGetErrorString(e) : "host");
  int at = 0;
  for (int t = 0; t < count && status == LOOM_OK; t++) {
    if (!take[t] || grads[t].device.kind != LOOM_DEVICE_CUDA) continue;
    status = loom_sum_squares_device_partials(stream, grads[t].ptr, grads[t].count,
                                              grads[t].dtype, partials + at);
    at += loom_sum_squares_blocks(grads[t].count);
  }
  if (status == LOOM_OK) {
    e = cudaMemcpyAsync(host, partials, sizeof(double) * (size_t)total, cudaMemcpyDeviceToHost,
                        (cudaStream_t)stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize((cudaStream_t)stream); /* the one host sync */
    if (e != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "gradient norm: %s", cudaGetErrorString(e));
  }
  for (int b = 0; status == LOOM_OK && b < total; b++) *squares += host[b];
  if (partials) cudaFreeAsync(partials, (cudaStream_t)stream);
  free(host);
  return status;
#else
  return loom_error_set(LOOM_ERR_UNSUPPORTED, "gradient norm: device gradients need a CUDA build");
#endif
}

static loom_status host_squares(loom_buf g, const char *name, double *squares) {
  if (g.dtype == LOOM_FLOAT32)
    for (size_t i = 0; i < g.count; i++) *squares += (double)((float *)g.ptr)[i] * ((float *)g.ptr)[i];
  else if (g.dtype == LOOM_FLOAT64)
    for (size_t i = 0; i < g.count; i++) *squares += ((double *)g.ptr)[i] * ((double *)g.ptr)[i];
  else
    return loom_error_set(LOOM_ERR_ARG, "gradient norm: '%s' is %s; float32 or float64 expected",
                          name, loom_dtype_name(g.dtype));
  return LOOM_OK;
}

loom_status loom_params_grad_norm(const loom_params *params, void *stream, double *norm) {
  if (!params || !norm) return loom_error_set(LOOM_ERR_ARG, "loom_params_grad_norm: NULL argument");
  int count = loom_params_count(params);
  loom_buf *grads = malloc(sizeof *grads * (size_t)(count ? count : 1));
  int *take = malloc(sizeof *take * (size_t)(count ? count : 1));
  if (!grads || !take) {
    free(grads);
    free(take);
    return loom_error_set(LOOM_ERR_NOMEM, "loom_params_grad_norm (%d parameters)", count);
  }
  double squares = 0;
  loom_status status = LOOM_OK;
  for (int i = 0; i < count && status == LOOM_OK; i++) {
    const loom_param *p = loom_params_at(params, i);
    grads[i] = p->grad;
    take[i] = loom_params_counts_once(params, i); /* one replica of each slice counts it */
    if (take[i] && p->grad.device.kind == LOOM_DEVICE_CPU)
      status = host_squares(p->grad, p->name, &squares);
  }
  if (status == LOOM_OK) status = device_squares(stream, grads, take, count, &squares);
  free(grads);
  free(take);
  LOOM_CHECK(status);
  /* every rank holds some slices: pipeline stages, expert shards, the replicas that count */
  loom_group *world = loom_mesh_group(loom_params_mesh(params), LOOM_AXIS_WORLD);
  LOOM_CHECK(loom_allreduce(world, loom_buf_host(&squares, 1, LOOM_FLOAT64),
                            loom_buf_host(&squares, 1, LOOM_FLOAT64), LOOM_OP_SUM));
  *norm = sqrt(squares);
  return LOOM_OK;
}

loom_status loom_clip_params(const loom_params *params, void *stream, double max_norm,
                             double *norm_out) {
  if (!(max_norm > 0))
    return loom_error_set(LOOM_ERR_ARG, "loom_clip_params: max_norm=%g must be > 0", max_norm);
  double norm = 0;
  LOOM_CHECK(loom_params_grad_norm(params, stream, &norm));
  if (norm_out) *norm_out = norm;
  if (!isfinite(norm))
    return loom_error_set(LOOM_ERR_ARG, "loom_clip_params: gradient norm is %g (inf or NaN in a "
                          "gradient); skip this step or lower the learning rate", norm);
  if (norm <= max_norm) return LOOM_OK;
  double scale = max_norm / (norm + 1e-6);
  for (int i = 0; i < loom_params_count(params); i++) {
    loom_buf g = loom_params_at(params, i)->grad;
#ifdef LOOM_HAVE_CUDA
    if (g.device.kind != LOOM_DEVICE_CPU) {
      LOOM_CHECK(loom_scale_device(stream, g.ptr, g.count, g.dtype, scale));
      continue;
    }
#endif
    if (g.dtype == LOOM_FLOAT32)
      for (size_t k = 0; k < g.count; k++) ((float *)g.ptr)[k] = (float)(((float *)g.ptr)[k] * scale);
    else
      for (size_t k = 0; k < g.count; k++) ((double *)g.ptr)[k] *= scale;
  }
  return LOOM_OK;
}
