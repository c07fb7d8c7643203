/* Single-process inspection of a checkpoint written by loom_ckpt_save (see ckpt.h for the
 * layout): what it holds, whether every shard is intact, and whole tensors read through the
 * index's virtual datasets. No MPI; used by the loom-ckpt tool, and by ckpt.c for resolving
 * a root and checking one shard.
 *
 * Every function silences HDF5's automatic error printing while it runs and restores the
 * previous handler before returning; failures come back as a loom_status whose message
 * (loom_error_string) names the file and the tensor. Thread-safe apart from HDF5's own
 * library lock: no static buffers. */
#ifndef LOOM_CHECKPOINT_INSPECT_H
#define LOOM_CHECKPOINT_INSPECT_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/dtype.h"
#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_CKPT_MAX_DIMS = 8, LOOM_CKPT_PATH_BYTES = 4096 };

typedef struct {
  char *name;            /* full path in index.h5, e.g. "blocks/B"; owned */
  loom_dtype dtype;
  int ndims;             /* 0 = scalar (stored as one element of shape (1)) */
  int64_t shape[LOOM_CKPT_MAX_DIMS]; /* global extents; none for a scalar */
  int64_t count;         /* elements (1 for a scalar) */
  int64_t bytes;         /* count * loom_dtype_size(dtype) */
  int piece_count;       /* rank-file pieces the virtual dataset maps */
  int shard_count;       /* length of shard_crc32 = world size at save (pp * dp * sp) */
  uint32_t *shard_crc32; /* (shard_count,): crc32 of writer w's piece, 0 = no piece; owned */
} loom_ckpt_tensor_info;

typedef struct {
  char dir[LOOM_CKPT_PATH_BYTES]; /* the resolved checkpoint directory */
  int64_t step;
  int mesh[4];                    /* pp, dp, sp, ep at save */
  char version[32];               /* loom version that wrote it */
  int tensor_count;
  loom_ckpt_tensor_info *tensors; /* (tensor_count,), sorted by name (strcmp); owned */
} loom_ckpt_info;

/* The checkpoint directory `root` designates, written to dir (bytes long): root itself when
 * it holds index.h5, else root/<name in root/latest> (a name "step-<digits>", one line).
 * LOOM_ERR_IO when neither index.h5 nor latest exists, LOOM_ERR_CORRUPT when latest is
 * unreadable or malformed, LOOM_ERR_ARG when a path does not fit in `bytes`. Does not check
 * that the named directory exists (opening its index.h5 does). */
loom_status loom_ckpt_resolve(const char *root, char *dir, size_t bytes);

/* Resolves root, opens index.h5 and reads the step, mesh, version and every tensor's
 * description (a recursive walk over the file; names sorted). On failure *info is left
 * empty (safe to free). LOOM_ERR_IO/CORRUPT from resolve; LOOM_ERR_CORRUPT for a missing or
 * unreadable index, missing or malformed attributes, a tensor whose loom_dtype, loom_ndims,
 * stored type and extents disagree, or whose shard_crc32 length differs from pp*dp*sp;
 * LOOM_ERR_NOMEM. Free with loom_ckpt_info_free. */
loom_status loom_ckpt_info_open(const char *root, loom_ckpt_info *info);

/* Frees what info_open allocated and empties *info; NULL and empty infos are fine. */
void loom_ckpt_info_free(loom_ckpt_info *info);

/* Checks that rank file `writer` (dir/rank-<writer>.h5) exists and opens as HDF5.
 * LOOM_ERR_CORRUPT naming the file when it is missing, truncated or not HDF5. */
loom_status loom_ckpt_check_rank_file(const char *dir, int writer);

/* Reads rank file `writer`'s piece of `tensor` (dir/rank-<writer>.h5, the file's raw bytes)
 * and checks its zlib crc32 against `expected`. A file without the dataset is fine only when
 * expected == 0 (the writer held no piece). LOOM_ERR_CORRUPT naming the file and tensor for a
 * missing, truncated or unreadable file, a missing dataset, or a checksum mismatch;
 * LOOM_ERR_ARG for a bad argument; LOOM_ERR_NOMEM. Holds one piece in memory at a time. */
loom_status loom_ckpt_verify_shard(const char *dir, const char *tensor, int writer,
                                   uint32_t expected);

/* Checks the virtual dataset of tensor t without reading its values: every mapped source
 * file exists under dir and opens, holds the mapped dataset with as many elements as the
 * mapping, and the mappings cover every element (HDF5 would silently fill an unmapped or
 * unreadable region with zeros). LOOM_ERR_CORRUPT naming file and tensor otherwise. */
loom_status loom_ckpt_check_mapping(const char *dir, const loom_ckpt_tensor_info *t);

/* Reads the whole global tensor t through index.h5 into out: t->bytes bytes, elements in
 * row-major order, native byte order, bfloat16/float16 as raw uint16 bits. Runs
 * loom_ckpt_check_mapping first; shard checksums are not checked (loom_ckpt_verify_shard).
 * LOOM_ERR_CORRUPT when the mapping is broken or the read fails. */
loom_status loom_ckpt_read_tensor(const char *dir, const loom_ckpt_tensor_info *t, void *out);

#ifdef __cplusplus
}
#endif
#endif
