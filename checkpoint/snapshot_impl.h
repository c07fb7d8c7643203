/* Private to checkpoint/snapshot*.c: the snapshot object, its segment layout, and the steps
 * the synchronous path (snapshot.c), the asynchronous one (snapshot_async.c) and restore
 * (snapshot_restore.c) share. Segment layout, bytes:
 *   [0, 4096)                         header (seg_header)
 *   [4096, 4096 + 2 L)                two data slots of L bytes (this rank's shares of its
 *                                     entries, each at an 8-byte aligned offset, zero-padded
 *                                     to its group's common length L, a multiple of 8 k)
 *   [4096 + 2 L, 4096 + 2 L + 2 P)    two parity slots of P bytes (the parity this rank holds
 *                                     for other groups, at the step of the same slot)
 * A slot is valid only after its data (and parity) are complete: the flags are written last. */
#ifndef LOOM_CHECKPOINT_SNAPSHOT_IMPL_H
#define LOOM_CHECKPOINT_SNAPSHOT_IMPL_H

#include <mpi.h>
#include <pthread.h>
#include <stdint.h>

#include "checkpoint/snapshot.h"
#include "checkpoint/snapshot_sum.h"
#include "runtime/executor.h"

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
  /* The snapshot being published: its job reports its end here (the caller may hold the job's
   * request, so the snapshot does not wait on it); `unclaimed` is that request when the caller
   * did not take it. job_active is the training thread's; job_done, job_result and
   * job_result_message are guarded by job_lock. */
  pthread_mutex_t job_lock;
  pthread_cond_t job_cond;
  int job_sync_ready;       /* job_lock and job_cond initialised */
  int job_active, job_done;
  loom_status job_result;
  char job_result_message[1024];
  loom_req *unclaimed;
  loom_status finished;     /* outcome of the last one, reported by the next call */
  char finished_message[1024];
  int fence_pending;
  int job_slot;             /* the job in flight (owned by the worker while it runs) */
  loom_status job_status;   /* the request's own outcome (a failed copy is still published, as
                             * a failure every rank agrees on) */
  char job_message[512];
  uint64_t job_seq;
  int64_t job_step;
  int skipped;             /* requests skipped while one was in flight */
  double job_requested;     /* loom_now() at the request in flight */
  double job_copied, job_published; /* set by the worker; folded into stats when it is done */
  loom_snapshot_stats stats;
};

typedef struct {
  MPI_Comm world, column, group;
} snap_comms;

static inline seg_header *header(const loom_snapshot *s) { return (seg_header *)s->base; }
static inline unsigned char *data_slot(const loom_snapshot *s, int slot) {
  return s->base + HEADER_BYTES + (size_t)slot * s->data_bytes;
}
static inline unsigned char *parity_slot(const loom_snapshot *s, int slot) {
  return s->base + HEADER_BYTES + 2 * s->data_bytes + (size_t)slot * s->parity_bytes;
}

static inline uint64_t sum_of(const unsigned char *p, uint64_t n) { return loom_snapshot_sum(p, n, 0); }
static inline uint64_t round8(uint64_t n) { return (n + 7) / 8 * 8; }

static inline loom_status mpi_check(int rc, const char *what) {
  if (rc == MPI_SUCCESS) return LOOM_OK;
  return loom_error_set(LOOM_ERR_MPI, "snapshot: %s failed (MPI error %d)", what, rc);
}

/* Byte range [*offset, *offset + *bytes) of replica q's share of entry e: replica q of R keeps
 * elements [q ceil(E/R), (q + 1) ceil(E/R)) of the E in the slice. */
static inline void share_range(const entry_share *e, int q, uint64_t *offset, uint64_t *bytes) {
  uint64_t elements = e->entry_bytes / e->element, R = (uint64_t)e->replica_count;
  uint64_t per = (elements + R - 1) / R, lo = per * (uint64_t)q;
  if (lo > elements) lo = elements;
  uint64_t hi = lo + per < elements ? lo + per : elements;
  *offset = lo * e->element;
  *bytes = (hi - lo) * e->element;
}

/* Copies this rank's shares into the data slot image `dst` (data_bytes). */
loom_status snap_pack(loom_snapshot *s, unsigned char *dst);
/* The slot a new snapshot goes to, marked invalid until it is complete; *seq its number. */
int snap_begin_slot(loom_snapshot *s, uint64_t *seq);
/* Parity, agreement over the world, then the slot valid at `step` (see snapshot.c). */
loom_status snap_finish_slot(loom_snapshot *s, int slot, uint64_t seq, int64_t step,
                             loom_status status, const uint64_t *data_sum, const snap_comms *c);
/* Frees what asynchronous snapshots set up (worker, communicators, device buffers, stream,
 * events) and resets it, so a later request sets it up afresh. */
void snap_async_release(loom_snapshot *s);

#endif
