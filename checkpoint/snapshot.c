/* In-memory erasure-coded snapshots (see snapshot.h): the layout of shares, segments and
 * erasure groups, synchronous snapshots, and the end of a snapshot's life. The asynchronous
 * path is in snapshot_async.c, restore in snapshot_restore.c; the layout of a segment is in
 * snapshot_impl.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/catalog.h"
#include "checkpoint/erasure.h"
#include "checkpoint/snapshot_impl.h"
#include "runtime/device.h"
#include "runtime/fault.h"
#include "runtime/log.h"

/* Largest divisor of n that is <= limit (>= 1), or 0 when limit < 1. */
static int group_size_for(int n, int limit) {
  for (int k = limit; k >= 1; k--)
    if (n % k == 0) return k;
  return 0;
}

/* Columns, positions, groups and parity roles from every rank's (node, local rank, bytes). */
static loom_status plan_layout(loom_snapshot *s, const int64_t *info /* (size, 3) */, int parity) {
  s->column_of = calloc((size_t)s->size, sizeof(int));
  s->position_of = calloc((size_t)s->size, sizeof(int));
  s->payload_of = calloc((size_t)s->size, sizeof(uint64_t));
  if (!s->column_of || !s->position_of || !s->payload_of)
    return loom_error_set(LOOM_ERR_NOMEM, "snapshot layout");
  int columns = 0;
  for (int r = 0; r < s->size; r++) {
    s->column_of[r] = (int)info[3 * r + 1];
    s->payload_of[r] = (uint64_t)info[3 * r + 2];
    if (s->column_of[r] + 1 > columns) columns = s->column_of[r] + 1;
    /* every rank sees every payload: the same verdict everywhere */
    if (s->payload_of[r] > 8 * (uint64_t)(INT32_MAX - 1024))
      return loom_error_set(LOOM_ERR_ARG, "snapshot: rank %d keeps %.1f GB of state, over the "
                            "16 GiB a slot transfer allows; spread the state over more ranks",
                            r, (double)s->payload_of[r] / 1e9);
  }
  /* positions: order by node within a column (ranks are numbered node by node) */
  int *filled = calloc((size_t)columns, sizeof(int));
  if (!filled) return loom_error_set(LOOM_ERR_NOMEM, "snapshot layout");
  for (int r = 0; r < s->size; r++) s->position_of[r] = filled[s->column_of[r]]++;
  int n = filled[0], uniform = 1;
  for (int c = 1; c < columns; c++) uniform &= filled[c] == n;
  free(filled);
  s->column_count = columns;
  s->n = n;
  s->column_index = s->column_of[s->rank];
  s->position = s->position_of[s->rank];
  int most = n - parity < LOOM_EC_MAX_FRAGMENTS - parity ? n - parity : LOOM_EC_MAX_FRAGMENTS - parity;
  s->k = parity > 0 && uniform ? group_size_for(n, most) : 0;
  s->ec = s->k > 0 && loom_ec_available();
  s->m = s->ec ? parity : 0;
  if (!s->ec) s->k = 1;
  s->columns = malloc(sizeof(int) * (size_t)columns * (size_t)(n ? n : 1));
  if (!s->columns) return loom_error_set(LOOM_ERR_NOMEM, "snapshot layout");
  for (int r = 0; r < s->size; r++)
    if (uniform) s->columns[s->column_of[r] * n + s->position_of[r]] = r;
  s->column_members = &s->columns[s->column_index * n];
  int groups = s->ec ? n / s->k : 0;
  s->group_bytes = calloc((size_t)(groups ? groups : 1), sizeof(uint64_t));
  if (!s->group_bytes) return loom_error_set(LOOM_ERR_NOMEM, "snapshot layout");
  for (int g = 0; g < groups; g++) {
    uint64_t largest = 0;
    for (int j = 0; j < s->k; j++) {
      uint64_t b = s->payload_of[s->column_members[g * s->k + j]];
      if (b > largest) largest = b;
    }
    uint64_t slice = round8((largest + (uint64_t)s->k - 1) / (uint64_t)s->k);
    s->group_bytes[g] = (slice ? slice : 8) * (uint64_t)s->k;
  }
  s->payload = s->payload_of[s->rank];
  s->data_bytes = s->ec ? s->group_bytes[s->position / s->k] : (s->payload ? s->payload : 8);
  for (int g = 0; g < groups; g++)
    for (int i = 0; i < s->m; i++)
      if (((g + 1) * s->k + i) % n == s->position) {
        if (s->role_count == MAX_ROLES)
          return loom_error_set(LOOM_ERR_ARG, "snapshot: more than %d parity roles", MAX_ROLES);
        s->roles[s->role_count++] = (parity_role){g, i, s->parity_bytes, s->group_bytes[g]};
        s->parity_bytes += s->group_bytes[g];
      }
  return LOOM_OK;
}

/* Maps the segment, creating or re-initialising it when it does not match this layout. */
static loom_status map_segment(loom_snapshot *s) {
  loom_snapshot_segment_name(loom_ctx_job_id(s->ctx), s->rank, s->name, sizeof s->name);
  s->fd = shm_open(s->name, O_RDWR | O_CREAT, 0600);
  if (s->fd < 0)
    return loom_error_set(LOOM_ERR_IO, "snapshot: shm_open(%s): %s", s->name, strerror(errno));
  s->mapped = HEADER_BYTES + 2 * s->data_bytes + 2 * s->parity_bytes;
  struct stat st;
  int fresh = fstat(s->fd, &st) != 0 || (size_t)st.st_size != s->mapped;
  if (fresh && (ftruncate(s->fd, 0) != 0 || ftruncate(s->fd, (off_t)s->mapped) != 0))
    return loom_error_set(LOOM_ERR_NOMEM, "snapshot: sizing %s to %zu bytes: %s (is /dev/shm "
                          "large enough?)", s->name, s->mapped, strerror(errno));
  void *p = mmap(NULL, s->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
  if (p == MAP_FAILED)
    return loom_error_set(LOOM_ERR_NOMEM, "snapshot: mapping %s: %s", s->name, strerror(errno));
  s->base = p;
  seg_header *h = header(s);
  if (fresh || memcmp(h->magic, "LOOMSNP2", 8) != 0 || h->world != s->size || h->rank != s->rank ||
      h->payload_bytes != s->payload || h->data_bytes != s->data_bytes ||
      h->parity_bytes != s->parity_bytes) {
    memset(h, 0, sizeof *h);
    memcpy(h->magic, "LOOMSNP2", 8);
    h->world = s->size, h->rank = s->rank;
    h->payload_bytes = s->payload, h->data_bytes = s->data_bytes, h->parity_bytes = s->parity_bytes;
  }
  return LOOM_OK;
}

static int by_tensor(const void *a, const void *b, void *arg) {
  const entry_share *shares = arg;
  int x = shares[*(const int *)a].tensor, y = shares[*(const int *)b].tensor;
  return (x > y) - (x < y);
}


/* Every entry's replicas (from the world's catalog) and this rank's share of it (share_range).
 * Sets s->payload.
 * Collective over s->world. */
static loom_status plan_shares(loom_snapshot *s) {
  int count = loom_state_count(s->state);
  ckpt_catalog catalog;
  LOOM_CHECK(ckpt_catalog_build(s->state, s->world, &catalog));
  loom_mesh_shape shape = loom_mesh_get_shape(loom_state_mesh(s->state));
  int *ranks = malloc(sizeof(int) * (size_t)s->size);
  s->shares = calloc((size_t)(count ? count : 1), sizeof *s->shares);
  s->order = calloc((size_t)(count ? count : 1), sizeof(int));
  loom_status status = ranks && s->shares && s->order ? LOOM_OK
                       : loom_error_set(LOOM_ERR_NOMEM, "snapshot shares (%d entries)", count);
  uint64_t offset = 0;
  for (int i = 0; i < count && status == LOOM_OK; i++) {
    const char *name;
    loom_buf local;
    loom_state_entry(s->state, i, &name, NULL, &local, NULL, NULL);
    entry_share *e = &s->shares[i];
    e->tensor = catalog.local_tensor[i];
    e->replica_count = ckpt_catalog_replicas(&catalog, &shape, e->tensor, s->rank, ranks);
    if (e->replica_count < 1) {
      status = loom_error_set(LOOM_ERR_ARG, "snapshot: no slice of '%s' for rank %d (bad placement)",
                              name, s->rank);
      break;
    }
    e->replicas = malloc(sizeof(int) * (size_t)e->replica_count);
    if (!e->replicas) {
      status = loom_error_set(LOOM_ERR_NOMEM, "snapshot shares");
      break;
    }
    memcpy(e->replicas, ranks, sizeof(int) * (size_t)e->replica_count);
    for (int q = 0; q < e->replica_count; q++)
      if (ranks[q] == s->rank) e->replica_index = q;
    e->element = loom_dtype_size(local.dtype);
    e->entry_bytes = loom_buf_bytes(local);
    share_range(e, e->replica_index, &e->share_offset, &e->share_bytes);
    e->slot_offset = offset;
    e->device = local.device.kind != LOOM_DEVICE_CPU;
    offset = round8(offset + e->share_bytes);
    s->order[i] = i;
  }
  if (status == LOOM_OK) qsort_r(s->order, (size_t)count, sizeof(int), by_tensor, s->shares);
  s->payload = offset;
  free(ranks);
  ckpt_catalog_free(&catalog);
  return status;
}

loom_status loom_snapshot_create(loom_state *state, const loom_snapshot_params *params,
                                 loom_snapshot **out) {
  loom_snapshot_params defaults = LOOM_SNAPSHOT_PARAMS_INIT;
  if (!params) params = &defaults;
  if (!state || !out || params->parity < 0 || params->parity >= LOOM_EC_MAX_FRAGMENTS)
    return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_create: state or out missing, or parity=%d "
                          "outside [0, %d)", params ? params->parity : -1, LOOM_EC_MAX_FRAGMENTS);
  loom_group *world = loom_mesh_group(loom_state_mesh(state), LOOM_AXIS_WORLD);
  loom_snapshot *s = calloc(1, sizeof *s);
  if (!s) return loom_error_set(LOOM_ERR_NOMEM, "loom_snapshot_create");
  s->state = state;
  s->ctx = loom_group_ctx(world);
  s->fd = -1;
  s->world = s->column = s->group = MPI_COMM_NULL;
  s->worker_world = s->worker_column = s->worker_group = MPI_COMM_NULL;
  s->word = MPI_DATATYPE_NULL;
  loom_status status = mpi_check(MPI_Comm_dup(loom_group_comm(world), &s->world), "MPI_Comm_dup");
  if (status == LOOM_OK && (MPI_Type_contiguous(8, MPI_BYTE, &s->word) != MPI_SUCCESS ||
                            MPI_Type_commit(&s->word) != MPI_SUCCESS))
    status = loom_error_set(LOOM_ERR_MPI, "snapshot: creating an MPI datatype");
  if (status != LOOM_OK) {
    loom_snapshot_destroy(s);
    return status;
  }
  MPI_Comm_rank(s->world, &s->rank);
  MPI_Comm_size(s->world, &s->size);
  status = plan_shares(s);
  int64_t mine[3] = {loom_ctx_node(s->ctx), loom_ctx_local_rank(s->ctx), (int64_t)s->payload};
  int64_t *info = malloc(sizeof(int64_t) * 3 * (size_t)s->size);
  if (!info && status == LOOM_OK) status = loom_error_set(LOOM_ERR_NOMEM, "snapshot layout");
  /* before the next collective */
  status = loom_status_agree_comm(s->world, status, "snapshot: planning the shares");
  if (status == LOOM_OK)
    status = mpi_check(MPI_Allgather(mine, 3, MPI_INT64_T, info, 3, MPI_INT64_T, s->world), "MPI_Allgather");
  if (status == LOOM_OK) status = plan_layout(s, info, params->parity);
  free(info);
  if (status == LOOM_OK)
    status = mpi_check(MPI_Comm_split(s->world, s->column_index, s->position, &s->column), "MPI_Comm_split");
  if (status == LOOM_OK && s->ec)
    status = mpi_check(MPI_Comm_split(s->column, s->position / s->k, s->position, &s->group),
                       "MPI_Comm_split");
  if (status == LOOM_OK) status = map_segment(s);
  /* the same outcome everywhere (a failed shm_open on one host fails the job) */
  status = loom_status_agree_comm(s->world, status, "snapshot: setting up the segment");
  if (status < 0) {
    loom_snapshot_destroy(s);
    return status;
  }
  if (s->rank == 0) {
    if (s->ec)
      loom_log(s->ctx, LOOM_LOG_INFO, "in-memory snapshots of job %s: %.1f MB on rank 0 (its share of "
               "replicated state), erasure groups of %d data + %d parity on distinct nodes (columns of %d nodes)",
               loom_ctx_job_id(s->ctx), (double)s->payload / 1e6, s->k, s->m, s->n);
    else
      loom_log(s->ctx, params->parity > 0 ? LOOM_LOG_WARN : LOOM_LOG_INFO, "in-memory snapshots of "
               "job %s: %.1f MB on rank 0 (its share of replicated state), no erasure coding (%s): "
               "a lost node cannot be rebuilt",
               loom_ctx_job_id(s->ctx), (double)s->payload / 1e6,
               params->parity == 0 ? "parity 0" : !loom_ec_available() ? "built without ISA-L"
               : "too few nodes, or nodes of different rank counts");
  }
  *out = s;
  return LOOM_OK;
}

/* Zeroes the bytes of a data slot image that no share covers (alignment gaps, the tail). */
static void zero_gaps(const loom_snapshot *s, unsigned char *dst) {
  uint64_t end = 0;
  for (int i = 0; i < loom_state_count(s->state); i++) {
    const entry_share *e = &s->shares[i];
    memset(dst + end, 0, e->slot_offset - end);
    end = e->slot_offset + e->share_bytes;
  }
  memset(dst + end, 0, s->data_bytes - end);
}

/* Copies this rank's shares into the data slot image `dst` (data_bytes). */
loom_status snap_pack(loom_snapshot *s, unsigned char *dst) {
  for (int i = 0; i < loom_state_count(s->state); i++) {
    const entry_share *e = &s->shares[i];
    loom_buf local;
    loom_state_entry(s->state, i, NULL, NULL, &local, NULL, NULL);
    const unsigned char *src = (const unsigned char *)local.ptr + e->share_offset;
    if (!e->device) memcpy(dst + e->slot_offset, src, e->share_bytes);
    else LOOM_CHECK(loom_device_download(s->ctx, dst + e->slot_offset, src, e->share_bytes));
  }
  zero_gaps(s, dst);
  return LOOM_OK;
}

/* Parity of this rank's group for `slot`: member j encodes byte-slice j of the k members'
 * data, and sends fragment i of its slice to holder i, which stores it at the slice's offset. */
static loom_status encode_parity(loom_snapshot *s, int slot, loom_status status, const snap_comms *c) {
  int g = s->position / s->k;
  uint64_t L = s->data_bytes, slice = L / (uint64_t)s->k; /* multiples of 8 */
  if (!s->gathered) s->gathered = malloc(L);
  if (!s->parity) s->parity = malloc(slice * (uint64_t)s->m);
  unsigned char *gathered = s->gathered, *parity = s->parity;
  MPI_Request *requests = malloc(sizeof(MPI_Request) * (size_t)(s->m + s->role_count * s->k + 1));
  /* Parity flows between the groups of a column: the whole column goes on or stops together,
   * decided before the first message (a rank that failed earlier, or has no buffers, stops it). */
  int short_of_memory = !gathered || !parity || !requests;
  if (status == LOOM_OK && short_of_memory)
    status = loom_error_set(LOOM_ERR_NOMEM, "snapshot parity buffers (%llu bytes)", (unsigned long long)L);
  status = loom_status_agree_comm(c->column, status, "snapshot parity (this column)");
  if (status < 0) goto done;
  status = mpi_check(MPI_Alltoall(data_slot(s, slot), (int)(slice / 8), s->word, gathered,
                                  (int)(slice / 8), s->word, c->group), "MPI_Alltoall (snapshot slices)");
  const uint8_t *fragments[LOOM_EC_MAX_FRAGMENTS];
  uint8_t *outputs[LOOM_EC_MAX_FRAGMENTS];
  for (int j = 0; j < s->k; j++) fragments[j] = gathered + (uint64_t)j * slice;
  for (int i = 0; i < s->m; i++) outputs[i] = parity + (uint64_t)i * slice;
  if (status == LOOM_OK) status = loom_ec_encode(s->k, s->m, slice, fragments, outputs);
  /* every message is exchanged even after a failed encode (the world then refuses the slot) */
  int count = 0;
  for (int r = 0; r < s->role_count; r++) { /* receive what I hold */
    const parity_role *role = &s->roles[r];
    uint64_t role_slice = role->bytes / (uint64_t)s->k;
    for (int j = 0; j < s->k; j++)
      MPI_Irecv(parity_slot(s, slot) + role->offset + (uint64_t)j * role_slice, (int)(role_slice / 8),
                s->word, role->group * s->k + j, 100 + role->group * 64 + role->index, c->column,
                &requests[count++]);
  }
  for (int i = 0; i < s->m; i++)
    MPI_Isend(outputs[i], (int)(slice / 8), s->word, ((g + 1) * s->k + i) % s->n, 100 + g * 64 + i,
              c->column, &requests[count++]);
  loom_status sent = count > 0 ? mpi_check(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE),
                                           "MPI_Waitall (parity)") : LOOM_OK;
  if (status == LOOM_OK) status = sent;
done:
  free(requests);
  return status;
}

/* The slot a new snapshot goes to (the older one, or an invalid one), marked invalid until the
 * snapshot is complete; *seq gets its sequence number. */
int snap_begin_slot(loom_snapshot *s, uint64_t *seq) {
  seg_header *h = header(s);
  int slot = !h->slot[0].valid ? 0 : !h->slot[1].valid ? 1 : h->slot[0].seq < h->slot[1].seq ? 0 : 1;
  *seq = (h->slot[0].seq > h->slot[1].seq ? h->slot[0].seq : h->slot[1].seq) + 1;
  h->slot[slot].valid = 0;
  h->slot[slot].parity_valid = 0;
  __sync_synchronize();
  return slot;
}

/* With the data in `slot`: parity across the group, agreement over the world, then the slot
 * becomes valid at `step`. `status` is this rank's outcome so far; `data_sum` the slot's
 * checksum when the GPU computed it, else NULL (summed here). */
loom_status snap_finish_slot(loom_snapshot *s, int slot, uint64_t seq, int64_t step,
                           loom_status status, const uint64_t *data_sum, const snap_comms *c) {
  if (s->ec) status = encode_parity(s, slot, status, c); /* every rank, failed or not */
  char what[48];
  snprintf(what, sizeof what, "snapshot of step %lld", (long long)step);
  LOOM_CHECK(loom_status_agree_comm(c->world, status, what));
  seg_header *h = header(s);
  h->slot[slot].step = step;
  h->slot[slot].seq = seq;
  h->slot[slot].data_sum = data_sum ? *data_sum : sum_of(data_slot(s, slot), s->data_bytes);
  h->slot[slot].parity_sum = sum_of(parity_slot(s, slot), s->parity_bytes);
  __sync_synchronize();
  h->slot[slot].valid = 1;
  h->slot[slot].parity_valid = 1;
  if (loom_fault_due(s->ctx, LOOM_FAULT_CORRUPT, step)) {
    data_slot(s, slot)[s->payload / 2] ^= 0x5a; /* silent damage the checksum must catch */
    loom_log(s->ctx, LOOM_LOG_WARN, "fault injection: snapshot of step %lld corrupted on rank %d",
             (long long)step, s->rank);
  }
  return LOOM_OK;
}

loom_status loom_snapshot_take(loom_snapshot *s, int64_t step) {
  if (!s || step < 0) return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_take: no snapshot, or step < 0");
  if (s->async_ready) LOOM_CHECK(loom_snapshot_wait(s)); /* one writer of the slots at a time */
  uint64_t seq;
  int slot = snap_begin_slot(s, &seq);
  snap_comms c = {s->world, s->column, s->group};
  return snap_finish_slot(s, slot, seq, step, snap_pack(s, data_slot(s, slot)), NULL, &c);
}

loom_status loom_snapshot_destroy(loom_snapshot *s) {
  if (!s) return LOOM_OK;
  loom_status status = s->async_ready ? loom_snapshot_wait(s) : LOOM_OK; /* nobody asked yet */
  snap_async_release(s);
  for (int i = 0; s->shares && i < loom_state_count(s->state); i++) free(s->shares[i].replicas);
  free(s->shares);
  free(s->order);
  if (s->base) munmap(s->base, s->mapped);
  if (s->fd >= 0) close(s->fd);
  if (s->group != MPI_COMM_NULL) MPI_Comm_free(&s->group);
  if (s->column != MPI_COMM_NULL) MPI_Comm_free(&s->column);
  if (s->world != MPI_COMM_NULL) MPI_Comm_free(&s->world);
  if (s->word != MPI_DATATYPE_NULL) MPI_Type_free(&s->word);
  free(s->gathered);
  free(s->parity);
  free(s->column_of);
  free(s->position_of);
  free(s->payload_of);
  free(s->columns);
  free(s->group_bytes);
  free(s);
  return status;
}

int loom_snapshot_remove_job(const char *job) {
  char prefix[160];
  snprintf(prefix, sizeof prefix, "loom-%s-", job);
  DIR *dir = opendir("/dev/shm");
  if (!dir) return 0;
  int removed = 0;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
    char name[300];
    snprintf(name, sizeof name, "/%s", e->d_name);
    removed += shm_unlink(name) == 0;
  }
  closedir(dir);
  return removed;
}
