/* Resharding (see reshard.h): each rank packs, for every peer, the box of its shard that the
 * peer's new shard covers, one all-to-all of bytes moves the boxes, and each rank unpacks the
 * boxes it got at their rows of the `from` dimension. Boxes are copied one contiguous run of
 * the last dimension at a time. */
#include "parallel/sequence/reshard.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/device.h"

void loom_reshard_slice(const loom_reshard_spec *spec, int dim, int rank, int ranks,
                        int64_t *first, int64_t *count) {
  int64_t n = spec->shape[dim], c = (n + ranks - 1) / ranks, lo = c * rank;
  if (lo > n) lo = n;
  int64_t hi = lo + c < n ? lo + c : n;
  *first = lo, *count = hi - lo;
}

// Copies the box of extents `box` at `src_off` in src (extents src_ext) to `dst_off` in dst
// (extents dst_ext); row-major, `bytes` per element.
static void copy_box(int nd, const int64_t *box, const char *src, const int64_t *src_ext,
                     const int64_t *src_off, char *dst, const int64_t *dst_ext,
                     const int64_t *dst_off, size_t bytes) {
  for (int d = 0; d < nd; d++)
    if (box[d] == 0) return;
  int64_t index[LOOM_RESHARD_MAX_DIMS] = {0};
  for (;;) {
    int64_t s = 0, t = 0;
    for (int d = 0; d < nd; d++) {
      int64_t at = d < nd - 1 ? index[d] : 0;
      s = s * src_ext[d] + src_off[d] + at;
      t = t * dst_ext[d] + dst_off[d] + at;
    }
    memcpy(dst + (size_t)t * bytes, src + (size_t)s * bytes, (size_t)box[nd - 1] * bytes);
    int d = nd - 2;
    while (d >= 0 && ++index[d] == box[d]) index[d--] = 0;
    if (d < 0) return;
  }
}

static int64_t product(int nd, const int64_t *extents) {
  int64_t n = 1;
  for (int d = 0; d < nd; d++) n *= extents[d];
  return n;
}

static loom_status check_args(loom_group *g, const loom_reshard_spec *spec, loom_buf in, loom_buf out) {
  if (!g || !spec) return loom_error_set(LOOM_ERR_ARG, "loom_reshard: group and spec are needed");
  if (spec->ndims < 1 || spec->ndims > LOOM_RESHARD_MAX_DIMS || spec->from < 0 ||
      spec->from >= spec->ndims || spec->to < 0 || spec->to >= spec->ndims)
    return loom_error_set(LOOM_ERR_ARG, "loom_reshard on group %s: ndims=%d must be in [1, %d] and "
                          "from=%d, to=%d dimensions of it", loom_group_name(g), spec->ndims,
                          LOOM_RESHARD_MAX_DIMS, spec->from, spec->to);
  int64_t elements = 1;
  for (int d = 0; d < spec->ndims; d++) {
    if (spec->shape[d] < 1 || spec->shape[d] > ((int64_t)1 << 40) || elements > ((int64_t)1 << 48) / spec->shape[d])
      return loom_error_set(LOOM_ERR_ARG, "loom_reshard on group %s: dimension %d has extent %lld; "
                            "extents are 1 .. 2^40 and the tensor at most 2^48 elements",
                            loom_group_name(g), d, (long long)spec->shape[d]);
    elements *= spec->shape[d];
  }
  if (in.dtype != out.dtype || in.dtype < 0 || in.dtype >= LOOM_DTYPE_COUNT)
    return loom_error_set(LOOM_ERR_ARG, "loom_reshard on group %s: in is %s, out is %s; one dtype",
                          loom_group_name(g), loom_dtype_name(in.dtype), loom_dtype_name(out.dtype));
  if (in.device.kind != out.device.kind)
    return loom_error_set(LOOM_ERR_ARG, "loom_reshard on group %s: in and out must both be host "
                          "or both be device buffers", loom_group_name(g));
  return LOOM_OK;
}

// The box of a shard (extents `ext`) that rank q's shard along `dim` covers, and where it
// starts in it: to q, my rows of `from` and q's of `to` (ext = mine in, dim = to); from q, q's
// rows of `from` and mine of `to` (ext = mine out, dim = from).
static void peer_box(const loom_reshard_spec *spec, const int64_t *ext, int dim, int q, int ranks,
                     int64_t *box, int64_t *offset) {
  for (int d = 0; d < spec->ndims; d++) box[d] = ext[d], offset[d] = 0;
  loom_reshard_slice(spec, dim, q, ranks, &offset[dim], &box[dim]);
}

// The host side: in and out are host memory.
static loom_status reshard_host(loom_group *g, const loom_reshard_spec *spec, const char *in,
                                char *out, const int64_t *in_ext, const int64_t *out_ext, size_t bytes) {
  int p = loom_group_size(g), nd = spec->ndims, from = spec->from, to = spec->to;
  if (from == to) { /* no exchange: every rank keeps its shard */
    memcpy(out, in, (size_t)product(nd, in_ext) * bytes);
    return LOOM_OK;
  }
  size_t *counts = calloc((size_t)p * 4, sizeof(size_t));
  if (!counts) return loom_error_set(LOOM_ERR_NOMEM, "loom_reshard: counts for %d ranks", p);
  size_t *send_counts = counts, *send_displs = counts + p, *recv_counts = counts + 2 * p, *recv_displs = counts + 3 * p;
  size_t send_total = 0, recv_total = 0;
  for (int q = 0; q < p; q++) {
    int64_t box[LOOM_RESHARD_MAX_DIMS], offset[LOOM_RESHARD_MAX_DIMS];
    peer_box(spec, in_ext, to, q, p, box, offset);
    send_counts[q] = (size_t)product(nd, box) * bytes, send_displs[q] = send_total, send_total += send_counts[q];
    peer_box(spec, out_ext, from, q, p, box, offset);
    recv_counts[q] = (size_t)product(nd, box) * bytes, recv_displs[q] = recv_total, recv_total += recv_counts[q];
  }
  char *send = malloc(send_total ? send_total : 1), *recv = malloc(recv_total ? recv_total : 1);
  loom_status status = send && recv ? LOOM_OK
                                    : loom_error_set(LOOM_ERR_NOMEM, "loom_reshard: %zu + %zu bytes of "
                                                     "exchange buffers", send_total, recv_total);
  const int64_t zero[LOOM_RESHARD_MAX_DIMS] = {0};
  for (int q = 0; status == LOOM_OK && q < p; q++) {
    int64_t box[LOOM_RESHARD_MAX_DIMS], offset[LOOM_RESHARD_MAX_DIMS];
    peer_box(spec, in_ext, to, q, p, box, offset);
    copy_box(nd, box, in, in_ext, offset, send + send_displs[q], box, zero, bytes);
  }
  /* every rank takes the same path: none waits in the exchange for one out of memory */
  status = loom_status_agree(g, status, "loom_reshard");
  if (status == LOOM_OK)
    status = loom_alltoallv(g, loom_buf_host(send, send_total, LOOM_UINT8), send_counts, send_displs,
                            loom_buf_host(recv, recv_total, LOOM_UINT8), recv_counts, recv_displs);
  for (int q = 0; status == LOOM_OK && q < p; q++) {
    int64_t box[LOOM_RESHARD_MAX_DIMS], offset[LOOM_RESHARD_MAX_DIMS];
    peer_box(spec, out_ext, from, q, p, box, offset);
    copy_box(nd, box, recv + recv_displs[q], box, zero, out, out_ext, offset, bytes);
  }
  free(send), free(recv), free(counts);
  return status;
}

loom_status loom_reshard(loom_group *g, const loom_reshard_spec *spec, loom_buf in, loom_buf out) {
  LOOM_CHECK(check_args(g, spec, in, out));
  int p = loom_group_size(g), r = loom_group_rank(g), nd = spec->ndims;
  int64_t in_ext[LOOM_RESHARD_MAX_DIMS], out_ext[LOOM_RESHARD_MAX_DIMS], first;
  memcpy(in_ext, spec->shape, sizeof(int64_t) * (size_t)nd);
  memcpy(out_ext, spec->shape, sizeof(int64_t) * (size_t)nd);
  loom_reshard_slice(spec, spec->from, r, p, &first, &in_ext[spec->from]);
  loom_reshard_slice(spec, spec->to, r, p, &first, &out_ext[spec->to]);
  if ((int64_t)in.count != product(nd, in_ext) || (int64_t)out.count != product(nd, out_ext) ||
      (in.count && !in.ptr) || (out.count && !out.ptr))
    return loom_error_set(LOOM_ERR_ARG, "loom_reshard on group %s, rank %d: in has %zu elements, its "
                          "shard along dimension %d has %lld; out has %zu, its shard along %d has "
                          "%lld", loom_group_name(g), r, in.count, spec->from,
                          (long long)product(nd, in_ext), out.count, spec->to,
                          (long long)product(nd, out_ext));
  size_t bytes = loom_dtype_size(in.dtype);
  if (in.device.kind != LOOM_DEVICE_CUDA)
    return reshard_host(g, spec, in.ptr, out.ptr, in_ext, out_ext, bytes);
  /* device buffers: through host copies (one download, one upload) */
  loom_ctx *ctx = loom_group_ctx(g);
  char *host_in = malloc(in.count * bytes + 1), *host_out = malloc(out.count * bytes + 1);
  loom_status status = host_in && host_out ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, "loom_reshard: host copies");
  if (status == LOOM_OK) status = loom_device_download(ctx, host_in, in.ptr, in.count * bytes);
  if (status == LOOM_OK) status = reshard_host(g, spec, host_in, host_out, in_ext, out_ext, bytes);
  if (status == LOOM_OK) status = loom_device_upload(ctx, out.ptr, host_out, out.count * bytes);
  free(host_in), free(host_out);
  return status;
}
