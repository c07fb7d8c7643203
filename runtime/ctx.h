/* loom_ctx: one per process. Owns MPI (when loom started it), the world group, the node
 * layout and the communication thread. Created by loom_init, destroyed by loom_finalize. */
#ifndef LOOM_RUNTIME_CTX_H
#define LOOM_RUNTIME_CTX_H

#include "runtime/config.h"
#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_ctx loom_ctx;
typedef struct loom_group loom_group;

/* Starts MPI if it is not running yet (MPI_Init_thread asking for MPI_THREAD_MULTIPLE; the
 * level granted is logged), reads the rank layout and node layout, and starts the
 * communication thread. Works under mpirun, srun and as a singleton. `config` is copied;
 * argc/argv may be NULL. Collective over MPI_COMM_WORLD. */
loom_status loom_init(const loom_config *config, int *argc, char ***argv, loom_ctx **out);

/* Drains pending communication, frees every group and the context, and finalizes MPI if
 * loom_init started it. Collective. NULL is a no-op. */
loom_status loom_finalize(loom_ctx *ctx);

int loom_ctx_rank(const loom_ctx *ctx);       /* world rank */
int loom_ctx_size(const loom_ctx *ctx);       /* world size */
int loom_ctx_local_rank(const loom_ctx *ctx); /* rank on this node (real or simulated) */
int loom_ctx_local_size(const loom_ctx *ctx); /* ranks on this node */
int loom_ctx_node(const loom_ctx *ctx);       /* node index, 0 .. node_count - 1 */
int loom_ctx_node_count(const loom_ctx *ctx);
/* MPI thread level granted (MPI_THREAD_SINGLE .. MPI_THREAD_MULTIPLE). */
int loom_ctx_thread_level(const loom_ctx *ctx);
/* "mpirun (Open MPI)", "srun (Slurm)", "PMI", or "singleton". */
const char *loom_ctx_launcher(const loom_ctx *ctx);
const loom_config *loom_ctx_config(const loom_ctx *ctx);
/* All ranks of the job; owned by the context. */
loom_group *loom_ctx_world(loom_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
