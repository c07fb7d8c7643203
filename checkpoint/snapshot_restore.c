/* Restoring snapshots (see snapshot.h): every rank's holdings gathered, the newest step every
 * rank can restore agreed, lost data slots rebuilt from parity within their erasure groups,
 * then each rank's shares loaded and the replicas' shares exchanged. */
#include <stdlib.h>
#include <string.h>

#include "checkpoint/erasure.h"
#include "checkpoint/snapshot_impl.h"
#include "runtime/device.h"
#include "runtime/log.h"

/* Posts the transfer of `bytes` at p to or from `peer` in pieces of at most 1 GiB (MPI counts
 * are ints); adds the requests at requests[*count]. */
enum { PIECE_BYTES = 1 << 30 };
static void post_pieces(int send, unsigned char *p, uint64_t bytes, int peer, MPI_Comm comm,
                        MPI_Request *requests, int *count) {
  for (uint64_t done = 0; done < bytes; done += PIECE_BYTES) {
    int piece = (int)(bytes - done < PIECE_BYTES ? bytes - done : PIECE_BYTES);
    if (send) MPI_Isend(p + done, piece, MPI_BYTE, peer, 7, comm, &requests[(*count)++]);
    else MPI_Irecv(p + done, piece, MPI_BYTE, peer, 7, comm, &requests[(*count)++]);
  }
}

/* Loads the snapshot in data slot `src` into the registered tensors: this rank's shares, then
 * the other replicas' shares, exchanged entry by entry in catalog order (the same order on
 * every rank, so the messages of one pair match in order). Device slices are assembled on the
 * host and uploaded. Collective over the world. */
static loom_status unpack(loom_snapshot *s, const unsigned char *src) {
  /* buffers for the largest entry, agreed before the first message: no rank stops midway */
  uint64_t stage_bytes = 0, pieces = 1;
  int replicas = 1;
  for (int i = 0; i < loom_state_count(s->state); i++) {
    const entry_share *e = &s->shares[i];
    if (e->device && e->entry_bytes > stage_bytes) stage_bytes = e->entry_bytes;
    uint64_t p = (e->entry_bytes + PIECE_BYTES - 1) / PIECE_BYTES + 1;
    if (p > pieces) pieces = p;
    if (e->replica_count > replicas) replicas = e->replica_count;
  }
  unsigned char *stage = stage_bytes ? malloc(stage_bytes) : NULL;
  MPI_Request *requests = malloc(sizeof(MPI_Request) * 2 * (size_t)replicas * pieces);
  int short_of_memory = (stage_bytes && !stage) || !requests;
  loom_status status = !short_of_memory ? LOOM_OK
                       : loom_error_set(LOOM_ERR_NOMEM, "snapshot restore: no host memory for %llu "
                                        "bytes", (unsigned long long)stage_bytes);
  status = loom_status_agree_comm(s->world, status, "snapshot restore (exchange buffers)");
  if (status < 0) {
    free(stage);
    free(requests);
    return status;
  }
  /* from here `status` keeps the first failure; the exchange goes on regardless */
  for (int n = 0; n < loom_state_count(s->state); n++) {
    int i = s->order[n];
    const entry_share *e = &s->shares[i];
    loom_buf local;
    loom_state_entry(s->state, i, NULL, NULL, &local, NULL, NULL);
    unsigned char *slice = e->device ? stage : local.ptr;
    memcpy(slice + e->share_offset, src + e->slot_offset, e->share_bytes);
    int count = 0;
    for (int q = 0; q < e->replica_count; q++) {
      if (q == e->replica_index) continue;
      uint64_t offset, bytes;
      share_range(e, q, &offset, &bytes);
      post_pieces(0, slice + offset, bytes, e->replicas[q], s->world, requests, &count);
      post_pieces(1, slice + e->share_offset, e->share_bytes, e->replicas[q], s->world, requests, &count);
    }
    loom_status step = count ? mpi_check(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE),
                                         "MPI_Waitall (gathering snapshot shares from replicas)")
                             : LOOM_OK;
    if (step == LOOM_OK && e->device) step = loom_device_upload(s->ctx, local.ptr, slice, e->entry_bytes);
    if (status == LOOM_OK) status = step;
  }
  free(stage);
  free(requests);
  return status;
}

/* This rank's holdings: per slot, its step, whether its data and its parity check out. */
typedef struct {
  int64_t step[2];
  int64_t data_ok[2], parity_ok[2];
} holdings;

static holdings inspect(const loom_snapshot *s) {
  const seg_header *h = header(s);
  holdings out;
  for (int i = 0; i < 2; i++) {
    out.step[i] = h->slot[i].valid ? h->slot[i].step : -1;
    out.data_ok[i] = h->slot[i].valid && sum_of(data_slot(s, i), s->data_bytes) == h->slot[i].data_sum;
    out.parity_ok[i] = h->slot[i].parity_valid &&
                       sum_of(parity_slot(s, i), s->parity_bytes) == h->slot[i].parity_sum;
  }
  return out;
}

static int slot_with(const holdings *h, int64_t step, int parity) {
  for (int i = 0; i < 2; i++)
    if (h->step[i] == step && (parity ? h->parity_ok[i] : h->data_ok[i])) return i;
  return -1;
}

/* Fragments available for group g of column c at `step`: data members then parity holders, in
 * fragment order; writes up to k of them to `ranks`/`fragment` and returns how many exist. */
static int available(const loom_snapshot *s, const holdings *all, int c, int g, int64_t step,
                     int *ranks, int *fragment) {
  int count = 0, n = s->n, k = s->k;
  for (int j = 0; j < k; j++) {
    int r = s->columns[c * n + g * k + j];
    if (slot_with(&all[r], step, 0) >= 0) {
      if (count < k) ranks[count] = r, fragment[count] = j;
      count++;
    }
  }
  for (int i = 0; i < s->m; i++) {
    int r = s->columns[c * n + ((g + 1) * k + i) % n];
    if (slot_with(&all[r], step, 1) >= 0) {
      if (count < k) ranks[count] = r, fragment[count] = k + i;
      count++;
    }
  }
  return count;
}

static int restorable(const loom_snapshot *s, const holdings *all, int64_t step, int *rebuilds) {
  *rebuilds = 0;
  int missing = 0;
  for (int r = 0; r < s->size; r++) missing += slot_with(&all[r], step, 0) < 0;
  if (missing == 0) return 1;
  if (!s->ec) return 0;
  int ranks[LOOM_EC_MAX_FRAGMENTS], fragment[LOOM_EC_MAX_FRAGMENTS];
  for (int c = 0; c < s->column_count; c++)
    for (int g = 0; g < s->n / s->k; g++)
      if (available(s, all, c, g, step, ranks, fragment) < s->k) return 0;
  *rebuilds = missing;
  return 1;
}

/* Where this rank keeps fragment `fragment` of group g at `step`: its data slot (a data
 * member, fragment < k) or its piece of a parity slot (a parity holder). */
static const unsigned char *own_fragment(const loom_snapshot *s, const holdings *all, int64_t step,
                                         int g, int fragment) {
  if (fragment < s->k) return data_slot(s, slot_with(&all[s->rank], step, 0));
  const unsigned char *src = parity_slot(s, slot_with(&all[s->rank], step, 1));
  for (int r = 0; r < s->role_count; r++)
    if (s->roles[r].group == g && s->roles[r].index == fragment - s->k) return src + s->roles[r].offset;
  return NULL; /* not reached: available() lists only fragments this rank holds */
}

/* Rebuilds the lost snapshots of this column's groups at `step` into the lost members' free
 * slots, which become valid (their parity is not: the next snapshot restores it). */
/* `status` agreed over the column: every member goes on, or every member returns the error. */
static loom_status column_agree(const loom_snapshot *s, loom_status status) {
  return loom_status_agree_comm(s->column, status, "snapshot rebuild (this column)");
}

static loom_status rebuild_column(loom_snapshot *s, const holdings *all, int64_t step) {
  int k = s->k, n = s->n, c = s->column_index;
  for (int g = 0; g < n / k; g++) {
    int ranks[LOOM_EC_MAX_FRAGMENTS], fragment[LOOM_EC_MAX_FRAGMENTS], lost = 0;
    for (int j = 0; j < k; j++) lost += slot_with(&all[s->columns[c * n + g * k + j]], step, 0) < 0;
    if (lost == 0) continue;
    available(s, all, c, g, step, ranks, fragment);
    uint64_t L = s->group_bytes[g];
    int rebuilder = ranks[0], me = s->rank, tag = 1000 + g * 128;
    int rebuilder_pos = s->position_of[rebuilder]; /* positions in the column communicator */
    unsigned char *buffers[LOOM_EC_MAX_FRAGMENTS] = {0}, *rebuilt[LOOM_EC_MAX_FRAGMENTS] = {0};
    const uint8_t *fragments[LOOM_EC_MAX_FRAGMENTS] = {0};
    MPI_Request requests[LOOM_EC_MAX_FRAGMENTS];
    loom_status status = LOOM_OK;
    /* 1. the rebuilder's buffers, agreed before any data moves */
    if (me == rebuilder) {
      for (int f = 0; f < k; f++)
        if (ranks[f] == me) fragments[fragment[f]] = own_fragment(s, all, step, g, fragment[f]);
        else if (!(buffers[f] = malloc(L))) status = LOOM_ERR_NOMEM;
      for (int j = 0; j < k; j++)
        if (!fragments[j] && !(rebuilt[j] = malloc(L))) status = LOOM_ERR_NOMEM;
      if (status != LOOM_OK)
        status = loom_error_set(LOOM_ERR_NOMEM, "snapshot rebuild (%llu bytes a fragment)", (unsigned long long)L);
    }
    status = column_agree(s, status);
    int go_on = status == LOOM_OK; /* the same on every rank of the column */
    /* 2. the surviving fragments to the rebuilder, 3. the rebuild, agreed */
    if (status == LOOM_OK && me == rebuilder) {
      int count = 0;
      for (int f = 0; f < k; f++)
        if (buffers[f]) {
          MPI_Irecv(buffers[f], (int)(L / 8), s->word, s->position_of[ranks[f]], tag + fragment[f],
                    s->column, &requests[count++]);
          fragments[fragment[f]] = buffers[f];
        }
      if (count) status = mpi_check(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE),
                                    "MPI_Waitall (surviving fragments)");
      if (status == LOOM_OK) status = loom_ec_rebuild(k, s->m, L, fragments, rebuilt);
    } else if (status == LOOM_OK) {
      for (int f = 1; f < k; f++)
        if (ranks[f] == me && status == LOOM_OK)
          status = mpi_check(MPI_Send(own_fragment(s, all, step, g, fragment[f]), (int)(L / 8),
                                      s->word, rebuilder_pos, tag + fragment[f], s->column),
                             "MPI_Send (a surviving fragment)");
    }
    if (go_on) status = column_agree(s, status);
    /* 4. the rebuilt snapshots to the lost members, which make them valid */
    if (status == LOOM_OK && me == rebuilder) {
      int count = 0;
      for (int j = 0; j < k; j++)
        if (!fragments[j])
          MPI_Isend(rebuilt[j], (int)(L / 8), s->word, g * k + j, tag + 100 + j, s->column, &requests[count++]);
      if (count) status = mpi_check(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE),
                                    "MPI_Waitall (rebuilt snapshots)");
    } else if (status == LOOM_OK && s->position / k == g && slot_with(&all[me], step, 0) < 0) {
      seg_header *h = header(s);
      int slot = h->slot[0].seq <= h->slot[1].seq ? 0 : 1;
      h->slot[slot].valid = h->slot[slot].parity_valid = 0;
      status = mpi_check(MPI_Recv(data_slot(s, slot), (int)(L / 8), s->word, rebuilder_pos,
                                  tag + 100 + s->position % k, s->column, MPI_STATUS_IGNORE),
                         "MPI_Recv (a rebuilt snapshot)");
      if (status == LOOM_OK) { /* the received copy becomes valid */
        h->slot[slot].step = step;
        h->slot[slot].seq = (h->slot[0].seq > h->slot[1].seq ? h->slot[0].seq : h->slot[1].seq) + 1;
        h->slot[slot].data_sum = sum_of(data_slot(s, slot), s->data_bytes);
        __sync_synchronize();
        h->slot[slot].valid = 1;
      }
    }
    for (int f = 0; f < LOOM_EC_MAX_FRAGMENTS; f++) free(buffers[f]), free(rebuilt[f]);
    LOOM_CHECK(status); /* the same on every rank of the column */
  }
  return LOOM_OK;
}

loom_status loom_snapshot_restore(loom_snapshot *s, int64_t *step, int *restored) {
  if (!s || !restored) return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_restore: NULL argument");
  *restored = 0;
  if (s->async_ready) LOOM_CHECK(loom_snapshot_wait(s)); /* one writer of the slots at a time */
  holdings mine = inspect(s);
  holdings *all = malloc(sizeof(holdings) * (size_t)s->size);
  loom_status status = all ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, "snapshot restore table "
                                                      "(%d ranks)", s->size);
  status = loom_status_agree_comm(s->world, status, "snapshot restore (holdings table)");
  if (status < 0) {
    free(all);
    return status;
  }
  status = mpi_check(MPI_Allgather(&mine, 6, MPI_INT64_T, all, 6, MPI_INT64_T, s->world),
                                 "MPI_Allgather (snapshot holdings)");
  int64_t best = -1;
  int rebuilds = 0, damaged = 0;
  for (int r = 0; r < s->size && status == LOOM_OK; r++)
    for (int i = 0; i < 2; i++) {
      damaged += all[r].step[i] >= 0 && !all[r].data_ok[i];
      int64_t candidate = all[r].step[i];
      int needed = 0;
      if (candidate > best && restorable(s, all, candidate, &needed)) best = candidate, rebuilds = needed;
    }
  if (status == LOOM_OK && best < 0) {
    if (s->rank == 0)
      loom_log(s->ctx, LOOM_LOG_INFO, "no in-memory snapshot of job %s that every rank can restore "
               "(%s)", loom_ctx_job_id(s->ctx), damaged ? "damaged or missing ones found" : "none found");
    free(all);
    return LOOM_OK;
  }
  if (status == LOOM_OK && rebuilds > 0) status = rebuild_column(s, all, best);
  int slot = -1; /* my slot of `best` after any rebuild */
  if (status == LOOM_OK) {
    holdings now = inspect(s);
    slot = slot_with(&now, best, 0);
    if (slot < 0)
      status = loom_error_set(LOOM_ERR_CORRUPT, "snapshot: rank %d has no valid copy of step %lld "
                              "after the rebuild", s->rank, (long long)best);
  }
  /* agreed before the shares are exchanged, and after */
  status = loom_status_agree_comm(s->world, status, "snapshot restore");
  if (status == LOOM_OK)
    status = loom_status_agree_comm(s->world, unpack(s, data_slot(s, slot)),
                                    "snapshot restore (unpacking the shares)");
  free(all);
  if (status < 0) return status;
  if (s->rank == 0)
    loom_log(s->ctx, LOOM_LOG_WARN, "restored step %lld from the in-memory snapshots of job %s%s%s",
             (long long)best, loom_ctx_job_id(s->ctx), rebuilds ? "; lost or damaged snapshots "
             "rebuilt from parity: " : "", rebuilds ? (rebuilds == 1 ? "1 rank" : "several ranks") : "");
  *step = best;
  *restored = 1;
  return LOOM_OK;
}
