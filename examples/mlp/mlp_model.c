/* The CPU/GPU switch of the MLP (see mlp_model.h): the one place that knows both twins. */
#include "mlp_model.h"

#include <stdlib.h>

#ifdef LOOM_EXAMPLES_GPU
#include "mlp_gpu.h"
#endif

struct mlp_model {
  loom_ctx *ctx;
  mlp host;   /* the CPU model; on the GPU path the initial values and a download buffer */
  int gpu;
#ifdef LOOM_EXAMPLES_GPU
  mlp_gpu device;
#endif
  int chunk;
  int first_param; /* table index of layer 0's weight; layer l: weight 2l, bias 2l + 1 */
  loom_ddp *ddp;   /* for the hook of the current chunk */
};

loom_status mlp_model_create(loom_ctx *ctx, const int *widths, int layer_count, int chunk,
                             uint64_t seed, mlp_model **out) {
  mlp_model *m = calloc(1, sizeof *m);
  if (!m) return loom_error_set(LOOM_ERR_NOMEM, "allocating the model");
  m->ctx = ctx;
  m->chunk = chunk;
  loom_status status = mlp_create(widths, layer_count, chunk, seed, &m->host);
  m->gpu = loom_ctx_device(ctx).kind == LOOM_DEVICE_CUDA;
#ifdef LOOM_EXAMPLES_GPU
  if (status == LOOM_OK && m->gpu)
    status = mlp_gpu_create(&m->host, chunk, loom_ctx_stream(ctx), &m->device);
#else
  if (status == LOOM_OK && m->gpu)
    status = loom_error_set(LOOM_ERR_UNSUPPORTED, "the MLP has no GPU twin in this build (no "
                            "cuBLAS); run with --device cpu");
#endif
  if (status < 0) {
    mlp_model_destroy(m);
    return status;
  }
  *out = m;
  return LOOM_OK;
}

void mlp_model_destroy(mlp_model *m) {
  if (!m) return;
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) mlp_gpu_destroy(&m->device);
#endif
  mlp_destroy(&m->host);
  free(m);
}

size_t mlp_model_parameter_count(const mlp_model *m) { return mlp_parameter_count(&m->host); }
int mlp_model_chunk(const mlp_model *m) { return m->chunk; }

loom_status mlp_model_add_params(mlp_model *m, loom_params *params) {
  m->first_param = loom_params_count(params);
  for (int l = 0; l < m->host.layer_count; l++) {
    int64_t out = m->host.widths[l + 1], in = m->host.widths[l];
    size_t n_weight = (size_t)(out * in), n_bias = (size_t)out;
    loom_buf weight = loom_buf_host(m->host.weight[l], n_weight, LOOM_FLOAT32);
    loom_buf bias = loom_buf_host(m->host.bias[l], n_bias, LOOM_FLOAT32);
    loom_buf weight_grad = loom_buf_host(m->host.weight_grad[l], n_weight, LOOM_FLOAT64);
    loom_buf bias_grad = loom_buf_host(m->host.bias_grad[l], n_bias, LOOM_FLOAT64);
#ifdef LOOM_EXAMPLES_GPU
    if (m->gpu) { /* values, gradients and optimizer state on the GPU, float32 */
      weight = loom_buf_device(m->ctx, m->device.weight[l], n_weight, LOOM_FLOAT32);
      bias = loom_buf_device(m->ctx, m->device.bias[l], n_bias, LOOM_FLOAT32);
      weight_grad = loom_buf_device(m->ctx, m->device.weight_grad[l], n_weight, LOOM_FLOAT32);
      bias_grad = loom_buf_device(m->ctx, m->device.bias_grad[l], n_bias, LOOM_FLOAT32);
    }
#endif
    char weight_name[64], bias_name[64];
    snprintf(weight_name, sizeof weight_name, "layer%d.weight", l);
    snprintf(bias_name, sizeof bias_name, "layer%d.bias", l);
    loom_param w = {.name = weight_name, .value = weight, .grad = weight_grad,
                    .spec = {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {out, in}},
                    .reduce_axis = LOOM_AXIS_GRAD};
    loom_param b = {.name = bias_name, .value = bias, .grad = bias_grad,
                    .spec = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {out}},
                    .reduce_axis = LOOM_AXIS_GRAD};
    LOOM_CHECK(loom_params_add(params, &w, NULL));
    LOOM_CHECK(loom_params_add(params, &b, NULL));
  }
  return LOOM_OK;
}

loom_status mlp_model_zero_grad(mlp_model *m) {
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) return mlp_gpu_zero_grad(&m->device);
#endif
  mlp_zero_grad(&m->host);
  return LOOM_OK;
}

/* Backward's hook: layer `layer`'s weight and bias gradients are final. */
static loom_status layer_ready(void *opaque, int layer) {
  mlp_model *m = opaque;
  LOOM_CHECK(loom_ddp_param_ready(m->ddp, m->first_param + 2 * layer));
  return loom_ddp_param_ready(m->ddp, m->first_param + 2 * layer + 1);
}

loom_status mlp_model_train_chunk(mlp_model *m, const float *inputs, const int *labels, int rows,
                                  double scale, loom_ddp *ddp, double *loss_sum) {
  m->ddp = ddp;
  mlp_grad_hook hook = ddp ? layer_ready : NULL;
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) {
    double chunk_loss = 0;
    LOOM_CHECK(mlp_gpu_forward(&m->device, inputs, rows));
    LOOM_CHECK(mlp_gpu_loss(&m->device, labels, rows, scale, &chunk_loss));
    *loss_sum += chunk_loss;
    return mlp_gpu_backward(&m->device, rows, hook, m);
  }
#endif
  mlp_forward(&m->host, inputs, rows);
  *loss_sum += mlp_loss(&m->host, labels, rows, scale);
  return mlp_backward(&m->host, rows, hook, m);
}

loom_status mlp_model_count_correct(mlp_model *m, const float *inputs, const int *labels,
                                    int rows, int *correct) {
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) {
    LOOM_CHECK(mlp_gpu_forward(&m->device, inputs, rows));
    return mlp_gpu_count_correct(&m->device, labels, rows, correct);
  }
#endif
  mlp_forward(&m->host, inputs, rows);
  *correct = mlp_count_correct(&m->host, labels, rows);
  return LOOM_OK;
}

loom_status mlp_model_dump(mlp_model *m, FILE *f) {
  for (int l = 0; l < m->host.layer_count; l++) {
    size_t n_weight = (size_t)m->host.widths[l + 1] * m->host.widths[l];
    size_t n_bias = (size_t)m->host.widths[l + 1];
#ifdef LOOM_EXAMPLES_GPU
    if (m->gpu) { /* the trained values live on the GPU */
      LOOM_CHECK(loom_device_download(m->ctx, m->host.weight[l], m->device.weight[l],
                                      sizeof(float) * n_weight));
      LOOM_CHECK(loom_device_download(m->ctx, m->host.bias[l], m->device.bias[l],
                                      sizeof(float) * n_bias));
    }
#endif
    if (fwrite(m->host.weight[l], sizeof(float), n_weight, f) != n_weight ||
        fwrite(m->host.bias[l], sizeof(float), n_bias, f) != n_bias)
      return loom_error_set(LOOM_ERR_IO, "writing the parameters of layer %d failed", l);
  }
  return LOOM_OK;
}
