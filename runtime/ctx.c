/* loom_init / loom_finalize: MPI start-up, node layout (real or simulated with
 * LOOM_RANKS_PER_NODE), launcher detection, the world and node groups and the communication
 * thread. Invariant: a context that loom_init returned is complete; on failure nothing leaks
 * and MPI is left as it was found where possible. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/group_impl.h"
#include "runtime/log.h"
#include "runtime/watchdog.h"

static const char *detect_launcher(void) {
  if (getenv("OMPI_COMM_WORLD_SIZE")) return getenv("SLURM_JOB_ID") ? "mpirun (Open MPI) in Slurm job" : "mpirun (Open MPI)";
  if (getenv("SLURM_STEP_ID") && getenv("SLURM_PROCID")) return "srun (Slurm)";
  if (getenv("PMIX_RANK") || getenv("PMI_RANK")) return "PMI";
  return "singleton";
}

static const char *thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
    default: return "unknown";
  }
}

static loom_status check_config(const loom_config *c) {
  if (c->log_level < LOOM_LOG_ERROR || c->log_level > LOOM_LOG_DEBUG)
    return loom_error_set(LOOM_ERR_ARG, "config log_level=%d; accepted 0..3 (error..debug)",
                          c->log_level);
  if (c->ranks_per_node < 0)
    return loom_error_set(LOOM_ERR_ARG, "config ranks_per_node=%d; must be >= 0 (0 = detect)",
                          c->ranks_per_node);
  if (c->collective_algo < LOOM_ALGO_AUTO || c->collective_algo > LOOM_ALGO_HIER)
    return loom_error_set(LOOM_ERR_ARG, "config collective_algo=%d; accepted auto|flat|hier",
                          c->collective_algo);
  if (!(c->timeout_seconds > 0))
    return loom_error_set(LOOM_ERR_ARG, "config timeout_seconds=%g; must be > 0",
                          c->timeout_seconds);
  return LOOM_OK;
}

/* Sets local rank/size, node and node count, from shared memory or LOOM_RANKS_PER_NODE. */
static loom_status detect_nodes(loom_ctx *ctx, MPI_Comm world) {
  /* The real host layout, always: GPUs are chosen by it. */
  MPI_Comm shared;
  LOOM_MPI_CHECK(ctx, MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, ctx->rank, MPI_INFO_NULL,
                                          &shared));
  MPI_Comm_rank(shared, &ctx->host_local_rank);
  MPI_Comm_size(shared, &ctx->host_local_size);
  /* Node index = number of host leaders (local rank 0) with a lower world rank; the leader
   * tells the rest of its host. */
  int leader = ctx->host_local_rank == 0, leaders_below = 0, hosts = 0;
  int rc = MPI_Exscan(&leader, &leaders_below, 1, MPI_INT, MPI_SUM, world);
  if (ctx->rank == 0) leaders_below = 0; /* MPI_Exscan leaves rank 0's output undefined */
  if (rc == MPI_SUCCESS) rc = MPI_Allreduce(&leader, &hosts, 1, MPI_INT, MPI_SUM, world);
  if (rc == MPI_SUCCESS) rc = MPI_Bcast(&leaders_below, 1, MPI_INT, 0, shared);
  MPI_Comm_free(&shared);
  if (rc != MPI_SUCCESS) return loom_mpi_error(ctx, rc, "node detection (MPI_Exscan/Bcast)");
  int per_node = ctx->config.ranks_per_node;
  if (per_node > 0) { /* simulated nodes of per_node consecutive ranks */
    ctx->node = ctx->rank / per_node;
    ctx->local_rank = ctx->rank % per_node;
    ctx->node_count = (ctx->size + per_node - 1) / per_node;
    int last = ctx->size - (ctx->node_count - 1) * per_node;
    ctx->local_size = ctx->node == ctx->node_count - 1 ? last : per_node;
  } else {
    ctx->node = leaders_below;
    ctx->node_count = hosts;
    ctx->local_rank = ctx->host_local_rank;
    ctx->local_size = ctx->host_local_size;
  }
  return LOOM_OK;
}

/* MPI user function: modular (wrapping) uint8 addition, element-wise. */
static void uint8_wrapping_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
  const uint8_t *a = in;
  uint8_t *b = inout;
  for (int i = 0; i < *len; i++) b[i] = (uint8_t)(a[i] + b[i]);
}

/* ctx->job_id: the configured name, else SLURM_JOB_ID, else "j<seconds>-<pid>" made by rank 0
 * and broadcast; exported as LOOM_JOB_ID so that restarted children find the same segments.
 * Only [A-Za-z0-9._-] are kept (it becomes part of a file name). */
static loom_status resolve_job_id(loom_ctx *ctx) {
  char id[64] = "";
  const char *given = ctx->config.job_id ? ctx->config.job_id : getenv("SLURM_JOB_ID");
  if (given && *given) {
    snprintf(id, sizeof id, "%s", given);
  } else {
    if (ctx->rank == 0) snprintf(id, sizeof id, "j%ld-%d", (long)time(NULL), (int)getpid());
    LOOM_MPI_CHECK(ctx, MPI_Bcast(id, sizeof id, MPI_CHAR, 0, ctx->world->comm));
  }
  size_t n = 0;
  for (const char *p = id; *p && n + 1 < sizeof ctx->job_id; p++)
    if (isalnum((unsigned char)*p) || *p == '.' || *p == '_' || *p == '-') ctx->job_id[n++] = *p;
  ctx->job_id[n] = '\0';
  if (n == 0)
    return loom_error_set(LOOM_ERR_ARG, "job id '%s' has no usable character ([A-Za-z0-9._-])", id);
  setenv("LOOM_JOB_ID", ctx->job_id, 0);
  return LOOM_OK;
}

loom_status loom_init(const loom_config *config, int *argc, char ***argv, loom_ctx **out) {
  if (!out) return loom_error_set(LOOM_ERR_ARG, "loom_init: out is NULL");
  *out = NULL;
  loom_config defaults = LOOM_CONFIG_INIT;
  if (!config) config = &defaults;
  LOOM_CHECK(check_config(config));

  loom_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return loom_error_set(LOOM_ERR_NOMEM, "allocating the loom context");
  ctx->config = *config;
  ctx->start_seconds = loom_now();
  ctx->launcher = detect_launcher();
  pthread_mutex_init(&ctx->lanes_lock, NULL);
  loom_status status = LOOM_OK;

  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &ctx->thread_level);
    if (rc != MPI_SUCCESS) {
      free(ctx);
      return loom_error_set(LOOM_ERR_MPI, "MPI_Init_thread failed (code %d); is the program "
                            "started by mpirun/srun or a working singleton MPI?", rc);
    }
    ctx->owns_mpi = 1;
  } else {
    MPI_Query_thread(&ctx->thread_level);
  }
  ctx->threaded = ctx->thread_level == MPI_THREAD_MULTIPLE;
  MPI_Comm world;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &world);
  if (rc != MPI_SUCCESS) {
    status = loom_mpi_error(ctx, rc, "MPI_Comm_dup(MPI_COMM_WORLD)");
    goto fail;
  }
  MPI_Comm_set_errhandler(world, MPI_ERRORS_RETURN);
  MPI_Comm_rank(world, &ctx->rank);
  MPI_Comm_size(world, &ctx->size);
  status = detect_nodes(ctx, world);
  if (status < 0) {
    MPI_Comm_free(&world);
    goto fail;
  }
  LOOM_CHECK_GOTO(loom_group_from_comm(ctx, world, "WORLD", 0, &ctx->world), status, fail);
  MPI_Comm node_comm;
  rc = MPI_Comm_split(ctx->world->comm, ctx->node, ctx->rank, &node_comm);
  if (rc != MPI_SUCCESS) {
    status = loom_mpi_error(ctx, rc, "MPI_Comm_split (node group)");
    goto fail;
  }
  LOOM_CHECK_GOTO(loom_group_from_comm(ctx, node_comm, "NODE", 0, &ctx->node_group), status,
                  fail);
  rc = MPI_Op_create(uint8_wrapping_sum, 1, &ctx->uint8_sum);
  if (rc != MPI_SUCCESS) {
    status = loom_mpi_error(ctx, rc, "MPI_Op_create (uint8 sum)");
    goto fail;
  }
  LOOM_CHECK_GOTO(loom_device_select(ctx), status, fail);
  LOOM_CHECK_GOTO(resolve_job_id(ctx), status, fail);
  LOOM_CHECK_GOTO(loom_watchdog_start(ctx), status, fail);
  int threaded = ctx->threaded;

  loom_log(ctx, LOOM_LOG_INFO, "loom %s: rank %d of %d, node %d of %d (local rank %d of %d%s), "
           "launcher %s, %s granted, device %s %d", "0.1.0", ctx->rank, ctx->size, ctx->node, ctx->node_count,
           ctx->local_rank, ctx->local_size, config->ranks_per_node ? ", simulated" : "",
           ctx->launcher, thread_level_name(ctx->thread_level),
           ctx->device.kind == LOOM_DEVICE_CUDA ? "cuda" : "cpu", ctx->device.ordinal);
  if (!threaded && ctx->rank == 0)
    loom_log(ctx, LOOM_LOG_WARN, "MPI granted %s, not MPI_THREAD_MULTIPLE: non-blocking "
             "collectives run at post time (no overlap)", thread_level_name(ctx->thread_level));
  *out = ctx;
  return LOOM_OK;
fail:
  loom_watchdog_stop(ctx);
  if (ctx->uint8_sum != MPI_OP_NULL && ctx->uint8_sum != 0) MPI_Op_free(&ctx->uint8_sum);
  loom_group_free(ctx->node_group);
  loom_group_free(ctx->world);
  loom_device_release(ctx);
  if (ctx->owns_mpi) MPI_Finalize();
  pthread_mutex_destroy(&ctx->lanes_lock);
  free(ctx);
  return status;
}

loom_status loom_finalize(loom_ctx *ctx) {
  if (!ctx) return LOOM_OK;
  /* The groups first: their lanes run what is still queued, under the watchdog. */
  loom_group_free(ctx->node_group);
  loom_group_free(ctx->world);
  loom_watchdog_stop(ctx);
  MPI_Op_free(&ctx->uint8_sum);
  loom_device_release(ctx); /* after the groups: their NCCL communicators use the GPU */
  int owns = ctx->owns_mpi;
  pthread_mutex_destroy(&ctx->lanes_lock);
  free(ctx);
  if (owns) {
    int rc = MPI_Finalize();
    if (rc != MPI_SUCCESS) return loom_error_set(LOOM_ERR_MPI, "MPI_Finalize failed (code %d)", rc);
  }
  return LOOM_OK;
}

int loom_ctx_rank(const loom_ctx *ctx) { return ctx->rank; }
int loom_ctx_size(const loom_ctx *ctx) { return ctx->size; }
int loom_ctx_local_rank(const loom_ctx *ctx) { return ctx->local_rank; }
int loom_ctx_local_size(const loom_ctx *ctx) { return ctx->local_size; }
int loom_ctx_node(const loom_ctx *ctx) { return ctx->node; }
int loom_ctx_node_count(const loom_ctx *ctx) { return ctx->node_count; }
int loom_ctx_thread_level(const loom_ctx *ctx) { return ctx->thread_level; }
const char *loom_ctx_launcher(const loom_ctx *ctx) { return ctx->launcher; }
const char *loom_ctx_job_id(const loom_ctx *ctx) { return ctx->job_id; }
const loom_config *loom_ctx_config(const loom_ctx *ctx) { return &ctx->config; }
loom_group *loom_ctx_world(loom_ctx *ctx) { return ctx->world; }
