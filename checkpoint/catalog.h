/* The world's view of a state registry for checkpoints (private to checkpoint/): every rank's
 * tensor names and specs gathered onto every rank, so that all ranks agree without further
 * messages on the distinct tensors (ranks may register different ones: each pipeline stage
 * its own), on which rank writes which slice, and on the shape of the index. Writers: among
 * the ranks holding identical slices of a tensor (its replicas) one writes, chosen greedily
 * so the bytes are spread over the replicas (DataStates-LLM, HPDC'24: every rank writes a
 * share; a replicated model is not written by rank 0 alone). */
#ifndef LOOM_CHECKPOINT_CATALOG_H
#define LOOM_CHECKPOINT_CATALOG_H

#include <mpi.h>

#include "runtime/state.h"

typedef struct {
  int world;             /* ranks */
  int tensor_count;      /* distinct names over the world */
  char **names;          /* (tensor_count) sorted */
  loom_state_spec *specs;/* (tensor_count) */
  unsigned char *writes; /* (world * tensor_count): rank r writes its slice of tensor t */
  int local_count;       /* this rank's registered entries */
  int *local_tensor;     /* (local_count) catalog index of each local entry */
  unsigned char *local_writes; /* (local_count) this rank writes that entry */
  double local_bytes;    /* bytes this rank writes */
  int *holder_start;     /* (tensor_count + 1) holders of tensor t: holder_ranks[holder_start[t]
                          * .. holder_start[t + 1]), ascending */
  int *holder_ranks;     /* (entries over the world) */
} ckpt_catalog;

/* Builds the catalog over `comm` (collective). LOOM_ERR_ARG (on every rank) when two ranks
 * register one name with different specs. */
loom_status ckpt_catalog_build(loom_state *state, MPI_Comm comm, ckpt_catalog *out);
void ckpt_catalog_free(ckpt_catalog *catalog);
/* Index of `name`, or -1. */
int ckpt_catalog_find(const ckpt_catalog *catalog, const char *name);
/* The replicas of `rank`'s slice of tensor t (ranks holding the identical slice, `rank`
 * included) into `out` (capacity catalog->world), ascending; returns how many (0 when `rank`
 * does not hold t, -1 on a bad spec). In-memory snapshots keep 1/count of such a slice per
 * replica. */
int ckpt_catalog_replicas(const ckpt_catalog *catalog, const loom_mesh_shape *shape, int t,
                          int rank, int *out);

#endif
