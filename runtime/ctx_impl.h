/* The context's fields, for the runtime and the modules above it. Private to libloom. */
#ifndef LOOM_RUNTIME_CTX_IMPL_H
#define LOOM_RUNTIME_CTX_IMPL_H

#include <mpi.h>
#include <pthread.h>

#include "runtime/ctx.h"
#include "runtime/dtype.h"
#include "runtime/executor.h"

struct loom_ctx {
  loom_config config;
  int rank, size;
  int local_rank, local_size;
  int node, node_count;
  int host_local_rank, host_local_size; /* on the real host, whatever LOOM_RANKS_PER_NODE says */
  loom_device device;  /* where this rank computes */
  void *stream;        /* cudaStream_t compute stream; NULL on CPU */
  int staged;          /* device traffic through pinned host buffers over MPI (staged.c) */
  int thread_level;
  int owns_mpi;          /* loom_init called MPI_Init_thread, so finalize ends MPI */
  double start_seconds;  /* loom_now() at init; log lines show time since */
  const char *launcher;
  loom_group *world;
  loom_group *node_group;            /* ranks on this node; subgroups use it */
  int threaded;                      /* MPI_THREAD_MULTIPLE: groups get lane threads */
  pthread_mutex_t lanes_lock;        /* creation of group lanes (first use, any thread) */
  /* Wrapping uint8 sum: Open MPI 4.1's vectorised MPI_SUM on MPI_UINT8_T saturates at 255
   * (op/avx component), so loom brings its own modular addition. */
  MPI_Op uint8_sum;
  struct loom_watchdog *watchdog; /* runtime/watchdog.h */
  char job_id[64];                /* resolved at init, the same on every rank */
};

typedef struct loom_watchdog loom_watchdog;

/* Chooses the device from the configuration and creates the compute stream (device.c). */
loom_status loom_device_select(loom_ctx *ctx);
void loom_device_release(loom_ctx *ctx);

/* A one-line MPI error as a loom status: "<what> on rank R: <MPI text>". */
loom_status loom_mpi_error(const loom_ctx *ctx, int mpi_rc, const char *what);

/* Returns the status of an MPI call, naming the call. */
#define LOOM_MPI_CHECK(ctx, call)                                                          \
  do {                                                                                     \
    int loom_mpi_rc_ = (call);                                                             \
    if (loom_mpi_rc_ != MPI_SUCCESS) return loom_mpi_error((ctx), loom_mpi_rc_, #call);    \
  } while (0)

#endif
