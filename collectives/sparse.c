/* Sparse all-to-all: plans (who sends how much to whom) and the data exchange.
 * Discovery is NBX (Hoefler, Siebert, Lumsdaine, PPoPP'10): each member sends its counts with
 * MPI_Issend only to the members it has data for, receives whatever arrives, and joins a
 * non-blocking barrier once its own sends were matched; when the barrier completes every
 * count has been received. Cost: O(pairs with data) messages plus one barrier, instead of a
 * dense size x size count exchange. Count tags alternate per round, so a member that races
 * ahead into the next round can never be matched by a slower member's current round. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_impl.h"
#include "collectives/nccl.h"

enum { TAG_COUNTS_EVEN = 0x10c0, TAG_COUNTS_ODD = 0x10c1, TAG_DATA = 0x10d0 };

void loom_sparse_plan_free(loom_sparse_plan *plan) {
  if (!plan) return;
  free(plan->send_peers);
  free(plan->send_counts);
  free(plan->send_displs);
  free(plan->recv_peers);
  free(plan->recv_counts);
  free(plan->recv_displs);
  memset(plan, 0, sizeof *plan);
}

loom_status loom_sparse_plan_init(loom_sparse_plan *plan, loom_dtype dtype, int group_size,
                                  int pair_count, const int *peers, const size_t *counts) {
  if (!plan) return loom_error_set(LOOM_ERR_ARG, "sparse plan: plan is NULL");
  memset(plan, 0, sizeof *plan);
  if (dtype < 0 || dtype >= LOOM_DTYPE_COUNT)
    return loom_error_set(LOOM_ERR_ARG, "sparse plan: dtype=%d is not a loom_dtype", (int)dtype);
  if (pair_count < 0 || (pair_count > 0 && (!peers || !counts)))
    return loom_error_set(LOOM_ERR_ARG, "sparse plan: %d pairs with NULL peers or counts",
                          pair_count);
  plan->dtype = dtype;
  int cap = pair_count ? pair_count : 1;
  plan->send_peers = malloc(sizeof(int) * (size_t)cap);
  plan->send_counts = malloc(sizeof(size_t) * (size_t)cap);
  plan->send_displs = malloc(sizeof(size_t) * (size_t)cap);
  char *seen = calloc((size_t)(group_size > 0 ? group_size : 1), 1);
  if (!plan->send_peers || !plan->send_counts || !plan->send_displs || !seen) {
    free(seen);
    loom_sparse_plan_free(plan);
    return loom_error_set(LOOM_ERR_NOMEM, "sparse plan for %d pairs", pair_count);
  }
  for (int i = 0; i < pair_count; i++) {
    if (peers[i] < 0 || peers[i] >= group_size) {
      free(seen);
      loom_sparse_plan_free(plan);
      return loom_error_set(LOOM_ERR_ARG, "sparse plan: pair %d names peer %d outside [0, %d)",
                            i, peers[i], group_size);
    }
    if (seen[peers[i]]) {
      free(seen);
      loom_sparse_plan_free(plan);
      return loom_error_set(LOOM_ERR_ARG, "sparse plan: peer %d named twice (pair %d); merge "
                            "its blocks", peers[i], i);
    }
    seen[peers[i]] = 1;
    if (counts[i] == 0) continue;
    plan->send_peers[plan->send_count] = peers[i];
    plan->send_counts[plan->send_count] = counts[i];
    plan->send_displs[plan->send_count] = plan->send_total;
    plan->send_total += counts[i];
    plan->send_count++;
  }
  free(seen);
  return LOOM_OK;
}

typedef struct {
  int source;
  size_t count;
} incoming;

static int by_source(const void *a, const void *b) {
  const incoming *x = a, *y = b;
  return (x->source > y->source) - (x->source < y->source);
}

loom_status loom_sparse_plan_set_incoming(loom_sparse_plan *plan, int pair_count,
                                          const int *sources, const size_t *counts) {
  if (!plan || (pair_count > 0 && (!sources || !counts)))
    return loom_error_set(LOOM_ERR_ARG, "sparse plan: %d incoming pairs with a NULL plan, "
                          "sources or counts", pair_count);
  free(plan->recv_peers);
  free(plan->recv_counts);
  free(plan->recv_displs);
  plan->recv_count = 0;
  plan->recv_total = 0;
  int cap = pair_count > 0 ? pair_count : 1;
  incoming *list = malloc(sizeof *list * (size_t)cap);
  plan->recv_peers = malloc(sizeof(int) * (size_t)cap);
  plan->recv_counts = malloc(sizeof(size_t) * (size_t)cap);
  plan->recv_displs = malloc(sizeof(size_t) * (size_t)cap);
  if (!list || !plan->recv_peers || !plan->recv_counts || !plan->recv_displs) {
    free(list);
    return loom_error_set(LOOM_ERR_NOMEM, "sparse plan receive side (%d sources)", pair_count);
  }
  int kept = 0;
  for (int i = 0; i < pair_count; i++)
    if (counts[i] > 0) list[kept++] = (incoming){sources[i], counts[i]};
  for (int i = 0; i < kept; i++)
    if (list[i].source < 0) {
      int source = list[i].source;
      free(list);
      return loom_error_set(LOOM_ERR_CORRUPT, "sparse plan: incoming source %d is negative", source);
    }
  qsort(list, (size_t)kept, sizeof *list, by_source);
  for (int i = 0; i < kept; i++) {
    if (i > 0 && list[i].source == list[i - 1].source) {
      int source = list[i].source;
      free(list);
      return loom_error_set(LOOM_ERR_CORRUPT, "sparse plan: source %d reported twice", source);
    }
    plan->recv_peers[i] = list[i].source;
    plan->recv_counts[i] = list[i].count;
    plan->recv_displs[i] = plan->recv_total;
    plan->recv_total += list[i].count;
  }
  plan->recv_count = kept;
  free(list);
  return LOOM_OK;
}

/* Small groups: one MPI_Alltoall of per-member counts costs less than NBX's synchronous
 * sends plus barrier (measured: about 4 us against 17 us at 4 ranks). */
static loom_status discover_dense(loom_group *g, loom_sparse_plan *plan) {
  loom_status status = LOOM_OK;
  size_t n = (size_t)g->size;
  uint64_t *outgoing = calloc(n, sizeof *outgoing), *incoming = malloc(n * sizeof *incoming);
  int *sources = malloc(n * sizeof *sources);
  size_t *counts = malloc(n * sizeof *counts);
  if (!outgoing || !incoming || !sources || !counts) {
    status = loom_error_set(LOOM_ERR_NOMEM, "sparse count exchange on group %s", g->name);
    goto done;
  }
  for (int i = 0; i < plan->send_count; i++) outgoing[plan->send_peers[i]] = plan->send_counts[i];
  int rc = MPI_Alltoall(outgoing, 1, MPI_UINT64_T, incoming, 1, MPI_UINT64_T, g->internal);
  if (rc != MPI_SUCCESS) {
    status = loom_mpi_error(g->ctx, rc, "MPI_Alltoall (sparse counts)");
    goto done;
  }
  for (size_t r = 0; r < n; r++) {
    sources[r] = (int)r;
    counts[r] = (size_t)incoming[r];
  }
  status = loom_sparse_plan_set_incoming(plan, g->size, sources, counts);
done:
  free(outgoing), free(incoming), free(sources), free(counts);
  return status;
}

loom_status loom_coll_sparse_discover(loom_group *g, loom_sparse_plan *plan) {
  if (g->size < g->ctx->config.sparse_nbx_min_ranks) return discover_dense(g, plan);
  loom_status status = LOOM_OK;
  int tag = (g->sparse_round++ & 1u) ? TAG_COUNTS_ODD : TAG_COUNTS_EVEN;
  int sends = plan->send_count, got = 0, cap = 16;
  MPI_Request *requests = malloc(sizeof(MPI_Request) * (size_t)(sends ? sends : 1));
  uint64_t *outgoing = malloc(sizeof(uint64_t) * (size_t)(sends ? sends : 1));
  int *sources = malloc(sizeof(int) * (size_t)cap);
  size_t *counts = malloc(sizeof(size_t) * (size_t)cap);
  if (!requests || !outgoing || !sources || !counts) {
    status = loom_error_set(LOOM_ERR_NOMEM, "sparse plan discovery on group %s", g->name);
    goto done;
  }
  int posted = 0;
  for (int i = 0; i < sends; i++) {
    if (plan->send_peers[i] == g->rank) { /* to self: no message */
      sources[got] = g->rank;
      counts[got++] = plan->send_counts[i];
      continue;
    }
    outgoing[posted] = plan->send_counts[i];
    int rc = MPI_Issend(&outgoing[posted], 1, MPI_UINT64_T, plan->send_peers[i], tag,
                        g->internal, &requests[posted]);
    if (rc != MPI_SUCCESS) {
      status = loom_mpi_error(g->ctx, rc, "MPI_Issend (sparse counts)");
      goto done;
    }
    posted++;
  }
  MPI_Request barrier = MPI_REQUEST_NULL;
  int in_barrier = 0;
  for (;;) {
    int arrived = 0;
    MPI_Status probe;
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, tag, g->internal, &arrived, &probe);
    if (rc == MPI_SUCCESS && arrived) {
      if (got == cap) {
        cap *= 2;
        int *s = realloc(sources, sizeof(int) * (size_t)cap);
        if (s) sources = s;
        size_t *c = realloc(counts, sizeof(size_t) * (size_t)cap);
        if (c) counts = c;
        if (!s || !c) {
          status = loom_error_set(LOOM_ERR_NOMEM, "sparse plan: %d incoming counts", cap);
          goto done;
        }
      }
      uint64_t count = 0;
      rc = MPI_Recv(&count, 1, MPI_UINT64_T, probe.MPI_SOURCE, tag, g->internal,
                    MPI_STATUS_IGNORE);
      sources[got] = probe.MPI_SOURCE;
      counts[got++] = (size_t)count;
    }
    if (rc != MPI_SUCCESS) {
      status = loom_mpi_error(g->ctx, rc, "MPI_Iprobe/MPI_Recv (sparse counts)");
      goto done;
    }
    int flag = 0;
    if (!in_barrier) {
      rc = MPI_Testall(posted, requests, &flag, MPI_STATUSES_IGNORE);
      if (rc == MPI_SUCCESS && flag) {
        rc = MPI_Ibarrier(g->internal, &barrier);
        in_barrier = 1;
      }
    } else {
      rc = MPI_Test(&barrier, &flag, MPI_STATUS_IGNORE);
      if (rc == MPI_SUCCESS && flag) break;
    }
    if (rc != MPI_SUCCESS) {
      status = loom_mpi_error(g->ctx, rc, "MPI_Testall/MPI_Ibarrier (sparse counts)");
      goto done;
    }
  }
  status = loom_sparse_plan_set_incoming(plan, got, sources, counts);
done:
  free(requests);
  free(outgoing);
  free(sources);
  free(counts);
  return status;
}

loom_status loom_coll_sparse_exchange(loom_group *g, const loom_sparse_plan *plan, loom_buf send,
                                      loom_buf recv) {
  loom_status status = LOOM_OK;
  size_t element = loom_dtype_size(plan->dtype);
  int total = plan->send_count + plan->recv_count, posted = 0;
  enum { ON_STACK = 64 };
  MPI_Request stack_requests[ON_STACK];
  MPI_Request *requests = total <= ON_STACK ? stack_requests
                                            : malloc(sizeof(MPI_Request) * (size_t)total);
  if (!requests) return loom_error_set(LOOM_ERR_NOMEM, "sparse exchange requests (%d)", total);
  MPI_Datatype block = loom_coll_mpi_type(plan->dtype); /* counts stay in elements */
  for (int i = 0; i < plan->recv_count; i++) {
    char *dst = (char *)recv.ptr + plan->recv_displs[i] * element;
    if (plan->recv_peers[i] == g->rank) continue; /* self block copied below */
    int rc = MPI_Irecv(dst, (int)plan->recv_counts[i], block, plan->recv_peers[i], TAG_DATA,
                       g->internal, &requests[posted]);
    if (rc != MPI_SUCCESS) {
      status = loom_mpi_error(g->ctx, rc, "MPI_Irecv (sparse data)");
      goto wait;
    }
    posted++;
  }
  for (int i = 0; i < plan->send_count; i++) {
    const char *src = (const char *)send.ptr + plan->send_displs[i] * element;
    if (plan->send_peers[i] == g->rank) {
      for (int j = 0; j < plan->recv_count; j++)
        if (plan->recv_peers[j] == g->rank)
          memcpy((char *)recv.ptr + plan->recv_displs[j] * element, src,
                 plan->send_counts[i] * element);
      continue;
    }
    int rc = MPI_Isend(src, (int)plan->send_counts[i], block, plan->send_peers[i], TAG_DATA,
                       g->internal, &requests[posted]);
    if (rc != MPI_SUCCESS) {
      status = loom_mpi_error(g->ctx, rc, "MPI_Isend (sparse data)");
      goto wait;
    }
    posted++;
  }
wait:;
  int rc = MPI_Waitall(posted, requests, MPI_STATUSES_IGNORE);
  if (rc != MPI_SUCCESS && status == LOOM_OK)
    status = loom_mpi_error(g->ctx, rc, "MPI_Waitall (sparse data)");
  if (requests != stack_requests) free(requests);
  return status;
}

static loom_status check_plan_buffers(loom_group *g, const loom_sparse_plan *plan, loom_buf send,
                                      loom_buf recv) {
  if (!g || !plan) return loom_error_set(LOOM_ERR_ARG, "loom_alltoall_sparse: group or plan NULL");
  LOOM_CHECK(loom_coll_check_device(g, "loom_alltoall_sparse", "send", send));
  LOOM_CHECK(loom_coll_check_device(g, "loom_alltoall_sparse", "recv", recv));
  if (send.device.kind != recv.device.kind)
    return loom_error_set(LOOM_ERR_ARG, "loom_alltoall_sparse on group %s: host and device "
                          "buffers cannot be mixed in one call", g->name);
  if (send.dtype != plan->dtype || recv.dtype != plan->dtype)
    return loom_error_set(LOOM_ERR_ARG, "loom_alltoall_sparse on group %s: buffers are %s/%s but "
                          "the plan is %s", g->name, loom_dtype_name(send.dtype),
                          loom_dtype_name(recv.dtype), loom_dtype_name(plan->dtype));
  if (send.count < plan->send_total || recv.count < plan->recv_total)
    return loom_error_set(LOOM_ERR_ARG, "loom_alltoall_sparse on group %s: send holds %zu of %zu "
                          "and recv %zu of %zu elements the plan needs", g->name, send.count,
                          plan->send_total, recv.count, plan->recv_total);
  for (int i = 0; i < plan->send_count; i++)
    if (plan->send_counts[i] > (size_t)INT32_MAX)
      return loom_error_set(LOOM_ERR_ARG, "loom_alltoall_sparse: block to %d has %zu elements, "
                            "over 2^31-1", plan->send_peers[i], plan->send_counts[i]);
  return LOOM_OK;
}

loom_status loom_sparse_plan_create(loom_group *g, loom_dtype dtype, int pair_count,
                                    const int *peers, const size_t *counts,
                                    loom_sparse_plan *plan) {
  if (!g) return loom_error_set(LOOM_ERR_ARG, "loom_sparse_plan_create: group is NULL");
  LOOM_CHECK(loom_sparse_plan_init(plan, dtype, g->size, pair_count, peers, counts));
  loom_coll_job job = {.kind = LOOM_COLL_SPARSE_PLAN, .group = g, .plan = plan};
  loom_status status = loom_coll_submit_host(&job, NULL);
  if (status < 0) {
    /* keep the failure's message; the plan must not be half-usable */
    char message[1024];
    snprintf(message, sizeof message, "%s", loom_error_string());
    loom_sparse_plan_free(plan);
    loom_error_restore(message);
  }
  return status;
}

loom_status loom_alltoall_sparse_async(loom_group *g, const loom_sparse_plan *plan,
                                       loom_buf send, loom_buf recv, loom_req **req) {
  LOOM_CHECK(check_plan_buffers(g, plan, send, recv));
  if (!req) return loom_error_set(LOOM_ERR_ARG, "loom_alltoall_sparse_async: req is NULL");
  if (send.device.kind == LOOM_DEVICE_CUDA) {
    loom_coll_job device_job = {.kind = LOOM_COLL_SPARSE_EXCHANGE, .group = g, .send = send,
                                .recv = recv, .plan = (loom_sparse_plan *)plan};
    return loom_coll_submit_device(&device_job, req);
  }
  loom_coll_job job = {.kind = LOOM_COLL_SPARSE_EXCHANGE, .group = g, .send = send,
                       .recv = recv, .plan = (loom_sparse_plan *)plan};
  return loom_coll_submit_host(&job, req);
}

loom_status loom_alltoall_sparse(loom_group *g, const loom_sparse_plan *plan, loom_buf send,
                                 loom_buf recv) {
  LOOM_CHECK(check_plan_buffers(g, plan, send, recv));
  loom_coll_job job = {.kind = LOOM_COLL_SPARSE_EXCHANGE, .group = g, .send = send, .recv = recv,
                       .plan = (loom_sparse_plan *)plan};
  if (send.device.kind == LOOM_DEVICE_CUDA) return loom_coll_submit_device(&job, NULL);
  return loom_coll_submit_host(&job, NULL);
}
