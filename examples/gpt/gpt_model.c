/* The GPT model behind the training program's interface (see gpt_model.h). */
#include "gpt_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef LOOM_EXAMPLES_GPU
#include "gpt_cuda.h"
#endif

struct gpt_model {
  gpt_layout layout;
  loom_ctx *ctx;
  gpt_cpu *cpu;     /* micro-batches (chunk, T), on the CPU */
  void *gpu;        /* gpt_cuda *, when the context computes on a GPU */
  size_t memory_before; /* device bytes in use before the model */
  gpt_cpu *sampler; /* (1, context), created by the first gpt_model_sample */
  int chunk, T;
  float *params;    /* (total) float32; on a GPU the initial values and the sampler's copy */
  float *grad32;    /* (total) one micro-batch's gradient (CPU), the embedding's part apart: */
  float *embed32;   /* (total) the embedding's (wte rows, wpe) of one micro-batch (CPU) */
  double *grad64;   /* (total) the step's, what DDP reduces (CPU) */
  double *embed_wte64; /* (V d) the step's embedding part of wte, added at the last micro-batch */
  int first_param;  /* table index of tensor 0 */
};

loom_status gpt_model_create(loom_ctx *ctx, const gpt_layout *layout, int chunk, int T,
                             uint64_t seed, gpt_attention_kind attention, gpt_model **out) {
  int on_gpu = loom_ctx_device(ctx).kind == LOOM_DEVICE_CUDA;
#ifndef LOOM_EXAMPLES_GPU
  if (on_gpu)
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "this build of the GPT example has no CUDA path "
                          "(built without CUDA or cuBLASLt); run with --device cpu");
#endif
  (void)attention; /* the CPU computes attention one way */
  gpt_model *m = calloc(1, sizeof *m);
  if (!m) return loom_error_set(LOOM_ERR_NOMEM, "allocating the GPT model");
  m->layout = *layout, m->ctx = ctx, m->chunk = chunk, m->T = T;
  m->params = malloc(sizeof(float) * layout->total);
  size_t wte = layout->tensor[0].count;
  if (!on_gpu) {
    m->grad32 = malloc(sizeof(float) * layout->total);
    m->embed32 = malloc(sizeof(float) * layout->total);
    m->grad64 = calloc(layout->total, sizeof(double));
    m->embed_wte64 = calloc(wte, sizeof(double));
  }
  loom_status status = !m->params || (!on_gpu && (!m->grad32 || !m->embed32 || !m->grad64 || !m->embed_wte64))
                           ? loom_error_set(LOOM_ERR_NOMEM, "GPT parameters (%zu)", layout->total)
                           : LOOM_OK;
  if (status == LOOM_OK) gpt_init_params(layout, seed, m->params);
#ifdef LOOM_EXAMPLES_GPU
  if (status == LOOM_OK && on_gpu) {
    gpt_cuda *gpu = NULL;
    m->memory_before = gpt_cuda_memory_in_use();
    status = gpt_cuda_create(layout, chunk, T, 0, attention, loom_ctx_stream(ctx), &gpu);
    m->gpu = gpu;
    if (status == LOOM_OK) status = gpt_cuda_set_params(gpu, m->params);
  }
#endif
  if (status == LOOM_OK && !on_gpu) status = gpt_cpu_create(layout, chunk, T, NULL, &m->cpu);
  if (status < 0) {
    gpt_model_destroy(m);
    return status;
  }
  *out = m;
  return LOOM_OK;
}

void gpt_model_destroy(gpt_model *m) {
  if (!m) return;
  gpt_cpu_destroy(m->cpu), gpt_cpu_destroy(m->sampler);
#ifdef LOOM_EXAMPLES_GPU
  gpt_cuda_destroy(m->gpu);
#endif
  free(m->params), free(m->grad32), free(m->embed32), free(m->grad64), free(m->embed_wte64), free(m);
}

const gpt_layout *gpt_model_layout(const gpt_model *m) { return &m->layout; }

loom_status gpt_model_add_params(gpt_model *m, loom_params *params, int decay_group,
                                 int no_decay_group) {
  m->first_param = loom_params_count(params);
  for (int i = 0; i < m->layout.count; i++) {
    const gpt_tensor *t = &m->layout.tensor[i];
    loom_param p = {.name = t->name,
                    .value = loom_buf_host(m->params + t->offset, t->count, LOOM_FLOAT32),
                    .grad = loom_buf_host(m->grad64 ? m->grad64 + t->offset : NULL, t->count, LOOM_FLOAT64),
                    .spec = {.dtype = LOOM_FLOAT32, .ndims = t->ndims,
                             .shape = {t->shape[0], t->shape[1]}},
                    .reduce_axis = LOOM_AXIS_GRAD,
                    .group = t->decay ? decay_group : no_decay_group};
#ifdef LOOM_EXAMPLES_GPU
    if (m->gpu) { /* float32 masters and gradients, the bfloat16 copy the kernels read */
      p.value = loom_buf_device(m->ctx, gpt_cuda_master(m->gpu) + t->offset, t->count, LOOM_FLOAT32);
      p.grad = loom_buf_device(m->ctx, gpt_cuda_grads(m->gpu) + t->offset, t->count, LOOM_FLOAT32);
      p.model_copy = loom_buf_device(m->ctx, gpt_cuda_weight(m->gpu, t->offset),
                                     t->count, LOOM_BFLOAT16);
    }
#endif
    LOOM_CHECK(loom_params_add(params, &p, NULL));
  }
  return LOOM_OK;
}

loom_status gpt_model_zero_grad(gpt_model *m) {
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) return gpt_cuda_zero_grads(m->gpu);
#endif
  memset(m->grad64, 0, sizeof(double) * m->layout.total);
  memset(m->embed_wte64, 0, sizeof(double) * m->layout.tensor[0].count);
  return LOOM_OK;
}

double gpt_model_device_gib(const gpt_model *m) {
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) {
    size_t now = gpt_cuda_memory_in_use();
    return now > m->memory_before ? (double)(now - m->memory_before) / 1073741824.0 : 0.0;
  }
#endif
  (void)m;
  return 0;
}

loom_status gpt_model_split_sequence(gpt_model *m, const int *positions, const gpt_attention *attention) {
  if (!m->cpu)
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "GPT sequence parallelism runs on the CPU for now "
                          "(--device cpu)");
  gpt_cpu *split = NULL;
  LOOM_CHECK(gpt_cpu_create(&m->layout, m->chunk, m->T, attention, &split));
  loom_status status = gpt_cpu_set_positions(split, positions);
  if (status != LOOM_OK) {
    gpt_cpu_destroy(split);
    return status;
  }
  gpt_cpu_destroy(m->cpu);
  m->cpu = split;
  return LOOM_OK;
}

const float *gpt_model_host_params(const gpt_model *m) { return m->gpu ? NULL : m->params; }

size_t gpt_model_activation_bytes(const gpt_model *m) {
  if (!m->cpu) return 0;
  return gpt_cpu_block_activation_bytes(m->cpu) * (size_t)m->layout.shape.layers +
         gpt_cpu_head_activation_bytes(m->cpu);
}

loom_status gpt_model_set_params(gpt_model *m, const float *values) {
  memcpy(m->params, values, sizeof(float) * m->layout.total);
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) return gpt_cuda_set_params(m->gpu, m->params);
#endif
  return LOOM_OK;
}

loom_status gpt_model_weights_changed(gpt_model *m) {
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) return gpt_cuda_refresh_weights(m->gpu);
#endif
  (void)m;
  return LOOM_OK;
}

/* Ready in the order backward finishes them: head and last block first. */
static loom_status mark_ready(gpt_model *m, loom_ddp *ddp) {
  for (int i = m->layout.count - 1; ddp && i >= 0; i--)
    LOOM_CHECK(loom_ddp_param_ready(ddp, m->first_param + i));
  return LOOM_OK;
}

loom_status gpt_model_train_chunk(gpt_model *m, const int *tokens, const int *targets,
                                  double scale, int last, loom_ddp *ddp, double *loss_sum) {
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) {
    double sum = 0;
    LOOM_CHECK(gpt_cuda_train_step(m->gpu, tokens, targets, scale, 0, &sum));
    *loss_sum += sum;
    return last ? mark_ready(m, ddp) : LOOM_OK;
  }
#endif
  /* wte's two parts, the head's and the embedding's, are summed over the micro-batches apart
   * and added at the end, as a pipeline does where they live on its first and last stages
   * (gpt_stages.c): pipelined and plain runs then agree bit for bit. */
  const gpt_tensor *wte = &m->layout.tensor[0], *wpe = &m->layout.tensor[1];
  memset(m->grad32, 0, sizeof(float) * m->layout.total);
  memset(m->embed32, 0, sizeof(float) * (wpe->offset + wpe->count)); /* wte, wpe lead the layout */
  *loss_sum += gpt_cpu_train_step(m->cpu, m->params, tokens, targets, scale, m->grad32, m->embed32);
  for (size_t i = 0; i < wte->count; i++) m->embed_wte64[i] += m->embed32[i];
  for (size_t i = wpe->offset; i < wpe->offset + wpe->count; i++) m->grad32[i] = m->embed32[i];
  for (size_t i = 0; i < m->layout.total; i++) m->grad64[i] += m->grad32[i];
  if (!last) return LOOM_OK;
  for (size_t i = 0; i < wte->count; i++) m->grad64[i] += m->embed_wte64[i];
  return mark_ready(m, ddp);
}

loom_status gpt_model_eval_chunk(gpt_model *m, const int *tokens, const int *targets,
                                 double *loss_sum) {
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) {
    double sum = 0;
    LOOM_CHECK(gpt_cuda_eval(m->gpu, tokens, targets, &sum));
    *loss_sum += sum;
    return LOOM_OK;
  }
#endif
  int L = m->layout.shape.layers;
  size_t nd = (size_t)m->chunk * m->T * (size_t)m->layout.shape.width;
  float *x = malloc(sizeof(float) * nd * 2);
  if (!x) return loom_error_set(LOOM_ERR_NOMEM, "evaluation activations");
  gpt_embed_forward(m->cpu, m->params, tokens, x);
  for (int l = 0; l < L; l++) gpt_block_forward(m->cpu, l, m->params, x + nd * (l % 2), x + nd * ((l + 1) % 2));
  *loss_sum += gpt_head_forward(m->cpu, m->params, x + nd * (L % 2), targets, 0.0);
  free(x);
  return LOOM_OK;
}

static int descending(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x < y) - (x > y);
}

loom_status gpt_model_sample(gpt_model *m, const int *prompt, int prompt_len, int count,
                             double temperature, int top_k, uint64_t seed, int *out) {
  const gpt_shape *s = &m->layout.shape;
  if (prompt_len < 1 || count < 0 || !(temperature > 0) || top_k < 0)
    return loom_error_set(LOOM_ERR_ARG, "sampling: prompt of %d tokens (>= 1), %d to generate, "
                          "temperature %g (> 0), top-k %d (>= 0)", prompt_len, count,
                          temperature, top_k);
  int C = s->context, V = s->vocab, L = s->layers;
#ifdef LOOM_EXAMPLES_GPU
  if (m->gpu) LOOM_CHECK(gpt_cuda_get_params(m->gpu, m->params)); /* sampled on the CPU */
#endif
  if (!m->sampler) LOOM_CHECK(gpt_cpu_create(&m->layout, 1, C, NULL, &m->sampler));
  size_t nd = (size_t)C * s->width;
  int *window = calloc((size_t)C, sizeof(int)), *history = malloc(sizeof(int) * (size_t)(prompt_len + count));
  float *x = malloc(sizeof(float) * nd * 2);
  double *prob = malloc(sizeof(double) * (size_t)V);
  if (!window || !history || !x || !prob) {
    free(window), free(history), free(x), free(prob);
    return loom_error_set(LOOM_ERR_NOMEM, "sampling buffers");
  }
  memcpy(history, prompt, sizeof(int) * (size_t)prompt_len);
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_USER, 0);
  for (int n = 0; n < count; n++) {
    /* the last C tokens; positions after them are padding that causality keeps out */
    int len = prompt_len + n, start = len > C ? len - C : 0, used = len - start;
    memset(window, 0, sizeof(int) * (size_t)C);
    memcpy(window, history + start, sizeof(int) * (size_t)used);
    gpt_embed_forward(m->sampler, m->params, window, x);
    for (int l = 0; l < L; l++)
      gpt_block_forward(m->sampler, l, m->params, x + nd * (l % 2), x + nd * ((l + 1) % 2));
    gpt_head_forward(m->sampler, m->params, x + nd * (L % 2), NULL, 0.0);
    const float *logits = gpt_head_logits(m->sampler) + (size_t)(used - 1) * V;
    /* top-k: the k-th largest logit is the floor (ties kept) */
    double floor_logit = -INFINITY, max = -INFINITY, sum = 0;
    for (int v = 0; v < V; v++) max = fmax(max, prob[v] = logits[v]);
    if (top_k > 0 && top_k < V) {
      qsort(prob, (size_t)V, sizeof *prob, descending);
      floor_logit = prob[top_k - 1];
    }
    for (int v = 0; v < V; v++)
      sum += prob[v] = logits[v] >= floor_logit ? exp((logits[v] - max) / temperature) : 0.0;
    double r = loom_rng_uniform(&rng) * sum;
    int pick = V - 1;
    for (int v = 0; v < V; v++) {
      if (prob[v] > 0 && (r -= prob[v]) <= 0) {
        pick = v;
        break;
      }
    }
    history[len] = out[n] = pick;
  }
  free(window), free(history), free(x), free(prob);
  return LOOM_OK;
}
