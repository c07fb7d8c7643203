/* Groups: an MPI communicator plus its node layout and node-local / cross-node subgroups.
 * Node ordinals count nodes in order of their first member, so every member computes the same
 * layout from one allgather of (world rank, node). */
#include <stdio.h>
#include <stdlib.h>

#include "runtime/group_impl.h"
#include "runtime/log.h"

loom_status loom_mpi_error(const loom_ctx *ctx, int mpi_rc, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(mpi_rc, text, &len);
  return loom_error_set(LOOM_ERR_MPI, "%s failed on rank %d: %s", what, ctx ? ctx->rank : -1,
                        text);
}

/* Fills member_node, member_local, node_count and uniform from the members' node ids. */
static loom_status compute_layout(loom_group *g, const int *pairs /* (size, 2) */) {
  int *first_member_of_ordinal = malloc(sizeof(int) * (size_t)g->size);
  int *count_of_ordinal = calloc((size_t)g->size, sizeof(int));
  if (!first_member_of_ordinal || !count_of_ordinal) {
    free(first_member_of_ordinal);
    free(count_of_ordinal);
    return loom_error_set(LOOM_ERR_NOMEM, "group '%s' layout (%d members)", g->name, g->size);
  }
  g->node_count = 0;
  for (int r = 0; r < g->size; r++) {
    g->world_ranks[r] = pairs[2 * r];
    int node = pairs[2 * r + 1], ordinal = -1;
    for (int o = 0; o < g->node_count; o++)
      if (pairs[2 * first_member_of_ordinal[o] + 1] == node) ordinal = o;
    if (ordinal < 0) {
      ordinal = g->node_count++;
      first_member_of_ordinal[ordinal] = r;
    }
    g->member_node[r] = ordinal;
    g->member_local[r] = count_of_ordinal[ordinal]++;
  }
  g->uniform = 1;
  for (int o = 1; o < g->node_count; o++)
    if (count_of_ordinal[o] != count_of_ordinal[0]) g->uniform = 0;
  free(first_member_of_ordinal);
  free(count_of_ordinal);
  return LOOM_OK;
}

static loom_status split_subgroup(loom_group *g, int color, int key, const char *suffix,
                                  loom_group **out) {
  MPI_Comm comm;
  LOOM_MPI_CHECK(g->ctx, MPI_Comm_split(g->comm, color, key, &comm));
  char name[sizeof g->name];
  snprintf(name, sizeof name, "%s.%s", g->name, suffix);
  return loom_group_from_comm(g->ctx, comm, name, 1, out);
}

loom_status loom_group_from_comm(loom_ctx *ctx, MPI_Comm comm, const char *name,
                                 int is_subgroup, loom_group **out) {
  loom_status status = LOOM_OK;
  int *pairs = NULL;
  loom_group *g = calloc(1, sizeof *g);
  if (!g) {
    MPI_Comm_free(&comm);
    return loom_error_set(LOOM_ERR_NOMEM, "allocating group '%s'", name);
  }
  g->ctx = ctx;
  g->comm = comm;
  g->internal = MPI_COMM_NULL;
  g->parent_channel = MPI_COMM_NULL;
  g->is_subgroup = is_subgroup;
  g->algo = ctx->config.collective_algo;
  snprintf(g->name, sizeof g->name, "%s", name);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm, &g->rank);
  MPI_Comm_size(comm, &g->size);
  int rc = MPI_Comm_dup(comm, &g->internal);
  if (rc != MPI_SUCCESS) {
    status = loom_mpi_error(ctx, rc, "MPI_Comm_dup (group internal channel)");
    goto fail;
  }
  MPI_Comm_set_errhandler(g->internal, MPI_ERRORS_RETURN);
  if (is_subgroup) {
    rc = MPI_Comm_dup(comm, &g->parent_channel);
    if (rc != MPI_SUCCESS) {
      status = loom_mpi_error(ctx, rc, "MPI_Comm_dup (subgroup's channel for its parent)");
      goto fail;
    }
    MPI_Comm_set_errhandler(g->parent_channel, MPI_ERRORS_RETURN);
  }

  g->member_node = malloc(sizeof(int) * (size_t)g->size);
  g->member_local = malloc(sizeof(int) * (size_t)g->size);
  g->world_ranks = malloc(sizeof(int) * (size_t)g->size);
  pairs = malloc(sizeof(int) * 2 * (size_t)g->size);
  if (!g->member_node || !g->member_local || !g->world_ranks || !pairs) {
    status = loom_error_set(LOOM_ERR_NOMEM, "group '%s' member tables (%d members)", name,
                            g->size);
    goto fail;
  }
  int mine[2] = {ctx->rank, ctx->node};
  rc = MPI_Allgather(mine, 2, MPI_INT, pairs, 2, MPI_INT, comm);
  if (rc != MPI_SUCCESS) {
    status = loom_mpi_error(ctx, rc, "MPI_Allgather (group layout)");
    goto fail;
  }
  LOOM_CHECK_GOTO(compute_layout(g, pairs), status, fail);
  if (!is_subgroup) {
    LOOM_CHECK_GOTO(split_subgroup(g, g->member_node[g->rank], g->rank, "local", &g->node_local),
                    status, fail);
    LOOM_CHECK_GOTO(split_subgroup(g, g->member_local[g->rank], g->member_node[g->rank], "cross",
                                   &g->cross_node),
                    status, fail);
  }
  free(pairs);
  loom_log(ctx, LOOM_LOG_DEBUG, "group %s: rank %d of %d, %d node(s)%s", g->name, g->rank,
           g->size, g->node_count, g->uniform ? "" : " (uneven)");
  *out = g;
  return LOOM_OK;
fail:
  free(pairs);
  loom_group_free(g);
  return status;
}

loom_status loom_group_lane(loom_group *g, loom_executor **out) {
  loom_executor *lane = __atomic_load_n(&g->lane, __ATOMIC_ACQUIRE);
  if (lane) {
    *out = lane;
    return LOOM_OK;
  }
  loom_ctx *ctx = g->ctx;
  loom_status status = LOOM_OK;
  pthread_mutex_lock(&ctx->lanes_lock);
  if (!g->lane) {
    char name[16];
    snprintf(name, sizeof name, "loom-%s", g->name); /* thread names hold 15 characters */
    status = loom_executor_create(name, ctx->threaded, &lane);
    if (status == LOOM_OK) __atomic_store_n(&g->lane, lane, __ATOMIC_RELEASE);
  }
  lane = g->lane;
  pthread_mutex_unlock(&ctx->lanes_lock);
  *out = lane;
  return status;
}

void loom_group_free(loom_group *g) {
  if (!g) return;
  loom_executor_destroy(g->lane); /* runs what is queued; before the communicators go */
  if (g->staged && g->staged_free) g->staged_free(g);
  free(g->scratch);
  if (g->nccl && g->nccl_free) g->nccl_free(g);
  loom_group_free(g->node_local);
  loom_group_free(g->cross_node);
  if (g->internal != MPI_COMM_NULL) MPI_Comm_free(&g->internal);
  if (g->parent_channel != MPI_COMM_NULL) MPI_Comm_free(&g->parent_channel);
  if (g->comm != MPI_COMM_NULL) MPI_Comm_free(&g->comm);
  free(g->member_node);
  free(g->member_local);
  free(g->world_ranks);
  free(g);
}

loom_status loom_group_create(loom_ctx *ctx, loom_group *parent, int color, int key,
                              const char *name, loom_group **out) {
  if (!ctx || !out || !name)
    return loom_error_set(LOOM_ERR_ARG, "loom_group_create: ctx, name and out must be set");
  *out = NULL;
  if (!parent) parent = ctx->world;
  MPI_Comm comm;
  LOOM_MPI_CHECK(ctx, MPI_Comm_split(parent->comm, color < 0 ? MPI_UNDEFINED : color, key,
                                     &comm));
  if (comm == MPI_COMM_NULL) return LOOM_OK;
  return loom_group_from_comm(ctx, comm, name, 0, out);
}

loom_status loom_group_destroy(loom_group *group) {
  loom_group_free(group);
  return LOOM_OK;
}

/* MINLOC over (status if failed else 0, rank): the worst failure and where it happened. */
static loom_status agree(MPI_Comm comm, const char *group_name, loom_status status,
                         const char *what) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  struct {
    int value, rank;
  } mine = {status < 0 ? (int)status : 0, rank}, worst = {0, 0};
  int rc = MPI_Allreduce(&mine, &worst, 1, MPI_2INT, MPI_MINLOC, comm);
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return loom_error_set(LOOM_ERR_MPI, "%s: agreeing on the outcome over %s failed: %s",
                          what ? what : "loom_status_agree", group_name, text);
  }
  if (status < 0) return status; /* this rank's own message stands */
  if (worst.value >= 0) return status;
  return loom_error_set((loom_status)worst.value, "%s failed on rank %d of %s (its message there "
                        "names the cause)", what ? what : "an agreed operation", worst.rank,
                        group_name);
}

loom_status loom_group_set_stream(loom_group *g, void *stream) {
  if (!g) return loom_error_set(LOOM_ERR_ARG, "loom_group_set_stream: group is NULL");
  if (stream && g->ctx->device.kind != LOOM_DEVICE_CUDA)
    return loom_error_set(LOOM_ERR_UNSUPPORTED, "loom_group_set_stream on group %s: this rank "
                          "computes on the CPU", g->name);
  g->order_stream = stream;
  return LOOM_OK;
}

typedef struct {
  loom_group *group;
  loom_status status;
  const char *what;
} agree_job;

static loom_status run_agree(void *opaque) {
  agree_job *job = opaque;
  char name[64];
  snprintf(name, sizeof name, "group %s", job->group->name);
  return agree(job->group->comm, name, job->status, job->what);
}

loom_status loom_status_agree(loom_group *g, loom_status status, const char *what) {
  if (!g) return loom_error_set(LOOM_ERR_ARG, "loom_status_agree: group is NULL");
  /* on the group's lane: in posting order with the collectives queued there */
  loom_executor *lane = NULL;
  char message[1024] = "";
  if (status < 0) snprintf(message, sizeof message, "%s", loom_error_string());
  LOOM_CHECK(loom_group_lane(g, &lane));
  agree_job job = {.group = g, .status = status, .what = what};
  loom_status agreed = loom_executor_run(lane, run_agree, &job);
  if (agreed == status && status < 0 && message[0]) loom_error_restore(message); /* its own */
  return agreed;
}

loom_status loom_status_agree_comm(MPI_Comm comm, loom_status status, const char *what) {
  return agree(comm, "its communicator", status, what);
}

int loom_group_rank(const loom_group *g) { return g->rank; }
int loom_group_size(const loom_group *g) { return g->size; }
const char *loom_group_name(const loom_group *g) { return g->name; }
loom_ctx *loom_group_ctx(const loom_group *g) { return g->ctx; }
MPI_Comm loom_group_comm(const loom_group *g) { return g->comm; }
int loom_group_world_rank(const loom_group *g, int r) {
  return r >= 0 && r < g->size ? g->world_ranks[r] : -1;
}
int loom_group_node_count(const loom_group *g) { return g->node_count; }
int loom_group_nodes_uniform(const loom_group *g) { return g->uniform; }
loom_group *loom_group_node_local(const loom_group *g) { return g->node_local; }
loom_group *loom_group_cross_node(const loom_group *g) { return g->cross_node; }
