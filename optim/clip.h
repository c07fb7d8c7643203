/* Global-norm gradient clipping (Pascanu et al., ICML'13): scale every gradient by
 * min(1, max_norm / ||g||) where ||g|| is the 2-norm of all gradients together. When the
 * gradients are spread over a group (pipeline stages, or ZeRO shards over GRAD), the squared
 * norms are summed over that group first, so every rank applies the same factor. */
#ifndef LOOM_OPTIM_CLIP_H
#define LOOM_OPTIM_CLIP_H

#include "runtime/dtype.h"
#include "runtime/group.h"
#include "runtime/params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The global 2-norm of `count` float32/float64 gradients (accumulated in double).
 * `shard_group`: the group whose members hold disjoint parts of the gradients (their squared
 * norms are summed with an allreduce); NULL when every rank holds all of them (replicated
 * after a data-parallel allreduce). `stream`: for gradients on the GPU, the cudaStream_t
 * that produced them (loom_ctx_stream); NULL for host gradients. Returns after the norm is
 * known on the host. */
loom_status loom_grad_norm(loom_group *shard_group, void *stream, const loom_buf *grads,
                           int count, double *norm);

/* Computes the norm as above and, if it exceeds max_norm > 0, scales every gradient by
 * max_norm / (norm + 1e-6). Returns the norm before clipping in *norm (may be NULL). */
loom_status loom_clip_grad_norm(loom_group *shard_group, void *stream, const loom_buf *grads,
                                int count, double max_norm, double *norm);

/* The true global 2-norm of every gradient of the parameter table, each element counted once
 * however its parameter is replicated (dense over GRAD, experts over EDP, one table per pipeline
 * stage): the replica that loom_state_is_writer picks counts its slice, and one allreduce over
 * the world sums the squares. Call it after the gradients are reduced (replicas agree). Device
 * gradients: their block sums reach the host in one copy (one host sync for the whole table);
 * `stream` is the one that produced them. */
loom_status loom_params_grad_norm(const loom_params *params, void *stream, double *norm);
/* The norm as above, then every gradient scaled by max_norm / (norm + 1e-6) when it exceeds
 * max_norm > 0. *norm (may be NULL) receives the norm before clipping. */
loom_status loom_clip_params(const loom_params *params, void *stream, double max_norm,
                             double *norm);

#ifdef __cplusplus
}
#endif
#endif
