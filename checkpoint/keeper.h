/* The keeper of a training loop (runtime/loop.h): when and how the state registry is saved and
 * restored. HDF5 checkpoints every `ckpt_every` steps, at the end and on the scheduler's signal
 * (synchronous, or in the background with `ckpt_async`), and in-memory snapshots every
 * `snapshot_every` steps (erasure coded with `snapshot_parity`, in the background with
 * `snapshot_async`). At start it resumes from the newest in-memory snapshot every rank can
 * restore, else (with `resume`, or in a requeued Slurm job) from `ckpt_dir`/latest, else starts
 * fresh, and says which on rank 0. */
#ifndef LOOM_CHECKPOINT_KEEPER_H
#define LOOM_CHECKPOINT_KEEPER_H

#include "runtime/loop.h"
#include "runtime/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char *ckpt_dir; /* checkpoint root; NULL: no HDF5 checkpoints */
  int ckpt_every;       /* save every this many steps; 0: at the end (and on a signal) only */
  int ckpt_async;       /* save in the background (loom_ckpt_save_async) */
  int resume;           /* resume from ckpt_dir/latest when there is one */
  int snapshot_every;   /* in-memory snapshot every this many steps; 0: none */
  int snapshot_async;   /* snapshots in the background */
  int snapshot_parity;  /* parity fragments per erasure group (0: no erasure coding) */
} loom_keeper_params;
#define LOOM_KEEPER_PARAMS_INIT                                                            \
  {.ckpt_dir = NULL, .ckpt_every = 0, .ckpt_async = 0, .resume = 0, .snapshot_every = 0,  \
   .snapshot_async = 0, .snapshot_parity = 1}

/* A keeper over `state` (borrowed; complete before loom_loop_create, which registers the step
 * and then resumes): fills *out for loom_loop_create, which owns it from there. */
loom_status loom_keeper_create(loom_state *state, const loom_keeper_params *params,
                               loom_loop_keeper *out);

#ifdef __cplusplus
}
#endif
#endif
