/* The checkpoint and snapshot keeper of a training loop (see keeper.h). The order of a step's
 * end is the one restarts rely on: the HDF5 checkpoint first, then the snapshot, then (in the
 * loop) fault injection and the signal agreement. */
#include "checkpoint/keeper.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/snapshot.h"
#include "runtime/group.h"

typedef struct {
  loom_state *state;
  loom_keeper_params params;
  loom_ctx *ctx;
  loom_ckpt *ckpt;         /* with ckpt_async */
  loom_snapshot *snapshot; /* with snapshot_every */
} keeper;

static int rank_of(const keeper *k) { return loom_ctx_rank(k->ctx); }

/* The loop's step as restored (the registry's "train.global_step"). */
static long long restored_step(const keeper *k) {
  int index = loom_state_find(k->state, "train.global_step");
  loom_buf step = {0};
  if (index < 0 || loom_state_entry(k->state, index, NULL, NULL, &step, NULL, NULL) < 0) return -1;
  return (long long)*(const int64_t *)step.ptr;
}

static loom_status resume(void *opaque, int *resumed) {
  keeper *k = opaque;
  *resumed = 0;
  if (k->params.snapshot_every > 0) {
    loom_snapshot_params sp = LOOM_SNAPSHOT_PARAMS_INIT;
    sp.parity = k->params.snapshot_parity;
    LOOM_CHECK(loom_snapshot_create(k->state, &sp, &k->snapshot));
    int64_t step = 0;
    LOOM_CHECK(loom_snapshot_restore(k->snapshot, &step, resumed));
    if (*resumed && rank_of(k) == 0)
      printf("resumed from the in-memory snapshot at step %lld\n", restored_step(k));
  }
  const char *dir = k->params.ckpt_dir;
  if (!*resumed && dir && k->params.resume) {
    char latest[4096];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    struct stat info;
    if (stat(latest, &info) == 0) {
      int64_t saved = 0;
      LOOM_CHECK(loom_ckpt_load(k->state, dir, &saved));
      *resumed = 1;
      if (rank_of(k) == 0) printf("resumed from %s at step %lld\n", dir, restored_step(k));
    }
  }
  if (dir && k->params.ckpt_async) LOOM_CHECK(loom_ckpt_create(k->state, dir, NULL, &k->ckpt));
  if (!*resumed && k->params.resume && rank_of(k) == 0)
    printf("fresh start: no snapshot or checkpoint to resume from\n");
  return LOOM_OK;
}

static loom_status fence(void *opaque) {
  keeper *k = opaque;
  if (k->ckpt) LOOM_CHECK(loom_ckpt_fence(k->ckpt)); /* a background save may still copy */
  if (k->snapshot && k->params.snapshot_async) LOOM_CHECK(loom_snapshot_fence(k->snapshot));
  return LOOM_OK;
}

static loom_status after_step(void *opaque, int64_t step, int last) {
  keeper *k = opaque;
  const loom_keeper_params *p = &k->params;
  if (p->ckpt_dir && ((p->ckpt_every > 0 && step % p->ckpt_every == 0) || last)) {
    if (k->ckpt) { /* the final save is never skipped, and is on disk before the run ends */
      if (last) LOOM_CHECK(loom_ckpt_wait(k->ckpt));
      LOOM_CHECK(loom_ckpt_save_async(k->ckpt, step, NULL));
      if (last) LOOM_CHECK(loom_ckpt_wait(k->ckpt));
    } else {
      LOOM_CHECK(loom_ckpt_save(k->state, p->ckpt_dir, step));
    }
  }
  if (k->snapshot && step % p->snapshot_every == 0) {
    if (p->snapshot_async) LOOM_CHECK(loom_snapshot_take_async(k->snapshot, step, NULL));
    else LOOM_CHECK(loom_snapshot_take(k->snapshot, step));
  }
  return LOOM_OK;
}

static loom_status save_now(void *opaque, int64_t step) {
  keeper *k = opaque;
  if (!k->params.ckpt_dir) return LOOM_OK;
  if (k->ckpt) LOOM_CHECK(loom_ckpt_wait(k->ckpt));
  return loom_ckpt_save(k->state, k->params.ckpt_dir, step);
}

static loom_status finish(void *opaque) {
  keeper *k = opaque;
  if (k->ckpt) LOOM_CHECK(loom_ckpt_wait(k->ckpt));
  if (k->snapshot && k->params.snapshot_async) LOOM_CHECK(loom_snapshot_wait(k->snapshot));
  return LOOM_OK;
}

static void destroy(void *opaque) {
  keeper *k = opaque;
  loom_ckpt_destroy(k->ckpt);
  loom_snapshot_destroy(k->snapshot);
  free(k);
}

loom_status loom_keeper_create(loom_state *state, const loom_keeper_params *params,
                               loom_loop_keeper *out) {
  if (!state || !params || !out) return loom_error_set(LOOM_ERR_ARG, "loom_keeper_create: NULL argument");
  if (params->ckpt_every < 0 || params->snapshot_every < 0 || params->snapshot_parity < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_keeper_create: ckpt_every=%d, snapshot_every=%d "
                          "and snapshot_parity=%d must be >= 0", params->ckpt_every,
                          params->snapshot_every, params->snapshot_parity);
  keeper *k = calloc(1, sizeof *k);
  if (!k) return loom_error_set(LOOM_ERR_NOMEM, "allocating the keeper");
  k->state = state;
  k->params = *params;
  k->ctx = loom_group_ctx(loom_mesh_group(loom_state_mesh(state), LOOM_AXIS_WORLD));
  /* A requeued Slurm job resumes by itself. */
  const char *restarts = getenv("SLURM_RESTART_COUNT");
  if (restarts && atoi(restarts) > 0 && params->ckpt_dir) {
    k->params.resume = 1;
    if (rank_of(k) == 0)
      printf("Slurm restart %s of job %s: resuming\n", restarts, loom_ctx_job_id(k->ctx));
  }
  *out = (loom_loop_keeper){.state = k, .resume = resume, .fence = fence,
                            .after_step = after_step, .save_now = save_now, .finish = finish,
                            .handles_signals = params->ckpt_dir != NULL, .destroy = destroy};
  return LOOM_OK;
}
