/* A multilayer perceptron on the CPU for loom's examples and benchmarks: Linear layers with
 * ReLU between them and a softmax cross-entropy head, float32 forward, CBLAS products.
 * Weight and bias gradients are accumulated in float64, so the gradient of a global batch is
 * the same whichever way the batch is split over ranks (the sums differ only below float32
 * resolution); a hook is called as each layer's gradients become final during backward, which
 * is where data parallelism starts reducing them. */
#ifndef LOOM_EXAMPLES_MLP_H
#define LOOM_EXAMPLES_MLP_H

#include <loom.h>

typedef struct {
  int layer_count;       /* L */
  int *widths;           /* (L + 1) input, hidden..., classes */
  int batch_capacity;    /* rows the activation buffers hold */
  float **weight;        /* (L) each (widths[l+1], widths[l]) row-major */
  float **bias;          /* (L) each (widths[l+1]) */
  double **weight_grad;  /* (L) like weight */
  double **bias_grad;    /* (L) like bias */
  float **activation;    /* (L + 1) each (batch, widths[l]); [0] is the input, [L] the logits */
  float **delta;         /* (L + 1) each (batch, widths[l]): loss gradient w.r.t. activation */
  double *scratch_a, *scratch_b; /* float64 copies for the weight-gradient products */
} mlp;

/* Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from (seed, LOOM_RNG_PARAM_INIT),
 * identical on every rank. */
loom_status mlp_create(const int *widths, int layer_count, int batch_capacity, uint64_t seed,
                       mlp *out);
void mlp_destroy(mlp *m);
/* Parameter count of the whole model. */
size_t mlp_parameter_count(const mlp *m);

/* Forward pass of `rows` samples `input` (rows, widths[0]); logits in activation[L]. */
void mlp_forward(mlp *m, const float *input, int rows);

/* Softmax cross-entropy of the logits against `labels`: returns the sum of the losses over
 * the rows, and writes d(loss_sum * scale)/d(logits) into delta[L]. */
double mlp_loss(mlp *m, const int *labels, int rows, double scale);

/* Called when layer `layer`'s weight and bias gradients are final (layers go L-1 .. 0). */
typedef loom_status (*mlp_grad_hook)(void *user, int layer);

/* The hook that hands each finished layer to data parallelism: marks the layer's weight and
 * bias gradients ready in `ddp` (indices from loom_ddp_register). Pass it with a pointer to
 * an mlp_ddp_hooks as the user argument of mlp_backward / mlp_gpu_backward. */
enum { MLP_MAX_LAYERS = 16 };
typedef struct {
  loom_ddp *ddp;
  int weight_index[MLP_MAX_LAYERS], bias_index[MLP_MAX_LAYERS];
} mlp_ddp_hooks;
loom_status mlp_ddp_layer_ready(void *hooks, int layer);

/* Backward pass after mlp_loss: gradients are *added* to weight_grad / bias_grad (zero them
 * with mlp_zero_grad), so micro-batches accumulate. */
loom_status mlp_backward(mlp *m, int rows, mlp_grad_hook hook, void *user);
void mlp_zero_grad(mlp *m);
/* Number of correct argmax predictions among the rows of the last forward pass. */
int mlp_count_correct(const mlp *m, const int *labels, int rows);

#endif
