/* In-memory erasure-coded snapshots (see snapshot.h). Segment layout, bytes:
 *   [0, 4096)                         header (seg_header)
 *   [4096, 4096 + 2 L)                two data slots of L bytes (this rank's shares of its
 *                                     entries, each at an 8-byte aligned offset, zero-padded
 *                                     to its group's common length L, a multiple of 8 k)
 *   [4096 + 2 L, 4096 + 2 L + 2 P)    two parity slots of P bytes (the parity this rank holds
 *                                     for other groups, at the step of the same slot)
 * A slot is valid only after its data (and parity) are complete: the flags are written last. */
#include "checkpoint/snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/catalog.h"
#include "checkpoint/erasure.h"
#include "checkpoint/snapshot_sum.h"
#include "collectives/coll.h"
#include "runtime/device.h"
#include "runtime/executor.h"
#include "runtime/fault.h"
#include "runtime/log.h"

#ifdef LOOM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

enum { HEADER_BYTES = 4096, MAX_ROLES = 64 };

typedef struct {
  int64_t step;
  uint64_t seq;          /* higher = newer */
  uint64_t data_sum, parity_sum; /* snapshot_sum.h */
  int32_t valid, parity_valid;
} seg_slot;

typedef struct {
  char magic[8];         /* "LOOMSNP2" */
  int32_t world, rank;
  uint64_t payload_bytes, data_bytes, parity_bytes;
  seg_slot slot[2];
} seg_header;

typedef struct {
  int group;       /* group index in the column */
  int index;       /* parity fragment index i < m */
  uint64_t offset; /* into a parity slot */
  uint64_t bytes;  /* the group's L */
} parity_role;

/* A rank keeps a share of each registered slice: 1/R of it when R ranks hold the identical
 * slice (replicas, as in data parallelism), so a replicated model costs each rank 1/R of its
 * bytes and the replicas' shares together make the slice; restore gathers them back. */
typedef struct {
  uint64_t entry_bytes, element;    /* the local slice; bytes of one element */
  uint64_t share_offset, share_bytes; /* this rank's share of it */
  uint64_t slot_offset;             /* where the share sits in a data slot (8-byte aligned) */
  int tensor;                       /* catalog index: every rank exchanges in this order */
  int replica_count, replica_index;
  int *replicas;                    /* (replica_count) ranks holding the slice, ascending */
  int device;                       /* the slice is in device memory */
} entry_share;

struct loom_snapshot {
  loom_state *state;
  entry_share *shares;              /* (entries) in registration order */
  int *order;                       /* (entries) local indices by catalog index */
  loom_ctx *ctx;
  MPI_Comm world, column, group; /* group: this rank's data group (MPI_COMM_NULL without EC) */
  MPI_Datatype word;             /* 8 bytes: slot transfers count words, up to 16 GiB each */
  int rank, size;
  int ec, k, m, n;               /* erasure coding on; k data + m parity; n = column size */
  int column_index, position;    /* this rank's column (local rank) and place in it */
  int *column_members;           /* (n) world ranks of this column by position */
  uint64_t *group_bytes;         /* (n / k) L of each group of this column */
  int *column_of, *position_of;  /* (size) every rank's column and position */
  int column_count, *columns;    /* (column_count * n) world ranks by column and position */
  uint64_t *payload_of;          /* (size) every rank's state bytes */
  parity_role roles[MAX_ROLES];
  int role_count;
  unsigned char *gathered, *parity; /* encode_parity's buffers (L and m L / k bytes), kept:
                                     * fresh pages each snapshot cost more than the encoding */
  uint64_t payload, data_bytes, parity_bytes;
  char name[128];
  int fd;
  unsigned char *base;
  size_t mapped;
  /* asynchronous snapshots (set up by the first loom_snapshot_take_async) */
  int async_ready;
  MPI_Comm worker_world, worker_column, worker_group; /* the worker thread's collectives */
  unsigned char *staging;   /* (data_bytes) device image of a data slot, when any entry is on
                             * the device: shares are copied in, summed, then copied out at once */
  uint64_t *staging_sum;    /* device word: the image's checksum */
  uint64_t *host_sum;       /* pinned host word it is copied to */
  uint64_t *host_start;     /* pinned host word: the sum's start (host shares, zero tail) */
  uint64_t tail_sum;        /* terms of the zero words past the shares (padding to L) */
  loom_snapshot_range *plan; /* device table: the device shares' copies (fixed at setup) */
  int plan_count;
  uint64_t plan_longest;
  unsigned char *host_stage; /* pinned (data_bytes): host shares are copied here at the request
                              * and uploaded from here, never from pageable memory (a pageable
                              * upload may wait for the side stream, so for the compute stream) */
  int device_entries, registered;
#ifdef LOOM_HAVE_CUDA
  cudaStream_t side;
  cudaEvent_t compute_ready, copied_on_device, copied_to_host;
#endif
  loom_executor *worker;    /* publishes snapshots, one at a time */
  loom_req *in_flight;      /* the snapshot being published, or NULL */
  loom_status finished;     /* outcome of the last one, reported by the next call */
  char finished_message[1024];
  int fence_pending;
  int job_slot;             /* the job in flight (owned by the worker while it runs) */
  uint64_t job_seq;
  int64_t job_step;
  int started, skipped;
  double job_requested;     /* loom_now() at the request in flight */
  double job_copied, job_published; /* set by the worker; folded into stats when it is done */
  loom_snapshot_stats stats;
};

typedef struct {
  MPI_Comm world, column, group;
} snap_comms;

static seg_header *header(const loom_snapshot *s) { return (seg_header *)s->base; }
static unsigned char *data_slot(const loom_snapshot *s, int slot) {
  return s->base + HEADER_BYTES + (size_t)slot * s->data_bytes;
}
static unsigned char *parity_slot(const loom_snapshot *s, int slot) {
  return s->base + HEADER_BYTES + 2 * s->data_bytes + (size_t)slot * s->parity_bytes;
}

static uint64_t sum_of(const unsigned char *p, uint64_t n) { return loom_snapshot_sum(p, n, 0); }
static uint64_t round8(uint64_t n) { return (n + 7) / 8 * 8; }

static loom_status mpi_check(int rc, const char *what) {
  if (rc == MPI_SUCCESS) return LOOM_OK;
  return loom_error_set(LOOM_ERR_MPI, "snapshot: %s failed (MPI error %d)", what, rc);
}

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
  s->k = parity > 0 && uniform ? group_size_for(n, n - parity) : 0;
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

/* Byte range [*offset, *offset + *bytes) of replica q's share of entry e: replica q of R keeps
 * elements [q ceil(E/R), (q + 1) ceil(E/R)) of the E in the slice. */
static void share_range(const entry_share *e, int q, uint64_t *offset, uint64_t *bytes) {
  uint64_t elements = e->entry_bytes / e->element, R = (uint64_t)e->replica_count;
  uint64_t per = (elements + R - 1) / R, lo = per * (uint64_t)q;
  if (lo > elements) lo = elements;
  uint64_t hi = lo + per < elements ? lo + per : elements;
  *offset = lo * e->element;
  *bytes = (hi - lo) * e->element;
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
  int failed = status != LOOM_OK, any_failed = 0; /* before the next collective */
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, s->world);
  if (any_failed && !failed)
    status = loom_error_set(LOOM_ERR_STATE, "snapshot: another rank could not plan its shares (its "
                            "message names the cause)");
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
  int bad = status != LOOM_OK, any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, s->world);
  if (any_bad) {
    if (!bad) status = loom_error_set(LOOM_ERR_IO, "snapshot: another rank could not set up its "
                                      "segment (its message names the cause)");
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
static loom_status pack(loom_snapshot *s, unsigned char *dst) {
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
  loom_status status = LOOM_OK;
  for (int n = 0; n < loom_state_count(s->state) && status == LOOM_OK; n++) {
    int i = s->order[n];
    const entry_share *e = &s->shares[i];
    loom_buf local;
    loom_state_entry(s->state, i, NULL, NULL, &local, NULL, NULL);
    unsigned char *slice = e->device ? malloc(e->entry_bytes ? e->entry_bytes : 1) : local.ptr;
    uint64_t pieces = (e->entry_bytes + PIECE_BYTES - 1) / PIECE_BYTES + 1;
    MPI_Request *requests = malloc(sizeof(MPI_Request) * 2 * (size_t)e->replica_count * pieces);
    if (!slice || !requests) {
      if (e->device) free(slice);
      free(requests);
      return loom_error_set(LOOM_ERR_NOMEM, "snapshot restore (%llu bytes)",
                            (unsigned long long)e->entry_bytes);
    }
    memcpy(slice + e->share_offset, src + e->slot_offset, e->share_bytes);
    int count = 0;
    for (int q = 0; q < e->replica_count; q++) {
      if (q == e->replica_index) continue;
      uint64_t offset, bytes;
      share_range(e, q, &offset, &bytes);
      post_pieces(0, slice + offset, bytes, e->replicas[q], s->world, requests, &count);
      post_pieces(1, slice + e->share_offset, e->share_bytes, e->replicas[q], s->world, requests, &count);
    }
    if (count) status = mpi_check(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE),
                                  "MPI_Waitall (gathering snapshot shares from replicas)");
    free(requests);
    if (e->device) {
      if (status == LOOM_OK) status = loom_device_upload(s->ctx, local.ptr, slice, e->entry_bytes);
      free(slice);
    }
  }
  return status;
}

/* Parity of this rank's group for `slot`: member j encodes byte-slice j of the k members'
 * data, and sends fragment i of its slice to holder i, which stores it at the slice's offset. */
static loom_status encode_parity(loom_snapshot *s, int slot, const snap_comms *c) {
  int g = s->position / s->k;
  uint64_t L = s->data_bytes, slice = L / (uint64_t)s->k; /* multiples of 8 */
  if (!s->gathered) s->gathered = malloc(L);
  if (!s->parity) s->parity = malloc(slice * (uint64_t)s->m);
  unsigned char *gathered = s->gathered, *parity = s->parity;
  MPI_Request *requests = malloc(sizeof(MPI_Request) * (size_t)(s->m + s->role_count * s->k + 1));
  loom_status status = LOOM_OK;
  int short_of_memory = !gathered || !parity || !requests, group_short = 0;
  MPI_Allreduce(&short_of_memory, &group_short, 1, MPI_INT, MPI_MAX, c->group); /* before the Alltoall */
  if (group_short) {
    status = loom_error_set(LOOM_ERR_NOMEM, "snapshot parity buffers (%llu bytes)%s",
                            (unsigned long long)L, short_of_memory ? "" : " on another group member");
    goto done;
  }
  status = mpi_check(MPI_Alltoall(data_slot(s, slot), (int)(slice / 8), s->word, gathered,
                                  (int)(slice / 8), s->word, c->group), "MPI_Alltoall (snapshot slices)");
  const uint8_t *fragments[LOOM_EC_MAX_FRAGMENTS];
  uint8_t *outputs[LOOM_EC_MAX_FRAGMENTS];
  for (int j = 0; j < s->k; j++) fragments[j] = gathered + (uint64_t)j * slice;
  for (int i = 0; i < s->m; i++) outputs[i] = parity + (uint64_t)i * slice;
  if (status == LOOM_OK) status = loom_ec_encode(s->k, s->m, slice, fragments, outputs);
  int count = 0;
  for (int r = 0; r < s->role_count && status == LOOM_OK; r++) { /* receive what I hold */
    const parity_role *role = &s->roles[r];
    uint64_t role_slice = role->bytes / (uint64_t)s->k;
    for (int j = 0; j < s->k; j++)
      MPI_Irecv(parity_slot(s, slot) + role->offset + (uint64_t)j * role_slice, (int)(role_slice / 8),
                s->word, role->group * s->k + j, 100 + role->group * 64 + role->index, c->column,
                &requests[count++]);
  }
  for (int i = 0; i < s->m && status == LOOM_OK; i++)
    MPI_Isend(outputs[i], (int)(slice / 8), s->word, ((g + 1) * s->k + i) % s->n, 100 + g * 64 + i,
              c->column, &requests[count++]);
  if (count > 0 && status == LOOM_OK)
    status = mpi_check(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE), "MPI_Waitall (parity)");
done:
  free(requests);
  return status;
}

/* The slot a new snapshot goes to (the older one, or an invalid one), marked invalid until the
 * snapshot is complete; *seq gets its sequence number. */
static int begin_slot(loom_snapshot *s, uint64_t *seq) {
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
static loom_status finish_slot(loom_snapshot *s, int slot, uint64_t seq, int64_t step,
                               loom_status status, const uint64_t *data_sum, const snap_comms *c) {
  if (status == LOOM_OK && s->ec) status = encode_parity(s, slot, c);
  int bad = status != LOOM_OK, any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, c->world);
  if (any_bad)
    return bad ? status : loom_error_set(LOOM_ERR_STATE, "snapshot of step %lld failed on another "
                                          "rank (its message names the cause)", (long long)step);
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
  int slot = begin_slot(s, &seq);
  snap_comms c = {s->world, s->column, s->group};
  return finish_slot(s, slot, seq, step, pack(s, data_slot(s, slot)), NULL, &c);
}

/* ---- asynchronous snapshots ---------------------------------------------------------------
 * The copy of device state leaves the training path. On a side stream, behind the compute
 * stream's pending work, each device share is copied into a device image of the data slot and
 * checksummed in the same pass (HBM speed; the fence makes the next optimizer step wait only
 * for this), host shares are uploaded into it, and one copy moves it into the segment,
 * registered with CUDA so it runs at PCIe speed. A worker thread then encodes the parity with
 * its own communicators and publishes the slot. One snapshot in flight; a request while one is
 * in flight is skipped on every rank alike (counted, and logged once). Without device entries
 * the shares are copied into the slot at the call and the worker checksums them. */

/* The worker's job: wait for the copies into the slot, then publish it. */
static loom_status publish_job(void *arg) {
  loom_snapshot *s = arg;
  snap_comms c = {s->worker_world, s->worker_column, s->worker_group};
  loom_status status = LOOM_OK;
  const uint64_t *data_sum = NULL;
#ifdef LOOM_HAVE_CUDA
  if (s->device_entries) {
    if (cudaEventSynchronize(s->copied_to_host) != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "snapshot: copying device state to host failed");
    data_sum = s->host_sum;
  }
#endif
  s->job_copied = loom_now();
  status = finish_slot(s, s->job_slot, s->job_seq, s->job_step, status, data_sum, &c);
  s->job_published = loom_now();
  return status;
}

/* The training thread's record of a finished job (the request's completion orders the
 * worker's writes before these reads). */
static void record_job(loom_snapshot *s, loom_status status) {
  if (status != LOOM_OK) return;
  s->stats.published++;
  s->stats.copy_seconds += s->job_copied - s->job_requested;
  s->stats.publish_seconds += s->job_published - s->job_requested;
}

/* 1 while a snapshot is being published; when it has finished, keeps its outcome in
 * s->finished (and its message) for the next call to report. */
static int still_publishing(loom_snapshot *s) {
  if (!s->in_flight) return 0;
  int done = 0;
  loom_status status = loom_test(&s->in_flight, &done);
  if (!done) return 1;
  record_job(s, status);
  s->finished = status;
  snprintf(s->finished_message, sizeof s->finished_message, "%s",
           status == LOOM_OK ? "" : loom_error_string());
  return 0;
}

/* The last finished snapshot's outcome, once. */
static loom_status take_finished(loom_snapshot *s) {
  loom_status status = s->finished;
  s->finished = LOOM_OK;
  if (status != LOOM_OK) loom_error_restore(s->finished_message);
  return status;
}

static loom_status setup_async(loom_snapshot *s) {
  loom_status status = LOOM_OK;
  if (MPI_Comm_dup(s->world, &s->worker_world) != MPI_SUCCESS ||
      MPI_Comm_dup(s->column, &s->worker_column) != MPI_SUCCESS ||
      (s->group != MPI_COMM_NULL && MPI_Comm_dup(s->group, &s->worker_group) != MPI_SUCCESS))
    return loom_error_set(LOOM_ERR_MPI, "snapshot: duplicating communicators for the worker");
  for (int i = 0; i < loom_state_count(s->state); i++) s->device_entries += s->shares[i].device;
#ifdef LOOM_HAVE_CUDA
  if (s->device_entries) {
    cudaError_t e = cudaMalloc((void **)&s->staging, s->data_bytes);
    if (e == cudaSuccess) e = cudaMemset(s->staging, 0, s->data_bytes); /* gaps stay zero */
    if (e == cudaSuccess) e = cudaMalloc((void **)&s->staging_sum, sizeof(uint64_t));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&s->host_sum, sizeof(uint64_t));
    if (e == cudaSuccess) e = cudaMallocHost((void **)&s->host_start, sizeof(uint64_t));
    uint64_t host_bytes = 0;
    for (int i = 0; i < loom_state_count(s->state); i++)
      if (!s->shares[i].device) host_bytes = s->shares[i].slot_offset + round8(s->shares[i].share_bytes);
    if (e == cudaSuccess && host_bytes) e = cudaMallocHost((void **)&s->host_stage, host_bytes);
    if (e == cudaSuccess && host_bytes) memset(s->host_stage, 0, host_bytes);
    for (uint64_t w = s->payload / 8; w < s->data_bytes / 8; w++) s->tail_sum += loom_snapshot_sum_term(0, w);
    loom_snapshot_range *table = calloc((size_t)s->device_entries, sizeof *table);
    if (!table && e == cudaSuccess) e = cudaErrorMemoryAllocation;
    for (int i = 0; e == cudaSuccess && i < loom_state_count(s->state); i++) {
      const entry_share *share = &s->shares[i];
      loom_buf local;
      loom_state_entry(s->state, i, NULL, NULL, &local, NULL, NULL);
      if (!share->device || share->share_bytes == 0) continue;
      table[s->plan_count++] = (loom_snapshot_range){(const unsigned char *)local.ptr + share->share_offset,
                                                     share->slot_offset, share->share_bytes,
                                                     share->slot_offset / 8};
      if (share->share_bytes > s->plan_longest) s->plan_longest = share->share_bytes;
    }
    if (e == cudaSuccess && s->plan_count) e = cudaMalloc((void **)&s->plan, sizeof *table * (size_t)s->plan_count);
    if (e == cudaSuccess && s->plan_count)
      e = cudaMemcpy(s->plan, table, sizeof *table * (size_t)s->plan_count, cudaMemcpyHostToDevice);
    free(table);
    if (e != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "snapshot: no GPU memory for the device image of a "
                              "slot (%llu bytes): %s; use loom_snapshot_take",
                              (unsigned long long)s->data_bytes, cudaGetErrorString(e));
  }
  if (status == LOOM_OK && s->device_entries) {
    s->registered = cudaHostRegister(s->base, s->mapped, cudaHostRegisterDefault) == cudaSuccess;
    if (!s->registered) cudaGetLastError(); /* pageable copies: slower, still correct */
    if (cudaStreamCreateWithFlags(&s->side, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->compute_ready, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->copied_on_device, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->copied_to_host, cudaEventDisableTiming) != cudaSuccess)
      status = loom_error_set(LOOM_ERR_CUDA, "snapshot: creating the side stream and events");
  }
#endif
  if (status == LOOM_OK) status = loom_executor_create("loom-snapshot", 1, &s->worker);
  if (status == LOOM_OK) s->async_ready = 1;
  return status;
}

#ifdef LOOM_HAVE_CUDA
/* Device path (above). The image's checksum starts on the host with the terms of the host
 * shares and of the zero tail, and the GPU adds those of the device shares as it copies them. */
static loom_status enqueue_device_copies(loom_snapshot *s, unsigned char *dst) {
  cudaStream_t compute = (cudaStream_t)loom_ctx_stream(s->ctx);
  if (cudaEventRecord(s->compute_ready, compute) != cudaSuccess ||
      cudaStreamWaitEvent(s->side, s->compute_ready, 0) != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot: ordering the copies after the compute stream");
  uint64_t start = s->tail_sum;
  for (int i = 0; i < loom_state_count(s->state); i++) { /* host shares: staged, summed */
    const entry_share *e = &s->shares[i];
    loom_buf local;
    loom_state_entry(s->state, i, NULL, NULL, &local, NULL, NULL);
    if (e->device || e->share_bytes == 0) continue;
    /* the previous upload from the stage has finished (one snapshot in flight); pad bytes stay 0 */
    memcpy(s->host_stage + e->slot_offset, (const unsigned char *)local.ptr + e->share_offset, e->share_bytes);
    start += loom_snapshot_sum(s->host_stage + e->slot_offset, round8(e->share_bytes), e->slot_offset / 8);
  }
  *s->host_start = start;
  cudaError_t rc = cudaMemcpyAsync(s->staging_sum, s->host_start, sizeof(uint64_t),
                                   cudaMemcpyHostToDevice, s->side);
  for (int i = 0; i < loom_state_count(s->state) && rc == cudaSuccess; i++) {
    const entry_share *e = &s->shares[i];
    if (!e->device && e->share_bytes)
      rc = cudaMemcpyAsync(s->staging + e->slot_offset, s->host_stage + e->slot_offset, e->share_bytes,
                           cudaMemcpyHostToDevice, s->side);
  }
  if (rc != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot: enqueuing a copy: %s", cudaGetErrorString(rc));
  LOOM_CHECK(loom_snapshot_copy_sum_device(s->staging, s->plan, s->plan_count, s->plan_longest,
                                           s->staging_sum, s->side));
  if (cudaEventRecord(s->copied_on_device, s->side) != cudaSuccess ||
      cudaMemcpyAsync(dst, s->staging, s->data_bytes, cudaMemcpyDeviceToHost, s->side) != cudaSuccess ||
      cudaMemcpyAsync(s->host_sum, s->staging_sum, sizeof(uint64_t), cudaMemcpyDeviceToHost, s->side) != cudaSuccess ||
      cudaEventRecord(s->copied_to_host, s->side) != cudaSuccess)
    return loom_error_set(LOOM_ERR_CUDA, "snapshot: enqueuing the copy to the segment");
  s->fence_pending = 1;
  return LOOM_OK;
}
#endif

/* The shares into `slot`: enqueued on the GPU when any entry is on the device, else copied now. */
static loom_status enqueue_copies(loom_snapshot *s, int slot) {
#ifdef LOOM_HAVE_CUDA
  if (s->device_entries) return enqueue_device_copies(s, data_slot(s, slot));
#endif
  return pack(s, data_slot(s, slot));
}

loom_status loom_snapshot_take_async(loom_snapshot *s, int64_t step, int *started) {
  if (started) *started = 0;
  if (!s || step < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_take_async: no snapshot, or step < 0");
  if (!s->async_ready) {
    loom_status status = setup_async(s);
    int bad = status != LOOM_OK, any_bad = 0;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, s->world);
    if (any_bad)
      return bad ? status : loom_error_set(LOOM_ERR_STATE, "snapshot: another rank could not set "
                                            "up asynchronous snapshots");
  }
  int busy = still_publishing(s), any_busy = 0;
  MPI_Allreduce(&busy, &any_busy, 1, MPI_INT, MPI_MAX, s->world);
  if (any_busy) {
    if (s->skipped++ == 0 && s->rank == 0)
      loom_log(s->ctx, LOOM_LOG_INFO, "snapshot of step %lld skipped: the previous one is still "
               "being published (requests while one is in flight are skipped; counted, not "
               "logged again)", (long long)step);
    return LOOM_OK;
  }
  LOOM_CHECK(take_finished(s)); /* every rank has finished it: the same outcome everywhere */
  LOOM_CHECK(loom_snapshot_fence(s));
  uint64_t seq;
  s->job_requested = loom_now();
  int slot = begin_slot(s, &seq);
  LOOM_CHECK(enqueue_copies(s, slot));
  s->job_slot = slot, s->job_seq = seq, s->job_step = step;
  LOOM_CHECK(loom_executor_post(s->worker, publish_job, s, NULL, &s->in_flight));
  s->started++;
  if (started) *started = 1;
  return LOOM_OK;
}

loom_status loom_snapshot_fence(loom_snapshot *s) {
  if (!s) return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_fence: no snapshot");
#ifdef LOOM_HAVE_CUDA
  if (s->fence_pending) {
    if (cudaStreamWaitEvent((cudaStream_t)loom_ctx_stream(s->ctx), s->copied_on_device, 0) != cudaSuccess)
      return loom_error_set(LOOM_ERR_CUDA, "snapshot: fencing the compute stream");
    s->fence_pending = 0;
  }
#endif
  return LOOM_OK;
}

loom_status loom_snapshot_wait(loom_snapshot *s) {
  if (!s) return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_wait: no snapshot");
  if (!s->async_ready) return LOOM_OK;
  if (s->in_flight) {
    loom_status status = loom_wait(&s->in_flight);
    record_job(s, status);
    if (status != LOOM_OK) return status;
  }
  return take_finished(s);
}

int loom_snapshot_skipped(const loom_snapshot *s) { return s ? s->skipped : 0; }
loom_snapshot_stats loom_snapshot_get_stats(const loom_snapshot *s) {
  loom_snapshot_stats out = {0};
  if (!s) return out;
  out = s->stats;
  out.skipped = s->skipped;
  return out;
}

uint64_t loom_snapshot_share_bytes(const loom_snapshot *s) {
  uint64_t bytes = 0;
  for (int i = 0; s && i < loom_state_count(s->state); i++) bytes += s->shares[i].share_bytes;
  return bytes;
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
static loom_status rebuild_column(loom_snapshot *s, const holdings *all, int64_t step) {
  int k = s->k, n = s->n, c = s->column_index;
  for (int g = 0; g < n / k; g++) {
    int ranks[LOOM_EC_MAX_FRAGMENTS], fragment[LOOM_EC_MAX_FRAGMENTS], lost = 0;
    for (int j = 0; j < k; j++) lost += slot_with(&all[s->columns[c * n + g * k + j]], step, 0) < 0;
    if (lost == 0) continue;
    available(s, all, c, g, step, ranks, fragment);
    uint64_t L = s->group_bytes[g];
    int rebuilder = ranks[0], me = s->rank, tag = 1000 + g * 128;
    /* positions in the column communicator */
    int rebuilder_pos = s->position_of[rebuilder];
    loom_status status = LOOM_OK;
    if (me == rebuilder) {
      unsigned char *buffers[LOOM_EC_MAX_FRAGMENTS] = {0}, *rebuilt[LOOM_EC_MAX_FRAGMENTS] = {0};
      const uint8_t *fragments[LOOM_EC_MAX_FRAGMENTS] = {0};
      MPI_Request requests[LOOM_EC_MAX_FRAGMENTS];
      int count = 0;
      for (int f = 0; f < k && status == LOOM_OK; f++) {
        if (ranks[f] == me) { /* my own data slot or parity piece */
          fragments[fragment[f]] = own_fragment(s, all, step, g, fragment[f]);
          continue;
        }
        buffers[f] = malloc(L);
        if (!buffers[f]) status = loom_error_set(LOOM_ERR_NOMEM, "snapshot rebuild (%llu bytes)", (unsigned long long)L);
        else MPI_Irecv(buffers[f], (int)(L / 8), s->word, s->position_of[ranks[f]], tag + fragment[f], s->column, &requests[count++]);
        fragments[fragment[f]] = buffers[f];
      }
      if (count) MPI_Waitall(count, requests, MPI_STATUSES_IGNORE);
      for (int j = 0; j < k && status == LOOM_OK; j++)
        if (!fragments[j] && !(rebuilt[j] = malloc(L)))
          status = loom_error_set(LOOM_ERR_NOMEM, "snapshot rebuild (%llu bytes)", (unsigned long long)L);
      if (status == LOOM_OK) status = loom_ec_rebuild(k, s->m, L, fragments, rebuilt);
      count = 0;
      for (int j = 0; j < k; j++)
        if (!fragments[j]) MPI_Isend(rebuilt[j], (int)(L / 8), s->word, g * k + j, tag + 100 + j, s->column, &requests[count++]);
      if (count) MPI_Waitall(count, requests, MPI_STATUSES_IGNORE);
      for (int f = 0; f < LOOM_EC_MAX_FRAGMENTS; f++) free(buffers[f]), free(rebuilt[f]);
    } else {
      for (int f = 1; f < k; f++) /* survivors send their fragment */
        if (ranks[f] == me)
          MPI_Send(own_fragment(s, all, step, g, fragment[f]), (int)(L / 8), s->word, rebuilder_pos,
                   tag + fragment[f], s->column);
      if (s->position / k == g && slot_with(&all[me], step, 0) < 0) { /* I was lost */
        seg_header *h = header(s);
        int slot = h->slot[0].seq <= h->slot[1].seq ? 0 : 1;
        h->slot[slot].valid = h->slot[slot].parity_valid = 0;
        MPI_Recv(data_slot(s, slot), (int)(L / 8), s->word, rebuilder_pos, tag + 100 + s->position % k,
                 s->column, MPI_STATUS_IGNORE);
        h->slot[slot].step = step;
        h->slot[slot].seq = (h->slot[0].seq > h->slot[1].seq ? h->slot[0].seq : h->slot[1].seq) + 1;
        h->slot[slot].data_sum = sum_of(data_slot(s, slot), s->data_bytes);
        __sync_synchronize();
        h->slot[slot].valid = 1;
      }
    }
    LOOM_CHECK(status);
  }
  return LOOM_OK;
}

loom_status loom_snapshot_restore(loom_snapshot *s, int64_t *step, int *restored) {
  if (!s || !restored) return loom_error_set(LOOM_ERR_ARG, "loom_snapshot_restore: NULL argument");
  *restored = 0;
  holdings mine = inspect(s);
  holdings *all = malloc(sizeof(holdings) * (size_t)s->size);
  if (!all) return loom_error_set(LOOM_ERR_NOMEM, "snapshot restore table");
  loom_status status = mpi_check(MPI_Allgather(&mine, 6, MPI_INT64_T, all, 6, MPI_INT64_T, s->world),
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
  int bad = status != LOOM_OK, any_bad = 0; /* agreed before the shares are exchanged */
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, s->world);
  if (!any_bad) {
    status = unpack(s, data_slot(s, slot));
    bad = status != LOOM_OK;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, s->world);
  }
  free(all);
  if (any_bad)
    return bad ? status : loom_error_set(LOOM_ERR_STATE, "snapshot restore failed on another rank");
  if (s->rank == 0)
    loom_log(s->ctx, LOOM_LOG_WARN, "restored step %lld from the in-memory snapshots of job %s%s%s",
             (long long)best, loom_ctx_job_id(s->ctx), rebuilds ? "; lost or damaged snapshots "
             "rebuilt from parity: " : "", rebuilds ? (rebuilds == 1 ? "1 rank" : "several ranks") : "");
  *step = best;
  *restored = 1;
  return LOOM_OK;
}

void loom_snapshot_destroy(loom_snapshot *s) {
  if (!s) return;
  if (s->async_ready) loom_snapshot_wait(s);
  loom_executor_destroy(s->worker);
#ifdef LOOM_HAVE_CUDA
  if (s->staging) cudaFree(s->staging);
  if (s->staging_sum) cudaFree(s->staging_sum);
  if (s->host_sum) cudaFreeHost(s->host_sum);
  if (s->host_start) cudaFreeHost(s->host_start);
  if (s->plan) cudaFree(s->plan);
  if (s->host_stage) cudaFreeHost(s->host_stage);
  if (s->registered) cudaHostUnregister(s->base);
  if (s->side) cudaStreamDestroy(s->side);
  if (s->compute_ready) cudaEventDestroy(s->compute_ready);
  if (s->copied_on_device) cudaEventDestroy(s->copied_on_device);
  if (s->copied_to_host) cudaEventDestroy(s->copied_to_host);
#endif
  for (int i = 0; s->shares && i < loom_state_count(s->state); i++) free(s->shares[i].replicas);
  free(s->shares);
  free(s->order);
  if (s->worker_group != MPI_COMM_NULL) MPI_Comm_free(&s->worker_group);
  if (s->worker_column != MPI_COMM_NULL) MPI_Comm_free(&s->worker_column);
  if (s->worker_world != MPI_COMM_NULL) MPI_Comm_free(&s->worker_world);
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
