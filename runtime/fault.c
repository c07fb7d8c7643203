/* Fault injection (see fault.h). The spec is parsed at each call: a handful of entries, and no
 * state to keep consistent across restarts (loom-run drops LOOM_FAULT after the first failure). */
#include "runtime/fault.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "runtime/ctx_impl.h"
#include "runtime/log.h"

enum { MAX_FAULTS = 32 };

static const char *const kind_names[LOOM_FAULT_KIND_COUNT] = {
    [LOOM_FAULT_KILL] = "kill", [LOOM_FAULT_NODE] = "node", [LOOM_FAULT_HANG] = "hang",
    [LOOM_FAULT_DELAY] = "delay", [LOOM_FAULT_CORRUPT] = "corrupt",
    [LOOM_FAULT_CKPT_KILL] = "ckpt-kill"};

loom_status loom_fault_parse(const char *spec, loom_fault *faults, int max, int *count) {
  *count = 0;
  if (!spec || !*spec) return LOOM_OK;
  const char *p = spec;
  while (*p) {
    size_t len = strcspn(p, ",");
    char entry[128] = "", kind[32] = "";
    snprintf(entry, sizeof entry, "%.*s", (int)(len < sizeof entry ? len : sizeof entry - 1), p);
    loom_fault f = {0};
    long long step = -1;
    int consumed = 0;
    int fields = sscanf(entry, "%31[a-z-]:%d:%lld%n", kind, &f.rank, &step, &consumed);
    if (fields == 3 && entry[consumed] == ':') fields += sscanf(entry + consumed + 1, "%lf", &f.seconds);
    else if (fields == 3 && entry[consumed] != '\0') fields = 0;
    int k = 0;
    while (k < LOOM_FAULT_KIND_COUNT && strcmp(kind, kind_names[k]) != 0) k++;
    if (fields < 3 || k == LOOM_FAULT_KIND_COUNT || f.rank < 0 || step < 0 ||
        (k == LOOM_FAULT_DELAY && !(f.seconds > 0)))
      return loom_error_set(LOOM_ERR_ARG, "LOOM_FAULT entry '%s': expected kind:rank:step (delay: "
                            "delay:rank:step:seconds) with kind kill, node, hang, delay, corrupt "
                            "or ckpt-kill", entry);
    if (*count == max)
      return loom_error_set(LOOM_ERR_ARG, "LOOM_FAULT lists more than %d faults", max);
    f.kind = (loom_fault_kind)k;
    f.step = step;
    faults[(*count)++] = f;
    p += len;
    if (*p == ',') p++;
  }
  return LOOM_OK;
}

void loom_snapshot_segment_name(const char *job, int rank, char *out, size_t bytes) {
  snprintf(out, bytes, "/loom-%s-%d", job, rank);
}

/* Rank `target`'s node index (the same arithmetic as node detection: simulated nodes are
 * consecutive blocks of ranks_per_node). Real nodes are known only for this rank, so a node
 * fault on real nodes kills only the target's own node when this rank shares it. */
static int node_of(const loom_ctx *ctx, int target) {
  if (ctx->config.ranks_per_node > 0) return target / ctx->config.ranks_per_node;
  return target == ctx->rank ? ctx->node : -1;
}

int loom_fault_due(const loom_ctx *ctx, loom_fault_kind kind, int64_t step) {
  loom_fault faults[MAX_FAULTS];
  int count = 0;
  if (!ctx || loom_fault_parse(ctx->config.fault, faults, MAX_FAULTS, &count) != LOOM_OK) return 0;
  for (int i = 0; i < count; i++) {
    if (faults[i].kind != kind || faults[i].step != step) continue;
    if (faults[i].rank == ctx->rank) return 1;
    if (kind == LOOM_FAULT_NODE && node_of(ctx, faults[i].rank) == ctx->node) return 1;
  }
  return 0;
}

loom_status loom_fault_step(loom_ctx *ctx, int64_t step) {
  loom_fault faults[MAX_FAULTS];
  int count = 0;
  LOOM_CHECK(loom_fault_parse(ctx->config.fault, faults, MAX_FAULTS, &count));
  for (int i = 0; i < count; i++) {
    const loom_fault *f = &faults[i];
    if (f->step != step || !loom_fault_due(ctx, f->kind, step)) continue;
    switch (f->kind) {
      case LOOM_FAULT_NODE: {
        char name[128];
        loom_snapshot_segment_name(ctx->job_id, ctx->rank, name, sizeof name);
        shm_unlink(name); /* the node's memory is gone with it */
        loom_log(ctx, LOOM_LOG_WARN, "fault injection: node %d lost at step %lld (rank %d dies, "
                 "its snapshot segment removed)", ctx->node, (long long)step, ctx->rank);
        raise(SIGKILL);
        break;
      }
      case LOOM_FAULT_KILL:
        loom_log(ctx, LOOM_LOG_WARN, "fault injection: rank %d killed at step %lld", ctx->rank,
                 (long long)step);
        raise(SIGKILL);
        break;
      case LOOM_FAULT_HANG:
        loom_log(ctx, LOOM_LOG_WARN, "fault injection: rank %d hangs at step %lld", ctx->rank,
                 (long long)step);
        for (;;) pause();
      case LOOM_FAULT_DELAY:
        usleep((useconds_t)(f->seconds * 1e6));
        break;
      default:
        break; /* corrupt and ckpt-kill fire inside the snapshot and checkpoint code */
    }
  }
  return LOOM_OK;
}
