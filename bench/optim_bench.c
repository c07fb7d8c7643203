/* GPU optimizer benchmark: one AdamW step over a model's tensors, float32 parameters and
 * gradients on one GPU, timed with CUDA events (mean of --steps steps after --warmup).
 *   group:  loom_optim_step, one multi-tensor launch per optimizer group (optim/kernels.cu)
 *   tensor: one single-tensor launch per tensor (the kernels loom used before)
 * The peer is bench/peers/torch_optim.py (torch.optim.AdamW fused and foreach) on the same
 * shapes. An AdamW step moves 28 bytes an element (reads parameter, gradient and both
 * moments, writes parameter and moments), so the line also gives the rate in GB/s, to hold
 * against the card's memory bandwidth (H200: 4.8 TB/s).
 *
 *   loom-optim-bench --shapes gpt2|wide [--steps 50 --warmup 10]
 * Shapes: gpt2 = GPT-2 small (124 M parameters in 148 tensors, most of them small);
 * wide = the wide MLP of loom-gpu-ddp-bench (8 x 4096 x 4096 weights and their biases). */
#include <cuda_runtime.h>
#include <loom.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/kernels.h"

#define TRY(call)                                                          \
  do {                                                                     \
    if ((call) != LOOM_OK) {                                               \
      fprintf(stderr, "loom-optim-bench: %s\n", loom_error_string());      \
      return 1;                                                            \
    }                                                                      \
  } while (0)

enum { MAX_TENSORS = 256 };

/* Element counts of each tensor of the named model; returns the count of tensors, -1 unknown. */
static int model_shapes(const char *name, size_t *sizes) {
  int n = 0;
  if (strcmp(name, "gpt2") == 0) {
    const size_t d = 768, vocab = 50257, context = 1024;
    sizes[n++] = vocab * d, sizes[n++] = context * d; /* token, position embeddings */
    for (int layer = 0; layer < 12; layer++) {
      sizes[n++] = d, sizes[n++] = d;                 /* ln_1 weight, bias */
      sizes[n++] = d * 3 * d, sizes[n++] = 3 * d;     /* attention qkv */
      sizes[n++] = d * d, sizes[n++] = d;             /* attention projection */
      sizes[n++] = d, sizes[n++] = d;                 /* ln_2 */
      sizes[n++] = d * 4 * d, sizes[n++] = 4 * d;     /* MLP up */
      sizes[n++] = 4 * d * d, sizes[n++] = d;         /* MLP down */
    }
    sizes[n++] = d, sizes[n++] = d; /* ln_f */
    return n;
  }
  if (strcmp(name, "wide") == 0) {
    for (int layer = 0; layer < 8; layer++) sizes[n++] = 4096 * 4096, sizes[n++] = 4096;
    return n;
  }
  return -1;
}

int main(int argc, char **argv) {
  const char *shapes = "gpt2";
  int steps = 50, warmup = 10;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--shapes") == 0 && i + 1 < argc) shapes = argv[++i];
    else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) warmup = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: loom-optim-bench [--shapes gpt2|wide] [--steps N] [--warmup N]\n");
      return 2;
    }
  }
  size_t sizes[MAX_TENSORS];
  int count = model_shapes(shapes, sizes);
  if (count < 0 || steps < 1 || warmup < 0) {
    fprintf(stderr, "loom-optim-bench: --shapes %s (gpt2 or wide), --steps %d >= 1, --warmup %d >= 0\n",
            shapes, steps, warmup);
    return 2;
  }
  loom_config config = LOOM_CONFIG_INIT;
  config.device = 2; /* cuda */
  loom_ctx *ctx = NULL;
  TRY(loom_init(&config, &argc, &argv, &ctx));
  cudaStream_t stream = (cudaStream_t)loom_ctx_stream(ctx);
  loom_optim_params op = LOOM_OPTIM_PARAMS_INIT;
  op.weight_decay = 0.01;
  op.stream = stream;
  loom_optim *optim = NULL;
  TRY(loom_optim_create(&op, &optim));
  float *param[MAX_TENSORS], *grad[MAX_TENSORS], *m[MAX_TENSORS], *v[MAX_TENSORS];
  size_t total = 0;
  for (int t = 0; t < count; t++) {
    size_t bytes = sizes[t] * sizeof(float);
    TRY(loom_device_alloc(ctx, bytes, (void **)&param[t]));
    TRY(loom_device_alloc(ctx, bytes, (void **)&grad[t]));
    TRY(loom_device_alloc(ctx, bytes, (void **)&m[t]));
    TRY(loom_device_alloc(ctx, bytes, (void **)&v[t]));
    cudaMemset(param[t], 0, bytes), cudaMemset(grad[t], 0, bytes);
    cudaMemset(m[t], 0, bytes), cudaMemset(v[t], 0, bytes);
    char name[32];
    snprintf(name, sizeof name, "t%d", t);
    TRY(loom_optim_add(optim, name, loom_buf_device(ctx, param[t], sizes[t], LOOM_FLOAT32),
                       loom_buf_device(ctx, grad[t], sizes[t], LOOM_FLOAT32)));
    total += sizes[t];
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start), cudaEventCreate(&stop);
  static const char *const modes[2] = {"group", "tensor"};
  for (int mode = 0; mode < 2; mode++) {
    for (int s = 0; s < warmup + steps; s++) {
      if (s == warmup) cudaEventRecord(start, stream);
      if (mode == 0) {
        TRY(loom_optim_step(optim, 1e-4));
      } else {
        for (int t = 0; t < count; t++)
          TRY(loom_adamw_update_device(stream, sizes[t], param[t], grad[t], m[t], v[t], s + 1,
                                       1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f));
      }
    }
    cudaEventRecord(stop, stream);
    if (cudaEventSynchronize(stop) != cudaSuccess) {
      fprintf(stderr, "loom-optim-bench: %s\n", cudaGetErrorString(cudaGetLastError()));
      return 1;
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    double step_ms = ms / steps, gbs = 28.0 * (double)total / (step_ms * 1e-3) / 1e9;
    printf("loom optim=adamw shapes=%s tensors=%d elements=%zu mode=%s step_ms=%.4f GB/s=%.0f\n",
           shapes, count, total, modes[mode], step_ms, gbs);
  }
  cudaEventDestroy(start), cudaEventDestroy(stop);
  loom_optim_destroy(optim);
  for (int t = 0; t < count; t++) {
    loom_device_free(ctx, param[t]), loom_device_free(ctx, grad[t]);
    loom_device_free(ctx, m[t]), loom_device_free(ctx, v[t]);
  }
  loom_finalize(ctx);
  return 0;
}
