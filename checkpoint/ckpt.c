/* Synchronous HDF5 checkpoints of the state registry (see ckpt.h). Invariants: nothing is
 * named by `latest` before its directory is complete and synced; a load checks every shard's
 * crc32 before reading any tensor, and all ranks agree on the outcome. */
#include "checkpoint/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "collectives/coll.h"
#include "runtime/log.h"

enum { PATH_BYTES = 4096 };

static hid_t file_type(loom_dtype dtype) {
  switch (dtype) {
    case LOOM_FLOAT32: return H5T_NATIVE_FLOAT;
    case LOOM_FLOAT64: return H5T_NATIVE_DOUBLE;
    case LOOM_INT32: return H5T_NATIVE_INT32;
    case LOOM_INT64: return H5T_NATIVE_INT64;
    case LOOM_UINT8: return H5T_NATIVE_UINT8;
    default: return H5T_NATIVE_UINT16; /* bfloat16, float16: raw bits, dtype in an attribute */
  }
}

/* Shape of a tensor in the files: scalars are stored as one element. */
static int file_dims(const loom_state_spec *spec, const int64_t *extents, hsize_t *dims) {
  if (spec->ndims == 0) {
    dims[0] = 1;
    return 1;
  }
  for (int d = 0; d < spec->ndims; d++) dims[d] = (hsize_t)(extents ? extents[d] : spec->shape[d]);
  return spec->ndims;
}

static loom_status fsync_path(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return loom_error_set(LOOM_ERR_IO, "opening %s to sync it: %s", path, strerror(errno));
  int rc = fsync(fd);
  close(fd);
  if (rc != 0) return loom_error_set(LOOM_ERR_IO, "fsync of %s: %s", path, strerror(errno));
  return LOOM_OK;
}

/* Removes a directory of plain files (a stale temporary checkpoint). */
static void remove_tree(const char *path) {
  DIR *dir = opendir(path);
  if (!dir) return;
  struct dirent *e;
  char child[PATH_BYTES];
  while ((e = readdir(dir)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(child, sizeof child, "%s/%s", path, e->d_name);
    unlink(child);
  }
  closedir(dir);
  rmdir(path);
}

/* Every rank learns whether any rank failed (the worst status); the failing rank keeps its
 * own message, the others name the collective failure. */
static loom_status agree(loom_group *world, loom_status mine) {
  int code = mine < 0 ? -(int)mine : 0, worst = 0;
  char message[1024];
  snprintf(message, sizeof message, "%s", loom_error_string());
  LOOM_CHECK(loom_allreduce(world, loom_buf_host(&code, 1, LOOM_INT32),
                            loom_buf_host(&worst, 1, LOOM_INT32), LOOM_OP_MAX));
  if (mine < 0) {
    loom_error_restore(message);
    return mine;
  }
  if (worst)
    return loom_error_set((loom_status)-worst, "checkpoint: another rank failed (its message "
                          "names the cause); this rank stopped with it");
  return LOOM_OK;
}

/* Writes this rank's owned slices to `path`; crcs[i] = crc32 of entry i's bytes (0 if none). */
static loom_status write_rank_file(loom_state *state, const char *path, uint32_t *crcs,
                                   int deflate_level) {
  loom_mesh_coords coords = loom_mesh_my_coords(loom_state_mesh(state));
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return loom_error_set(LOOM_ERR_HDF5, "creating %s failed", path);
  loom_status status = LOOM_OK;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  for (int i = 0; i < loom_state_count(state) && status == LOOM_OK; i++) {
    const char *name;
    const loom_state_spec *spec;
    loom_buf local;
    const int64_t *extents;
    loom_state_entry(state, i, &name, &spec, &local, NULL, &extents);
    crcs[i] = 0;
    if (!loom_state_is_writer(spec, &coords) || local.count == 0) continue;
    if (local.device.kind != LOOM_DEVICE_CPU) {
      status = loom_error_set(LOOM_ERR_UNSUPPORTED, "checkpoint of '%s': device tensors are not "
                              "saved yet; copy to host memory first", name);
      break;
    }
    hsize_t dims[LOOM_STATE_MAX_DIMS];
    int rank = file_dims(spec, extents, dims);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (deflate_level > 0) { /* one chunk per slice: deflate needs chunked storage */
      H5Pset_chunk(dcpl, rank, dims);
      H5Pset_deflate(dcpl, (unsigned)deflate_level);
    }
    hid_t set = H5Dcreate2(file, name, file_type(spec->dtype), space, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    if (set < 0 || H5Dwrite(set, file_type(spec->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, local.ptr) < 0)
      status = loom_error_set(LOOM_ERR_HDF5, "writing tensor '%s' to %s failed", name, path);
    if (set >= 0) H5Dclose(set);
    H5Sclose(space);
    crcs[i] = (uint32_t)crc32(0L, local.ptr, (uInt)loom_buf_bytes(local));
  }
  H5Pclose(lcpl);
  if (H5Fclose(file) < 0 && status == LOOM_OK)
    status = loom_error_set(LOOM_ERR_HDF5, "closing %s failed", path);
  if (status == LOOM_OK) status = fsync_path(path);
  return status;
}

/* Rank 0: index.h5 with one virtual dataset per tensor over all writers' files. */
static loom_status write_index(loom_state *state, const char *path, int64_t step, int world,
                               const uint32_t *all_crcs /* (world, count) */) {
  loom_mesh *mesh = loom_state_mesh(state);
  loom_mesh_shape shape = loom_mesh_get_shape(mesh);
  int count = loom_state_count(state);
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return loom_error_set(LOOM_ERR_HDF5, "creating %s failed", path);
  loom_status status = LOOM_OK;
  hid_t scalar = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(file, "step", H5T_NATIVE_INT64, scalar, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, H5T_NATIVE_INT64, &step);
  H5Aclose(attr);
  int mesh_values[4] = {shape.pp, shape.dp, shape.sp, shape.ep};
  hsize_t four = 4;
  hid_t four_space = H5Screate_simple(1, &four, NULL);
  attr = H5Acreate2(file, "mesh_pp_dp_sp_ep", H5T_NATIVE_INT, four_space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, H5T_NATIVE_INT, mesh_values);
  H5Aclose(attr);
  H5Sclose(four_space);
  hid_t text = H5Tcopy(H5T_C_S1);
  H5Tset_size(text, H5T_VARIABLE);
  const char *version = "0.1.0";
  attr = H5Acreate2(file, "loom_version", text, scalar, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, text, &version);
  H5Aclose(attr);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hsize_t world_dims = (hsize_t)world;
  hid_t crc_space = H5Screate_simple(1, &world_dims, NULL);
  uint32_t *crcs = malloc(sizeof(uint32_t) * (size_t)world);
  for (int i = 0; i < count && status == LOOM_OK; i++) {
    const char *name;
    const loom_state_spec *spec;
    loom_state_entry(state, i, &name, &spec, NULL, NULL, NULL);
    hsize_t dims[LOOM_STATE_MAX_DIMS];
    int rank = file_dims(spec, NULL, dims);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    for (int r = 0; r < world; r++) {
      loom_mesh_coords c = loom_mesh_coords_of(&shape, r);
      int64_t offsets[LOOM_STATE_MAX_DIMS], extents[LOOM_STATE_MAX_DIMS];
      loom_state_slice(spec, &shape, &c, offsets, extents);
      int64_t elements = 1;
      for (int d = 0; d < spec->ndims; d++) elements *= extents[d];
      crcs[r] = all_crcs[(size_t)r * (size_t)count + (size_t)i];
      if (!loom_state_is_writer(spec, &c) || elements == 0) continue;
      hsize_t start[LOOM_STATE_MAX_DIMS] = {0}, block[LOOM_STATE_MAX_DIMS];
      file_dims(spec, extents, block);
      for (int d = 0; d < spec->ndims; d++) start[d] = (hsize_t)offsets[d];
      hid_t vspace = H5Scopy(space);
      H5Sselect_hyperslab(vspace, H5S_SELECT_SET, start, NULL, block, NULL);
      hid_t src_space = H5Screate_simple(rank, block, NULL);
      char source[64];
      snprintf(source, sizeof source, "rank-%05d.h5", r);
      if (H5Pset_virtual(dcpl, vspace, source, name, src_space) < 0)
        status = loom_error_set(LOOM_ERR_HDF5, "mapping '%s' onto %s in %s failed", name, source, path);
      H5Sclose(src_space);
      H5Sclose(vspace);
    }
    hid_t set = H5Dcreate2(file, name, file_type(spec->dtype), space, lcpl, dcpl, H5P_DEFAULT);
    if (set < 0) status = loom_error_set(LOOM_ERR_HDF5, "creating '%s' in %s failed", name, path);
    if (set >= 0) {
      const char *dtype_name = loom_dtype_name(spec->dtype);
      hid_t a = H5Acreate2(set, "loom_dtype", text, scalar, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, text, &dtype_name);
      H5Aclose(a);
      int ndims = spec->ndims;
      a = H5Acreate2(set, "loom_ndims", H5T_NATIVE_INT, scalar, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_INT, &ndims);
      H5Aclose(a);
      a = H5Acreate2(set, "shard_crc32", H5T_NATIVE_UINT32, crc_space, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_UINT32, crcs);
      H5Aclose(a);
      H5Dclose(set);
    }
    H5Pclose(dcpl);
    H5Sclose(space);
  }
  free(crcs);
  H5Sclose(crc_space);
  H5Pclose(lcpl);
  H5Tclose(text);
  H5Sclose(scalar);
  if (H5Fclose(file) < 0 && status == LOOM_OK) status = loom_error_set(LOOM_ERR_HDF5, "closing %s", path);
  if (status == LOOM_OK) status = fsync_path(path);
  return status;
}

/* Rank 0, after a save: removes stale temporary directories and the oldest checkpoints
 * beyond keep_last (the step just written is the newest and is kept). */
static void prune(const char *root, int64_t newest, int keep_last) {
  DIR *dir = opendir(root);
  if (!dir) return;
  enum { MAX_KEPT = 4096 };
  long long steps[MAX_KEPT];
  int count = 0;
  struct dirent *e;
  char path[PATH_BYTES];
  while ((e = readdir(dir)) != NULL) {
    long long step;
    char tail;
    if (sscanf(e->d_name, ".step-%lld.tm%c", &step, &tail) == 2 && tail == 'p') {
      snprintf(path, sizeof path, "%s/%s", root, e->d_name);
      remove_tree(path);
    } else if (sscanf(e->d_name, "step-%lld", &step) == 1 && count < MAX_KEPT) {
      steps[count++] = step;
    }
  }
  closedir(dir);
  if (keep_last <= 0) return;
  for (int kept = 0; count > 0; kept++) { /* repeatedly find the newest not yet counted */
    int newest_index = 0;
    for (int i = 1; i < count; i++)
      if (steps[i] > steps[newest_index]) newest_index = i;
    long long step = steps[newest_index];
    steps[newest_index] = steps[--count];
    if (kept < keep_last || step == newest) continue;
    snprintf(path, sizeof path, "%s/step-%08lld", root, step);
    remove_tree(path);
  }
}

loom_status loom_ckpt_save(loom_state *state, const char *root, int64_t step) {
  return loom_ckpt_save_with(state, root, step, NULL);
}

loom_status loom_ckpt_save_with(loom_state *state, const char *root, int64_t step,
                                const loom_ckpt_params *params) {
  loom_ckpt_params defaults = LOOM_CKPT_PARAMS_INIT;
  if (!params) params = &defaults;
  if (params->keep_last < 0 || params->deflate_level < 0 || params->deflate_level > 9)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_save: keep_last=%d (>= 0) or deflate_level=%d "
                          "(0..9) out of range", params->keep_last, params->deflate_level);
  if (!state || !root || step < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_save: state or root missing, or step %lld < 0",
                          (long long)step);
  loom_group *world = loom_mesh_group(loom_state_mesh(state), LOOM_AXIS_WORLD);
  int rank = loom_group_rank(world), size = loom_group_size(world), count = loom_state_count(state);
  int counts[2] = {count, -count}, extremes[2];
  LOOM_CHECK(loom_allreduce(world, loom_buf_host(counts, 2, LOOM_INT32),
                            loom_buf_host(extremes, 2, LOOM_INT32), LOOM_OP_MAX));
  if (extremes[0] != -extremes[1])
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_save: ranks registered between %d and %d "
                          "tensors; every rank must register the same names", -extremes[1], extremes[0]);
  char tmp[PATH_BYTES], final[PATH_BYTES], path[PATH_BYTES];
  snprintf(tmp, sizeof tmp, "%s/.step-%08lld.tmp", root, (long long)step);
  snprintf(final, sizeof final, "%s/step-%08lld", root, (long long)step);
  loom_status status = LOOM_OK;
  if (rank == 0) {
    mkdir(root, 0755);
    remove_tree(tmp); /* a stale attempt at the same step */
    if (mkdir(tmp, 0755) != 0)
      status = loom_error_set(LOOM_ERR_IO, "creating %s: %s", tmp, strerror(errno));
  }
  LOOM_CHECK(agree(world, status));
  uint32_t *crcs = calloc((size_t)(count ? count : 1), sizeof *crcs);
  uint32_t *all = rank == 0 ? calloc((size_t)size * (size_t)(count ? count : 1), sizeof *all) : NULL;
  if (!crcs || (rank == 0 && !all)) status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint checksums");
  snprintf(path, sizeof path, "%s/rank-%05d.h5", tmp, rank);
  if (status == LOOM_OK) status = write_rank_file(state, path, crcs, params->deflate_level);
  status = agree(world, status);
  if (status == LOOM_OK)
    status = MPI_Gather(crcs, count, MPI_UINT32_T, all, count, MPI_UINT32_T, 0,
                        loom_group_comm(world)) == MPI_SUCCESS ? LOOM_OK
             : loom_error_set(LOOM_ERR_MPI, "gathering checkpoint checksums failed");
  if (status == LOOM_OK && rank == 0) {
    snprintf(path, sizeof path, "%s/index.h5", tmp);
    status = write_index(state, path, step, size, all);
    if (status == LOOM_OK) status = fsync_path(tmp);
    if (status == LOOM_OK) {
      remove_tree(final); /* an older checkpoint of the same step is replaced whole */
      if (rename(tmp, final) != 0)
        status = loom_error_set(LOOM_ERR_IO, "renaming %s to %s: %s", tmp, final, strerror(errno));
    }
    if (status == LOOM_OK) status = fsync_path(root);
    if (status == LOOM_OK) { /* `latest` last, replaced atomically */
      char latest[PATH_BYTES], latest_tmp[PATH_BYTES];
      snprintf(latest, sizeof latest, "%s/latest", root);
      snprintf(latest_tmp, sizeof latest_tmp, "%s/.latest.tmp", root);
      FILE *f = fopen(latest_tmp, "w");
      if (!f || fprintf(f, "step-%08lld\n", (long long)step) < 0 || fflush(f) != 0 ||
          fsync(fileno(f)) != 0)
        status = loom_error_set(LOOM_ERR_IO, "writing %s: %s", latest_tmp, strerror(errno));
      if (f) fclose(f);
      if (status == LOOM_OK && rename(latest_tmp, latest) != 0)
        status = loom_error_set(LOOM_ERR_IO, "renaming %s: %s", latest_tmp, strerror(errno));
      if (status == LOOM_OK) status = fsync_path(root);
    }
    if (status == LOOM_OK) prune(root, step, params->keep_last);
  }
  free(crcs);
  free(all);
  status = agree(world, status);
  if (status == LOOM_OK && rank == 0)
    loom_log(loom_group_ctx(world), LOOM_LOG_INFO, "checkpoint step %lld written to %s",
             (long long)step, final);
  return status;
}

/* The checkpoint directory `root` designates: itself when it holds index.h5, else the one
 * named by root/latest. */
static loom_status resolve(const char *root, char *dir, size_t bytes) {
  snprintf(dir, bytes, "%s/index.h5", root);
  if (access(dir, R_OK) == 0) {
    snprintf(dir, bytes, "%s", root);
    return LOOM_OK;
  }
  char latest[PATH_BYTES], name[256] = "";
  snprintf(latest, sizeof latest, "%s/latest", root);
  FILE *f = fopen(latest, "r");
  if (!f)
    return loom_error_set(LOOM_ERR_IO, "no checkpoint at %s: neither %s/index.h5 nor %s exists",
                          root, root, latest);
  int ok = fscanf(f, "%255s", name) == 1;
  fclose(f);
  if (!ok || strncmp(name, "step-", 5) != 0 || strchr(name, '/'))
    return loom_error_set(LOOM_ERR_CORRUPT, "%s does not name a checkpoint ('%s')", latest, name);
  snprintf(dir, bytes, "%s/%s", root, name);
  return LOOM_OK;
}

/* Reads attribute `name` of `object` as `type` into out; -1 when missing. */
static int read_attribute(hid_t object, const char *name, hid_t type, void *out) {
  if (H5Aexists(object, name) <= 0) return -1;
  hid_t a = H5Aopen(object, name, H5P_DEFAULT);
  int rc = H5Aread(a, type, out) < 0 ? -1 : 0;
  H5Aclose(a);
  return rc;
}

/* Shard checks, spread over the ranks: shard (tensor i, writer w) is verified by rank
 * (i * world_size + w) % size against the crc32 recorded in the index. */
static loom_status verify_shards(hid_t index, const char *dir, loom_state *state, int rank,
                                 int size, int writers) {
  loom_status status = LOOM_OK;
  uint32_t *crcs = malloc(sizeof(uint32_t) * (size_t)writers);
  if (!crcs) return loom_error_set(LOOM_ERR_NOMEM, "checkpoint checksums");
  for (int i = 0; i < loom_state_count(state) && status == LOOM_OK; i++) {
    const char *name;
    loom_state_entry(state, i, &name, NULL, NULL, NULL, NULL);
    if (H5Lexists(index, name, H5P_DEFAULT) <= 0) continue; /* reported by the load */
    hid_t set = H5Dopen2(index, name, H5P_DEFAULT);
    int have = read_attribute(set, "shard_crc32", H5T_NATIVE_UINT32, crcs);
    H5Dclose(set);
    if (have < 0) {
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s/index.h5: tensor '%s' has no shard checksums",
                              dir, name);
      break;
    }
    for (int w = 0; w < writers && status == LOOM_OK; w++) {
      if (((long long)i * writers + w) % size != rank) continue;
      char path[PATH_BYTES];
      snprintf(path, sizeof path, "%s/rank-%05d.h5", dir, w);
      hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
      if (file < 0) {
        status = loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: rank file %s is missing or "
                                "unreadable (tensor '%s')", dir, path, name);
        break;
      }
      if (H5Lexists(file, name, H5P_DEFAULT) > 0) {
        hid_t shard = H5Dopen2(file, name, H5P_DEFAULT);
        hid_t type = H5Dget_type(shard);
        size_t bytes = (size_t)H5Sget_simple_extent_npoints(H5Dget_space(shard)) * H5Tget_size(type);
        char *data = malloc(bytes ? bytes : 1);
        if (!data || H5Dread(shard, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
          status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' cannot be read", path, name);
        else if ((uint32_t)crc32(0L, (const Bytef *)data, (uInt)bytes) != crcs[w])
          status = loom_error_set(LOOM_ERR_CORRUPT, "%s: tensor '%s' fails its checksum (crc32 "
                                  "%08x, index says %08x): the checkpoint is damaged; load an "
                                  "older one", path, name,
                                  (unsigned)crc32(0L, (const Bytef *)data, (uInt)bytes), crcs[w]);
        free(data);
        H5Tclose(type);
        H5Dclose(shard);
      } else if (crcs[w] != 0) {
        status = loom_error_set(LOOM_ERR_CORRUPT, "%s lacks tensor '%s' that the index maps",
                                path, name);
      }
      H5Fclose(file);
    }
  }
  free(crcs);
  return status;
}

/* Reads this rank's slice of every registered tensor through the index's virtual datasets. */
static loom_status read_slices(hid_t index, const char *dir, loom_state *state) {
  for (int i = 0; i < loom_state_count(state); i++) {
    const char *name;
    const loom_state_spec *spec;
    loom_buf local;
    const int64_t *offsets, *extents;
    loom_state_entry(state, i, &name, &spec, &local, &offsets, &extents);
    if (H5Lexists(index, name, H5P_DEFAULT) <= 0)
      return loom_error_set(LOOM_ERR_ARG, "checkpoint %s has no tensor '%s': it was written by "
                            "another model (or another version of this one)", dir, name);
    if (local.device.kind != LOOM_DEVICE_CPU)
      return loom_error_set(LOOM_ERR_UNSUPPORTED, "loading '%s': device tensors are not loaded "
                            "yet; register a host copy", name);
    hid_t set = H5Dopen2(index, name, H5P_DEFAULT);
    hid_t space = H5Dget_space(set);
    hsize_t dims[LOOM_STATE_MAX_DIMS], want[LOOM_STATE_MAX_DIMS];
    int rank = H5Sget_simple_extent_ndims(space), want_rank = file_dims(spec, NULL, want);
    char dtype_name[32] = "";
    hid_t text = H5Tcopy(H5T_C_S1);
    H5Tset_size(text, H5T_VARIABLE);
    char *stored = NULL;
    if (read_attribute(set, "loom_dtype", text, &stored) == 0 && stored) {
      snprintf(dtype_name, sizeof dtype_name, "%s", stored);
      H5free_memory(stored);
    }
    H5Tclose(text);
    int same = rank == want_rank && rank <= LOOM_STATE_MAX_DIMS &&
               strcmp(dtype_name, loom_dtype_name(spec->dtype)) == 0;
    if (same) H5Sget_simple_extent_dims(space, dims, NULL);
    for (int d = 0; same && d < rank; d++) same = dims[d] == want[d];
    loom_status status = LOOM_OK;
    if (!same) {
      status = loom_error_set(LOOM_ERR_ARG, "checkpoint %s: tensor '%s' is %s of %d dims there but "
                              "registered as %s of %d dims (or other extents): another model",
                              dir, name, dtype_name, rank, loom_dtype_name(spec->dtype), want_rank);
    } else if (local.count > 0) {
      hsize_t start[LOOM_STATE_MAX_DIMS] = {0}, block[LOOM_STATE_MAX_DIMS];
      file_dims(spec, extents, block);
      for (int d = 0; d < spec->ndims; d++) start[d] = (hsize_t)offsets[d];
      H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, block, NULL);
      hid_t memory = H5Screate_simple(rank, block, NULL);
      if (H5Dread(set, file_type(spec->dtype), memory, space, H5P_DEFAULT, local.ptr) < 0)
        status = loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: reading tensor '%s' failed "
                                "(a rank file missing or damaged)", dir, name);
      H5Sclose(memory);
    }
    H5Sclose(space);
    H5Dclose(set);
    LOOM_CHECK(status);
  }
  return LOOM_OK;
}

loom_status loom_ckpt_load(loom_state *state, const char *root, int64_t *step) {
  if (!state || !root) return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_load: state or root missing");
  loom_group *world = loom_mesh_group(loom_state_mesh(state), LOOM_AXIS_WORLD);
  int rank = loom_group_rank(world), size = loom_group_size(world);
  char dir[PATH_BYTES], path[PATH_BYTES];
  loom_status status = resolve(root, dir, sizeof dir);
  hid_t index = -1;
  H5E_auto2_t handler;
  void *handler_data;
  H5Eget_auto2(H5E_DEFAULT, &handler, &handler_data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* loom reports failures itself */
  int writers = 0;
  int64_t saved_step = -1;
  if (status == LOOM_OK) {
    snprintf(path, sizeof path, "%s/index.h5", dir);
    index = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (index < 0)
      status = loom_error_set(LOOM_ERR_CORRUPT, "%s cannot be opened as HDF5: not a checkpoint, "
                              "or damaged", path);
  }
  int mesh_values[4] = {0};
  if (status == LOOM_OK && (read_attribute(index, "step", H5T_NATIVE_INT64, &saved_step) < 0 ||
                            read_attribute(index, "mesh_pp_dp_sp_ep", H5T_NATIVE_INT, mesh_values) < 0))
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s lacks the step or mesh attributes: not a loom "
                            "checkpoint", path);
  writers = mesh_values[0] * mesh_values[1] * mesh_values[2];
  if (status == LOOM_OK && (writers <= 0 || writers > (1 << 24)))
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: mesh %d x %d x %d is not valid", path,
                            mesh_values[0], mesh_values[1], mesh_values[2]);
  if (status == LOOM_OK) { /* extra tensors: another model */
    H5G_info_t info;
    int top_level = 0; /* distinct first path components of the registered names */
    for (int i = 0; i < loom_state_count(state); i++) {
      const char *name, *other;
      loom_state_entry(state, i, &name, NULL, NULL, NULL, NULL);
      size_t len = strcspn(name, "/");
      int seen = 0;
      for (int j = 0; j < i && !seen; j++) {
        loom_state_entry(state, j, &other, NULL, NULL, NULL, NULL);
        seen = strcspn(other, "/") == len && strncmp(name, other, len) == 0;
      }
      top_level += !seen;
    }
    if (H5Gget_info(index, &info) >= 0 && (int)info.nlinks > top_level)
      status = loom_error_set(LOOM_ERR_ARG, "checkpoint %s holds %d top-level tensors or groups "
                              "but %d are registered: another model", dir, (int)info.nlinks,
                              top_level);
  }
  if (status == LOOM_OK) status = verify_shards(index, dir, state, rank, size, writers);
  status = agree(world, status);
  if (status == LOOM_OK) status = read_slices(index, dir, state);
  if (index >= 0) H5Fclose(index);
  H5Eset_auto2(H5E_DEFAULT, handler, handler_data);
  status = agree(world, status);
  if (status == LOOM_OK && step) *step = saved_step;
  return status;
}
