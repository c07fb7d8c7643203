/* Flat algorithms: one MPI collective per call on the group's communicator, plus the job
 * dispatcher a group's lane runs. 16-bit floats are widened to float32 for
 * reductions and moved as uint16 otherwise. */
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_impl.h"
#include "runtime/watchdog.h"

MPI_Datatype loom_coll_mpi_type(loom_dtype dtype) {
  switch (dtype) {
    case LOOM_FLOAT32: return MPI_FLOAT;
    case LOOM_FLOAT64: return MPI_DOUBLE;
    case LOOM_BFLOAT16:
    case LOOM_FLOAT16: return MPI_UINT16_T;
    case LOOM_INT32: return MPI_INT32_T;
    case LOOM_INT64: return MPI_INT64_T;
    case LOOM_UINT8: return MPI_UINT8_T;
    default: return MPI_DATATYPE_NULL;
  }
}

MPI_Op loom_coll_mpi_op(const loom_group *g, loom_op op, loom_dtype dtype) {
  switch (op) {
    case LOOM_OP_MAX: return MPI_MAX;
    case LOOM_OP_MIN: return MPI_MIN;
    default: return dtype == LOOM_UINT8 ? g->ctx->uint8_sum : MPI_SUM;
  }
}

int loom_coll_is_half(loom_dtype dtype) {
  return dtype == LOOM_BFLOAT16 || dtype == LOOM_FLOAT16;
}

loom_status loom_coll_widen(loom_buf b, float **out) {
  float *wide = malloc(sizeof(float) * (b.count ? b.count : 1));
  if (!wide)
    return loom_error_set(LOOM_ERR_NOMEM, "float32 scratch for %zu %s elements", b.count,
                          loom_dtype_name(b.dtype));
  const uint16_t *bits = b.ptr;
  if (b.dtype == LOOM_BFLOAT16)
    for (size_t i = 0; i < b.count; i++) wide[i] = loom_bf16_to_float(bits[i]);
  else
    for (size_t i = 0; i < b.count; i++) wide[i] = loom_fp16_to_float(bits[i]);
  *out = wide;
  return LOOM_OK;
}

void loom_coll_narrow(const float *wide, loom_buf b) {
  uint16_t *bits = b.ptr;
  if (b.dtype == LOOM_BFLOAT16)
    for (size_t i = 0; i < b.count; i++) bits[i] = loom_float_to_bf16(wide[i]);
  else
    for (size_t i = 0; i < b.count; i++) bits[i] = loom_float_to_fp16(wide[i]);
}

void loom_coll_divide(loom_buf b, int divisor) {
  switch (b.dtype) {
    case LOOM_FLOAT32: for (size_t i = 0; i < b.count; i++) ((float *)b.ptr)[i] /= (float)divisor; break;
    case LOOM_FLOAT64: for (size_t i = 0; i < b.count; i++) ((double *)b.ptr)[i] /= divisor; break;
    case LOOM_INT32: for (size_t i = 0; i < b.count; i++) ((int32_t *)b.ptr)[i] /= divisor; break;
    case LOOM_INT64: for (size_t i = 0; i < b.count; i++) ((int64_t *)b.ptr)[i] /= divisor; break;
    case LOOM_UINT8: for (size_t i = 0; i < b.count; i++) ((uint8_t *)b.ptr)[i] /= (uint8_t)divisor; break;
    default: break; /* 16-bit floats are divided while wide */
  }
}

#define MPI_TRY(g, call)                                                                   \
  do {                                                                                     \
    int rc_ = (call);                                                                      \
    if (rc_ != MPI_SUCCESS) {                                                              \
      status = loom_mpi_error((g)->ctx, rc_, #call);                                       \
      goto done;                                                                           \
    }                                                                                      \
  } while (0)

loom_status loom_coll_flat_allreduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op) {
  loom_status status = LOOM_OK;
  float *wide = NULL;
  int in_place = send.ptr == recv.ptr;
  if (loom_coll_is_half(send.dtype)) {
    LOOM_CHECK(loom_coll_widen(send, &wide));
    MPI_Op mpi_op = loom_coll_mpi_op(g, op, LOOM_FLOAT32);
    MPI_TRY(g, MPI_Allreduce(MPI_IN_PLACE, wide, (int)send.count, MPI_FLOAT, mpi_op, g->comm));
    if (op == LOOM_OP_AVG) loom_coll_divide(loom_buf_host(wide, send.count, LOOM_FLOAT32), g->size);
    loom_coll_narrow(wide, recv);
  } else {
    const void *source = in_place ? MPI_IN_PLACE : send.ptr;
    MPI_Datatype type = loom_coll_mpi_type(send.dtype);
    MPI_Op mpi_op = loom_coll_mpi_op(g, op, send.dtype);
    MPI_TRY(g, MPI_Allreduce(source, recv.ptr, (int)send.count, type, mpi_op, g->comm));
    if (op == LOOM_OP_AVG) loom_coll_divide(recv, g->size);
  }
done:
  free(wide);
  return status;
}

static loom_status flat_reduce(loom_group *g, loom_buf send, loom_buf recv, loom_op op, int root) {
  loom_status status = LOOM_OK;
  float *wide = NULL;
  int is_root = g->rank == root, in_place = is_root && send.ptr == recv.ptr;
  if (loom_coll_is_half(send.dtype)) {
    LOOM_CHECK(loom_coll_widen(send, &wide));
    MPI_TRY(g, MPI_Reduce(is_root ? MPI_IN_PLACE : wide, is_root ? wide : NULL, (int)send.count,
                          MPI_FLOAT, loom_coll_mpi_op(g, op, send.dtype), root, g->comm));
    if (is_root) {
      if (op == LOOM_OP_AVG) loom_coll_divide(loom_buf_host(wide, send.count, LOOM_FLOAT32), g->size);
      loom_coll_narrow(wide, recv);
    }
  } else {
    MPI_TRY(g, MPI_Reduce(in_place ? MPI_IN_PLACE : send.ptr, is_root ? recv.ptr : NULL,
                          (int)send.count, loom_coll_mpi_type(send.dtype), loom_coll_mpi_op(g, op, send.dtype),
                          root, g->comm));
    if (is_root && op == LOOM_OP_AVG) loom_coll_divide(recv, g->size);
  }
done:
  free(wide);
  return status;
}

loom_status loom_coll_flat_allgather(loom_group *g, loom_buf send, loom_buf recv) {
  loom_status status = LOOM_OK;
  size_t block_bytes = loom_buf_bytes(send);
  int in_place = (char *)send.ptr == (char *)recv.ptr + (size_t)g->rank * block_bytes;
  MPI_Datatype type = loom_coll_mpi_type(send.dtype);
  const void *source = in_place ? MPI_IN_PLACE : send.ptr;
  int n = (int)send.count;
  MPI_TRY(g, MPI_Allgather(source, n, type, recv.ptr, n, type, g->comm));
done:
  return status;
}

loom_status loom_coll_flat_reduce_scatter(loom_group *g, loom_buf send, loom_buf recv,
                                          loom_op op) {
  loom_status status = LOOM_OK;
  float *wide = NULL;
  size_t n = recv.count;
  int half = loom_coll_is_half(send.dtype);
  int in_place = (char *)recv.ptr == (char *)send.ptr + (size_t)g->rank * loom_buf_bytes(recv);
  /* 16-bit floats reduce in a widened copy, in place (result in its first n floats). MPI's
   * in-place form also leaves the result at the start of the buffer, while loom's (NCCL's)
   * in-place result sits at block `rank`: moved there afterwards. */
  if (half) LOOM_CHECK(loom_coll_widen(send, &wide));
  const void *source = half || in_place ? MPI_IN_PLACE : send.ptr;
  void *target = half ? (void *)wide : in_place ? send.ptr : recv.ptr;
  MPI_Datatype type = loom_coll_mpi_type(half ? LOOM_FLOAT32 : send.dtype);
  MPI_Op mpi_op = loom_coll_mpi_op(g, op, half ? LOOM_FLOAT32 : send.dtype);
  MPI_TRY(g, MPI_Reduce_scatter_block(source, target, (int)n, type, mpi_op, g->comm));
  if (half) {
    if (op == LOOM_OP_AVG) loom_coll_divide(loom_buf_host(wide, n, LOOM_FLOAT32), g->size);
    loom_coll_narrow(wide, recv);
  } else {
    if (in_place) memmove(recv.ptr, send.ptr, loom_buf_bytes(recv));
    if (op == LOOM_OP_AVG) loom_coll_divide(recv, g->size);
  }
done:
  free(wide);
  return status;
}

static loom_status flat_alltoallv(loom_group *g, loom_buf send, loom_buf recv,
                                  const size_t *counts) {
  loom_status status = LOOM_OK;
  int n = g->size;
  int *ints = malloc(sizeof(int) * 4 * (size_t)n);
  if (!ints) return loom_error_set(LOOM_ERR_NOMEM, "alltoallv counts (%d members)", n);
  for (int i = 0; i < 4 * n; i++) ints[i] = (int)counts[i]; /* checked <= INT_MAX at post */
  MPI_Datatype type = loom_coll_mpi_type(send.dtype);
  MPI_TRY(g, MPI_Alltoallv(send.ptr, ints, ints + n, type, recv.ptr, ints + 2 * n, ints + 3 * n,
                           type, g->comm));
done:
  free(ints);
  return status;
}

/* Fusion: pack every tensor into one flat buffer, one allreduce, unpack. */
static loom_status fused_allreduce(loom_coll_job *job) {
  if (job->buf_count == 0) return LOOM_OK;
  loom_dtype dtype = job->bufs[0].dtype;
  size_t element = loom_dtype_size(dtype), total = 0;
  for (int i = 0; i < job->buf_count; i++) total += job->bufs[i].count;
  loom_group *g = job->group;
  if (g->scratch_bytes < total * element) {
    void *grown = realloc(g->scratch, total * element);
    if (!grown)
      return loom_error_set(LOOM_ERR_NOMEM, "fusion buffer of %zu bytes on group %s",
                            total * element, g->name);
    g->scratch = grown;
    g->scratch_bytes = total * element;
  }
  char *flat = g->scratch;
  size_t offset = 0;
  for (int i = 0; i < job->buf_count; i++) {
    memcpy(flat + offset, job->bufs[i].ptr, loom_buf_bytes(job->bufs[i]));
    offset += loom_buf_bytes(job->bufs[i]);
  }
  loom_buf whole = loom_buf_host(flat, total, dtype);
  loom_status status = job->algo == LOOM_ALGO_HIER
                           ? loom_coll_hier_allreduce(job->group, whole, whole, job->op)
                           : loom_coll_flat_allreduce(job->group, whole, whole, job->op);
  offset = 0;
  for (int i = 0; status == LOOM_OK && i < job->buf_count; i++) {
    memcpy(job->bufs[i].ptr, flat + offset, loom_buf_bytes(job->bufs[i]));
    offset += loom_buf_bytes(job->bufs[i]);
  }
  return status;
}

const char *loom_coll_kind_name(loom_coll_kind kind) {
  static const char *const names[] = {
      [LOOM_COLL_ALLREDUCE] = "loom_allreduce", [LOOM_COLL_BROADCAST] = "loom_broadcast",
      [LOOM_COLL_REDUCE] = "loom_reduce", [LOOM_COLL_ALLGATHER] = "loom_allgather",
      [LOOM_COLL_REDUCE_SCATTER] = "loom_reduce_scatter", [LOOM_COLL_ALLTOALL] = "loom_alltoall",
      [LOOM_COLL_ALLTOALLV] = "loom_alltoallv", [LOOM_COLL_BARRIER] = "loom_barrier",
      [LOOM_COLL_FUSED_ALLREDUCE] = "loom_allreduce_fused",
      [LOOM_COLL_SPARSE_PLAN] = "loom_sparse_plan_create",
      [LOOM_COLL_SPARSE_EXCHANGE] = "loom_alltoall_sparse"};
  return kind >= 0 && kind < (int)(sizeof names / sizeof names[0]) ? names[kind] : "collective";
}

static loom_status run_job(loom_coll_job *job);

/* Every host collective runs under its own watchdog slot (runtime/watchdog.h): one that does
 * not complete within LOOM_TIMEOUT aborts the job with its name and group. */
loom_status loom_coll_run(void *opaque) {
  loom_coll_job *job = opaque;
  loom_watch slot = {.what = loom_coll_kind_name(job->kind), .group = job->group->name,
                     .peer = -1, .tag = -1, .fatal = 1};
  loom_watch_begin(job->group->ctx, &slot);
  loom_status status = run_job(job);
  loom_watch_end(job->group->ctx, &slot);
  return status;
}

static loom_status run_job(loom_coll_job *job) {
  loom_group *g = job->group;
  loom_status status = LOOM_OK;
  switch (job->kind) {
    case LOOM_COLL_ALLREDUCE:
      return job->algo == LOOM_ALGO_HIER ? loom_coll_hier_allreduce(g, job->send, job->recv, job->op)
                                         : loom_coll_flat_allreduce(g, job->send, job->recv, job->op);
    case LOOM_COLL_BROADCAST: {
      int n = (int)job->send.count;
      MPI_Datatype type = loom_coll_mpi_type(job->send.dtype);
      MPI_TRY(g, MPI_Bcast(job->send.ptr, n, type, job->root, g->comm));
      break;
    }
    case LOOM_COLL_REDUCE: return flat_reduce(g, job->send, job->recv, job->op, job->root);
    case LOOM_COLL_ALLGATHER:
      return job->algo == LOOM_ALGO_HIER ? loom_coll_hier_allgather(g, job->send, job->recv)
                                         : loom_coll_flat_allgather(g, job->send, job->recv);
    case LOOM_COLL_REDUCE_SCATTER:
      return job->algo == LOOM_ALGO_HIER
                 ? loom_coll_hier_reduce_scatter(g, job->send, job->recv, job->op)
                 : loom_coll_flat_reduce_scatter(g, job->send, job->recv, job->op);
    case LOOM_COLL_ALLTOALL: {
      int block = (int)(job->send.count / (size_t)g->size);
      MPI_Datatype type = loom_coll_mpi_type(job->send.dtype);
      MPI_TRY(g, MPI_Alltoall(job->send.ptr == job->recv.ptr ? MPI_IN_PLACE : job->send.ptr,
                              block, type, job->recv.ptr, block, type, g->comm));
      break;
    }
    case LOOM_COLL_ALLTOALLV: return flat_alltoallv(g, job->send, job->recv, job->counts);
    case LOOM_COLL_BARRIER: MPI_TRY(g, MPI_Barrier(g->comm)); break;
    case LOOM_COLL_FUSED_ALLREDUCE: return fused_allreduce(job);
    case LOOM_COLL_SPARSE_PLAN: return loom_coll_sparse_discover(g, job->plan);
    case LOOM_COLL_SPARSE_EXCHANGE:
      return loom_coll_sparse_exchange(g, job->plan, job->send, job->recv);
  }
done:
  return status;
}
