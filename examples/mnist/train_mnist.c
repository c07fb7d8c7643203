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

#include "blas_kernels.h"
#include "../mlp/mlp_model.h"
#include "fashion_mnist.h"

typedef struct {
  const char *data_dir, *metrics_path, *hidden, *dump_params;
  loom_keeper_params keep; /* checkpoints and snapshots */
  int stop_at_step, progress_every;
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

/* Flags and LOOM_* variables into `o` and `config`; -1 to go on, else the exit code. */
static int parse_options(train_options *o, loom_config *config, int *widths, int *layers,
                         int argc, char **argv) {
  *o = (train_options){.keep = LOOM_KEEPER_PARAMS_INIT, .data_dir = FASHION_MNIST_DEFAULT_DIR, .metrics_path = NULL,
                     .hidden = "512,256", .epochs = 5, .batch = 128, .chunk = 32, .optimizer = OPT_SGD,
                     .schedule = LOOM_SCHEDULE_COSINE, .nesterov = 1, .overlap = 1,
                     .max_steps = 0, .warmup_steps = 100, .lr = 0.05, .momentum = 0.9,
                     .weight_decay = 5e-4, .clip = 0, .bucket_bytes = 1u << 20};
  const loom_option options[] = {
      {"data-dir", LOOM_OPTION_STRING, &o->data_dir, "directory of the Fashion-MNIST .gz files"},
      {"epochs", LOOM_OPTION_INT, &o->epochs, "passes over the 60000 training images", NULL, 1, 1000},
      {"batch", LOOM_OPTION_INT, &o->batch, "global batch (divisible by the dp size)", NULL, 1, 60000},
      {"chunk", LOOM_OPTION_INT, &o->chunk, "rows per BLAS call; runs whose per-rank batch is a "
       "multiple of it compute identical per-sample results", NULL, 1, 60000},
      {"hidden", LOOM_OPTION_STRING, &o->hidden, "hidden layer widths, comma separated"},
      {"optimizer", LOOM_OPTION_CHOICE, &o->optimizer, "optimizer", "sgd|adamw"},
      {"lr", LOOM_OPTION_DOUBLE, &o->lr, "peak learning rate", NULL, 0, 10},
      {"momentum", LOOM_OPTION_DOUBLE, &o->momentum, "SGD momentum", NULL, 0, 0.999},
      {"nesterov", LOOM_OPTION_BOOL, &o->nesterov, "SGD Nesterov momentum"},
      {"weight-decay", LOOM_OPTION_DOUBLE, &o->weight_decay, "weight decay", NULL, 0, 1},
      {"schedule", LOOM_OPTION_CHOICE, &o->schedule, "learning-rate schedule after warm-up",
       "constant|cosine"},
      {"warmup-steps", LOOM_OPTION_INT, &o->warmup_steps, "linear warm-up steps", NULL, 0, 1 << 30},
      {"clip", LOOM_OPTION_DOUBLE, &o->clip, "global gradient-norm clip; 0 = off", NULL, 0, 1e9},
      {"bucket-bytes", LOOM_OPTION_UINT64, &o->bucket_bytes, "DDP bucket size (K/M suffixes)"},
      {"overlap", LOOM_OPTION_BOOL, &o->overlap, "reduce buckets during backward (0: after)"},
      {"max-steps", LOOM_OPTION_INT, &o->max_steps, "steps per epoch cap; 0 = whole epoch", NULL, 0, 1 << 30},
      {"metrics", LOOM_OPTION_STRING, &o->metrics_path, "JSON-lines metrics file (rank 0)"},
      {"ckpt-dir", LOOM_OPTION_STRING, &o->keep.ckpt_dir, "checkpoint root (HDF5)"},
      {"ckpt-every", LOOM_OPTION_INT, &o->keep.ckpt_every, "save every this many steps; 0 = at the end only",
       NULL, 0, 1 << 30},
      {"resume", LOOM_OPTION_BOOL, &o->keep.resume, "resume from the checkpoint root's latest, if any"},
      {"ckpt-async", LOOM_OPTION_BOOL, &o->keep.ckpt_async, "save in the background (loom_ckpt_save_async)"},
      {"snapshot-every", LOOM_OPTION_INT, &o->keep.snapshot_every, "in-memory snapshot every this many "
       "steps (0 = none); a restart resumes from the newest one every rank can restore", NULL, 0, 1 << 30},
      {"snapshot-async", LOOM_OPTION_BOOL, &o->keep.snapshot_async, "take snapshots in the background "
       "(loom_snapshot_take_async; a request while one is in flight is skipped)"},
      {"snapshot-parity", LOOM_OPTION_INT, &o->keep.snapshot_parity, "parity fragments per erasure "
       "group of the snapshots (0 = no erasure coding)", NULL, 0, 16},
      {"stop-at-step", LOOM_OPTION_INT, &o->stop_at_step, "stop (after saving) at this global step; "
       "0 = run to the end", NULL, 0, 1 << 30},
      {"progress-every", LOOM_OPTION_INT, &o->progress_every, "progress line (step, loss, "
       "samples/s, ETA) every this many steps; 0 = epochs only", NULL, 0, 1 << 30},
      {"dump-params", LOOM_OPTION_STRING, &o->dump_params, "write the final float32 parameters "
       "(rank 0, raw, layer order) to this file"},
  };
  const int option_count = (int)(sizeof options / sizeof options[0]);
  int rank = loom_launcher_rank();
  if (loom_config_parse(config, options, option_count, argc, argv) != LOOM_OK) {
    if (rank == 0) fprintf(stderr, "train_mnist: %s\n", loom_error_string());
    return 2;
  }
  if (config->help) {
    if (rank == 0) loom_config_usage(stdout, "train_mnist", config, options, option_count);
    return 0;
  }
  *layers = parse_widths(o->hidden, widths);
  if (*layers < 1) {
    if (rank == 0) fprintf(stderr, "train_mnist: --hidden '%s' is not a comma-separated list of "
                           "widths (1..65536, at most %d layers)\n", o->hidden, MAX_LAYERS - 1);
    return 2;
  }
  return -1;
}

/* The example is data-parallel only, and the global batch splits evenly over the ranks. */
static loom_status check_layout(const loom_mesh_shape *shape, int batch) {
  if (shape->pp != 1 || shape->sp != 1)
    return loom_error_set(LOOM_ERR_ARG, "this example is data-parallel only: --pp and --sp must "
                          "be 1 (got %d and %d)", shape->pp, shape->sp);
  if (batch % shape->dp != 0)
    return loom_error_set(LOOM_ERR_ARG, "--batch %d is not divisible by dp=%d; the global batch "
                          "is split evenly over data-parallel ranks", batch, shape->dp);
  return LOOM_OK;
}

/* Test accuracy over all 10k test images, each data-parallel rank evaluating a slice; `sums`
 * gets {loss_sum, correct} summed over the group. */
static loom_status evaluate(mlp_model *model, const fashion_mnist_split *test, loom_group *group,
                            float *inputs, int *labels, double *sums) {
  int dp = loom_group_size(group), dp_rank = loom_group_rank(group), chunk = mlp_model_chunk(model);
  int first = (int)((long long)test->count * dp_rank / dp);
  int last = (int)((long long)test->count * (dp_rank + 1) / dp);
  for (int begin = first; begin < last; begin += chunk) {
    int rows = last - begin < chunk ? last - begin : chunk, correct = 0;
    for (int i = 0; i < rows; i++) {
      fashion_mnist_normalize(test, begin + i, inputs + (size_t)i * 784);
      labels[i] = test->labels[begin + i];
    }
    LOOM_CHECK(mlp_model_count_correct(model, inputs, labels, rows, &correct));
    sums[1] += correct;
  }
  loom_buf both = loom_buf_host(sums, 2, LOOM_FLOAT64);
  return loom_allreduce(group, both, both, LOOM_OP_SUM);
}

int main(int argc, char **argv) {
  example_blas_pick_kernels(argv);
  train_options o;
  loom_config config = LOOM_CONFIG_INIT;
  int widths[MAX_LAYERS + 2], layers = 0, rank = loom_launcher_rank(), code = 0, exit_code = 0;
  if ((code = parse_options(&o, &config, widths, &layers, argc, argv)) >= 0) return code;
  code = 0;
  loom_ctx *ctx = NULL;
  loom_mesh *mesh = NULL;
  loom_params *params = NULL;
  loom_ddp *ddp = NULL;
  loom_optim *optim = NULL;
  loom_state *registry = NULL;
  loom_loop *loop = NULL;
  mlp_model *model = NULL;
  fashion_mnist_split train = {0}, test = {0};
  float *inputs = NULL;
  int *labels = NULL, *order = NULL;
  if (loom_init(&config, &argc, &argv, &ctx) != LOOM_OK) {
    fprintf(stderr, "train_mnist: %s\n", loom_error_string());
    return 1;
  }
  rank = loom_ctx_rank(ctx);
  loom_mesh_shape shape;
  TRY(loom_mesh_shape_from_config(&config, loom_ctx_size(ctx), &shape));
  TRY(check_layout(&shape, o.batch));
  int local_rows = o.batch / shape.dp;
  if (o.chunk > local_rows) o.chunk = local_rows;
  TRY(loom_mesh_create(ctx, &shape, &mesh));
  loom_group *grad_group = loom_mesh_group(mesh, LOOM_AXIS_GRAD);
  TRY(fashion_mnist_load(o.data_dir, "train", &train));
  TRY(fashion_mnist_load(o.data_dir, "t10k", &test));
  TRY(mlp_model_create(ctx, widths, layers, o.chunk, config.seed, &model));

  /* One parameter table read by DDP (sums over GRAD: each rank's gradient is already scaled
   * by 1 / global batch), the optimizer and the registry. */
  TRY(loom_params_create(mesh, &params));
  TRY(mlp_model_add_params(model, params));
  loom_ddp_params ddp_params = {.bucket_bytes = o.bucket_bytes, .overlap = o.overlap,
                                .op = LOOM_OP_SUM};
  TRY(loom_ddp_create(grad_group, &ddp_params, &ddp));
  TRY(loom_ddp_add_params(ddp, params, LOOM_AXIS_GRAD));
  loom_optim_params optim_params = LOOM_OPTIM_PARAMS_INIT;
  optim_params.kind = o.optimizer == OPT_SGD ? LOOM_OPTIM_SGD : LOOM_OPTIM_ADAMW;
  optim_params.momentum = o.optimizer == OPT_SGD ? o.momentum : 0;
  optim_params.nesterov = o.optimizer == OPT_SGD && o.nesterov && o.momentum > 0;
  optim_params.weight_decay = o.weight_decay;
  optim_params.stream = loom_ctx_stream(ctx);
  TRY(loom_optim_create(&optim_params, &optim));
  TRY(loom_optim_add_params(optim, params));
  /* A bit-exact restart needs the parameters, the optimizer state and the step (the loop's):
   * the data order (seeded per epoch) and the learning rate follow from the step. */
  TRY(loom_state_create(mesh, &registry));
  TRY(loom_state_register_params(registry, params));
  TRY(loom_optim_register_state(optim, registry));
  int steps_per_epoch = train.count / o.batch;
  if (o.max_steps > 0 && o.max_steps < steps_per_epoch) steps_per_epoch = o.max_steps;
  loom_loop_params lp = {.total_steps = (int64_t)steps_per_epoch * o.epochs,
                        .stop_at_step = o.stop_at_step, .progress_every = o.progress_every,
                        .items_per_step = o.batch, .items_name = "samples",
                        .metrics_path = o.metrics_path};
  loom_loop_keeper keeper;
  TRY(loom_keeper_create(registry, &o.keep, &keeper));
  TRY(loom_loop_create(ctx, registry, &lp, &keeper, &loop));
  loom_schedule schedule = {.kind = (loom_schedule_kind)o.schedule, .peak = o.lr, .floor = 0,
                            .warmup_steps = o.warmup_steps, .total_steps = lp.total_steps};
  if (schedule.kind == LOOM_SCHEDULE_COSINE && schedule.total_steps <= schedule.warmup_steps)
    schedule.warmup_steps = schedule.total_steps / 10;
  TRY(loom_schedule_check(&schedule));
  inputs = malloc(sizeof(float) * 784 * (size_t)o.chunk);
  labels = malloc(sizeof(int) * (size_t)o.chunk);
  order = malloc(sizeof(int) * (size_t)train.count);
  if (!inputs || !labels || !order) TRY(loom_error_set(LOOM_ERR_NOMEM, "batch buffers"));
  if (rank == 0)
    printf("train_mnist: %d ranks (dp=%d), model %s (%zu parameters), global batch %d, %d "
           "steps/epoch, %s lr %g\n", loom_ctx_size(ctx), shape.dp, o.hidden,
           mlp_model_parameter_count(model), o.batch, steps_per_epoch,
           o.optimizer == OPT_SGD ? "sgd" : "adamw", o.lr);

  double start = loom_now(), epoch_start = start, loss_sum = 0, train_loss = 0, accuracy = 0;
  int epoch_steps = 0; /* steps of this epoch run by this process (fewer after a resume) */
  int64_t step, first_step = loom_loop_steps_done(loop);
  while (loom_loop_next(loop, &step)) {
    int epoch = (int)(step / steps_per_epoch), in_epoch = (int)(step % steps_per_epoch);
    if (in_epoch == 0 || step == first_step) shuffle(order, train.count, config.seed, epoch);
    const int *batch = order + (size_t)in_epoch * o.batch + (size_t)loom_mesh_my_coords(mesh).dp * local_rows;
    double step_loss = 0;
    TRY(mlp_model_zero_grad(model));
    TRY(loom_ddp_begin(ddp, 1));
    /* Chunks of o.chunk rows: the same BLAS shapes whatever the rank count; the last chunk's
     * backward hands each layer to DDP. */
    for (int begin = 0; begin < local_rows; begin += o.chunk) {
      int rows = local_rows - begin < o.chunk ? local_rows - begin : o.chunk;
      for (int i = 0; i < rows; i++) {
        fashion_mnist_normalize(&train, batch[begin + i], inputs + (size_t)i * 784);
        labels[i] = train.labels[batch[begin + i]];
      }
      TRY(mlp_model_train_chunk(model, inputs, labels, rows, 1.0 / o.batch,
                                begin + rows >= local_rows ? ddp : NULL, &step_loss));
    }
    TRY(loom_ddp_finish(ddp));
    if (o.clip > 0) TRY(loom_clip_params(params, loom_ctx_stream(ctx), o.clip, NULL));
    TRY(loom_loop_before_update(loop));
    TRY(loom_optim_step(optim, loom_schedule_lr(&schedule, step)));
    TRY(loom_loop_end_step(loop, step_loss * shape.dp / o.batch));
    loss_sum += step_loss, epoch_steps++;
    int epoch_done = in_epoch == steps_per_epoch - 1;
    if (!epoch_done && !loom_loop_stopped(loop)) continue;
    double sums[2] = {loss_sum, 0}; /* the epoch's mean training loss and test accuracy */
    TRY(evaluate(model, &test, grad_group, inputs, labels, sums));
    double seconds = loom_now() - epoch_start;
    train_loss = sums[0] / ((double)epoch_steps * o.batch);
    accuracy = sums[1] / test.count;
    if (rank == 0)
      printf("epoch %d/%d  train loss %.6f  test accuracy %.4f  %.0f samples/s  %.1f s\n",
             epoch + 1, o.epochs, train_loss, accuracy, (double)epoch_steps * o.batch / seconds,
             loom_now() - start);
    fflush(stdout);
    char fields[256];
    snprintf(fields, sizeof fields, "\"epoch\": %d, \"train_loss\": %.9g, \"test_accuracy\": "
             "%.6f, \"samples_per_s\": %.1f", epoch + 1, train_loss, accuracy,
             (double)epoch_steps * o.batch / seconds);
    TRY(loom_loop_metrics(loop, fields));
    loss_sum = 0, epoch_steps = 0, epoch_start = loom_now();
  }
  TRY(loom_loop_finish(loop, &exit_code));
  if (rank == 0) printf("final train_loss=%.10g test_accuracy=%.6f\n", train_loss, accuracy);
  if (o.dump_params && rank == 0) {
    FILE *f = fopen(o.dump_params, "wb");
    if (!f) TRY(loom_error_set(LOOM_ERR_IO, "cannot write --dump-params %s", o.dump_params));
    loom_status dumped = mlp_model_dump(model, f);
    if (fclose(f) != 0 && dumped == LOOM_OK)
      dumped = loom_error_set(LOOM_ERR_IO, "closing --dump-params %s failed", o.dump_params);
    TRY(dumped);
  }
done:
  free(inputs), free(labels), free(order);
  fashion_mnist_free(&train), fashion_mnist_free(&test);
  loom_loop_destroy(loop);
  loom_state_destroy(registry);
  loom_optim_destroy(optim);
  loom_ddp_destroy(ddp);
  loom_params_destroy(params);
  mlp_model_destroy(model);
  loom_mesh_destroy(mesh);
  if (code != 0 && loom_ctx_size(ctx) > 1) MPI_Abort(MPI_COMM_WORLD, code);
  loom_finalize(ctx);
  return code ? code : exit_code;
}
