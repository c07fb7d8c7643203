/* GPT-2 language model with data and pipeline parallelism: byte-level on Debian's fortunes by
 * default, or GPT-2 BPE tokens from llm.c shards.
 *
 *   mpirun -np 4 ./train_gpt [--layers 4 --width 128 --heads 4 --context 128 --batch 16 ...]
 *   mpirun -np 4 ./train_gpt --pp 2 --schedule zbh1 --microbatches 4    # pp 2 x dp 2 (CPU)
 *   ./train_gpt --train-shard train.bin --val-shard val.bin --vocab 50257 ...
 *   ./train_gpt --ckpt-dir ck --resume 1 --sample-only 1 --sample 400
 *
 * The global batch (--batch sequences) is the same whatever the rank count: rank r of the
 * data-parallel group takes sequences [r B/dp, (r+1) B/dp) of each step's batch, in
 * micro-batches of --chunk sequences; AdamW with weight decay on the matrices only, warm-up
 * then cosine, global-norm clipping; checkpoints, resume and snapshots through the loop.
 * With --pp P > 1 the blocks are split over P pipeline ranks (x --chunks stages each, see
 * gpt_stages.h) and each data-parallel replica's micro-batches run through --schedule; the
 * losses and parameters equal the --pp 1 run's bit for bit (with --clip 0; with clipping the
 * norm's sum is associated differently, within rounding). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas_kernels.h"
#include "gpt_data.h"
#include "gpt_model.h"
#include "gpt_stages.h"
#include "gpt_sequence.h"
#include "parallel/pipeline/executor.h"

typedef struct {
  const char *data_dir, *train_shard, *val_shard, *metrics_path, *prompt, *attention, *schedule,
      *sp_mode, *sp_split;
  loom_keeper_params keep;
  gpt_shape shape;
  int batch, chunk, microbatches, chunks, steps, warmup_steps, eval_every, eval_batches,
      progress_every, stop_at_step, sp_ring;
  int sample, top_k, sample_only;
  double lr, weight_decay, clip, temperature, peak_tflops;
} options;

/* Model FLOPs of training on one token (forward and backward, as in the PaLM paper's MFU):
 * 6 per parameter in a matrix product (the tied output projection included, the position
 * embedding not) plus 12 L d T for the attention scores and their use. */
static double gpt_flops_per_token(const gpt_shape *s, int T) {
  double d = s->width, L = s->layers;
  double matrices = L * 12.0 * d * d + (double)s->vocab * d;
  return 6.0 * matrices + 12.0 * L * d * T;
}

#define TRY(call)                                                                          \
  do {                                                                                     \
    if ((call) != LOOM_OK) {                                                               \
      fprintf(stderr, "train_gpt (rank %d): %s\n", rank, loom_error_string());             \
      code = 1;                                                                            \
      goto done;                                                                           \
    }                                                                                      \
  } while (0)

static int parse_options(options *o, loom_config *config, int argc, char **argv) {
  *o = (options){.data_dir = GPT_FORTUNES_DIR, .prompt = "\n", .attention = "flash", .schedule = "1f1b",
                 .sp_mode = "ulysses", .sp_split = "zigzag", .sp_ring = 2,
                 .keep = LOOM_KEEPER_PARAMS_INIT,
                 .shape = {.layers = 4, .width = 128, .heads = 4, .vocab = 256, .context = 128},
                 .batch = 16, .chunk = 4, .steps = 400, .warmup_steps = 40, .eval_every = 100,
                 .eval_batches = 8, .progress_every = 20, .top_k = 40, .lr = 3e-3,
                 .weight_decay = 0.1, .clip = 1.0, .temperature = 0.8, .peak_tflops = 989.4};
  const loom_option table[] = {
      {"data-dir", LOOM_OPTION_STRING, &o->data_dir, "fortunes directory (byte-level text)"},
      {"train-shard", LOOM_OPTION_STRING, &o->train_shard, "llm.c token shard to train on (instead of the fortunes)"},
      {"val-shard", LOOM_OPTION_STRING, &o->val_shard, "llm.c token shard to validate on"},
      {"layers", LOOM_OPTION_INT, &o->shape.layers, "transformer blocks", NULL, 1, 128},
      {"width", LOOM_OPTION_INT, &o->shape.width, "model width d", NULL, 1, 1 << 16},
      {"heads", LOOM_OPTION_INT, &o->shape.heads, "attention heads (divide the width)", NULL, 1, 1024},
      {"vocab", LOOM_OPTION_INT, &o->shape.vocab, "vocabulary (256 for bytes, 50257 for GPT-2 BPE)", NULL, 2, 65536},
      {"context", LOOM_OPTION_INT, &o->shape.context, "tokens per sequence", NULL, 1, 1 << 16},
      {"batch", LOOM_OPTION_INT, &o->batch, "global batch in sequences (divisible by dp)", NULL, 1, 1 << 20},
      {"chunk", LOOM_OPTION_INT, &o->chunk, "sequences per micro-batch (divides the per-rank batch)", NULL, 1, 1 << 20},
      {"microbatches", LOOM_OPTION_INT, &o->microbatches, "micro-batches per replica and step (sets --chunk to batch / dp / this); 0 = from --chunk", NULL, 0, 1 << 16},
      {"schedule", LOOM_OPTION_STRING, &o->schedule, "pipeline schedule with --pp > 1: gpipe, 1f1b, interleaved, zbh1, zbv"},
      {"sp-mode", LOOM_OPTION_STRING, &o->sp_mode, "sequence parallelism with --sp > 1: ulysses (all-to-all), ring (ring attention) or hybrid (Ulysses inside groups of sp / --sp-ring ranks, a ring across them)"},
      {"sp-ring", LOOM_OPTION_INT, &o->sp_ring, "hybrid: the ring degree (divides --sp)", NULL, 1, 1 << 16},
      {"sp-split", LOOM_OPTION_STRING, &o->sp_split, "ring and hybrid: zigzag (2 chunks per rank, causal work balanced) or contiguous"},
      {"chunks", LOOM_OPTION_INT, &o->chunks, "pipeline stages per rank (interleaved: >= 2, zbv: 2); 0 = the schedule's own", NULL, 0, 64},
      {"steps", LOOM_OPTION_INT, &o->steps, "optimizer steps", NULL, 1, 1 << 30},
      {"lr", LOOM_OPTION_DOUBLE, &o->lr, "peak learning rate", NULL, 0, 10},
      {"warmup-steps", LOOM_OPTION_INT, &o->warmup_steps, "linear warm-up steps", NULL, 0, 1 << 30},
      {"weight-decay", LOOM_OPTION_DOUBLE, &o->weight_decay, "AdamW weight decay of the matrices", NULL, 0, 1},
      {"clip", LOOM_OPTION_DOUBLE, &o->clip, "global gradient-norm clip; 0 = off", NULL, 0, 1e9},
      {"eval-every", LOOM_OPTION_INT, &o->eval_every, "validation loss every this many steps (and at the end); 0 = end only", NULL, 0, 1 << 30},
      {"eval-batches", LOOM_OPTION_INT, &o->eval_batches, "validation batches of --batch sequences; 0 = no validation", NULL, 0, 1 << 20},
      {"progress-every", LOOM_OPTION_INT, &o->progress_every, "progress line every this many steps", NULL, 0, 1 << 30},
      {"stop-at-step", LOOM_OPTION_INT, &o->stop_at_step, "stop (after saving) at this step", NULL, 0, 1 << 30},
      {"metrics", LOOM_OPTION_STRING, &o->metrics_path, "JSON-lines metrics file (rank 0)"},
      {"sample", LOOM_OPTION_INT, &o->sample, "print this many generated tokens at the end", NULL, 0, 1 << 20},
      {"sample-only", LOOM_OPTION_BOOL, &o->sample_only, "no training: sample from the resumed checkpoint"},
      {"prompt", LOOM_OPTION_STRING, &o->prompt, "text the sample continues (byte vocabulary)"},
      {"temperature", LOOM_OPTION_DOUBLE, &o->temperature, "sampling temperature", NULL, 1e-3, 100},
      {"top-k", LOOM_OPTION_INT, &o->top_k, "sample among the k most likely; 0 = all", NULL, 0, 1 << 20},
      {"attention", LOOM_OPTION_STRING, &o->attention, "GPU attention: flash (fused kernels) or batched (cuBLAS products, scores in memory)"},
      {"peak-tflops", LOOM_OPTION_DOUBLE, &o->peak_tflops, "GPU peak (dense bf16 TFLOP/s) for the MFU of the progress line; H100/H200 SXM: 989.4", NULL, 1, 1e6},
      {"ckpt-dir", LOOM_OPTION_STRING, &o->keep.ckpt_dir, "checkpoint root (HDF5)"},
      {"ckpt-every", LOOM_OPTION_INT, &o->keep.ckpt_every, "save every this many steps; 0 = at the end only", NULL, 0, 1 << 30},
      {"resume", LOOM_OPTION_BOOL, &o->keep.resume, "resume from the checkpoint root's latest, if any"},
      {"ckpt-async", LOOM_OPTION_BOOL, &o->keep.ckpt_async, "save in the background"},
      {"snapshot-every", LOOM_OPTION_INT, &o->keep.snapshot_every, "in-memory snapshot every this many steps", NULL, 0, 1 << 30},
  };
  int count = (int)(sizeof table / sizeof table[0]), rank = loom_launcher_rank();
  if (loom_config_parse(config, table, count, argc, argv) != LOOM_OK) {
    if (rank == 0) fprintf(stderr, "train_gpt: %s\n", loom_error_string());
    return 2;
  }
  if (config->help) {
    if (rank == 0) loom_config_usage(stdout, "train_gpt", config, table, count);
    return 0;
  }
  return -1;
}

/* Sequence parallelism: this rank's tokens and targets (B, T_local) at `positions` of each of
 * the B sequences (B, T). */
static void take_positions(const int *tokens, const int *targets, int B, int T, int T_local,
                           const int *positions, int *my_tokens, int *my_targets) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T_local; t++) {
      my_tokens[(size_t)b * T_local + t] = tokens[(size_t)b * T + positions[t]];
      my_targets[(size_t)b * T_local + t] = targets[(size_t)b * T + positions[t]];
    }
}

/* Mean validation loss over eval_batches batches of the validation data's first tiles
 * (gpt_data_tiles: batch b holds sequences [b B, (b + 1) B)), split over the data-parallel
 * group. */
static loom_status evaluate(gpt_model *model, const gpt_tokens *val, const options *o,
                            loom_group *group, int *tokens, int *targets,
                            double *loss) {
  int dp = loom_group_size(group), r = loom_group_rank(group), local = o->batch / dp;
  int T = o->shape.context;
  double sum = 0;
  if (o->eval_batches == 0) { /* no validation asked for */
    *loss = NAN;
    return LOOM_OK;
  }
  for (int b = 0; b < o->eval_batches; b++)
    for (int c = 0; c < local; c += o->chunk) {
      LOOM_CHECK(gpt_data_tiles(val, (int64_t)b * o->batch + r * local + c, o->chunk, T, tokens,
                                targets));
      LOOM_CHECK(gpt_model_eval_chunk(model, tokens, targets, &sum));
    }
  loom_buf one = loom_buf_host(&sum, 1, LOOM_FLOAT64);
  LOOM_CHECK(loom_allreduce(group, one, one, LOOM_OP_SUM));
  *loss = sum / ((double)o->eval_batches * o->batch * T);
  return LOOM_OK;
}

/* The pipeline's parameters, each from its stage, into the model that evaluates and samples. */
static loom_status refresh_model(gpt_stages *stages, gpt_model *model) {
  LOOM_CHECK(gpt_stages_gather_params(stages));
  return gpt_model_set_params(model, gpt_stages_params(stages));
}

static loom_status print_sample(gpt_model *model, const options *o, uint64_t seed) {
  int len = (int)strlen(o->prompt);
  int *prompt = malloc(sizeof(int) * (size_t)(len ? len : 1)), *out = malloc(sizeof(int) * (size_t)(o->sample + 1));
  if (!prompt || !out) {
    free(prompt), free(out);
    return loom_error_set(LOOM_ERR_NOMEM, "sample buffers");
  }
  for (int i = 0; i < len; i++) prompt[i] = (unsigned char)o->prompt[i];
  if (!len) prompt[len++] = '\n';
  loom_status s = gpt_model_sample(model, prompt, len, o->sample, o->temperature, o->top_k, seed, out);
  if (s == LOOM_OK) {
    printf("sample (%d tokens, temperature %g, top-k %d):\n%s", o->sample, o->temperature, o->top_k, o->prompt);
    for (int i = 0; i < o->sample; i++)
      if (o->shape.vocab <= 256) putchar(out[i]);
      else printf("%d ", out[i]);
    printf("\n");
  }
  free(prompt), free(out);
  return s;
}

int main(int argc, char **argv) {
  example_blas_pick_kernels(argv);
  options o;
  loom_config config = LOOM_CONFIG_INIT;
  int rank = loom_launcher_rank(), code = 0, exit_code = 0;
  if ((code = parse_options(&o, &config, argc, argv)) >= 0) return code;
  code = 0;
  loom_ctx *ctx = NULL;
  loom_mesh *mesh = NULL;
  loom_params *params = NULL;
  loom_ddp *ddp = NULL;
  loom_optim *optim = NULL;
  loom_state *registry = NULL;
  loom_loop *loop = NULL;
  gpt_model *model = NULL, *eval_model = NULL; /* eval_model: whole sequences, with --sp > 1 */
  loom_group *sp_group = NULL;
  gpt_sequence *sequence = NULL; /* --sp > 1 */
  gpt_sp_params sp_params = {.ring = 1};
  gpt_attention across; /* the SP plug-in, kept by pointer by the stages */
  int *sp_positions = NULL;
  int *sp_tokens = NULL, *sp_targets = NULL;
  loom_pipeline_schedule *pipeline = NULL; /* --pp > 1 */
  gpt_stages *stages = NULL;
  loom_pipeline_executor *executor = NULL;
  loom_group *pp_group = NULL;
  gpt_tokens train = {0}, val = {0};
  int *tokens = NULL, *targets = NULL;
  if (loom_init(&config, &argc, &argv, &ctx) != LOOM_OK) {
    fprintf(stderr, "train_gpt: %s\n", loom_error_string());
    return 1;
  }
  rank = loom_ctx_rank(ctx);
  loom_mesh_shape shape;
  TRY(loom_mesh_shape_from_config(&config, loom_ctx_size(ctx), &shape));
  if (shape.sp > 1) {
    TRY(gpt_sp_mode_parse(o.sp_mode, &sp_params.mode));
    TRY(loom_sp_split_parse(o.sp_split, &sp_params.split));
    sp_params.ring = o.sp_ring;
    if (loom_ctx_device(ctx).kind == LOOM_DEVICE_CUDA)
      TRY(loom_error_set(LOOM_ERR_UNSUPPORTED, "train_gpt --sp > 1 runs on the CPU for now "
                         "(--device cpu)"));
    TRY(gpt_sequence_check(&sp_params, shape.sp, o.shape.heads, o.shape.context));
  }
  if (o.microbatches > 0) {
    if (o.batch % shape.dp || (o.batch / shape.dp) % o.microbatches)
      TRY(loom_error_set(LOOM_ERR_ARG, "--batch %d must split into dp=%d replicas of "
                         "--microbatches %d equal micro-batches", o.batch, shape.dp, o.microbatches));
    o.chunk = o.batch / shape.dp / o.microbatches;
  }
  if (o.batch % shape.dp || (o.batch / shape.dp) % o.chunk)
    TRY(loom_error_set(LOOM_ERR_ARG, "--batch %d must split into dp=%d equal parts of whole "
                       "--chunk %d micro-batches", o.batch, shape.dp, o.chunk));
  gpt_layout layout;
  TRY(gpt_layout_init(&o.shape, &layout));
  if (o.train_shard) {
    if (!o.val_shard) TRY(loom_error_set(LOOM_ERR_ARG, "--train-shard needs --val-shard"));
    TRY(gpt_data_shard(o.train_shard, o.shape.vocab, &train));
    TRY(gpt_data_shard(o.val_shard, o.shape.vocab, &val));
  } else {
    if (o.shape.vocab != 256)
      TRY(loom_error_set(LOOM_ERR_ARG, "the fortunes are bytes: --vocab must be 256 (got %d)", o.shape.vocab));
    TRY(gpt_data_fortunes(o.data_dir, &train, &val));
  }
  TRY(loom_mesh_create(ctx, &shape, &mesh));
  loom_group *grad_group = loom_mesh_group(mesh, LOOM_AXIS_GRAD);
  gpt_attention_kind attention = GPT_ATTENTION_FLASH;
  if (strcmp(o.attention, "batched") == 0) attention = GPT_ATTENTION_BATCHED;
  else if (strcmp(o.attention, "flash") != 0)
    TRY(loom_error_set(LOOM_ERR_ARG, "--attention %s: flash or batched", o.attention));
  int local = o.batch / shape.dp, T = o.shape.context, T_local = T / shape.sp;
  TRY(gpt_model_create(ctx, &layout, o.chunk, T_local, config.seed, attention, &model));
  loom_group *eval_group = grad_group;
  if (shape.sp > 1) { /* this rank's T / sp tokens of each sequence */
    sp_group = loom_mesh_group(mesh, LOOM_AXIS_SP);
    eval_group = loom_mesh_group(mesh, LOOM_AXIS_DP);
    if (!sp_group || !eval_group) TRY(LOOM_ERR_INTERNAL); /* loom_mesh_group set the message */
    TRY(gpt_sequence_create(ctx, sp_group, &sp_params, &sequence));
    across = gpt_sequence_attention(sequence);
    sp_positions = malloc(sizeof(int) * (size_t)T_local);
    if (!sp_positions) TRY(loom_error_set(LOOM_ERR_NOMEM, "sequence positions"));
    TRY(gpt_sequence_positions(sequence, T, sp_positions));
    TRY(gpt_model_split_sequence(model, sp_positions, &across));
    /* validation on whole sequences, by a copy of the (replicated) parameters */
    if (o.eval_batches > 0) TRY(gpt_model_create(ctx, &layout, o.chunk, T, config.seed, attention, &eval_model));
    sp_tokens = malloc(sizeof(int) * (size_t)o.chunk * T_local);
    sp_targets = malloc(sizeof(int) * (size_t)o.chunk * T_local);
    if (!sp_tokens || !sp_targets) TRY(loom_error_set(LOOM_ERR_NOMEM, "sequence buffers"));
  }
  if (shape.pp > 1) { /* the stages own the parameters; `model` evaluates and samples */
    if (loom_ctx_device(ctx).kind == LOOM_DEVICE_CUDA)
      TRY(loom_error_set(LOOM_ERR_UNSUPPORTED, "train_gpt --pp > 1 runs on the CPU for now "
                         "(--device cpu)"));
    loom_pipeline_kind kind;
    TRY(loom_pipeline_kind_parse(o.schedule, &kind));
    TRY(loom_pipeline_schedule_create(kind, shape.pp, local / o.chunk, o.chunks, &pipeline));
    pp_group = loom_mesh_group(mesh, LOOM_AXIS_PP);
    if (!pp_group) TRY(LOOM_ERR_INTERNAL); /* loom_mesh_group set the message */
    TRY(gpt_stages_create(pp_group, &layout, pipeline, o.chunk, T_local, config.seed,
                          sequence ? &across : NULL, sp_positions, &stages));
    loom_pipeline_executor_params ep = LOOM_PIPELINE_EXECUTOR_PARAMS_INIT;
    gpt_stages_executor_params(stages, &ep);
    TRY(loom_pipeline_executor_create(pp_group, &ep, &executor));
  }
  TRY(loom_params_create(mesh, &params));
  loom_param_group no_decay = {.name = "no_decay", .weight_decay = 0.0, .lr_scale = 1.0};
  int no_decay_group = 0;
  TRY(loom_params_add_group(params, &no_decay, &no_decay_group));
  if (stages) TRY(gpt_stages_add_params(stages, params, 0, no_decay_group));
  else TRY(gpt_model_add_params(model, params, 0, no_decay_group));
  loom_ddp_params ddp_params = {.bucket_bytes = 8u << 20, .overlap = 1, .op = LOOM_OP_SUM};
  TRY(loom_ddp_create(grad_group, &ddp_params, &ddp));
  TRY(loom_ddp_add_params(ddp, params, LOOM_AXIS_GRAD));
  loom_optim_params op = LOOM_OPTIM_PARAMS_INIT;
  op.beta2 = 0.95;
  op.weight_decay = o.weight_decay;
  op.stream = loom_ctx_stream(ctx);
  TRY(loom_optim_create(&op, &optim));
  TRY(loom_optim_add_params(optim, params));
  TRY(loom_state_create(mesh, &registry));
  TRY(loom_state_register_params(registry, params));
  TRY(loom_optim_register_state(optim, registry));
  /* the shape travels with the checkpoint: loom-ckpt export --gpt2 needs the head count */
  int32_t saved_shape[5] = {o.shape.layers, o.shape.width, o.shape.heads, o.shape.vocab, o.shape.context};
  loom_state_spec shape_spec = {.dtype = LOOM_INT32, .ndims = 1, .shape = {5}};
  TRY(loom_state_register(registry, "gpt.shape", &shape_spec, loom_buf_host(saved_shape, 5, LOOM_INT32)));
  loom_loop_params lp = {.total_steps = o.steps, .stop_at_step = o.stop_at_step,
                         .progress_every = o.progress_every,
                         .items_per_step = (double)o.batch * T, .items_name = "tokens",
                         .metrics_path = o.metrics_path,
                         .flops_per_step = (double)o.batch * T * gpt_flops_per_token(&o.shape, T),
                         .peak_flops = loom_ctx_device(ctx).kind == LOOM_DEVICE_CUDA ? o.peak_tflops * 1e12 : 0};
  loom_loop_keeper keeper;
  TRY(loom_keeper_create(registry, &o.keep, &keeper));
  TRY(loom_loop_create(ctx, registry, &lp, &keeper, &loop));
  TRY(gpt_model_weights_changed(model)); /* a resumed checkpoint replaced the masters */
  if (saved_shape[2] != o.shape.heads) /* other fields differ in tensor shapes: refused on load */
    TRY(loom_error_set(LOOM_ERR_ARG, "the checkpoint's model has %d heads, --heads says %d",
                       saved_shape[2], o.shape.heads));
  loom_schedule schedule = {.kind = LOOM_SCHEDULE_COSINE, .peak = o.lr, .floor = o.lr / 10,
                            .warmup_steps = o.warmup_steps, .total_steps = o.steps};
  if (schedule.total_steps <= schedule.warmup_steps) schedule.warmup_steps = schedule.total_steps / 10;
  TRY(loom_schedule_check(&schedule));
  tokens = malloc(sizeof(int) * (size_t)o.chunk * T);
  targets = malloc(sizeof(int) * (size_t)o.chunk * T);
  if (!tokens || !targets) TRY(loom_error_set(LOOM_ERR_NOMEM, "batch buffers"));
  if (rank == 0)
    printf("train_gpt: %d ranks (dp=%d pp=%d sp=%d), GPT L%d d%d H%d V%d context %d (%zu parameters), "
           "batch %d x %d tokens, %zu train / %zu validation tokens\n", loom_ctx_size(ctx),
           shape.dp, shape.pp, shape.sp, o.shape.layers, o.shape.width, o.shape.heads, o.shape.vocab, T,
           layout.total, o.batch, T, train.count, val.count);
  if (rank == 0 && stages)
    printf("pipeline: %s, %d micro-batches of %d sequences, %d stages (%d per rank), "
           "%.1f MB of activations in flight on rank 0 (%.2f micro-batches of its stages)\n",
           o.schedule, local / o.chunk, o.chunk, loom_pipeline_schedule_stages(pipeline),
           loom_pipeline_schedule_chunks(pipeline), gpt_stages_activation_bytes(stages) / 1e6,
           gpt_stages_microbatches_in_flight(stages));
  double val_loss = 0, step_loss = 0;
  int64_t steps_run = 0;
  int64_t step;
  while (!o.sample_only && loom_loop_next(loop, &step)) {
    step_loss = 0;
    double scale = 1.0 / ((double)o.batch * T);
    TRY(loom_ddp_begin(ddp, 1));
    if (stages) {
      TRY(gpt_stages_begin_step(stages, scale, ddp));
      for (int c = 0; c < local; c += o.chunk) {
        TRY(gpt_data_batch(&train, config.seed, step, loom_mesh_my_coords(mesh).dp * local + c,
                           o.chunk, T, tokens, targets));
        if (sp_group) take_positions(tokens, targets, o.chunk, T, T_local, sp_positions, sp_tokens, sp_targets);
        TRY(gpt_stages_set_microbatch(stages, c / o.chunk, sp_group ? sp_tokens : tokens,
                                      sp_group ? sp_targets : targets));
      }
      TRY(loom_pipeline_executor_step(executor));
      if (sequence) TRY(gpt_sequence_status(sequence));
      TRY(gpt_stages_end_step(stages, &step_loss));
    } else {
      TRY(gpt_model_zero_grad(model));
      for (int c = 0; c < local; c += o.chunk) {
        TRY(gpt_data_batch(&train, config.seed, step, loom_mesh_my_coords(mesh).dp * local + c,
                           o.chunk, T, tokens, targets));
        const int *my_tokens = tokens, *my_targets = targets;
        if (sp_group) {
          take_positions(tokens, targets, o.chunk, T, T_local, sp_positions, sp_tokens, sp_targets);
          my_tokens = sp_tokens, my_targets = sp_targets;
        }
        TRY(gpt_model_train_chunk(model, my_tokens, my_targets, scale, c + o.chunk >= local, ddp, &step_loss));
        if (sequence) TRY(gpt_sequence_status(sequence));
      }
    }
    TRY(loom_ddp_finish(ddp));
    steps_run++;
    loom_buf one = loom_buf_host(&step_loss, 1, LOOM_FLOAT64);
    TRY(loom_allreduce(grad_group, one, one, LOOM_OP_SUM));
    step_loss /= (double)o.batch * T;
    if (o.clip > 0) TRY(loom_clip_params(params, loom_ctx_stream(ctx), o.clip, NULL));
    TRY(loom_loop_before_update(loop));
    TRY(loom_optim_step(optim, loom_schedule_lr(&schedule, step)));
    TRY(loom_loop_end_step(loop, step_loss));
    int last = step + 1 == o.steps || loom_loop_stopped(loop);
    if (!last && (o.eval_every == 0 || (step + 1) % o.eval_every != 0)) continue;
    if (stages) TRY(refresh_model(stages, model));
    if (eval_model) TRY(gpt_model_set_params(eval_model, gpt_model_host_params(model)));
    TRY(evaluate(eval_model ? eval_model : model, &val, &o, eval_group, tokens, targets, &val_loss));
    if (rank == 0) printf("step %lld  train loss %.6f  validation loss %.6f\n", (long long)step + 1, step_loss, val_loss);
    char fields[128];
    snprintf(fields, sizeof fields, "\"train_loss\": %.9g, \"val_loss\": %.9g", step_loss, val_loss);
    TRY(loom_loop_metrics(loop, fields));
  }
  TRY(loom_loop_finish(loop, &exit_code));
  if (stages && (o.sample_only || o.sample > 0)) TRY(refresh_model(stages, model));
  if (eval_model) TRY(gpt_model_set_params(eval_model, gpt_model_host_params(model)));
  if (o.sample_only) TRY(evaluate(eval_model ? eval_model : model, &val, &o, eval_group, tokens, targets, &val_loss));
  if (rank == 0 && !stages && gpt_model_activation_bytes(model) > 0)
    printf("activations: %.1f MB per micro-batch on each rank\n", gpt_model_activation_bytes(model) / 1e6);
  if (sequence && rank == 0 && !o.sample_only) {
    gpt_sequence_traffic traffic;
    gpt_sequence_traffic_get(sequence, &traffic);
    double passes = (double)traffic.passes; /* layers of this rank x micro-batches x steps */
    double n_d = (double)o.chunk * T * o.shape.width;
    int r = traffic.ring_ranks, u = traffic.ulysses_ranks;
    if (passes > 0 && u > 1)
      printf("sequence: %.0f elements through the all-to-alls per layer and micro-batch forward, "
             "%.0f backward, on rank 0 (formula 4 N d / sp = %.0f)\n", traffic.alltoall_forward / passes,
             traffic.alltoall_backward / passes, 4.0 * n_d / shape.sp);
    if (passes > 0 && r > 1)
      printf("sequence: ring sent %.0f elements per layer and micro-batch (forward and backward; formula "
             "(3 r - 2) 2 N d / sp = %.0f), %.3f s computing, %.3f s waiting, %.0f query-key pairs on rank 0\n",
             traffic.ring.elements_sent / passes, (3 * r - 2) * 2 * n_d / shape.sp,
             traffic.ring.compute_seconds, traffic.ring.wait_seconds, traffic.ring.pairs);
  }
  if (rank == 0) printf("final train_loss=%.10g val_loss=%.10g\n", step_loss, val_loss);
  if (rank == 0 && loom_ctx_device(ctx).kind == LOOM_DEVICE_CUDA)
    printf("device memory: %.2f GiB in use beyond what the process held before the model\n",
           gpt_model_device_gib(model));
  if (o.sample > 0 && rank == 0) TRY(print_sample(model, &o, config.seed));
done:
  free(tokens), free(targets);
  gpt_tokens_free(&train), gpt_tokens_free(&val);
  loom_loop_destroy(loop);
  loom_state_destroy(registry);
  loom_optim_destroy(optim);
  loom_ddp_destroy(ddp);
  loom_params_destroy(params);
  loom_pipeline_executor_destroy(executor);
  gpt_stages_destroy(stages);
  loom_pipeline_schedule_destroy(pipeline);
  gpt_model_destroy(model);
  gpt_model_destroy(eval_model);
  gpt_sequence_destroy(sequence);
  free(sp_tokens), free(sp_targets), free(sp_positions);
  loom_mesh_destroy(mesh);
  if (code != 0 && loom_ctx_size(ctx) > 1) MPI_Abort(MPI_COMM_WORLD, code);
  loom_finalize(ctx);
  return code ? code : exit_code;
}
