/* Hierarchical allreduce, allgather and reduce_scatter over a group's node-local and
 * cross-node subgroups: intra-node traffic first, so each byte crosses the network once per
 * node instead of once per rank, then inter-node, then intra-node again.
 *
 * With L members on each of N nodes (uniform), member (node o, local j):
 *   allreduce      : reduce_scatter in node (piece j of n)  -> allreduce across nodes (piece j)
 *                    -> allgather in node
 *   allgather      : allgather in node (L blocks) -> allgather across nodes (N*L blocks)
 *                    -> reorder to group-rank order
 *   reduce_scatter : reorder blocks by (local, node) -> reduce_scatter in node (N blocks)
 *                    -> reduce_scatter across nodes (1 block)
 * Uneven nodes: allreduce goes reduce-to-leader / allreduce across leaders / broadcast;
 * allgather and reduce_scatter fall back to flat. Reductions of 16-bit floats run in float32. */
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_impl.h"
#include "runtime/log.h"

#define MPI_TRY(g, call)                                                                   \
  do {                                                                                     \
    int rc_ = (call);                                                                      \
    if (rc_ != MPI_SUCCESS) {                                                              \
      status = loom_mpi_error((g)->ctx, rc_, #call);                                       \
      goto done;                                                                           \
    }                                                                                      \
  } while (0)

/* Piece j of n elements split over L pieces: the first n % L pieces get one more. */
static void split_counts(size_t n, int pieces, int *counts, int *displs) {
  size_t base = n / (size_t)pieces, extra = n % (size_t)pieces, offset = 0;
  for (int j = 0; j < pieces; j++) {
    size_t c = base + ((size_t)j < extra ? 1 : 0);
    counts[j] = (int)c;
    displs[j] = (int)offset;
    offset += c;
  }
}

/* In-place allreduce of `work` (count elements of a non-16-bit dtype, or float32). */
static loom_status allreduce_in_place(loom_group *g, void *work, size_t count, MPI_Datatype type,
                                      size_t element, MPI_Op op) {
  loom_status status = LOOM_OK;
  loom_group *local = g->node_local, *cross = g->cross_node;
  int *counts = NULL, *displs = NULL;
  char *piece = NULL;
  if (!g->uniform) {
    /* Leaders (local index 0) share one cross-node subgroup: the one of local index 0. */
    MPI_TRY(g, MPI_Reduce(local->rank == 0 ? MPI_IN_PLACE : work, work, (int)count, type, op, 0,
                          local->parent_channel));
    if (local->rank == 0)
      MPI_TRY(g, MPI_Allreduce(MPI_IN_PLACE, work, (int)count, type, op, cross->parent_channel));
    MPI_TRY(g, MPI_Bcast(work, (int)count, type, 0, local->parent_channel));
    goto done;
  }
  counts = malloc(sizeof(int) * (size_t)local->size);
  displs = malloc(sizeof(int) * (size_t)local->size);
  if (!counts || !displs) {
    status = loom_error_set(LOOM_ERR_NOMEM, "hierarchical allreduce counts on group %s", g->name);
    goto done;
  }
  split_counts(count, local->size, counts, displs);
  int mine = counts[local->rank];
  piece = malloc(element * (size_t)(mine ? mine : 1));
  if (!piece) {
    status = loom_error_set(LOOM_ERR_NOMEM, "hierarchical allreduce piece (%d elements)", mine);
    goto done;
  }
  MPI_TRY(g, MPI_Reduce_scatter(work, piece, counts, type, op, local->parent_channel));
  MPI_TRY(g, MPI_Allreduce(MPI_IN_PLACE, piece, mine, type, op, cross->parent_channel));
  MPI_TRY(g, MPI_Allgatherv(piece, mine, type, work, counts, displs, type, local->parent_channel));
done:
  free(counts);
  free(displs);
  free(piece);
  return status;
}

loom_status loom_coll_hier_allreduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op) {
  if (!g->node_local || g->node_count <= 1) return loom_coll_flat_allreduce(g, send, recv, op);
  loom_status status = LOOM_OK;
  if (loom_coll_is_half(send.dtype)) {
    float *wide = NULL;
    LOOM_CHECK(loom_coll_widen(send, &wide));
    status = allreduce_in_place(g, wide, send.count, MPI_FLOAT, sizeof(float),
                                loom_coll_mpi_op(g, op, LOOM_FLOAT32));
    if (status == LOOM_OK) {
      if (op == LOOM_OP_AVG) loom_coll_divide(loom_buf_host(wide, send.count, LOOM_FLOAT32), g->size);
      loom_coll_narrow(wide, recv);
    }
    free(wide);
    return status;
  }
  if (send.ptr != recv.ptr) memcpy(recv.ptr, send.ptr, loom_buf_bytes(send));
  LOOM_CHECK(allreduce_in_place(g, recv.ptr, recv.count, loom_coll_mpi_type(recv.dtype),
                                loom_dtype_size(recv.dtype), loom_coll_mpi_op(g, op, recv.dtype)));
  if (op == LOOM_OP_AVG) loom_coll_divide(recv, g->size);
  return LOOM_OK;
}

/* Position of member r's block when blocks are ordered (node, local). */
static size_t node_major_slot(const loom_group *g, int r, int per_node) {
  return (size_t)g->member_node[r] * (size_t)per_node + (size_t)g->member_local[r];
}

loom_status loom_coll_hier_allgather(loom_group *g, loom_buf send, loom_buf recv) {
  if (!g->node_local || g->node_count <= 1 || !g->uniform) {
    if (g->node_local && g->node_count > 1)
      loom_log(g->ctx, LOOM_LOG_DEBUG, "allgather on %s: uneven nodes, flat", g->name);
    return loom_coll_flat_allgather(g, send, recv);
  }
  loom_status status = LOOM_OK;
  loom_group *local = g->node_local, *cross = g->cross_node;
  int per_node = local->size;
  size_t block_bytes = loom_buf_bytes(send);
  MPI_Datatype type = loom_coll_mpi_type(send.dtype);
  int identity = 1;
  for (int r = 0; r < g->size; r++)
    if (node_major_slot(g, r, per_node) != (size_t)r) identity = 0;
  char *node_block = NULL, *ordered = NULL;
  /* In place, the send block lives inside recv and would be overwritten: copy it first. */
  char *mine = malloc(block_bytes + 1);
  node_block = malloc(block_bytes * (size_t)per_node + 1);
  ordered = identity ? recv.ptr : malloc(block_bytes * (size_t)g->size + 1);
  if (!mine || !node_block || !ordered) {
    status = loom_error_set(LOOM_ERR_NOMEM, "hierarchical allgather scratch on group %s", g->name);
    goto done;
  }
  memcpy(mine, send.ptr, block_bytes);
  MPI_TRY(g, MPI_Allgather(mine, (int)send.count, type, node_block, (int)send.count, type,
                           local->parent_channel));
  MPI_TRY(g, MPI_Allgather(node_block, (int)send.count * per_node, type, ordered,
                           (int)send.count * per_node, type, cross->parent_channel));
  if (!identity)
    for (int r = 0; r < g->size; r++)
      memcpy((char *)recv.ptr + (size_t)r * block_bytes,
             ordered + node_major_slot(g, r, per_node) * block_bytes, block_bytes);
done:
  free(mine);
  free(node_block);
  if (ordered != recv.ptr) free(ordered);
  return status;
}

loom_status loom_coll_hier_reduce_scatter(loom_group *g, loom_buf send, loom_buf recv,
                                          loom_op op) {
  if (!g->node_local || g->node_count <= 1 || !g->uniform) {
    if (g->node_local && g->node_count > 1)
      loom_log(g->ctx, LOOM_LOG_DEBUG, "reduce_scatter on %s: uneven nodes, flat", g->name);
    return loom_coll_flat_reduce_scatter(g, send, recv, op);
  }
  loom_status status = LOOM_OK;
  loom_group *local = g->node_local, *cross = g->cross_node;
  int nodes = g->node_count, half = loom_coll_is_half(send.dtype);
  size_t n = recv.count;
  loom_dtype work_dtype = half ? LOOM_FLOAT32 : send.dtype;
  size_t element = loom_dtype_size(work_dtype);
  size_t block_bytes = n * element;
  MPI_Datatype type = loom_coll_mpi_type(work_dtype);
  MPI_Op mpi_op = loom_coll_mpi_op(g, op, work_dtype);
  float *wide = NULL;
  char *input = send.ptr, *ordered = NULL, *partial = NULL, *result = NULL;
  if (half) {
    LOOM_CHECK(loom_coll_widen(send, &wide));
    input = (char *)wide;
  }
  ordered = malloc(block_bytes * (size_t)g->size + 1);
  partial = malloc(block_bytes * (size_t)nodes + 1);
  result = malloc(block_bytes + 1);
  if (!ordered || !partial || !result) {
    status = loom_error_set(LOOM_ERR_NOMEM, "hierarchical reduce_scatter scratch on group %s",
                            g->name);
    goto done;
  }
  /* Blocks ordered (local index, node): local member j's share is contiguous. */
  for (int r = 0; r < g->size; r++) {
    size_t slot = (size_t)g->member_local[r] * (size_t)nodes + (size_t)g->member_node[r];
    memcpy(ordered + slot * block_bytes, input + (size_t)r * block_bytes, block_bytes);
  }
  MPI_TRY(g, MPI_Reduce_scatter_block(ordered, partial, (int)(n * (size_t)nodes), type, mpi_op,
                                      local->parent_channel));
  MPI_TRY(g, MPI_Reduce_scatter_block(partial, result, (int)n, type, mpi_op, cross->parent_channel));
  loom_buf out = loom_buf_host(result, n, work_dtype);
  if (op == LOOM_OP_AVG) loom_coll_divide(out, g->size);
  if (half)
    loom_coll_narrow((float *)result, recv);
  else
    memcpy(recv.ptr, result, block_bytes);
done:
  free(wide);
  free(ordered);
  free(partial);
  free(result);
  return status;
}
