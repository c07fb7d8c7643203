/* Global gradient norm (sum of squares in double, summed over the shard group) and clipping. */
#include "optim/clip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "collectives/coll.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>

#include "optim/kernels.h"
#endif

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
  for (int t = 0; t < count; t++)
    if (take[t] && grads[t].device.kind != LOOM_DEVICE_CPU)
      return loom_error_set(LOOM_ERR_UNSUPPORTED, "gradient norm: gradient %d is a device buffer; "
                            "this build has no GPU kernels", t);
  (void)stream;
  (void)squares;
  return LOOM_OK;
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

/* Every gradient times min(1, max_norm / (norm + 1e-6)), after checking the norm is finite. */
static loom_status scale_to(const char *call, void *stream, const loom_buf *grads, int count,
                            double norm, double max_norm) {
  if (!isfinite(norm))
    return loom_error_set(LOOM_ERR_ARG, "%s: gradient norm is %g (inf or NaN in a gradient); "
                          "skip this step or lower the learning rate", call, norm);
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

/* The squares of `grads` (those `take` selects; NULL: all): host ones summed here, device
 * ones with one copy. */
static loom_status squares_of(void *stream, const loom_buf *grads, const int *take, int count,
                              double *squares) {
  int *all = NULL;
  if (!take) {
    all = malloc(sizeof *all * (size_t)(count ? count : 1));
    if (!all) return loom_error_set(LOOM_ERR_NOMEM, "gradient norm (%d gradients)", count);
    for (int t = 0; t < count; t++) all[t] = 1;
    take = all;
  }
  loom_status status = LOOM_OK;
  for (int t = 0; t < count && status == LOOM_OK; t++) {
    if (!take[t] || grads[t].device.kind != LOOM_DEVICE_CPU) continue;
    char name[32];
    snprintf(name, sizeof name, "gradient %d", t);
    status = host_squares(grads[t], name, squares);
  }
  if (status == LOOM_OK) status = device_squares(stream, grads, take, count, squares);
  free(all);
  return status;
}

loom_status loom_grad_norm(loom_group *shard_group, void *stream, const loom_buf *grads,
                           int count, double *norm) {
  if (!norm || count < 0 || (count > 0 && !grads))
    return loom_error_set(LOOM_ERR_ARG, "loom_grad_norm: %d gradients, NULL array or result", count);
  double squares = 0;
  LOOM_CHECK(squares_of(stream, grads, NULL, count, &squares));
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
  return scale_to("loom_clip_grad_norm", stream, grads, count, norm, max_norm);
}

/* The table's gradients as an array (freed by the caller). */
static loom_status gradients_of(const loom_params *params, loom_buf **out) {
  int count = loom_params_count(params);
  loom_buf *grads = malloc(sizeof *grads * (size_t)(count ? count : 1));
  if (!grads) return loom_error_set(LOOM_ERR_NOMEM, "gradients of %d parameters", count);
  for (int i = 0; i < count; i++) grads[i] = loom_params_at(params, i)->grad;
  *out = grads;
  return LOOM_OK;
}

loom_status loom_params_grad_norm(const loom_params *params, void *stream, double *norm) {
  if (!params || !norm) return loom_error_set(LOOM_ERR_ARG, "loom_params_grad_norm: NULL argument");
  int count = loom_params_count(params);
  loom_buf *grads = NULL;
  LOOM_CHECK(gradients_of(params, &grads));
  int *take = malloc(sizeof *take * (size_t)(count ? count : 1));
  double squares = 0;
  loom_status status = take ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, "loom_params_grad_norm");
  for (int i = 0; i < count && take; i++)
    take[i] = loom_params_counts_once(params, i); /* one replica of each slice counts it */
  if (status == LOOM_OK) status = squares_of(stream, grads, take, count, &squares);
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
  loom_buf *grads = NULL;
  LOOM_CHECK(gradients_of(params, &grads));
  loom_status status = scale_to("loom_clip_params", stream, grads, loom_params_count(params),
                                norm, max_norm);
  free(grads);
  return status;
}
