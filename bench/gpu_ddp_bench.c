/* GPU data-parallel benchmark (and the checkpoint benchmark's GPU model): the wide MLP of
 * wide_mlp.h trained with loom_ddp and a fused AdamW on float32 masters, one GPU per rank.
 * For each mode it prints the mean step time over --steps steps after --warmup steps, the
 * slowest rank's. Modes: "overlap" (buckets reduced during backward), "after" (all buckets
 * reduced after backward), "nocomm" (no reduction: the compute alone). Checkpoints
 * (--ckpt sync|async --ckpt-every K) are taken in the timed steps; the table then also gives
 * the average stall per save against a run without checkpoints in the same process.
 *
 *   mpirun -np 4 loom-gpu-ddp-bench --dtype bf16 --modes overlap,after
 *   mpirun -np 4 loom-gpu-ddp-bench --dtype bf16 --modes overlap --ckpt async --ckpt-every 100 \
 *       --steps 300 --ckpt-dir /tmp/ck */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wide_mlp.h"

#define TRY(call)                                                                          \
  do {                                                                                     \
    if ((call) != LOOM_OK) {                                                               \
      fprintf(stderr, "loom-gpu-ddp-bench: %s\n", loom_error_string());                    \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                        \
    }                                                                                      \
  } while (0)

enum { CKPT_NONE, CKPT_SYNC, CKPT_ASYNC };

typedef struct {
  wide_mlp *model;
  loom_ddp *ddp;
  int *index; /* (layers, 1 + grad_chunks): DDP index of the bias, then of each weight block */
} hook_ctx;

static loom_status grad_ready(int layer, int chunk, void *user) {
  hook_ctx *h = user;
  if (!h->ddp) return LOOM_OK;
  return loom_ddp_grad_ready(h->ddp, h->index[layer * (1 + h->model->grad_chunks) + chunk + 1]);
}

/* --profile: events on the compute stream split a step into forward, backward (its kernels, with
 * the overlapped reductions running beside them), the wait for the last reductions (the compute
 * stream is ordered after every bucket before the optimizer) and the optimizer. Summed over
 * the timed steps; each profiled step waits for its last event. */
enum { PHASES = 4 };
static const char *const phase_names[PHASES] = {"forward", "backward", "comm_wait", "optimizer"};
typedef struct {
  cudaEvent_t events[PHASES + 1];
  double ms[PHASES];
  int steps;
} profile;

static void mark(profile *p, int i, wide_mlp *m) {
  if (p) cudaEventRecord(p->events[i], (cudaStream_t)m->stream);
}

/* One training step. A background checkpoint or snapshot still copying the state is fenced
 * just before the optimizer overwrites it, so its device-side copy overlaps forward and
 * backward. */
static loom_status step(wide_mlp *m, loom_ddp *ddp, hook_ctx *h, loom_optim *optim, profile *p,
                        loom_ckpt *ckpt, loom_snapshot *snapshot) {
  if (ddp) LOOM_CHECK(loom_ddp_begin(ddp, 1));
  h->ddp = ddp;
  mark(p, 0, m);
  LOOM_CHECK(wide_mlp_forward(m));
  mark(p, 1, m);
  LOOM_CHECK(wide_mlp_backward(m, grad_ready, h));
  mark(p, 2, m);
  if (ddp) LOOM_CHECK(loom_ddp_finish(ddp));
  mark(p, 3, m);
  if (ckpt) LOOM_CHECK(loom_ckpt_fence(ckpt));
  if (snapshot) LOOM_CHECK(loom_snapshot_fence(snapshot));
  LOOM_CHECK(loom_optim_step(optim, 1e-4));
  mark(p, 4, m);
  if (p) {
    cudaEventSynchronize(p->events[PHASES]);
    for (int i = 0; i < PHASES; i++) {
      float ms = 0;
      cudaEventElapsedTime(&ms, p->events[i], p->events[i + 1]);
      p->ms[i] += ms;
    }
    p->steps++;
  }
  return LOOM_OK;
}

int main(int argc, char **argv) {
  int dtype_choice = 0, layers = 8, width = 4096, batch = 8192, steps = 20, warmup = 5;
  int ckpt_mode = CKPT_NONE, ckpt_every = 100, busy_wait = 0, grad_chunks = 1, snapshot_every = 0;
  int profiling = 0, snapshot_async = 0, snapshot_parity = 1, host_sync = 0;
  const char *modes = "overlap,after", *ckpt_dir = "/tmp/loom-gpu-ddp-ckpt";
  uint64_t bucket_bytes = 25u << 20;
  const loom_option options[] = {
      {"dtype", LOOM_OPTION_CHOICE, &dtype_choice, "compute dtype (bf16: float32 masters)", "bf16|fp32"},
      {"layers", LOOM_OPTION_INT, &layers, "Linear + ReLU layers", NULL, 1, 64},
      {"width", LOOM_OPTION_INT, &width, "features per layer", NULL, 1, 65536},
      {"batch", LOOM_OPTION_INT, &batch, "rows per GPU", NULL, 1, 1 << 20},
      {"steps", LOOM_OPTION_INT, &steps, "timed steps per mode", NULL, 1, 1000000},
      {"warmup", LOOM_OPTION_INT, &warmup, "untimed steps before each mode", NULL, 0, 1000},
      {"modes", LOOM_OPTION_STRING, &modes, "comma-separated: overlap, after, nocomm"},
      {"bucket-bytes", LOOM_OPTION_UINT64, &bucket_bytes, "DDP bucket size"},
      {"grad-chunks", LOOM_OPTION_INT, &grad_chunks, "row blocks per weight gradient, each its own "
       "DDP gradient (a block larger than --bucket-bytes is reduced in place)", NULL, 1, 64},
      {"ckpt", LOOM_OPTION_CHOICE, &ckpt_mode, "checkpoints in the timed steps", "none|sync|async"},
      {"ckpt-every", LOOM_OPTION_INT, &ckpt_every, "steps between checkpoints", NULL, 1, 1 << 30},
      {"ckpt-dir", LOOM_OPTION_STRING, &ckpt_dir, "checkpoint root"},
      {"ckpt-busy-wait", LOOM_OPTION_BOOL, &busy_wait, "async: wait for a save in flight instead of skipping"},
      {"profile", LOOM_OPTION_BOOL, &profiling, "time forward, backward, the wait for the last "
       "reductions and the optimizer with CUDA events (one host wait a step)"},
      {"host-sync", LOOM_OPTION_BOOL, &host_sync, "wait for the GPU at the end of every step, as a "
       "loop that reads its loss does (otherwise the host runs steps ahead of the GPU)"},
      {"snapshot-async", LOOM_OPTION_BOOL, &snapshot_async, "asynchronous snapshots "
       "(loom_snapshot_take_async: requests while one is in flight are skipped)"},
      {"snapshot-every", LOOM_OPTION_INT, &snapshot_every, "in-memory snapshot every this many timed "
       "steps; 0 = none", NULL, 0, 1 << 30},
      {"snapshot-parity", LOOM_OPTION_INT, &snapshot_parity, "snapshot parity fragments per erasure "
       "group (needs several nodes, or LOOM_RANKS_PER_NODE)", NULL, 0, 8},
  };
  int option_count = (int)(sizeof options / sizeof options[0]);
  loom_config config = LOOM_CONFIG_INIT;
  config.device = 2; /* cuda */
  if (loom_config_parse(&config, options, option_count, argc, argv) != LOOM_OK) {
    if (loom_launcher_rank() == 0) fprintf(stderr, "loom-gpu-ddp-bench: %s\n", loom_error_string());
    return 2;
  }
  if (config.help) {
    if (loom_launcher_rank() == 0)
      loom_config_usage(stdout, "loom-gpu-ddp-bench", &config, options, option_count);
    return 0;
  }
  loom_ctx *ctx = NULL;
  TRY(loom_init(&config, &argc, &argv, &ctx));
  int rank = loom_ctx_rank(ctx), size = loom_ctx_size(ctx);
  loom_mesh_shape shape;
  TRY(loom_mesh_shape_from_config(&config, size, &shape));
  loom_mesh *mesh = NULL;
  TRY(loom_mesh_create(ctx, &shape, &mesh));
  loom_dtype dtype = dtype_choice == 0 ? LOOM_BFLOAT16 : LOOM_FLOAT32;
  void *stream = loom_ctx_stream(ctx);
  wide_mlp model;
  TRY(wide_mlp_create(layers, width, batch, dtype, stream, 1234, rank, &model));
  model.grad_chunks = grad_chunks;

  loom_optim_params op = LOOM_OPTIM_PARAMS_INIT;
  op.stream = stream;
  op.weight_decay = 0.01;
  loom_optim *optim = NULL;
  TRY(loom_optim_create(&op, &optim));
  size_t wsize = (size_t)width * width;
  for (int l = 0; l < layers; l++) {
    char name[64];
    int copy = dtype == LOOM_BFLOAT16;
    snprintf(name, sizeof name, "layer%d.weight", l);
    TRY(loom_optim_add_mixed(optim, name, loom_buf_device(ctx, model.master_weight[l], wsize, LOOM_FLOAT32),
                             loom_buf_device(ctx, model.weight_grad[l], wsize, dtype),
                             copy ? loom_buf_device(ctx, model.weight[l], wsize, dtype) : (loom_buf){0}));
    snprintf(name, sizeof name, "layer%d.bias", l);
    TRY(loom_optim_add_mixed(optim, name, loom_buf_device(ctx, model.master_bias[l], width, LOOM_FLOAT32),
                             loom_buf_device(ctx, model.bias_grad[l], width, dtype),
                             copy ? loom_buf_device(ctx, model.bias[l], width, dtype) : (loom_buf){0}));
  }

  /* Checkpointed state: the float32 masters and the optimizer's state (about 12 bytes a
   * parameter: 1.6 GB for the default model), replicated over DP. */
  loom_state *registry = NULL;
  loom_ckpt *ckpt = NULL;
  loom_ckpt_params cp = LOOM_CKPT_PARAMS_INIT;
  cp.keep_last = 2;
  cp.busy = busy_wait ? LOOM_CKPT_BUSY_WAIT : LOOM_CKPT_BUSY_SKIP;
  loom_snapshot *snapshot = NULL;
  if (ckpt_mode != CKPT_NONE || snapshot_every > 0) {
    TRY(loom_state_create(mesh, &registry));
    for (int l = 0; l < layers; l++) {
      char name[64];
      loom_state_spec w = {.dtype = LOOM_FLOAT32, .ndims = 2, .shape = {width, width}};
      loom_state_spec b = {.dtype = LOOM_FLOAT32, .ndims = 1, .shape = {width}};
      snprintf(name, sizeof name, "layer%d.weight", l);
      TRY(loom_state_register(registry, name, &w, loom_buf_device(ctx, model.master_weight[l], wsize, LOOM_FLOAT32)));
      snprintf(name, sizeof name, "layer%d.bias", l);
      TRY(loom_state_register(registry, name, &b, loom_buf_device(ctx, model.master_bias[l], width, LOOM_FLOAT32)));
    }
    for (int i = 0; i < loom_optim_state_count(optim); i++) {
      const char *name;
      loom_buf buf;
      TRY(loom_optim_state_at(optim, i, &name, &buf));
      loom_state_spec spec = {.dtype = buf.dtype, .ndims = i == 0 ? 0 : 1, .shape = {(int64_t)buf.count}};
      TRY(loom_state_register(registry, name, &spec, buf));
    }
    if (ckpt_mode == CKPT_ASYNC) TRY(loom_ckpt_create(registry, ckpt_dir, &cp, &ckpt));
    loom_snapshot_params sp = {.parity = snapshot_parity};
    if (snapshot_every > 0) TRY(loom_snapshot_create(registry, &sp, &snapshot));
  }

  loom_ddp_params dp = LOOM_DDP_PARAMS_INIT;
  dp.bucket_bytes = bucket_bytes;
  int per_layer = 1 + grad_chunks;
  int *index = calloc((size_t)layers * (size_t)per_layer, sizeof(int));
  hook_ctx hook = {.model = &model, .index = index};
  if (rank == 0)
    printf("# loom wide MLP: %d x Linear(%d) + ReLU, batch %d per GPU, %s, %zu parameters, %d GPUs\n",
           layers, width, batch, dtype == LOOM_BFLOAT16 ? "bf16 + fp32 masters" : "fp32",
           wide_mlp_param_count(&model), size);
  char *list = strdup(modes);
  for (char *mode = strtok(list, ","); mode; mode = strtok(NULL, ",")) {
    int overlap = strcmp(mode, "overlap") == 0, nocomm = strcmp(mode, "nocomm") == 0;
    if (!overlap && !nocomm && strcmp(mode, "after") != 0) {
      if (rank == 0) fprintf(stderr, "loom-gpu-ddp-bench: unknown mode '%s' (overlap, after, nocomm)\n", mode);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
    loom_ddp *ddp = NULL;
    if (!nocomm) {
      dp.overlap = overlap;
      TRY(loom_ddp_create(loom_mesh_group(mesh, LOOM_AXIS_GRAD), &dp, &ddp));
      /* Registered in the reverse of the order backward produces them (DDP's bucket order):
       * layer 0 first, in each layer the last weight block first and the bias last. */
      size_t element = loom_dtype_size(dtype);
      for (int l = 0; l < layers; l++) {
        char name[96];
        for (int c = grad_chunks - 1; c >= 0; c--) {
          size_t r0 = (size_t)width * c / grad_chunks, r1 = (size_t)width * (c + 1) / grad_chunks;
          snprintf(name, sizeof name, "layer%d.weight[%zu:%zu]", l, r0, r1);
          loom_buf block = loom_buf_device(ctx, (char *)model.weight_grad[l] + r0 * width * element,
                                           (r1 - r0) * width, dtype);
          TRY(loom_ddp_register(ddp, name, block, &index[l * per_layer + c + 1]));
        }
        snprintf(name, sizeof name, "layer%d.bias", l);
        TRY(loom_ddp_register(ddp, name, loom_buf_device(ctx, model.bias_grad[l], width, dtype), &index[l * per_layer]));
      }
    }
    profile prof = {0};
    for (int i = 0; profiling && i <= PHASES; i++) cudaEventCreate(&prof.events[i]);
    for (int s = 0; s < warmup; s++) TRY(step(&model, ddp, &hook, optim, NULL, NULL, NULL));
    if (snapshot && snapshot_async) { /* setup (device copies, pinning the segment) untimed */
      TRY(loom_snapshot_take_async(snapshot, loom_optim_step_count(optim), NULL));
      TRY(loom_snapshot_wait(snapshot));
    }
    TRY(loom_device_synchronize(ctx));
    TRY(loom_barrier(loom_mesh_group(mesh, LOOM_AXIS_WORLD)));
    double start = loom_now(), save_host = 0;
    int saves = 0, skipped = 0;
    for (int s = 1; s <= steps; s++) {
      TRY(step(&model, ddp, &hook, optim, profiling ? &prof : NULL, ckpt,
               snapshot && snapshot_async ? snapshot : NULL));
      if (host_sync) TRY(loom_device_synchronize(ctx));
      if (snapshot && s % snapshot_every == 0) {
        double t0 = loom_now();
        /* requests the snapshot reaps itself; the skips are counted in its statistics */
        if (snapshot_async) TRY(loom_snapshot_take_async(snapshot, loom_optim_step_count(optim), NULL));
        else TRY(loom_snapshot_take(snapshot, loom_optim_step_count(optim)));
        save_host += loom_now() - t0;
        saves++;
      }
      if (ckpt_mode != CKPT_NONE && s % ckpt_every == 0) {
        double t0 = loom_now();
        if (ckpt_mode == CKPT_SYNC) {
          TRY(loom_ckpt_save_with(registry, ckpt_dir, loom_optim_step_count(optim), &cp));
          saves++;
        } else { /* the checkpointer reaps the request; skips are in its statistics */
          loom_ckpt_stats before;
          TRY(loom_ckpt_get_stats(ckpt, &before));
          TRY(loom_ckpt_save_async(ckpt, loom_optim_step_count(optim), NULL));
          loom_ckpt_stats after;
          TRY(loom_ckpt_get_stats(ckpt, &after));
          saves += after.saves_started - before.saves_started;
          skipped += after.saves_skipped - before.saves_skipped;
        }
        save_host += loom_now() - t0;
      }
    }
    TRY(loom_device_synchronize(ctx));
    double elapsed = loom_now() - start, slowest = 0;
    if (snapshot) TRY(loom_snapshot_wait(snapshot));
    TRY(loom_allreduce(loom_mesh_group(mesh, LOOM_AXIS_WORLD), loom_buf_host(&elapsed, 1, LOOM_FLOAT64),
                       loom_buf_host(&slowest, 1, LOOM_FLOAT64), LOOM_OP_MAX));
    if (ckpt) TRY(loom_ckpt_wait(ckpt));
    /* Background write rate of the whole job: all ranks' bytes over the slowest rank's time to
     * write and sync its file (data), and over the slowest full save (data, index, publish,
     * prune of old checkpoints). */
    loom_ckpt_stats st = {0};
    if (ckpt) TRY(loom_ckpt_get_stats(ckpt, &st));
    double mine[3] = {st.total_bytes, -st.total_data_seconds, -st.total_write_seconds}, sums[3],
           extremes[3];
    TRY(loom_allreduce(loom_mesh_group(mesh, LOOM_AXIS_WORLD), loom_buf_host(mine, 3, LOOM_FLOAT64),
                       loom_buf_host(sums, 3, LOOM_FLOAT64), LOOM_OP_SUM));
    TRY(loom_allreduce(loom_mesh_group(mesh, LOOM_AXIS_WORLD), loom_buf_host(mine, 3, LOOM_FLOAT64),
                       loom_buf_host(extremes, 3, LOOM_FLOAT64), LOOM_OP_MIN));
    if (rank == 0) {
      printf("loom gpus=%d dtype=%s batch=%d host_sync=%d mode=%-7s chunks=%d bucket_MiB=%g ckpt=%s "
             "every=%d step_ms=%.3f", size, dtype == LOOM_BFLOAT16 ? "bf16" : "fp32", batch, host_sync,
             mode, grad_chunks,
             (double)bucket_bytes / (1 << 20),
             ckpt_mode == CKPT_NONE ? "none" : ckpt_mode == CKPT_SYNC ? "sync" : "async", ckpt_every,
             1e3 * slowest / steps);
      if (snapshot) {
        /* published counts the untimed first one; the times are averages over published ones */
        loom_snapshot_stats ss = loom_snapshot_get_stats(snapshot);
        printf(" snapshot_every=%d async=%d snapshots=%d skipped=%d host_ms_per_request=%.2f "
               "share_MB=%.1f", snapshot_every, snapshot_async, saves - ss.skipped, ss.skipped,
               1e3 * save_host / (steps / snapshot_every),
               (double)loom_snapshot_share_bytes(snapshot) / 1e6);
        if (ss.published)
          printf(" copy_ms=%.1f publish_ms=%.1f", 1e3 * ss.copy_seconds / ss.published,
                 1e3 * ss.publish_seconds / ss.published);
      }
      if (ckpt_mode != CKPT_NONE) {
        printf(" saves=%d skipped=%d host_ms_per_save=%.1f policy=%s", saves, skipped,
               saves ? 1e3 * save_host / saves : 0.0, busy_wait ? "wait" : "skip");
        if (ckpt && -extremes[1] > 0)
          printf(" data_GBps=%.3f save_GBps=%.3f save_ms=%.0f bytes_per_save=%.0f",
                 sums[0] / -extremes[1] / 1e9, sums[0] / -extremes[2] / 1e9,
                 saves ? 1e3 * -extremes[2] / saves : 0.0, saves ? sums[0] / saves : 0.0);
      }
      printf("\n");
      if (profiling && prof.steps) {
        printf("  profile (rank 0, ms per step):");
        for (int i = 0; i < PHASES; i++) printf(" %s=%.3f", phase_names[i], prof.ms[i] / prof.steps);
        printf("\n");
      }
      fflush(stdout);
    }
    for (int i = 0; profiling && i <= PHASES; i++) cudaEventDestroy(prof.events[i]);
    loom_ddp_destroy(ddp);
  }
  free(list);
  free(index);
  loom_ckpt_destroy(ckpt);
  loom_snapshot_destroy(snapshot);
  loom_state_destroy(registry);
  loom_optim_destroy(optim);
  wide_mlp_destroy(&model);
  loom_mesh_destroy(mesh);
  loom_finalize(ctx);
  return 0;
}
