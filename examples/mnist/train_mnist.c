/* Fashion-MNIST with data parallelism: the reference training loop for loom users.
 *
 *   mpirun -np 4 ./train_mnist [--epochs 5 --batch 128 --optimizer sgd ...]
 *
 * The global batch is the same whatever the rank count: every rank draws the same seeded
 * permutation of the 60000 training images, and rank r of the data-parallel group takes
 * slice r of each global batch. Gradients are summed in float64 (see examples/mlp) over the
 * GRAD group by loom_ddp while backward runs, so 1 and N ranks follow the same trajectory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../mlp/mlp.h"
#ifdef LOOM_EXAMPLES_GPU
#include "../mlp/mlp_gpu.h"
#endif
#include "fashion_mnist.h"
#include <sys/stat.h>

typedef struct {
  const char *data_dir, *metrics_path, *hidden, *ckpt_dir, *dump_params;
  int ckpt_every, resume, stop_at_step, ckpt_async, snapshot_every, snapshot_parity, snapshot_async;
  int epochs, batch, chunk, optimizer, schedule, nesterov, overlap, max_steps, warmup_steps;
  double lr, momentum, weight_decay, clip;
  uint64_t bucket_bytes;
} train_options;

enum { OPT_SGD = 0, OPT_ADAMW = 1 };
enum { MAX_LAYERS = MLP_MAX_LAYERS };

#define TRY(call)                                                                          \
  do {                                                                                     \
    loom_status s_ = (call);                                                               \
    if (s_ != LOOM_OK) {                                                                   \
      fprintf(stderr, "train_mnist (rank %d): %s\n", rank, loom_error_string());           \
      code = 1;                                                                            \
      goto done;                                                                           \
    }                                                                                      \
  } while (0)

/* "512,256" -> widths {784, 512, 256, 10}; returns the layer count or -1. */
static int parse_widths(const char *hidden, int *widths) {
  int n = 0;
  widths[n++] = 784;
  const char *p = hidden;
  while (p && *p) {
    char *end = NULL;
    long w = strtol(p, &end, 10);
    if (end == p || w < 1 || w > 1 << 16 || n >= MAX_LAYERS) return -1;
    widths[n++] = (int)w;
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return -1;
  }
  widths[n++] = 10;
  return n - 1;
}

static void shuffle(int *order, int n, uint64_t seed, int epoch) {
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_DATA, (uint32_t)epoch);
  for (int i = 0; i < n; i++) order[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)loom_rng_below(&rng, (uint64_t)i + 1);
    int t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

int main(int argc, char **argv) {
  train_options o = {.snapshot_parity = 1, .data_dir = FASHION_MNIST_DEFAULT_DIR, .metrics_path = NULL,
                     .hidden = "512,256", .epochs = 5, .batch = 128, .chunk = 32, .optimizer = OPT_SGD,
                     .schedule = LOOM_SCHEDULE_COSINE, .nesterov = 1, .overlap = 1,
                     .max_steps = 0, .warmup_steps = 100, .lr = 0.05, .momentum = 0.9,
                     .weight_decay = 5e-4, .clip = 0, .bucket_bytes = 1u << 20};
  const loom_option options[] = {
      {"data-dir", LOOM_OPTION_STRING, &o.data_dir, "directory of the Fashion-MNIST .gz files"},
      {"epochs", LOOM_OPTION_INT, &o.epochs, "passes over the 60000 training images", NULL, 1, 1000},
      {"batch", LOOM_OPTION_INT, &o.batch, "global batch (divisible by the dp size)", NULL, 1, 60000},
      {"chunk", LOOM_OPTION_INT, &o.chunk, "rows per BLAS call; runs whose per-rank batch is a "
       "multiple of it compute identical per-sample results", NULL, 1, 60000},
      {"hidden", LOOM_OPTION_STRING, &o.hidden, "hidden layer widths, comma separated"},
      {"optimizer", LOOM_OPTION_CHOICE, &o.optimizer, "optimizer", "sgd|adamw"},
      {"lr", LOOM_OPTION_DOUBLE, &o.lr, "peak learning rate", NULL, 0, 10},
      {"momentum", LOOM_OPTION_DOUBLE, &o.momentum, "SGD momentum", NULL, 0, 0.999},
      {"nesterov", LOOM_OPTION_BOOL, &o.nesterov, "SGD Nesterov momentum"},
      {"weight-decay", LOOM_OPTION_DOUBLE, &o.weight_decay, "weight decay", NULL, 0, 1},
      {"schedule", LOOM_OPTION_CHOICE, &o.schedule, "learning-rate schedule after warm-up",
       "constant|cosine"},
      {"warmup-steps", LOOM_OPTION_INT, &o.warmup_steps, "linear warm-up steps", NULL, 0, 1 << 30},
      {"clip", LOOM_OPTION_DOUBLE, &o.clip, "global gradient-norm clip; 0 = off", NULL, 0, 1e9},
      {"bucket-bytes", LOOM_OPTION_UINT64, &o.bucket_bytes, "DDP bucket size (K/M suffixes)"},
      {"overlap", LOOM_OPTION_BOOL, &o.overlap, "reduce buckets during backward (0: after)"},
      {"max-steps", LOOM_OPTION_INT, &o.max_steps, "steps per epoch cap; 0 = whole epoch", NULL, 0, 1 << 30},
      {"metrics", LOOM_OPTION_STRING, &o.metrics_path, "JSON-lines metrics file (rank 0)"},
      {"ckpt-dir", LOOM_OPTION_STRING, &o.ckpt_dir, "checkpoint root (HDF5)"},
      {"ckpt-every", LOOM_OPTION_INT, &o.ckpt_every, "save every this many steps; 0 = at the end only",
       NULL, 0, 1 << 30},
      {"resume", LOOM_OPTION_BOOL, &o.resume, "resume from the checkpoint root's latest, if any"},
      {"ckpt-async", LOOM_OPTION_BOOL, &o.ckpt_async, "save in the background (loom_ckpt_save_async)"},
      {"snapshot-every", LOOM_OPTION_INT, &o.snapshot_every, "in-memory snapshot every this many "
       "steps (0 = none); a restart resumes from the newest one every rank can restore", NULL, 0, 1 << 30},
      {"snapshot-async", LOOM_OPTION_BOOL, &o.snapshot_async, "take snapshots in the background "
       "(loom_snapshot_take_async; a request while one is in flight is skipped)"},
      {"snapshot-parity", LOOM_OPTION_INT, &o.snapshot_parity, "parity fragments per erasure "
       "group of the snapshots (0 = no erasure coding)", NULL, 0, 16},
      {"stop-at-step", LOOM_OPTION_INT, &o.stop_at_step, "stop (after saving) at this global step; "
       "0 = run to the end", NULL, 0, 1 << 30},
      {"dump-params", LOOM_OPTION_STRING, &o.dump_params, "write the final float32 parameters "
       "(rank 0, raw, layer order) to this file"},
  };
  const int option_count = (int)(sizeof options / sizeof options[0]);
  loom_config config = LOOM_CONFIG_INIT;
  int rank = loom_launcher_rank(), code = 0, requeue = 0;
  if (loom_config_parse(&config, options, option_count, argc, argv) != LOOM_OK) {
    if (rank == 0) fprintf(stderr, "train_mnist: %s\n", loom_error_string());
    return 2;
  }
  if (config.help) {
    if (rank == 0) loom_config_usage(stdout, "train_mnist", &config, options, option_count);
    return 0;
  }
  int widths[MAX_LAYERS + 2];
  int layers = parse_widths(o.hidden, widths);
  if (layers < 1) {
    if (rank == 0) fprintf(stderr, "train_mnist: --hidden '%s' is not a comma-separated list of "
                           "widths (1..65536, at most %d layers)\n", o.hidden, MAX_LAYERS - 1);
    return 2;
  }

  loom_ctx *ctx = NULL;
  loom_mesh *mesh = NULL;
  loom_ddp *ddp = NULL;
  loom_optim *optim = NULL;
  mlp model = {0};
  fashion_mnist_split train = {0}, test = {0};
  float *inputs = NULL, **grad32 = NULL;
  int gpu = 0; /* --device cuda: the model, gradients and optimizer live on the GPU */
#ifdef LOOM_EXAMPLES_GPU
  mlp_gpu device_model = {0};
#endif
  int *labels = NULL, *order = NULL;
  FILE *metrics = NULL;
  loom_state *registry = NULL;
  loom_ckpt *ckpt = NULL; /* with --ckpt-async */
  loom_snapshot *snapshot = NULL; /* with --snapshot-every */
  int64_t global_step = 0;
  if (loom_init(&config, &argc, &argv, &ctx) != LOOM_OK) {
    fprintf(stderr, "train_mnist: %s\n", loom_error_string());
    return 1;
  }
  rank = loom_ctx_rank(ctx);
  loom_mesh_shape shape;
  TRY(loom_mesh_shape_from_config(&config, loom_ctx_size(ctx), &shape));
  if (shape.pp != 1 || shape.sp != 1)
    TRY(loom_error_set(LOOM_ERR_ARG, "this example is data-parallel only: --pp and --sp must be 1 "
                       "(got %d and %d)", shape.pp, shape.sp));
  if (o.batch % shape.dp != 0)
    TRY(loom_error_set(LOOM_ERR_ARG, "--batch %d is not divisible by dp=%d; the global batch is "
                       "split evenly over data-parallel ranks", o.batch, shape.dp));
  if (o.chunk > o.batch / shape.dp) o.chunk = o.batch / shape.dp;
  TRY(loom_mesh_create(ctx, &shape, &mesh));
  loom_group *grad_group = loom_mesh_group(mesh, LOOM_AXIS_GRAD);
  int dp_rank = loom_mesh_my_coords(mesh).dp, local_rows = o.batch / shape.dp;

  TRY(fashion_mnist_load(o.data_dir, "train", &train));
  TRY(fashion_mnist_load(o.data_dir, "t10k", &test));
  TRY(mlp_create(widths, layers, o.chunk, config.seed, &model));
  gpu = loom_ctx_device(ctx).kind == LOOM_DEVICE_CUDA;
#ifdef LOOM_EXAMPLES_GPU
  if (gpu) TRY(mlp_gpu_create(&model, o.chunk, loom_ctx_stream(ctx), &device_model));
#endif


  /* DDP over the GRAD group; optimizer on float32 copies of the reduced gradients. */
  loom_ddp_params ddp_params = LOOM_DDP_PARAMS_INIT;
  ddp_params.bucket_bytes = o.bucket_bytes;
  ddp_params.overlap = o.overlap;
  ddp_params.op = LOOM_OP_SUM; /* each rank's gradient is already scaled by 1 / global batch */
  TRY(loom_ddp_create(grad_group, &ddp_params, &ddp));
  loom_optim_params optim_params = LOOM_OPTIM_PARAMS_INIT;
  optim_params.kind = o.optimizer == OPT_SGD ? LOOM_OPTIM_SGD : LOOM_OPTIM_ADAMW;
  optim_params.momentum = o.optimizer == OPT_SGD ? o.momentum : 0;
  optim_params.nesterov = o.optimizer == OPT_SGD && o.nesterov && o.momentum > 0;
  optim_params.weight_decay = o.weight_decay;
  optim_params.stream = loom_ctx_stream(ctx);
  TRY(loom_optim_create(&optim_params, &optim));
  mlp_ddp_hooks hooks = {.ddp = ddp};
  grad32 = calloc(2 * (size_t)layers, sizeof *grad32);
  if (!grad32) TRY(loom_error_set(LOOM_ERR_NOMEM, "gradient copies"));
  for (int l = 0; l < layers; l++) {
    size_t n_weight = (size_t)widths[l + 1] * widths[l], n_bias = (size_t)widths[l + 1];
    char name[64];
    snprintf(name, sizeof name, "layer%d.weight", l);
#ifdef LOOM_EXAMPLES_GPU
    if (gpu) { /* float32 gradients reduced and applied on the GPU */
      mlp_gpu *d = &device_model;
      TRY(loom_ddp_register(ddp, name, loom_buf_device(ctx, d->weight_grad[l], n_weight, LOOM_FLOAT32),
                            &hooks.weight_index[l]));
      TRY(loom_optim_add(optim, name, loom_buf_device(ctx, d->weight[l], n_weight, LOOM_FLOAT32),
                         loom_buf_device(ctx, d->weight_grad[l], n_weight, LOOM_FLOAT32)));
      snprintf(name, sizeof name, "layer%d.bias", l);
      TRY(loom_ddp_register(ddp, name, loom_buf_device(ctx, d->bias_grad[l], n_bias, LOOM_FLOAT32),
                            &hooks.bias_index[l]));
      TRY(loom_optim_add(optim, name, loom_buf_device(ctx, d->bias[l], n_bias, LOOM_FLOAT32),
                         loom_buf_device(ctx, d->bias_grad[l], n_bias, LOOM_FLOAT32)));
      continue;
    }
#endif
    TRY(loom_ddp_register(ddp, name, loom_buf_host(model.weight_grad[l], n_weight, LOOM_FLOAT64),
                          &hooks.weight_index[l]));
    grad32[2 * l] = calloc(n_weight, sizeof(float));
    grad32[2 * l + 1] = calloc(n_bias, sizeof(float));
    if (!grad32[2 * l] || !grad32[2 * l + 1]) TRY(loom_error_set(LOOM_ERR_NOMEM, "gradient copies"));
    TRY(loom_optim_add(optim, name, loom_buf_host(model.weight[l], n_weight, LOOM_FLOAT32),
                       loom_buf_host(grad32[2 * l], n_weight, LOOM_FLOAT32)));
    snprintf(name, sizeof name, "layer%d.bias", l);
    TRY(loom_ddp_register(ddp, name, loom_buf_host(model.bias_grad[l], n_bias, LOOM_FLOAT64),
                          &hooks.bias_index[l]));
    TRY(loom_optim_add(optim, name, loom_buf_host(model.bias[l], n_bias, LOOM_FLOAT32),
                       loom_buf_host(grad32[2 * l + 1], n_bias, LOOM_FLOAT32)));
  }

  /* Everything a bit-exact restart needs is registered: parameters, optimizer state (moments
   * and step count) and the global step, from which the data order (seeded per epoch) and the
   * learning-rate schedule follow. */
  /* Under Slurm: a requeued run resumes by itself, and SIGUSR1/SIGTERM (the scheduler's warning)
   * stop training after the current step with a checkpoint and exit LOOM_EXIT_REQUEUE. */
  const char *restarts = getenv("SLURM_RESTART_COUNT");
  if (restarts && atoi(restarts) > 0 && o.ckpt_dir) {
    o.resume = 1;
    if (rank == 0) printf("Slurm restart %s of job %s: resuming\n", restarts, loom_ctx_job_id(ctx));
  }
  if (o.ckpt_dir) TRY(loom_signals_install(ctx));
  if (o.ckpt_dir || o.snapshot_every > 0) {
    TRY(loom_state_create(mesh, &registry));
    for (int l = 0; l < layers; l++) {
      char name[64];
      size_t n_weight = (size_t)widths[l + 1] * widths[l], n_bias = (size_t)widths[l + 1];
      loom_state_spec weight = {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {widths[l + 1], widths[l]}};
      loom_state_spec bias = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {widths[l + 1]}};
      loom_buf w = loom_buf_host(model.weight[l], n_weight, LOOM_FLOAT32);
      loom_buf b = loom_buf_host(model.bias[l], n_bias, LOOM_FLOAT32);
#ifdef LOOM_EXAMPLES_GPU
      if (gpu) { /* the parameters the GPU trains; saved from and loaded into device memory */
        w = loom_buf_device(ctx, device_model.weight[l], n_weight, LOOM_FLOAT32);
        b = loom_buf_device(ctx, device_model.bias[l], n_bias, LOOM_FLOAT32);
      }
#endif
      snprintf(name, sizeof name, "layer%d.weight", l);
      TRY(loom_state_register(registry, name, &weight, w));
      snprintf(name, sizeof name, "layer%d.bias", l);
      TRY(loom_state_register(registry, name, &bias, b));
    }
    for (int i = 0; i < loom_optim_state_count(optim); i++) {
      const char *name;
      loom_buf buf;
      TRY(loom_optim_state_at(optim, i, &name, &buf));
      loom_state_spec spec = {.dtype = buf.dtype, .ndims = buf.count == 1 && buf.dtype == LOOM_INT64 ? 0 : 1,
                              .shape = {(int64_t)buf.count}};
      TRY(loom_state_register(registry, name, &spec, buf));
    }
    loom_state_spec scalar = {.dtype = LOOM_INT64, .ndims = 0};
    TRY(loom_state_register(registry, "train.global_step", &scalar,
                            loom_buf_host(&global_step, 1, LOOM_INT64)));
    /* Resume: the newest in-memory snapshot every rank can restore, else the newest HDF5
     * checkpoint, else a fresh start; the log says which. */
    int restored = 0;
    if (o.snapshot_every > 0) {
      loom_snapshot_params sp = LOOM_SNAPSHOT_PARAMS_INIT;
      sp.parity = o.snapshot_parity;
      TRY(loom_snapshot_create(registry, &sp, &snapshot));
      int64_t snapshot_step = 0;
      TRY(loom_snapshot_restore(snapshot, &snapshot_step, &restored));
      if (restored && rank == 0)
        printf("resumed from the in-memory snapshot at step %lld\n", (long long)global_step);
    }
    char latest[4096];
    snprintf(latest, sizeof latest, "%s/latest", o.ckpt_dir ? o.ckpt_dir : "");
    struct stat info;
    if (!restored && o.ckpt_dir && o.resume && stat(latest, &info) == 0) {
      int64_t saved = 0;
      TRY(loom_ckpt_load(registry, o.ckpt_dir, &saved));
      if (rank == 0) printf("resumed from %s at step %lld\n", o.ckpt_dir, (long long)global_step);
    }
    if (o.ckpt_async && o.ckpt_dir) TRY(loom_ckpt_create(registry, o.ckpt_dir, NULL, &ckpt));
    if (!restored && rank == 0 && o.resume) printf("fresh start: no snapshot or checkpoint to resume from\n");
  }
  int steps_per_epoch = train.count / o.batch;
  if (o.max_steps > 0 && o.max_steps < steps_per_epoch) steps_per_epoch = o.max_steps;
  loom_schedule schedule = {.kind = (loom_schedule_kind)o.schedule, .peak = o.lr, .floor = 0,
                            .warmup_steps = o.warmup_steps,
                            .total_steps = (int64_t)steps_per_epoch * o.epochs};
  if (schedule.kind == LOOM_SCHEDULE_COSINE && schedule.total_steps <= schedule.warmup_steps)
    schedule.warmup_steps = schedule.total_steps / 10;
  TRY(loom_schedule_check(&schedule));
  inputs = malloc(sizeof(float) * 784 * (size_t)model.batch_capacity);
  labels = malloc(sizeof(int) * (size_t)model.batch_capacity);
  order = malloc(sizeof(int) * (size_t)train.count);
  if (!inputs || !labels || !order) TRY(loom_error_set(LOOM_ERR_NOMEM, "batch buffers"));
  if (rank == 0 && o.metrics_path) {
    metrics = fopen(o.metrics_path, "w");
    if (!metrics) TRY(loom_error_set(LOOM_ERR_IO, "cannot write metrics file %s", o.metrics_path));
  }
  if (rank == 0)
    printf("train_mnist: %d ranks (dp=%d), model %s (%zu parameters), global batch %d, %d "
           "steps/epoch, %s lr %g\n", loom_ctx_size(ctx), shape.dp, o.hidden,
           mlp_parameter_count(&model), o.batch, steps_per_epoch,
           o.optimizer == OPT_SGD ? "sgd" : "adamw", o.lr);

  double start = loom_now(), train_loss = 0, accuracy = 0;
  int first_epoch = (int)(global_step / steps_per_epoch), stopped = 0;
  for (int epoch = first_epoch; epoch < o.epochs && !stopped; epoch++) {
    double epoch_start = loom_now(), loss_sum = 0;
    shuffle(order, train.count, config.seed, epoch);
    int first_step = epoch == first_epoch ? (int)(global_step % steps_per_epoch) : 0;
    for (int step = first_step; step < steps_per_epoch; step++) {
      const int *batch_order = order + (size_t)step * o.batch + (size_t)dp_rank * local_rows;
#ifdef LOOM_EXAMPLES_GPU
      if (gpu) TRY(mlp_gpu_zero_grad(&device_model));
#endif
      if (!gpu) mlp_zero_grad(&model);
      TRY(loom_ddp_begin(ddp, 1));
      /* Chunks of o.chunk rows: the same BLAS shapes whatever the rank count. Gradients are
       * final after the last chunk's backward, which hands each layer to DDP. */
      for (int begin = 0; begin < local_rows; begin += o.chunk) {
        int rows = local_rows - begin < o.chunk ? local_rows - begin : o.chunk;
        for (int i = 0; i < rows; i++) {
          fashion_mnist_normalize(&train, batch_order[begin + i], inputs + (size_t)i * 784);
          labels[i] = train.labels[batch_order[begin + i]];
        }
        int last = begin + rows >= local_rows;
#ifdef LOOM_EXAMPLES_GPU
        if (gpu) {
          double chunk_loss = 0;
          TRY(mlp_gpu_forward(&device_model, inputs, rows));
          TRY(mlp_gpu_loss(&device_model, labels, rows, 1.0 / o.batch, &chunk_loss));
          loss_sum += chunk_loss;
          TRY(mlp_gpu_backward(&device_model, rows, last ? mlp_ddp_layer_ready : NULL, &hooks));
          continue;
        }
#endif
        mlp_forward(&model, inputs, rows);
        loss_sum += mlp_loss(&model, labels, rows, 1.0 / o.batch);
        TRY(mlp_backward(&model, rows, last ? mlp_ddp_layer_ready : NULL, &hooks));
      }
      TRY(loom_ddp_finish(ddp));
      for (int l = 0; !gpu && l < layers; l++) {
        size_t n_weight = (size_t)widths[l + 1] * widths[l];
        for (size_t i = 0; i < n_weight; i++) grad32[2 * l][i] = (float)model.weight_grad[l][i];
        for (int i = 0; i < widths[l + 1]; i++) grad32[2 * l + 1][i] = (float)model.bias_grad[l][i];
      }
      if (o.clip > 0) { /* replicated after the reduction: no group to sum over */
        loom_buf grads[2 * MAX_LAYERS];
        for (int l = 0; l < layers; l++) {
          size_t n_weight = (size_t)widths[l + 1] * widths[l], n_bias = (size_t)widths[l + 1];
          grads[2 * l] = loom_buf_host(grad32[2 * l], n_weight, LOOM_FLOAT32);
          grads[2 * l + 1] = loom_buf_host(grad32[2 * l + 1], n_bias, LOOM_FLOAT32);
#ifdef LOOM_EXAMPLES_GPU
          if (gpu) {
            grads[2 * l] = loom_buf_device(ctx, device_model.weight_grad[l], n_weight, LOOM_FLOAT32);
            grads[2 * l + 1] = loom_buf_device(ctx, device_model.bias_grad[l], n_bias, LOOM_FLOAT32);
          }
#endif
        }
        TRY(loom_clip_grad_norm(NULL, loom_ctx_stream(ctx), grads, 2 * layers, o.clip, NULL));
      }
      if (ckpt) TRY(loom_ckpt_fence(ckpt)); /* a background save may still be copying */
      if (snapshot && o.snapshot_async) TRY(loom_snapshot_fence(snapshot));
      TRY(loom_optim_step(optim, loom_schedule_lr(&schedule, global_step)));
      global_step++;
      int last_step = epoch == o.epochs - 1 && step == steps_per_epoch - 1;
      int stop = o.stop_at_step > 0 && global_step == o.stop_at_step;
      if (o.ckpt_dir && ((o.ckpt_every > 0 && global_step % o.ckpt_every == 0) || last_step || stop)) {
        if (ckpt) { /* the final save is never skipped, and is on disk before the run ends */
          if (last_step || stop) TRY(loom_ckpt_wait(ckpt));
          TRY(loom_ckpt_save_async(ckpt, global_step, NULL));
          if (last_step || stop) TRY(loom_ckpt_wait(ckpt));
        } else {
          TRY(loom_ckpt_save(registry, o.ckpt_dir, global_step));
        }
      }
      if (snapshot && global_step % o.snapshot_every == 0) {
        if (o.snapshot_async) TRY(loom_snapshot_take_async(snapshot, global_step, NULL));
        else TRY(loom_snapshot_take(snapshot, global_step));
      }
      TRY(loom_fault_step(ctx, global_step)); /* tests: LOOM_FAULT kills, hangs or delays here */
      int signalled = 0;
      if (o.ckpt_dir) TRY(loom_stop_agreed(ctx, &signalled));
      if (signalled && !stop && !last_step) {
        if (ckpt) TRY(loom_ckpt_wait(ckpt));
        TRY(loom_ckpt_save(registry, o.ckpt_dir, global_step));
        if (rank == 0)
          printf("stopping at step %lld on a signal (%d): checkpoint written, exit %d to be "
                 "requeued\n", (long long)global_step, loom_stop_signal(), LOOM_EXIT_REQUEUE);
        requeue = 1;
        stop = 1;
      }
      if (stop) {
        stopped = 1;
        break;
      }
    }
    /* Epoch metrics: mean training loss over the epoch's samples, test accuracy over all 10k
     * test images (each rank evaluates a slice). */
    double sums[2] = {loss_sum, 0};
    int first = (int)((long long)test.count * dp_rank / shape.dp);
    int last = (int)((long long)test.count * (dp_rank + 1) / shape.dp);
    for (int begin = first; begin < last; begin += model.batch_capacity) {
      int rows = last - begin < model.batch_capacity ? last - begin : model.batch_capacity;
      for (int i = 0; i < rows; i++) {
        fashion_mnist_normalize(&test, begin + i, inputs + (size_t)i * 784);
        labels[i] = test.labels[begin + i];
      }
#ifdef LOOM_EXAMPLES_GPU
      if (gpu) {
        int correct = 0;
        TRY(mlp_gpu_forward(&device_model, inputs, rows));
        TRY(mlp_gpu_count_correct(&device_model, labels, rows, &correct));
        sums[1] += correct;
        continue;
      }
#endif
      mlp_forward(&model, inputs, rows);
      sums[1] += mlp_count_correct(&model, labels, rows);
    }
    TRY(loom_allreduce(grad_group, loom_buf_host(sums, 2, LOOM_FLOAT64),
                       loom_buf_host(sums, 2, LOOM_FLOAT64), LOOM_OP_SUM));
    double epoch_seconds = loom_now() - epoch_start;
    train_loss = sums[0] / ((double)steps_per_epoch * o.batch);
    accuracy = sums[1] / test.count;
    double samples_per_second = (double)steps_per_epoch * o.batch / epoch_seconds;
    if (rank == 0) {
      printf("epoch %d/%d  train loss %.6f  test accuracy %.4f  %.0f samples/s  %.1f s\n",
             epoch + 1, o.epochs, train_loss, accuracy, samples_per_second, loom_now() - start);
      fflush(stdout);
      if (metrics) {
        fprintf(metrics, "{\"epoch\": %d, \"step\": %lld, \"train_loss\": %.9g, \"test_accuracy\": "
                "%.6f, \"samples_per_s\": %.1f, \"elapsed_s\": %.3f, \"ranks\": %d}\n", epoch + 1,
                (long long)global_step, train_loss, accuracy, samples_per_second,
                loom_now() - start, loom_ctx_size(ctx));
        fflush(metrics);
      }
    }
  }
  if (rank == 0) printf("final train_loss=%.10g test_accuracy=%.6f\n", train_loss, accuracy);
  if (o.dump_params && rank == 0) {
    FILE *f = fopen(o.dump_params, "wb");
    if (!f) TRY(loom_error_set(LOOM_ERR_IO, "cannot write --dump-params %s", o.dump_params));
    for (int l = 0; l < layers; l++) {
#ifdef LOOM_EXAMPLES_GPU
      if (gpu) { /* the trained values live on the GPU */
        TRY(loom_device_download(ctx, model.weight[l], device_model.weight[l],
                                 sizeof(float) * (size_t)widths[l + 1] * widths[l]));
        TRY(loom_device_download(ctx, model.bias[l], device_model.bias[l],
                                 sizeof(float) * (size_t)widths[l + 1]));
      }
#endif
      fwrite(model.weight[l], sizeof(float), (size_t)widths[l + 1] * widths[l], f);
      fwrite(model.bias[l], sizeof(float), (size_t)widths[l + 1], f);
    }
    fclose(f);
  }

done:
  if (metrics) fclose(metrics);
  for (int l = 0; grad32 && l < 2 * layers; l++) free(grad32[l]);
  free(grad32), free(inputs), free(labels), free(order);
  fashion_mnist_free(&train);
  fashion_mnist_free(&test);
#ifdef LOOM_EXAMPLES_GPU
  if (gpu) mlp_gpu_destroy(&device_model);
#endif
  loom_ckpt_destroy(ckpt);
  loom_snapshot_destroy(snapshot);
  loom_state_destroy(registry);
  mlp_destroy(&model);
  loom_optim_destroy(optim);
  loom_ddp_destroy(ddp);
  loom_mesh_destroy(mesh);
  if (code != 0 && loom_ctx_size(ctx) > 1) MPI_Abort(MPI_COMM_WORLD, code);
  loom_finalize(ctx);
  return code ? code : requeue ? LOOM_EXIT_REQUEUE : 0;
}
