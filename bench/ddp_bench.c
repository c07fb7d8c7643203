/* DDP overlap benchmark: step time of an MLP trained with loom_ddp in three modes measured in
 * one run on the same ranks: "overlap" (buckets reduced during backward), "after" (all
 * buckets reduced after backward, like a plain allreduce loop) and "nocomm" (the same compute
 * with no reduction). Exposed communication = mode - nocomm; hidden fraction =
 * 1 - exposed(overlap) / exposed(after). Modes are interleaved round by round and the median
 * step time is reported, so load on the machine affects all three alike.
 *
 *   mpirun -np 4 loom-ddp-bench --model mnist|wide [--batch 128 --steps 10 --rounds 5] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../examples/mlp/mlp.h"

enum { MODE_OVERLAP, MODE_AFTER, MODE_NOCOMM, MODE_COUNT };
enum { MAX_LAYERS = MLP_MAX_LAYERS, MAX_ROUNDS = 64 };

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#define TRY(call)                                                                          \
  do {                                                                                     \
    if ((call) != LOOM_OK) {                                                               \
      fprintf(stderr, "loom-ddp-bench: %s\n", loom_error_string());                        \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                        \
    }                                                                                      \
  } while (0)

int main(int argc, char **argv) {
  int model_kind = 0, batch = 128, steps = 10, rounds = 5, chunk = 64;
  uint64_t bucket_bytes = 1u << 20;
  const loom_option options[] = {
      {"model", LOOM_OPTION_CHOICE, &model_kind, "mnist: 784-512-256-10; wide: 8 x Linear 2048",
       "mnist|wide"},
      {"batch", LOOM_OPTION_INT, &batch, "global batch (split over ranks)", NULL, 1, 1 << 20},
      {"chunk", LOOM_OPTION_INT, &chunk, "rows per BLAS call", NULL, 1, 1 << 20},
      {"steps", LOOM_OPTION_INT, &steps, "steps per mode per round", NULL, 1, 100000},
      {"rounds", LOOM_OPTION_INT, &rounds, "rounds (median over them)", NULL, 1, MAX_ROUNDS},
      {"bucket-bytes", LOOM_OPTION_UINT64, &bucket_bytes, "DDP bucket size"},
  };
  int option_count = (int)(sizeof options / sizeof options[0]);
  loom_config config = LOOM_CONFIG_INIT;
  if (loom_config_parse(&config, options, option_count, argc, argv) != LOOM_OK) {
    if (loom_launcher_rank() == 0) fprintf(stderr, "loom-ddp-bench: %s\n", loom_error_string());
    return 2;
  }
  if (config.help) {
    if (loom_launcher_rank() == 0) loom_config_usage(stdout, "loom-ddp-bench", &config, options, option_count);
    return 0;
  }
  loom_ctx *ctx = NULL;
  TRY(loom_init(&config, &argc, &argv, &ctx));
  int rank = loom_ctx_rank(ctx), size = loom_ctx_size(ctx);
  int widths[MAX_LAYERS + 1], layers;
  if (model_kind == 0) {
    int w[] = {784, 512, 256, 10};
    layers = 3;
    memcpy(widths, w, sizeof w);
  } else {
    layers = 8;
    for (int l = 0; l <= layers; l++) widths[l] = 2048;
  }
  if (batch % size) {
    if (rank == 0) fprintf(stderr, "loom-ddp-bench: --batch %d not divisible by %d ranks\n", batch, size);
    loom_finalize(ctx);
    return 2;
  }
  int local = batch / size;
  if (chunk > local) chunk = local;
  mlp model;
  TRY(mlp_create(widths, layers, chunk, config.seed, &model));
  float *inputs = malloc(sizeof(float) * (size_t)chunk * widths[0]);
  int *labels = malloc(sizeof(int) * (size_t)chunk);
  loom_rng rng;
  loom_rng_init(&rng, config.seed, LOOM_RNG_DATA, (uint32_t)rank);
  for (size_t i = 0; i < (size_t)chunk * widths[0]; i++) inputs[i] = (float)loom_rng_normal(&rng);
  for (int i = 0; i < chunk; i++) labels[i] = (int)loom_rng_below(&rng, (uint64_t)widths[layers]);

  loom_ddp *ddps[2] = {NULL, NULL}; /* overlap, after */
  mlp_ddp_hooks h[2];
  for (int k = 0; k < 2; k++) {
    loom_ddp_params p = LOOM_DDP_PARAMS_INIT;
    p.bucket_bytes = bucket_bytes;
    p.overlap = k == 0;
    p.op = LOOM_OP_SUM;
    TRY(loom_ddp_create(loom_ctx_world(ctx), &p, &ddps[k]));
    h[k].ddp = ddps[k];
    for (int l = 0; l < layers; l++) {
      char name[32];
      snprintf(name, sizeof name, "layer%d.weight", l);
      TRY(loom_ddp_register(ddps[k], name, loom_buf_host(model.weight_grad[l],
                            (size_t)widths[l + 1] * widths[l], LOOM_FLOAT64), &h[k].weight_index[l]));
      snprintf(name, sizeof name, "layer%d.bias", l);
      TRY(loom_ddp_register(ddps[k], name, loom_buf_host(model.bias_grad[l], (size_t)widths[l + 1],
                            LOOM_FLOAT64), &h[k].bias_index[l]));
    }
  }
  double samples[MODE_COUNT][MAX_ROUNDS];
  for (int round = -1; round < rounds; round++) { /* round -1 warms up */
    for (int mode = 0; mode < MODE_COUNT; mode++) {
      mlp_ddp_hooks *hk = &h[mode == MODE_AFTER ? 1 : 0];
      MPI_Barrier(MPI_COMM_WORLD);
      double start = loom_now();
      for (int s = 0; s < steps; s++) {
        mlp_zero_grad(&model);
        TRY(loom_ddp_begin(hk->ddp, mode != MODE_NOCOMM));
        for (int begin = 0; begin < local; begin += chunk) {
          int rows = local - begin < chunk ? local - begin : chunk;
          mlp_forward(&model, inputs, rows);
          mlp_loss(&model, labels, rows, 1.0 / batch);
          TRY(mlp_backward(&model, rows, begin + rows >= local ? mlp_ddp_layer_ready : NULL, hk));
        }
        TRY(loom_ddp_finish(hk->ddp));
      }
      double per_step = (loom_now() - start) / steps;
      MPI_Allreduce(MPI_IN_PLACE, &per_step, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (round >= 0) samples[mode][round] = per_step;
    }
  }
  if (rank == 0) {
    double median[MODE_COUNT];
    for (int mode = 0; mode < MODE_COUNT; mode++) {
      qsort(samples[mode], (size_t)rounds, sizeof(double), compare_doubles);
      median[mode] = samples[mode][rounds / 2];
    }
    double exposed_overlap = median[MODE_OVERLAP] - median[MODE_NOCOMM];
    double exposed_after = median[MODE_AFTER] - median[MODE_NOCOMM];
    double hidden = exposed_after > 0 ? 1.0 - exposed_overlap / exposed_after : 0;
    printf("%-6s %5s %6s %8s %12s %12s %12s %10s %8s\n", "model", "ranks", "batch", "params",
           "overlap_ms", "after_ms", "nocomm_ms", "comm_ms", "hidden");
    printf("%-6s %5d %6d %8zu %12.2f %12.2f %12.2f %10.2f %7.0f%%\n", model_kind ? "wide" : "mnist",
           size, batch, mlp_parameter_count(&model), 1e3 * median[MODE_OVERLAP],
           1e3 * median[MODE_AFTER], 1e3 * median[MODE_NOCOMM], 1e3 * exposed_after, 100 * hidden);
  }
  for (int k = 0; k < 2; k++) loom_ddp_destroy(ddps[k]);
  mlp_destroy(&model);
  free(inputs);
  free(labels);
  loom_finalize(ctx);
  return 0;
}
