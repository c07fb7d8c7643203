/* Global gradient norm (sum of squares in double, summed over the shard group) and clipping. */
#include "optim/clip.h"

#include <math.h>

#include "collectives/coll.h"

#ifdef LOOM_HAVE_CUDA
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
