/* MLP forward/backward with CBLAS. Shapes: X_l (B, n_l), W_l (n_{l+1}, n_l), b_l (n_{l+1}).
 * Forward X_{l+1} = act(X_l W_l^T + b_l) with act = ReLU except after the last layer.
 * Backward: dW_l = dZ_l^T X_l (float64), db_l = sum_rows dZ_l (float64), dX_l = dZ_l W_l. */
#include "mlp.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void *zalloc(size_t bytes) { return calloc(1, bytes ? bytes : 1); }

loom_status mlp_create(const int *widths, int layer_count, int batch_capacity, uint64_t seed,
                       mlp *m) {
  memset(m, 0, sizeof *m);
  if (layer_count < 1 || batch_capacity < 1)
    return loom_error_set(LOOM_ERR_ARG, "mlp: %d layers, batch %d; need >= 1 of each",
                          layer_count, batch_capacity);
  for (int l = 0; l <= layer_count; l++)
    if (widths[l] < 1)
      return loom_error_set(LOOM_ERR_ARG, "mlp: width %d of layer %d must be >= 1", widths[l], l);
  int L = layer_count;
  m->layer_count = L;
  m->batch_capacity = batch_capacity;
  m->widths = zalloc(sizeof(int) * (size_t)(L + 1));
  m->weight = zalloc(sizeof(float *) * (size_t)L);
  m->bias = zalloc(sizeof(float *) * (size_t)L);
  m->weight_grad = zalloc(sizeof(double *) * (size_t)L);
  m->bias_grad = zalloc(sizeof(double *) * (size_t)L);
  m->activation = zalloc(sizeof(float *) * (size_t)(L + 1));
  m->delta = zalloc(sizeof(float *) * (size_t)(L + 1));
  if (!m->widths || !m->weight || !m->bias || !m->weight_grad || !m->bias_grad ||
      !m->activation || !m->delta) {
    mlp_destroy(m);
    return loom_error_set(LOOM_ERR_NOMEM, "mlp tables");
  }
  memcpy(m->widths, widths, sizeof(int) * (size_t)(L + 1));
  size_t widest = 0;
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_PARAM_INIT, 0);
  for (int l = 0; l <= L; l++) {
    if ((size_t)widths[l] > widest) widest = (size_t)widths[l];
    size_t rows_by_width = (size_t)batch_capacity * (size_t)widths[l];
    m->activation[l] = zalloc(sizeof(float) * rows_by_width);
    m->delta[l] = zalloc(sizeof(float) * rows_by_width);
    if (!m->activation[l] || !m->delta[l]) {
      mlp_destroy(m);
      return loom_error_set(LOOM_ERR_NOMEM, "mlp activations of layer %d (%zu floats)", l,
                            rows_by_width);
    }
  }
  for (int l = 0; l < L; l++) {
    size_t n_in = (size_t)widths[l], n_out = (size_t)widths[l + 1];
    m->weight[l] = zalloc(sizeof(float) * n_out * n_in);
    m->bias[l] = zalloc(sizeof(float) * n_out);
    m->weight_grad[l] = zalloc(sizeof(double) * n_out * n_in);
    m->bias_grad[l] = zalloc(sizeof(double) * n_out);
    if (!m->weight[l] || !m->bias[l] || !m->weight_grad[l] || !m->bias_grad[l]) {
      mlp_destroy(m);
      return loom_error_set(LOOM_ERR_NOMEM, "mlp parameters of layer %d (%zu x %zu)", l, n_out, n_in);
    }
    double bound = 1.0 / sqrt((double)n_in);
    for (size_t i = 0; i < n_out * n_in; i++)
      m->weight[l][i] = (float)((2.0 * loom_rng_uniform(&rng) - 1.0) * bound);
    for (size_t i = 0; i < n_out; i++)
      m->bias[l][i] = (float)((2.0 * loom_rng_uniform(&rng) - 1.0) * bound);
  }
  m->scratch_a = zalloc(sizeof(double) * (size_t)batch_capacity * widest);
  m->scratch_b = zalloc(sizeof(double) * (size_t)batch_capacity * widest);
  if (!m->scratch_a || !m->scratch_b) {
    mlp_destroy(m);
    return loom_error_set(LOOM_ERR_NOMEM, "mlp float64 scratch");
  }
  return LOOM_OK;
}

void mlp_destroy(mlp *m) {
  for (int l = 0; m->weight && l < m->layer_count; l++) {
    free(m->weight[l]);
    free(m->bias[l]);
    free(m->weight_grad[l]);
    free(m->bias_grad[l]);
  }
  for (int l = 0; m->activation && l <= m->layer_count; l++) {
    free(m->activation[l]);
    free(m->delta[l]);
  }
  free(m->weight), free(m->bias), free(m->weight_grad), free(m->bias_grad);
  free(m->activation), free(m->delta), free(m->widths);
  free(m->scratch_a), free(m->scratch_b);
  memset(m, 0, sizeof *m);
}

size_t mlp_parameter_count(const mlp *m) {
  size_t n = 0;
  for (int l = 0; l < m->layer_count; l++)
    n += (size_t)m->widths[l + 1] * (size_t)m->widths[l] + (size_t)m->widths[l + 1];
  return n;
}

void mlp_forward(mlp *m, const float *input, int rows) {
  memcpy(m->activation[0], input, sizeof(float) * (size_t)rows * (size_t)m->widths[0]);
  for (int l = 0; l < m->layer_count; l++) {
    int n_in = m->widths[l], n_out = m->widths[l + 1];
    float *y = m->activation[l + 1];
    for (int r = 0; r < rows; r++) memcpy(y + (size_t)r * n_out, m->bias[l], sizeof(float) * n_out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_out, n_in, 1.0f,
                m->activation[l], n_in, m->weight[l], n_in, 1.0f, y, n_out);
    if (l + 1 < m->layer_count)
      for (size_t i = 0; i < (size_t)rows * n_out; i++) y[i] = y[i] > 0 ? y[i] : 0;
  }
}

double mlp_loss(mlp *m, const int *labels, int rows, double scale) {
  int classes = m->widths[m->layer_count];
  const float *logits = m->activation[m->layer_count];
  float *dlogits = m->delta[m->layer_count];
  double total = 0;
  for (int r = 0; r < rows; r++) {
    const float *z = logits + (size_t)r * classes;
    double top = z[0], sum = 0;
    for (int c = 1; c < classes; c++) top = z[c] > top ? z[c] : top;
    for (int c = 0; c < classes; c++) sum += exp((double)z[c] - top);
    double log_sum = log(sum) + top;
    total += log_sum - z[labels[r]];
    for (int c = 0; c < classes; c++) {
      double p = exp((double)z[c] - log_sum);
      dlogits[(size_t)r * classes + c] = (float)((p - (c == labels[r])) * scale);
    }
  }
  return total;
}

loom_status mlp_backward(mlp *m, int rows, mlp_grad_hook hook, void *user) {
  for (int l = m->layer_count - 1; l >= 0; l--) {
    int n_in = m->widths[l], n_out = m->widths[l + 1];
    const float *dz = m->delta[l + 1], *x = m->activation[l];
    /* dW (n_out, n_in) += dZ^T (n_out, rows) X (rows, n_in), in float64 */
    double *dz64 = m->scratch_a, *x64 = m->scratch_b;
    for (size_t i = 0; i < (size_t)rows * n_out; i++) dz64[i] = dz[i];
    for (size_t i = 0; i < (size_t)rows * n_in; i++) x64[i] = x[i];
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, rows, 1.0, dz64, n_out,
                x64, n_in, 1.0, m->weight_grad[l], n_in);
    for (int r = 0; r < rows; r++)
      for (int o = 0; o < n_out; o++) m->bias_grad[l][o] += dz64[(size_t)r * n_out + o];
    if (hook) LOOM_CHECK(hook(user, l));
    if (l == 0) break;
    /* dX (rows, n_in) = dZ (rows, n_out) W (n_out, n_in), then through the ReLU of layer l */
    float *dx = m->delta[l];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n_in, n_out, 1.0f, dz, n_out,
                m->weight[l], n_in, 0.0f, dx, n_in);
    for (size_t i = 0; i < (size_t)rows * n_in; i++)
      if (x[i] <= 0) dx[i] = 0;
  }
  return LOOM_OK;
}

void mlp_zero_grad(mlp *m) {
  for (int l = 0; l < m->layer_count; l++) {
    memset(m->weight_grad[l], 0, sizeof(double) * (size_t)m->widths[l + 1] * m->widths[l]);
    memset(m->bias_grad[l], 0, sizeof(double) * (size_t)m->widths[l + 1]);
  }
}

int mlp_count_correct(const mlp *m, const int *labels, int rows) {
  int classes = m->widths[m->layer_count], correct = 0;
  const float *logits = m->activation[m->layer_count];
  for (int r = 0; r < rows; r++) {
    int best = 0;
    for (int c = 1; c < classes; c++)
      if (logits[(size_t)r * classes + c] > logits[(size_t)r * classes + best]) best = c;
    correct += best == labels[r];
  }
  return correct;
}

loom_status mlp_ddp_layer_ready(void *opaque, int layer) {
  mlp_ddp_hooks *hooks = opaque;
  LOOM_CHECK(loom_ddp_grad_ready(hooks->ddp, hooks->weight_index[layer]));
  return loom_ddp_grad_ready(hooks->ddp, hooks->bias_index[layer]);
}
