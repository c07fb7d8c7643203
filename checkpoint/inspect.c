/* Single-process checkpoint inspection (see inspect.h). Invariant: nothing read from a file is
 * trusted before it is checked (attribute sizes before reading into fixed buffers, types and
 * extents before allocating), so a damaged or foreign file yields LOOM_ERR_CORRUPT with the
 * file and tensor named, never a crash; every HDF5 handle opened here is closed here. */
#include "checkpoint/inspect.h"

#include "checkpoint/hdf5_types.h"
#include "runtime/mesh.h"

#include <ctype.h>
#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

enum { PATH_BYTES = LOOM_CKPT_PATH_BYTES, MAX_WRITERS = 1 << 24 };

/* HDF5 prints its error stack on every failed call unless told not to; these functions report
 * failures themselves, so the caller's handler is saved, cleared, and restored on return. */
typedef struct {
  H5E_auto2_t handler;
  void *data;
} hdf5_errors;

static hdf5_errors hdf5_quiet(void) {
  hdf5_errors saved = {NULL, NULL};
  H5Eget_auto2(H5E_DEFAULT, &saved.handler, &saved.data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  return saved;
}

static void hdf5_restore(hdf5_errors saved) { H5Eset_auto2(H5E_DEFAULT, saved.handler, saved.data); }

/* out = dir/name, or LOOM_ERR_ARG when it does not fit in `bytes`. */
static loom_status join_path(char *out, size_t bytes, const char *dir, const char *name) {
  int n = snprintf(out, bytes, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= bytes)
    return loom_error_set(LOOM_ERR_ARG, "checkpoint path %s/%s is longer than %zu bytes; use a "
                          "shorter directory", dir, name, bytes ? bytes - 1 : 0);
  return LOOM_OK;
}


/* 1 when a stored type holds `dtype` without conversion (class, size and sign agree). */
static int stored_type_matches(hid_t type, loom_dtype dtype) {
  H5T_class_t class_id = H5Tget_class(type);
  if (H5Tget_size(type) != loom_dtype_size(dtype)) return 0;
  switch (dtype) {
    case LOOM_FLOAT32:
    case LOOM_FLOAT64: return class_id == H5T_FLOAT;
    case LOOM_INT32:
    case LOOM_INT64: return class_id == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_2;
    default: return class_id == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE;
  }
}

/* zlib crc32 of `bytes` bytes; chunked because crc32() takes a 32-bit length. */
static uint32_t crc32_of(const void *data, size_t bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const Bytef *p = data;
  while (bytes > 0) {
    uInt chunk = bytes > (1u << 30) ? (1u << 30) : (uInt)bytes;
    crc = crc32(crc, p, chunk);
    p += chunk;
    bytes -= chunk;
  }
  return (uint32_t)crc;
}

/* 1 when every component of `path` ("blocks/B") exists under loc, 0 when one does not, -1
 * when HDF5 cannot tell (damaged file, or a component that is not a group). H5Lexists
 * itself fails rather than answering 0 when an intermediate group is missing. */
static int link_exists(hid_t loc, const char *path) {
  size_t length = strlen(path);
  char prefix[PATH_BYTES];
  if (length == 0 || length >= sizeof prefix) return -1;
  for (size_t i = 1; i <= length; i++) {
    if (i < length && path[i] != '/') continue;
    if (path[i - 1] == '/') continue; /* "a//b" or a trailing '/' */
    memcpy(prefix, path, i);
    prefix[i] = '\0';
    htri_t exists = H5Lexists(loc, prefix, H5P_DEFAULT);
    if (exists <= 0) return exists < 0 ? -1 : 0;
  }
  return 1;
}

/* Element count of attribute `name` of object; -1 when missing or unreadable. */
static hssize_t attribute_count(hid_t object, const char *name) {
  if (H5Aexists(object, name) <= 0) return -1;
  hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  if (attribute < 0) return -1;
  hid_t space = H5Aget_space(attribute);
  hssize_t count = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  if (space >= 0) H5Sclose(space);
  H5Aclose(attribute);
  return count;
}

/* Reads numeric attribute `name` (exactly `count` elements, integer or float) as `type` into
 * out; 0 on success, -1 when missing, of another size or class, or unreadable. The size is
 * checked first: out holds `count` elements and nothing more. */
static int read_numeric_attribute(hid_t object, const char *name, hid_t type, hssize_t count,
                                  void *out) {
  if (attribute_count(object, name) != count) return -1;
  hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  if (attribute < 0) return -1;
  hid_t stored = H5Aget_type(attribute);
  H5T_class_t class_id = stored >= 0 ? H5Tget_class(stored) : H5T_NO_CLASS;
  int ok = (class_id == H5T_INTEGER || class_id == H5T_FLOAT) &&
           H5Aread(attribute, type, out) >= 0;
  if (stored >= 0) H5Tclose(stored);
  H5Aclose(attribute);
  return ok ? 0 : -1;
}

/* Reads scalar string attribute `name` (variable or fixed length) into out (bytes long,
 * truncated to fit); 0 on success, -1 when missing, not one string, or unreadable. */
static int read_string_attribute(hid_t object, const char *name, char *out, size_t bytes) {
  out[0] = '\0';
  if (attribute_count(object, name) != 1) return -1;
  hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  if (attribute < 0) return -1;
  hid_t stored = H5Aget_type(attribute);
  int ok = 0;
  if (stored >= 0 && H5Tget_class(stored) == H5T_STRING) {
    hid_t text = H5Tcopy(H5T_C_S1);
    H5Tset_cset(text, H5Tget_cset(stored)); /* h5py writes UTF-8: no conversion to ASCII */
    if (H5Tis_variable_str(stored) > 0) {
      char *value = NULL;
      H5Tset_size(text, H5T_VARIABLE);
      if (H5Aread(attribute, text, &value) >= 0 && value) {
        snprintf(out, bytes, "%s", value);
        ok = 1;
      }
      if (value) H5free_memory(value);
    } else {
      size_t size = H5Tget_size(stored);
      char *value = size > 0 && size <= PATH_BYTES ? calloc(size + 1, 1) : NULL;
      H5Tset_size(text, size > 0 ? size : 1);
      if (value && H5Aread(attribute, text, value) >= 0) {
        snprintf(out, bytes, "%s", value);
        ok = 1;
      }
      free(value);
    }
    H5Tclose(text);
  }
  if (stored >= 0) H5Tclose(stored);
  H5Aclose(attribute);
  return ok ? 0 : -1;
}

loom_status loom_ckpt_resolve(const char *root, char *dir, size_t bytes) {
  if (!root || !dir || bytes == 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_resolve: root or dir missing, or bytes = 0");
  char path[PATH_BYTES];
  LOOM_CHECK(join_path(path, sizeof path, root, "index.h5"));
  if (access(path, F_OK) == 0) {
    int n = snprintf(dir, bytes, "%s", root);
    if (n < 0 || (size_t)n >= bytes)
      return loom_error_set(LOOM_ERR_ARG, "checkpoint path %s is longer than %zu bytes", root,
                            bytes - 1);
    return LOOM_OK;
  }
  LOOM_CHECK(join_path(path, sizeof path, root, "latest"));
  FILE *f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT || errno == ENOTDIR)
      return loom_error_set(LOOM_ERR_IO, "no checkpoint at %s: neither %s/index.h5 nor %s "
                            "exists; pass a checkpoint root or one step-* directory", root, root,
                            path);
    return loom_error_set(LOOM_ERR_IO, "cannot read %s: %s", path, strerror(errno));
  }
  /* One line "step-<digits>"; anything longer than `name` holds is malformed. */
  char name[64];
  size_t length = fread(name, 1, sizeof name - 1, f);
  int read_failed = ferror(f);
  fclose(f);
  if (read_failed) return loom_error_set(LOOM_ERR_IO, "reading %s failed", path);
  name[length] = '\0';
  while (length > 0 && isspace((unsigned char)name[length - 1])) name[--length] = '\0';
  size_t digits = strncmp(name, "step-", 5) == 0 ? strspn(name + 5, "0123456789") : 0;
  if (digits == 0 || digits > 19 || 5 + digits != length)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s does not name a checkpoint (it should hold one "
                          "line 'step-<digits>'; holds '%.40s'): rewrite it to name an existing "
                          "step-* directory, or pass that directory", path, name);
  return join_path(dir, bytes, root, name);
}

/* Names of the datasets under the index (full paths), collected by the link walk. */
typedef struct {
  char **names;
  int count, capacity;
  loom_status status;
  char failed[256]; /* the link whose object could not be opened */
} name_list;

static herr_t collect_dataset(hid_t group, const char *name, const H5L_info_t *link, void *data) {
  name_list *list = data;
  if (link->type != H5L_TYPE_HARD) return 0; /* soft and external links name no tensor */
  hid_t object = H5Oopen(group, name, H5P_DEFAULT);
  if (object < 0) {
    snprintf(list->failed, sizeof list->failed, "%s", name);
    list->status = LOOM_ERR_CORRUPT;
    return -1;
  }
  int is_dataset = H5Iget_type(object) == H5I_DATASET;
  H5Oclose(object);
  if (!is_dataset) return 0;
  if (list->count == list->capacity) {
    int capacity = list->capacity ? 2 * list->capacity : 16;
    char **grown = realloc(list->names, sizeof *grown * (size_t)capacity);
    if (!grown) {
      list->status = LOOM_ERR_NOMEM;
      return -1;
    }
    list->names = grown;
    list->capacity = capacity;
  }
  list->names[list->count] = strdup(name);
  if (!list->names[list->count]) {
    list->status = LOOM_ERR_NOMEM;
    return -1;
  }
  list->count++;
  return 0;
}

static int compare_tensor_names(const void *a, const void *b) {
  return strcmp(((const loom_ckpt_tensor_info *)a)->name, ((const loom_ckpt_tensor_info *)b)->name);
}

/* Fills t (whose name is set) from its dataset in the index: dtype, dims, stored type and
 * extents agreeing, shard checksums of length `writers`, number of mapped pieces. */
static loom_status describe_tensor(hid_t index, const char *path, int writers,
                                   loom_ckpt_tensor_info *t) {
  const char *name = t->name;
  hid_t set = H5Dopen2(index, name, H5P_DEFAULT);
  if (set < 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' cannot be opened: the index is "
                          "damaged; use another checkpoint", path, name);
  loom_status status = LOOM_OK;
  hid_t space = -1, stored = -1, dcpl = -1;
  char dtype_name[32];
  if (read_string_attribute(set, "loom_dtype", dtype_name, sizeof dtype_name) < 0 ||
      loom_dtype_parse(dtype_name, &t->dtype) != LOOM_OK) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' has no valid loom_dtype attribute "
                            "('%s'): not written by loom, or damaged", path, name, dtype_name);
    goto done;
  }
  if (read_numeric_attribute(set, "loom_ndims", H5T_NATIVE_INT, 1, &t->ndims) < 0 ||
      t->ndims < 0 || t->ndims > LOOM_CKPT_MAX_DIMS) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' has no valid loom_ndims attribute "
                            "(0..%d): not written by loom, or damaged", path, name,
                            LOOM_CKPT_MAX_DIMS);
    goto done;
  }
  /* Extents: a scalar is stored as shape (1); otherwise rank == loom_ndims. */
  space = H5Dget_space(set);
  int rank = space >= 0 && H5Sget_simple_extent_type(space) == H5S_SIMPLE
                 ? H5Sget_simple_extent_ndims(space) : -1;
  hsize_t dims[LOOM_CKPT_MAX_DIMS];
  int want_rank = t->ndims == 0 ? 1 : t->ndims;
  if (rank != want_rank || H5Sget_simple_extent_dims(space, dims, NULL) != rank ||
      (t->ndims == 0 && dims[0] != 1)) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' is stored with %d dims but "
                            "loom_ndims says %d%s: the index is inconsistent", path, name, rank,
                            t->ndims, t->ndims == 0 ? " (a scalar, stored as shape (1))" : "");
    goto done;
  }
  /* count * element bytes must fit in int64 (and so in a read buffer's size). */
  int64_t element_bytes = (int64_t)loom_dtype_size(t->dtype), limit = INT64_MAX / element_bytes;
  t->count = 1;
  for (int d = 0; d < t->ndims; d++) {
    if (dims[d] > (hsize_t)limit || (t->count > 0 && (int64_t)dims[d] > limit / t->count)) {
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' has extents too large to "
                              "address (dim %d = %llu)", path, name, d, (unsigned long long)dims[d]);
      goto done;
    }
    t->shape[d] = (int64_t)dims[d];
    t->count *= t->shape[d];
  }
  t->bytes = t->count * element_bytes;
  stored = H5Dget_type(set);
  if (stored < 0 || !stored_type_matches(stored, t->dtype)) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' is stored as another type than its "
                            "loom_dtype %s (class %d, %zu bytes): the index is inconsistent",
                            path, name, dtype_name, stored >= 0 ? (int)H5Tget_class(stored) : -1,
                            stored >= 0 ? H5Tget_size(stored) : (size_t)0);
    goto done;
  }
  hssize_t crc_count = attribute_count(set, "shard_crc32");
  if (crc_count != writers) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' has %lld shard checksums "
                            "(shard_crc32) but the mesh has %d writers (pp*dp*sp): the index is "
                            "inconsistent", path, name, (long long)crc_count, writers);
    goto done;
  }
  t->shard_count = writers;
  t->shard_crc32 = calloc((size_t)writers, sizeof *t->shard_crc32);
  if (!t->shard_crc32) {
    status = loom_error_set(LOOM_ERR_NOMEM, "%s: %d shard checksums of tensor '%s'", path,
                            writers, name);
    goto done;
  }
  if (read_numeric_attribute(set, "shard_crc32", H5T_NATIVE_UINT32, writers, t->shard_crc32) < 0) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s': shard_crc32 cannot be read as "
                            "unsigned integers", path, name);
    goto done;
  }
  dcpl = H5Dget_create_plist(set);
  size_t pieces = 0;
  if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_VIRTUAL && H5Pget_virtual_count(dcpl, &pieces) < 0) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s': its virtual mapping cannot be read",
                            path, name);
    goto done;
  }
  t->piece_count = (int)pieces;
done:
  if (dcpl >= 0) H5Pclose(dcpl);
  if (stored >= 0) H5Tclose(stored);
  if (space >= 0) H5Sclose(space);
  H5Dclose(set);
  return status;
}

static loom_status info_open(const char *root, loom_ckpt_info *info) {
  LOOM_CHECK(loom_ckpt_resolve(root, info->dir, sizeof info->dir));
  char path[PATH_BYTES];
  LOOM_CHECK(join_path(path, sizeof path, info->dir, "index.h5"));
  if (access(path, F_OK) != 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s is missing (%s): %s is not a complete checkpoint; "
                          "use another one", path, strerror(errno), info->dir);
  hid_t index = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (index < 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s cannot be opened as HDF5 (truncated, damaged or "
                          "not a checkpoint index); use another checkpoint", path);
  loom_status status = LOOM_OK;
  name_list list = {0};
  if (read_numeric_attribute(index, "step", H5T_NATIVE_INT64, 1, &info->step) < 0) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s lacks a valid step attribute: not a loom "
                            "checkpoint, or damaged", path);
    goto done;
  }
  /* The mesh: the named axes (mesh_axes), or the attribute of checkpoints written before it */
  char axes[256];
  if (H5Aexists(index, "mesh_axes") > 0) {
    loom_mesh_shape shape;
    if (read_string_attribute(index, "mesh_axes", axes, sizeof axes) < 0) {
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s: the mesh_axes attribute is unreadable", path);
      goto done;
    }
    status = loom_mesh_shape_parse(axes, &shape);
    if (status < 0) {
      char cause[512];
      snprintf(cause, sizeof cause, "%s", loom_error_string());
      status = loom_error_set(status, "%s: %s", path, cause);
      goto done;
    }
    for (int a = 0; a < 4; a++) info->mesh[a] = loom_mesh_shape_size(&shape, a);
  } else if (read_numeric_attribute(index, "mesh_pp_dp_sp_ep", H5T_NATIVE_INT, 4, info->mesh) < 0) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s lacks a valid mesh_axes (or older "
                            "mesh_pp_dp_sp_ep) attribute: not a loom checkpoint, or damaged", path);
    goto done;
  }
  int64_t writers = 1;
  for (int axis = 0; axis < 4; axis++) {
    if (info->mesh[axis] < 1 || info->mesh[axis] > MAX_WRITERS) writers = 0;
    if (axis < 3) writers *= info->mesh[axis]; /* ep splits dp; it adds no writers */
  }
  if (writers < 1 || writers > MAX_WRITERS) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: mesh pp %d dp %d sp %d ep %d is not valid",
                            path, info->mesh[0], info->mesh[1], info->mesh[2], info->mesh[3]);
    goto done;
  }
  if (read_string_attribute(index, "loom_version", info->version, sizeof info->version) < 0) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s lacks the loom_version attribute: not a loom "
                            "checkpoint, or damaged", path);
    goto done;
  }
  if (H5Lvisit(index, H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &list) < 0) {
    if (list.status == LOOM_ERR_NOMEM)
      status = loom_error_set(LOOM_ERR_NOMEM, "listing the tensors of %s", path);
    else if (list.status != LOOM_OK)
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s: object '%s' cannot be opened: the index is "
                              "damaged; use another checkpoint", path, list.failed);
    else
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s: listing its tensors failed: the index is "
                              "damaged; use another checkpoint", path);
    goto done;
  }
  info->tensors = calloc(list.count ? (size_t)list.count : 1, sizeof *info->tensors);
  if (!info->tensors) {
    status = loom_error_set(LOOM_ERR_NOMEM, "descriptions of %d tensors of %s", list.count, path);
    goto done;
  }
  for (int i = 0; i < list.count; i++) { /* names move into the tensors one by one */
    info->tensors[i].name = list.names[i];
    list.names[i] = NULL;
    info->tensor_count = i + 1;
    LOOM_CHECK_GOTO(describe_tensor(index, path, (int)writers, &info->tensors[i]), status, done);
  }
  qsort(info->tensors, (size_t)info->tensor_count, sizeof *info->tensors, compare_tensor_names);
done:
  for (int i = 0; i < list.count; i++) free(list.names[i]);
  free(list.names);
  H5Fclose(index);
  return status;
}

loom_status loom_ckpt_info_open(const char *root, loom_ckpt_info *info) {
  if (!info) return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_info_open: info missing");
  memset(info, 0, sizeof *info);
  if (!root) return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_info_open: root missing");
  hdf5_errors saved = hdf5_quiet();
  loom_status status = info_open(root, info);
  hdf5_restore(saved);
  if (status != LOOM_OK) loom_ckpt_info_free(info);
  return status;
}

void loom_ckpt_info_free(loom_ckpt_info *info) {
  if (!info) return;
  for (int i = 0; i < info->tensor_count; i++) {
    free(info->tensors[i].name);
    free(info->tensors[i].shard_crc32);
  }
  free(info->tensors);
  memset(info, 0, sizeof *info);
}

/* Opens rank file `writer` read-only into *file (path gets its name); `tensor` (may be NULL)
 * is what the caller wanted from it, for the message. */
static loom_status open_rank_file(const char *dir, int writer, const char *tensor, char *path,
                                  size_t bytes, hid_t *file) {
  char file_name[32], wanted[PATH_BYTES + 64] = "";
  snprintf(file_name, sizeof file_name, "rank-%05d.h5", writer);
  LOOM_CHECK(join_path(path, bytes, dir, file_name));
  if (tensor) snprintf(wanted, sizeof wanted, ", so tensor '%s' cannot be checked", tensor);
  struct stat file_stat;
  if (stat(path, &file_stat) != 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: rank file %s is missing (%s)%s: the "
                          "checkpoint is incomplete; use an older one", dir, path,
                          strerror(errno), wanted);
  *file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (*file < 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: rank file %s is truncated, damaged "
                          "or not HDF5 (%lld bytes)%s; use an older checkpoint", dir, path,
                          (long long)file_stat.st_size, wanted);
  return LOOM_OK;
}

loom_status loom_ckpt_check_rank_file(const char *dir, int writer) {
  if (!dir || writer < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_check_rank_file: dir missing or writer %d < 0",
                          writer);
  hdf5_errors saved = hdf5_quiet();
  char path[PATH_BYTES];
  hid_t file = -1;
  loom_status status = open_rank_file(dir, writer, NULL, path, sizeof path, &file);
  if (file >= 0) H5Fclose(file);
  hdf5_restore(saved);
  return status;
}

static loom_status verify_shard(const char *dir, const char *tensor, int writer, uint32_t expected) {
  char path[PATH_BYTES];
  hid_t file = -1;
  LOOM_CHECK(open_rank_file(dir, writer, tensor, path, sizeof path, &file));
  loom_status status = LOOM_OK;
  hid_t set = -1, type = -1, space = -1;
  char *data = NULL;
  int exists = link_exists(file, tensor);
  if (exists <= 0) {
    if (expected != 0)
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s lacks tensor '%s' that the index maps onto "
                              "it (crc32 %08x expected): the checkpoint is damaged; use an older "
                              "one", path, tensor, (unsigned)expected);
    else if (exists < 0)
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s: looking up tensor '%s' failed: the file is "
                              "damaged; use an older checkpoint", path, tensor);
    goto done;
  }
  set = H5Dopen2(file, tensor, H5P_DEFAULT);
  type = set >= 0 ? H5Dget_type(set) : -1;
  space = set >= 0 ? H5Dget_space(set) : -1;
  H5T_class_t class_id = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
  hssize_t count = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  size_t element_bytes = type >= 0 ? H5Tget_size(type) : 0;
  if ((class_id != H5T_INTEGER && class_id != H5T_FLOAT) || count < 0 || element_bytes == 0 ||
      (size_t)count > SIZE_MAX / element_bytes) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' is not a readable numeric dataset: "
                            "the file is damaged; use an older checkpoint", path, tensor);
    goto done;
  }
  size_t bytes = (size_t)count * element_bytes;
  data = malloc(bytes ? bytes : 1);
  if (!data) {
    status = loom_error_set(LOOM_ERR_NOMEM, "%zu bytes to check tensor '%s' of %s", bytes, tensor,
                            path);
    goto done;
  }
  /* The stored type as the memory type: the crc covers the file's bytes as written. */
  if (H5Dread(set, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' cannot be read (truncated or "
                            "damaged file); use an older checkpoint", path, tensor);
    goto done;
  }
  uint32_t actual = crc32_of(data, bytes);
  if (actual != expected)
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' fails its checksum (crc32 %08x, "
                            "index says %08x): the checkpoint is damaged; load an older one",
                            path, tensor, (unsigned)actual, (unsigned)expected);
done:
  free(data);
  if (space >= 0) H5Sclose(space);
  if (type >= 0) H5Tclose(type);
  if (set >= 0) H5Dclose(set);
  H5Fclose(file);
  return status;
}

loom_status loom_ckpt_verify_shard(const char *dir, const char *tensor, int writer,
                                   uint32_t expected) {
  if (!dir || !tensor || !tensor[0] || writer < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_verify_shard: dir or tensor missing, or "
                          "writer %d < 0", writer);
  hdf5_errors saved = hdf5_quiet();
  loom_status status = verify_shard(dir, tensor, writer, expected);
  hdf5_restore(saved);
  return status;
}

/* Mapping `i` of tensor t's virtual dataset, `mapped` elements of the tensor: its source file
 * exists under dir and holds the source dataset, of t's dtype, with the mapped elements. */
static loom_status check_piece(hid_t dcpl, size_t i, hssize_t mapped, const char *dir,
                               const loom_ckpt_tensor_info *t) {
  loom_status status = LOOM_OK;
  char file_name[256] = "", set_name[PATH_BYTES] = "", path[PATH_BYTES];
  hid_t source_space = -1, file = -1, set = -1, space = -1, type = -1;
  ssize_t file_length = H5Pget_virtual_filename(dcpl, i, file_name, sizeof file_name);
  ssize_t set_length = H5Pget_virtual_dsetname(dcpl, i, set_name, sizeof set_name);
  if (file_length <= 0 || (size_t)file_length >= sizeof file_name || set_length <= 0 ||
      (size_t)set_length >= sizeof set_name || strchr(file_name, '/') ||
      strcmp(file_name, ".") == 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5: tensor '%s' maps onto '%s' (dataset "
                          "'%s'), not a rank file of the checkpoint: not written by loom, or "
                          "damaged", dir, t->name, file_name, set_name);
  LOOM_CHECK(join_path(path, sizeof path, dir, file_name));
  struct stat file_stat;
  if (stat(path, &file_stat) != 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: rank file %s, which holds part of "
                          "tensor '%s', is missing (%s): the checkpoint is incomplete; use an "
                          "older one", dir, path, t->name, strerror(errno));
  file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: rank file %s, which holds part of "
                          "tensor '%s', is truncated, damaged or not HDF5; use an older "
                          "checkpoint", dir, path, t->name);
  if (link_exists(file, set_name) <= 0) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s lacks dataset '%s' that tensor '%s' maps onto: "
                            "the checkpoint is damaged; use an older one", path, set_name, t->name);
    goto done;
  }
  set = H5Dopen2(file, set_name, H5P_DEFAULT);
  space = set >= 0 ? H5Dget_space(set) : -1;
  type = set >= 0 ? H5Dget_type(set) : -1;
  source_space = H5Pget_virtual_srcspace(dcpl, i);
  hsize_t dims[LOOM_CKPT_MAX_DIMS], start[LOOM_CKPT_MAX_DIMS], end[LOOM_CKPT_MAX_DIMS];
  int rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
  int ok = type >= 0 && stored_type_matches(type, t->dtype) && source_space >= 0 && rank >= 1 &&
           rank <= LOOM_CKPT_MAX_DIMS && H5Sget_simple_extent_dims(space, dims, NULL) == rank;
  if (ok && H5Sget_select_type(source_space) == H5S_SEL_ALL) {
    /* The whole source (what loom writes). HDF5 keeps no extent for such a selection until it
     * opens the source, so the source's own size is what gets mapped. */
    ok = H5Sget_simple_extent_npoints(space) == mapped;
  } else if (ok) { /* a hyperslab or points: inside the source, as many as mapped */
    ok = H5Sget_simple_extent_ndims(source_space) == rank &&
         H5Sget_select_npoints(source_space) == mapped;
    if (ok && mapped > 0) ok = H5Sget_select_bounds(source_space, start, end) >= 0;
    for (int d = 0; ok && mapped > 0 && d < rank; d++) ok = end[d] < dims[d];
  }
  if (!ok)
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: dataset '%s' (part of tensor '%s') has "
                            "another type or extents than the index maps: the checkpoint is "
                            "damaged; use an older one", path, set_name, t->name);
done:
  if (source_space >= 0) H5Sclose(source_space);
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  if (set >= 0) H5Dclose(set);
  H5Fclose(file);
  return status;
}

/* Checks tensor t's mapping in the open index (see loom_ckpt_check_mapping). */
static loom_status check_mapping(hid_t index, const char *dir, const loom_ckpt_tensor_info *t) {
  hid_t set = H5Dopen2(index, t->name, H5P_DEFAULT);
  if (set < 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5 has no readable tensor '%s'", dir, t->name);
  loom_status status = LOOM_OK;
  hid_t dcpl = H5Dget_create_plist(set);
  size_t pieces = 0;
  if (dcpl < 0 || (H5Pget_layout(dcpl) == H5D_VIRTUAL && H5Pget_virtual_count(dcpl, &pieces) < 0)) {
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5: tensor '%s': its layout or virtual "
                            "mapping cannot be read", dir, t->name);
  } else if (H5Pget_layout(dcpl) == H5D_VIRTUAL) { /* else the values are in the index itself */
    int64_t covered = 0; /* elements mapped; pieces never overlap in a loom checkpoint */
    for (size_t i = 0; i < pieces && status == LOOM_OK; i++) {
      hid_t vspace = H5Pget_virtual_vspace(dcpl, i);
      hssize_t mapped = vspace >= 0 ? H5Sget_select_npoints(vspace) : -1;
      if (vspace >= 0) H5Sclose(vspace);
      if (mapped < 0)
        status = loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5: tensor '%s': mapping %zu cannot "
                                "be read", dir, t->name, i);
      else
        covered += mapped;
      if (status == LOOM_OK) status = check_piece(dcpl, i, mapped, dir, t);
    }
    if (status == LOOM_OK && covered < t->count)
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5: tensor '%s' maps only %lld of its "
                              "%lld elements onto rank files (the rest would read as 0): the "
                              "index is damaged; use another checkpoint", dir, t->name,
                              (long long)covered, (long long)t->count);
  }
  if (dcpl >= 0) H5Pclose(dcpl);
  H5Dclose(set);
  return status;
}

/* Opens dir/index.h5 read-only into *index. */
static loom_status open_index(const char *dir, hid_t *index) {
  char path[PATH_BYTES];
  LOOM_CHECK(join_path(path, sizeof path, dir, "index.h5"));
  *index = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (*index < 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s is missing, or cannot be opened as HDF5; use "
                          "another checkpoint", path);
  return LOOM_OK;
}

static int tensor_valid(const loom_ckpt_tensor_info *t) {
  return t && t->name && t->name[0] && (int)t->dtype >= 0 && t->dtype < LOOM_DTYPE_COUNT;
}

loom_status loom_ckpt_check_mapping(const char *dir, const loom_ckpt_tensor_info *t) {
  if (!dir || !tensor_valid(t))
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_check_mapping: dir or tensor missing or invalid");
  hdf5_errors saved = hdf5_quiet();
  hid_t index = -1;
  loom_status status = open_index(dir, &index);
  if (status == LOOM_OK) status = check_mapping(index, dir, t);
  if (index >= 0) H5Fclose(index);
  hdf5_restore(saved);
  return status;
}

static loom_status read_tensor(hid_t index, const char *dir, const loom_ckpt_tensor_info *t,
                               void *out) {
  LOOM_CHECK(check_mapping(index, dir, t));
  hid_t set = H5Dopen2(index, t->name, H5P_DEFAULT);
  if (set < 0)
    return loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5 has no readable tensor '%s'", dir, t->name);
  loom_status status = LOOM_OK;
  hid_t space = H5Dget_space(set);
  /* out holds t->count elements: the extents must not have changed since info_open. */
  if (space < 0 || H5Sget_simple_extent_npoints(space) != (hssize_t)t->count)
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5: tensor '%s' no longer has %lld "
                            "elements: the checkpoint changed while being read", dir, t->name,
                            (long long)t->count);
  else if (t->count > 0 &&
           H5Dread(set, loom_hdf5_type(t->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    status = loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: reading tensor '%s' through "
                            "index.h5 failed (a rank file damaged); run loom-ckpt verify", dir,
                            t->name);
  if (space >= 0) H5Sclose(space);
  H5Dclose(set);
  return status;
}

loom_status loom_ckpt_read_tensor(const char *dir, const loom_ckpt_tensor_info *t, void *out) {
  if (!dir || !tensor_valid(t) || (!out && t->count > 0))
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_read_tensor: dir, tensor or out missing");
  hdf5_errors saved = hdf5_quiet();
  hid_t index = -1;
  loom_status status = open_index(dir, &index);
  if (status == LOOM_OK) status = read_tensor(index, dir, t, out);
  if (index >= 0) H5Fclose(index);
  hdf5_restore(saved);
  return status;
}
