/* HDF5 checkpoints of the state registry (see ckpt.h): the synchronous save, the writing
 * shared with asynchronous saves, and the universal load. Invariants: nothing is named by
 * `latest` before its directory is complete and synced; a load checks every shard's crc32
 * and every virtual mapping before reading any tensor, and all ranks agree on the outcome. */
#include "checkpoint/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "checkpoint/catalog.h"
#include "checkpoint/ckpt_write.h"
#include "checkpoint/hdf5_types.h"
#include "checkpoint/inspect.h"
#include "collectives/coll.h"
#include "runtime/device.h"
#include "runtime/fault.h"
#include "runtime/log.h"

enum { PATH_BYTES = LOOM_CKPT_PATH_BYTES };


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

/* Completes `request` without spinning: a writer thread waiting for a slow rank must leave the
 * cores to training (Open MPI's blocking calls busy-poll). Polls every 100 us. */
static int wait_politely(MPI_Request *request) {
  const struct timespec pause = {0, 100000};
  for (;;) {
    int done = 0;
    if (MPI_Test(request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return MPI_ERR_OTHER;
    if (done) return MPI_SUCCESS;
    nanosleep(&pause, NULL);
  }
}

loom_status ckpt_agree(MPI_Comm comm, loom_status mine) {
  int code = mine < 0 ? -(int)mine : 0, worst = 0;
  char message[1024];
  snprintf(message, sizeof message, "%s", loom_error_string());
  MPI_Request request;
  if (MPI_Iallreduce(&code, &worst, 1, MPI_INT, MPI_MAX, comm, &request) != MPI_SUCCESS ||
      wait_politely(&request) != MPI_SUCCESS)
    return loom_error_set(LOOM_ERR_MPI, "checkpoint: agreeing on the outcome failed (MPI)");
  if (mine < 0) {
    loom_error_restore(message);
    return mine;
  }
  if (worst)
    return loom_error_set((loom_status)-worst, "checkpoint: another rank failed (its message "
                          "names the cause); this rank stopped with it");
  return LOOM_OK;
}

loom_status ckpt_check_params(const loom_ckpt_params *p) {
  if (p->keep_last < 0 || p->deflate_level < 0 || p->deflate_level > 9 ||
      (p->busy != LOOM_CKPT_BUSY_SKIP && p->busy != LOOM_CKPT_BUSY_WAIT))
    return loom_error_set(LOOM_ERR_ARG, "checkpoint parameters: keep_last=%d (>= 0), "
                          "deflate_level=%d (0..9) or busy=%d (SKIP or WAIT) out of range",
                          p->keep_last, p->deflate_level, (int)p->busy);
  return LOOM_OK;
}

/* The checksums of the slices a rank writes, computed on a thread of their own while the
 * slices are written: crc32 reads the same (staged) bytes as HDF5, and on one core the two in
 * sequence cost the sum of both, overlapped only the slower one. */
typedef struct {
  loom_state *state;
  const ckpt_catalog *catalog;
  void *const *sources;
  uint32_t *crcs;
} crc_job;

static void *crc_main(void *opaque) {
  crc_job *job = opaque;
  const ckpt_catalog *c = job->catalog;
  for (int i = 0; i < c->local_count; i++) {
    if (!c->local_writes[i]) continue;
    loom_buf local;
    loom_state_entry(job->state, i, NULL, NULL, &local, NULL, NULL);
    /* z_size_t: shards >= 4 GiB */
    job->crcs[c->local_tensor[i]] = (uint32_t)crc32_z(0L, job->sources[i], loom_buf_bytes(local));
  }
  return NULL;
}

/* Writes the slices this rank writes to `path`; crcs[t] = crc32 of catalog tensor t's bytes
 * (0 for tensors it does not write). */
static loom_status write_rank_file(loom_state *state, const ckpt_catalog *c, void *const *sources,
                                   const char *path, uint32_t *crcs, int deflate_level,
                                   double *bytes) {
  crc_job job = {.state = state, .catalog = c, .sources = sources, .crcs = crcs};
  pthread_t crc_thread;
  int crc_threaded = pthread_create(&crc_thread, NULL, crc_main, &job) == 0;
  if (!crc_threaded) crc_main(&job); /* no thread to be had: in sequence, as before */
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) {
    if (crc_threaded) pthread_join(crc_thread, NULL);
    return loom_error_set(LOOM_ERR_HDF5, "creating %s failed (disk full or no permission?)", path);
  }
  loom_status status = LOOM_OK;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  *bytes = 0;
  for (int i = 0; i < c->local_count && status == LOOM_OK; i++) {
    const char *name;
    const loom_state_spec *spec;
    loom_buf local;
    const int64_t *extents;
    loom_state_entry(state, i, &name, &spec, &local, NULL, &extents);
    if (!c->local_writes[i]) continue;
    hsize_t dims[LOOM_STATE_MAX_DIMS];
    int rank = file_dims(spec, extents, dims);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (deflate_level > 0) { /* one chunk per slice: deflate needs chunked storage */
      H5Pset_chunk(dcpl, rank, dims);
      H5Pset_deflate(dcpl, (unsigned)deflate_level);
    }
    hid_t set = H5Dcreate2(file, name, loom_hdf5_type(spec->dtype), space, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    if (set < 0 || H5Dwrite(set, loom_hdf5_type(spec->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, sources[i]) < 0)
      status = loom_error_set(LOOM_ERR_HDF5, "writing tensor '%s' to %s failed (disk full?)", name, path);
    if (set >= 0) H5Dclose(set);
    H5Sclose(space);
    *bytes += (double)loom_buf_bytes(local);
  }
  if (crc_threaded) pthread_join(crc_thread, NULL);
  H5Pclose(lcpl);
  if (H5Fclose(file) < 0 && status == LOOM_OK)
    status = loom_error_set(LOOM_ERR_HDF5, "closing %s failed (disk full?)", path);
  if (status == LOOM_OK) status = fsync_path(path);
  return status;
}

/* Writes a variable-length string attribute; LOOM_ERR_HDF5 naming it (and `where`) on failure. */
static loom_status write_text_attribute(hid_t object, const char *name, const char *value,
                                        const char *where) {
  hid_t text = H5Tcopy(H5T_C_S1), scalar = H5Screate(H5S_SCALAR);
  int ok = text >= 0 && scalar >= 0 && H5Tset_size(text, H5T_VARIABLE) >= 0;
  hid_t a = ok ? H5Acreate2(object, name, text, scalar, H5P_DEFAULT, H5P_DEFAULT) : -1;
  ok = a >= 0 && H5Awrite(a, text, &value) >= 0;
  if (a >= 0 && H5Aclose(a) < 0) ok = 0;
  if (scalar >= 0) H5Sclose(scalar);
  if (text >= 0) H5Tclose(text);
  if (ok) return LOOM_OK;
  return loom_error_set(LOOM_ERR_HDF5, "writing attribute '%s' in %s failed (disk full?)", name,
                        where);
}

/* A numeric attribute of `count` values (0: a scalar); as above on failure. */
static loom_status write_attribute(hid_t object, const char *name, hid_t type, hsize_t count,
                                   const void *value, const char *where) {
  hid_t space = count == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &count, NULL);
  hid_t a = space >= 0 ? H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
  int ok = a >= 0 && H5Awrite(a, type, value) >= 0;
  if (a >= 0 && H5Aclose(a) < 0) ok = 0;
  if (space >= 0) H5Sclose(space);
  if (ok) return LOOM_OK;
  return loom_error_set(LOOM_ERR_HDF5, "writing attribute '%s' in %s failed (disk full?)", name,
                        where);
}

/* Rank 0: index.h5 with one virtual dataset per catalog tensor over its writers' files. */
static loom_status write_index(const ckpt_catalog *c, const loom_mesh_shape *shape,
                               const char *path, int64_t step,
                               const uint32_t *all_crcs /* (world, tensor_count) */) {
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return loom_error_set(LOOM_ERR_HDF5, "creating %s failed", path);
  char axes[128]; /* the named axes, outermost first: "pp=1 dp=4 sp=1 ep=2" */
  loom_mesh_shape_format(shape, axes, sizeof axes);
  loom_status status = write_attribute(file, "step", H5T_NATIVE_INT64, 0, &step, path);
  if (status == LOOM_OK) status = write_text_attribute(file, "mesh_axes", axes, path);
  if (status == LOOM_OK) status = write_text_attribute(file, "loom_version", "0.1.0", path);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  uint32_t *crcs = malloc(sizeof(uint32_t) * (size_t)c->world);
  if (!crcs) status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint index checksums");
  for (int t = 0; t < c->tensor_count && status == LOOM_OK; t++) {
    const loom_state_spec *spec = &c->specs[t];
    const char *name = c->names[t];
    hsize_t dims[LOOM_STATE_MAX_DIMS];
    int rank = file_dims(spec, NULL, dims);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    for (int r = 0; r < c->world; r++) {
      crcs[r] = all_crcs[(size_t)r * (size_t)c->tensor_count + (size_t)t];
      if (!c->writes[(size_t)r * (size_t)c->tensor_count + (size_t)t]) continue;
      loom_mesh_coords coords = loom_mesh_coords_of(shape, r);
      int64_t offsets[LOOM_STATE_MAX_DIMS], extents[LOOM_STATE_MAX_DIMS];
      loom_state_slice(spec, shape, &coords, offsets, extents);
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
    hid_t set = H5Dcreate2(file, name, loom_hdf5_type(spec->dtype), space, lcpl, dcpl, H5P_DEFAULT);
    if (set < 0) status = loom_error_set(LOOM_ERR_HDF5, "creating '%s' in %s failed", name, path);
    if (set >= 0) {
      int ndims = spec->ndims;
      if (status == LOOM_OK)
        status = write_text_attribute(set, "loom_dtype", loom_dtype_name(spec->dtype), path);
      if (status == LOOM_OK)
        status = write_attribute(set, "loom_ndims", H5T_NATIVE_INT, 0, &ndims, path);
      if (status == LOOM_OK)
        status = write_attribute(set, "shard_crc32", H5T_NATIVE_UINT32, (hsize_t)c->world, crcs, path);
      if (H5Dclose(set) < 0 && status == LOOM_OK)
        status = loom_error_set(LOOM_ERR_HDF5, "closing '%s' in %s failed", name, path);
    }
    H5Pclose(dcpl);
    H5Sclose(space);
  }
  free(crcs);
  H5Pclose(lcpl);
  if (H5Fclose(file) < 0 && status == LOOM_OK) status = loom_error_set(LOOM_ERR_HDF5, "closing %s", path);
  if (status == LOOM_OK) status = fsync_path(path);
  return status;
}

void ckpt_remove_stale(const char *root) {
  DIR *dir = opendir(root);
  if (!dir) return;
  struct dirent *e;
  char path[PATH_BYTES];
  while ((e = readdir(dir)) != NULL) {
    long long step;
    char tail;
    if (sscanf(e->d_name, ".step-%lld.tm%c", &step, &tail) == 2 && tail == 'p') {
      snprintf(path, sizeof path, "%s/%s", root, e->d_name);
      remove_tree(path);
    }
  }
  closedir(dir);
}

/* Rank 0, after a save: removes stale temporary directories and the oldest checkpoints
 * beyond keep_last (the step just written is the newest and is kept). */
static void prune(const char *root, int64_t newest, int keep_last) {
  ckpt_remove_stale(root);
  DIR *dir = opendir(root);
  if (!dir) return;
  enum { MAX_KEPT = 4096 };
  long long steps[MAX_KEPT];
  int count = 0;
  struct dirent *e;
  char path[PATH_BYTES];
  while ((e = readdir(dir)) != NULL) {
    long long step;
    if (sscanf(e->d_name, "step-%lld", &step) == 1 && count < MAX_KEPT) {
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

/* Rank 0: moves the complete temporary directory into place and points `latest` at it. */
static loom_status publish(const char *root, const char *tmp, const char *final, int64_t step) {
  LOOM_CHECK(fsync_path(tmp));
  remove_tree(final); /* an older checkpoint of the same step is replaced whole */
  if (rename(tmp, final) != 0)
    return loom_error_set(LOOM_ERR_IO, "renaming %s to %s: %s", tmp, final, strerror(errno));
  LOOM_CHECK(fsync_path(root));
  char latest[PATH_BYTES], latest_tmp[PATH_BYTES];
  snprintf(latest, sizeof latest, "%s/latest", root);
  snprintf(latest_tmp, sizeof latest_tmp, "%s/.latest.tmp", root);
  FILE *f = fopen(latest_tmp, "w");
  loom_status status = LOOM_OK;
  if (!f || fprintf(f, "step-%08lld\n", (long long)step) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0)
    status = loom_error_set(LOOM_ERR_IO, "writing %s: %s", latest_tmp, strerror(errno));
  if (f) fclose(f);
  if (status == LOOM_OK && rename(latest_tmp, latest) != 0)
    status = loom_error_set(LOOM_ERR_IO, "renaming %s: %s", latest_tmp, strerror(errno));
  if (status == LOOM_OK) status = fsync_path(root);
  return status;
}

loom_status ckpt_write_checkpoint(loom_state *state, const ckpt_catalog *c, MPI_Comm comm,
                                  const char *root, int64_t step, const loom_ckpt_params *params,
                                  void *const *sources, ckpt_write_report *report) {
  double start = loom_now();
  int rank;
  MPI_Comm_rank(comm, &rank);
  loom_mesh_shape shape = loom_mesh_get_shape(loom_state_mesh(state));
  char tmp[PATH_BYTES], final[PATH_BYTES], path[PATH_BYTES];
  snprintf(tmp, sizeof tmp, "%s/.step-%08lld.tmp", root, (long long)step);
  snprintf(final, sizeof final, "%s/step-%08lld", root, (long long)step);
  H5E_auto2_t handler;
  void *handler_data;
  H5Eget_auto2(H5E_DEFAULT, &handler, &handler_data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* loom reports failures itself */
  loom_status status = LOOM_OK;
  if (rank == 0) {
    mkdir(root, 0755);
    remove_tree(tmp); /* a stale attempt at the same step */
    if (mkdir(tmp, 0755) != 0)
      status = loom_error_set(LOOM_ERR_IO, "creating %s: %s", tmp, strerror(errno));
  }
  status = ckpt_agree(comm, status);
  size_t table = (size_t)(c->tensor_count ? c->tensor_count : 1);
  uint32_t *crcs = calloc(table, sizeof *crcs);
  uint32_t *all = rank == 0 ? calloc((size_t)c->world * table, sizeof *all) : NULL;
  if (status == LOOM_OK && (!crcs || (rank == 0 && !all)))
    status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint checksums");
  double written = 0;
  snprintf(path, sizeof path, "%s/rank-%05d.h5", tmp, rank);
  if (status == LOOM_OK)
    status = write_rank_file(state, c, sources, path, crcs, params->deflate_level, &written);
  double data_seconds = loom_now() - start;
  loom_ctx *ctx = loom_group_ctx(loom_mesh_group(loom_state_mesh(state), LOOM_AXIS_WORLD));
  if (loom_fault_due(ctx, LOOM_FAULT_CKPT_KILL, step)) { /* test: a crash mid-checkpoint */
    loom_log(ctx, LOOM_LOG_WARN, "fault injection: rank %d dies while writing checkpoint step %lld",
             rank, (long long)step);
    raise(SIGKILL);
  }
  status = ckpt_agree(comm, status);
  MPI_Request request;
  if (status == LOOM_OK &&
      (MPI_Igather(crcs, c->tensor_count, MPI_UINT32_T, all, c->tensor_count, MPI_UINT32_T, 0,
                   comm, &request) != MPI_SUCCESS || wait_politely(&request) != MPI_SUCCESS))
    status = loom_error_set(LOOM_ERR_MPI, "gathering checkpoint checksums failed");
  if (status == LOOM_OK && rank == 0) {
    snprintf(path, sizeof path, "%s/index.h5", tmp);
    status = write_index(c, &shape, path, step, all);
    if (status == LOOM_OK) status = publish(root, tmp, final, step);
    if (status == LOOM_OK) prune(root, step, params->keep_last);
  }
  free(crcs);
  free(all);
  H5Eset_auto2(H5E_DEFAULT, handler, handler_data);
  if (report) *report = (ckpt_write_report){.bytes = written, .data_seconds = data_seconds};
  return ckpt_agree(comm, status);
}

loom_status loom_ckpt_save(loom_state *state, const char *root, int64_t step) {
  return loom_ckpt_save_with(state, root, step, NULL);
}

loom_status loom_ckpt_save_with(loom_state *state, const char *root, int64_t step,
                                const loom_ckpt_params *params) {
  loom_ckpt_params defaults = LOOM_CKPT_PARAMS_INIT;
  if (!params) params = &defaults;
  LOOM_CHECK(ckpt_check_params(params));
  if (!state || !root || step < 0)
    return loom_error_set(LOOM_ERR_ARG, "loom_ckpt_save: state or root missing, or step %lld < 0",
                          (long long)step);
  loom_group *world = loom_mesh_group(loom_state_mesh(state), LOOM_AXIS_WORLD);
  loom_ctx *ctx = loom_group_ctx(world);
  MPI_Comm comm;
  if (MPI_Comm_dup(loom_group_comm(world), &comm) != MPI_SUCCESS)
    return loom_error_set(LOOM_ERR_MPI, "loom_ckpt_save: duplicating the world communicator");
  ckpt_catalog catalog;
  loom_status status = ckpt_catalog_build(state, comm, &catalog);
  int count = loom_state_count(state);
  void **sources = calloc((size_t)(count ? count : 1), sizeof(void *));
  unsigned char *owned = calloc((size_t)(count ? count : 1), 1);
  if (status == LOOM_OK && (!sources || !owned))
    status = loom_error_set(LOOM_ERR_NOMEM, "loom_ckpt_save: staging table");
  /* Host slices are written from where they live; device slices through a host copy. */
  for (int i = 0; i < count && status == LOOM_OK; i++) {
    loom_buf local;
    loom_state_entry(state, i, NULL, NULL, &local, NULL, NULL);
    sources[i] = local.ptr;
    if (!catalog.local_writes[i] || local.device.kind == LOOM_DEVICE_CPU) continue;
    size_t bytes = loom_buf_bytes(local);
    sources[i] = malloc(bytes ? bytes : 1);
    owned[i] = 1;
    status = sources[i] ? loom_device_download(ctx, sources[i], local.ptr, bytes)
                        : loom_error_set(LOOM_ERR_NOMEM, "loom_ckpt_save: host copy of %zu bytes", bytes);
  }
  if (catalog.world) { /* the catalog was built: every rank goes on together */
    status = ckpt_agree(comm, status);
    if (status == LOOM_OK)
      status = ckpt_write_checkpoint(state, &catalog, comm, root, step, params, sources, NULL);
  }
  for (int i = 0; i < count && sources; i++)
    if (owned && owned[i]) free(sources[i]);
  free(sources);
  free(owned);
  ckpt_catalog_free(&catalog);
  MPI_Comm_free(&comm);
  if (status == LOOM_OK && loom_group_rank(world) == 0)
    loom_log(ctx, LOOM_LOG_INFO, "checkpoint step %lld written to %s/step-%08lld", (long long)step,
             root, (long long)step);
  return status;
}

/* The index against the world's registries: every registered tensor present with the same
 * dtype and shape, no tensor that nobody registered. Then the shard checks, spread over the
 * ranks: pair (tensor t, writer w) is checked by rank (t * writers + w) % size, plus each
 * tensor's mapping by rank t % size. */
static loom_status check_checkpoint(const loom_ckpt_info *info, const ckpt_catalog *c, int rank,
                                    int size) {
  for (int t = 0; t < info->tensor_count; t++)
    if (ckpt_catalog_find(c, info->tensors[t].name) < 0)
      return loom_error_set(LOOM_ERR_ARG, "checkpoint %s holds tensor '%s' that no rank registered: "
                            "it was written by another model (or another version of this one)",
                            info->dir, info->tensors[t].name);
  for (int t = 0; t < c->tensor_count; t++) {
    const loom_state_spec *spec = &c->specs[t];
    const loom_ckpt_tensor_info *found = NULL;
    for (int i = 0; i < info->tensor_count && !found; i++)
      if (strcmp(info->tensors[i].name, c->names[t]) == 0) found = &info->tensors[i];
    if (!found)
      return loom_error_set(LOOM_ERR_ARG, "checkpoint %s has no tensor '%s': it was written by "
                            "another model (or another version of this one)", info->dir, c->names[t]);
    int same = found->dtype == spec->dtype && found->ndims == spec->ndims;
    for (int d = 0; same && d < spec->ndims; d++) same = found->shape[d] == spec->shape[d];
    if (!same)
      return loom_error_set(LOOM_ERR_ARG, "checkpoint %s: tensor '%s' is %s of %d dims there but "
                            "registered as %s of %d dims (or other extents): another model",
                            info->dir, c->names[t], loom_dtype_name(found->dtype), found->ndims,
                            loom_dtype_name(spec->dtype), spec->ndims);
  }
  for (int t = 0; t < info->tensor_count; t++) {
    const loom_ckpt_tensor_info *tensor = &info->tensors[t];
    if (t % size == rank) LOOM_CHECK(loom_ckpt_check_mapping(info->dir, tensor));
    for (int w = 0; w < tensor->shard_count; w++)
      if (((long long)t * tensor->shard_count + w) % size == rank && tensor->shard_crc32[w] != 0)
        LOOM_CHECK(loom_ckpt_verify_shard(info->dir, tensor->name, w, tensor->shard_crc32[w]));
  }
  return LOOM_OK;
}

/* Reads this rank's slice of every registered tensor through the index's virtual datasets;
 * device tensors through a host buffer. */
static loom_status read_slices(hid_t index, const char *dir, loom_state *state, loom_ctx *ctx) {
  for (int i = 0; i < loom_state_count(state); i++) {
    const char *name;
    const loom_state_spec *spec;
    loom_buf local;
    const int64_t *offsets, *extents;
    loom_state_entry(state, i, &name, &spec, &local, &offsets, &extents);
    if (local.count == 0) continue;
    hid_t set = H5Dopen2(index, name, H5P_DEFAULT);
    if (set < 0) return loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: tensor '%s' cannot be opened", dir, name);
    hid_t space = H5Dget_space(set);
    hsize_t start[LOOM_STATE_MAX_DIMS] = {0}, block[LOOM_STATE_MAX_DIMS];
    int rank = file_dims(spec, extents, block);
    for (int d = 0; d < spec->ndims; d++) start[d] = (hsize_t)offsets[d];
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, block, NULL);
    hid_t memory = H5Screate_simple(rank, block, NULL);
    size_t bytes = loom_buf_bytes(local);
    int on_host = local.device.kind == LOOM_DEVICE_CPU;
    void *target = on_host ? local.ptr : malloc(bytes);
    loom_status status = LOOM_OK;
    if (!target)
      status = loom_error_set(LOOM_ERR_NOMEM, "loading '%s': host buffer of %zu bytes", name, bytes);
    else if (H5Dread(set, loom_hdf5_type(spec->dtype), memory, space, H5P_DEFAULT, target) < 0)
      status = loom_error_set(LOOM_ERR_CORRUPT, "checkpoint %s: reading tensor '%s' failed "
                              "(a rank file missing or damaged)", dir, name);
    else if (!on_host)
      status = loom_device_upload(ctx, local.ptr, target, bytes);
    if (!on_host) free(target);
    H5Sclose(memory);
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
  MPI_Comm comm;
  if (MPI_Comm_dup(loom_group_comm(world), &comm) != MPI_SUCCESS)
    return loom_error_set(LOOM_ERR_MPI, "loom_ckpt_load: duplicating the world communicator");
  ckpt_catalog catalog;
  loom_status status = ckpt_catalog_build(state, comm, &catalog);
  if (status != LOOM_OK) {
    MPI_Comm_free(&comm);
    return status;
  }
  loom_ckpt_info info = {0};
  status = loom_ckpt_info_open(root, &info);
  if (status == LOOM_ERR_IO) /* nothing there: not a checkpoint (the message names the paths) */
    status = loom_error_set(LOOM_ERR_ARG, "loom_ckpt_load: %s", loom_error_string());
  if (status == LOOM_OK && info.mesh[0] * info.mesh[1] * info.mesh[2] <= 0)
    status = loom_error_set(LOOM_ERR_CORRUPT, "%s: mesh %d x %d x %d is not valid", info.dir,
                            info.mesh[0], info.mesh[1], info.mesh[2]);
  if (status == LOOM_OK) status = check_checkpoint(&info, &catalog, rank, size);
  status = ckpt_agree(comm, status);
  H5E_auto2_t handler;
  void *handler_data;
  H5Eget_auto2(H5E_DEFAULT, &handler, &handler_data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* loom reports failures itself */
  if (status == LOOM_OK) {
    char path[PATH_BYTES + 16];
    snprintf(path, sizeof path, "%s/index.h5", info.dir);
    hid_t index = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    status = index < 0 ? loom_error_set(LOOM_ERR_CORRUPT, "%s cannot be opened", path)
                       : read_slices(index, info.dir, state, loom_group_ctx(world));
    if (index >= 0) H5Fclose(index);
  }
  H5Eset_auto2(H5E_DEFAULT, handler, handler_data);
  status = ckpt_agree(comm, status);
  if (status == LOOM_OK && step) *step = info.step;
  loom_ckpt_info_free(&info);
  ckpt_catalog_free(&catalog);
  MPI_Comm_free(&comm);
  return status;
}
