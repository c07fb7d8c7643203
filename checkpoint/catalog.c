/* Gathering the registries of all ranks (see catalog.h). Wire format per rank: for each entry
 * a uint32 name length, the name bytes, then the loom_state_spec as raw bytes (every rank runs
 * the same binary). */
#include "checkpoint/catalog.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/mesh.h"

static loom_status serialize(loom_state *state, char **out, int *bytes) {
  size_t total = 0;
  for (int i = 0; i < loom_state_count(state); i++) {
    const char *name;
    loom_state_entry(state, i, &name, NULL, NULL, NULL, NULL);
    total += 4 + strlen(name) + sizeof(loom_state_spec);
  }
  if (total > (size_t)INT32_MAX / 2)
    return loom_error_set(LOOM_ERR_ARG, "checkpoint catalog: %zu bytes of tensor names", total);
  char *buf = malloc(total ? total : 1), *p = buf;
  if (!buf) return loom_error_set(LOOM_ERR_NOMEM, "checkpoint catalog (%zu bytes)", total);
  for (int i = 0; i < loom_state_count(state); i++) {
    const char *name;
    const loom_state_spec *spec;
    loom_state_entry(state, i, &name, &spec, NULL, NULL, NULL);
    uint32_t len = (uint32_t)strlen(name);
    memcpy(p, &len, 4), p += 4;
    memcpy(p, name, len), p += len;
    memcpy(p, spec, sizeof *spec), p += sizeof *spec;
  }
  *out = buf;
  *bytes = (int)total;
  return LOOM_OK;
}

typedef struct {
  const char *name;
  loom_state_spec spec;
  int rank;
} raw_entry;

static int by_name_then_rank(const void *a, const void *b) {
  const raw_entry *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->rank > y->rank) - (x->rank < y->rank);
}

static int same_spec(const loom_state_spec *a, const loom_state_spec *b) {
  if (a->dtype != b->dtype || a->ndims != b->ndims || a->split_count != b->split_count) return 0;
  for (int d = 0; d < a->ndims; d++)
    if (a->shape[d] != b->shape[d]) return 0;
  for (int s = 0; s < a->split_count; s++)
    if (a->splits[s].axis != b->splits[s].axis || a->splits[s].dim != b->splits[s].dim) return 0;
  return 1;
}

int ckpt_catalog_find(const ckpt_catalog *c, const char *name) {
  int lo = 0, hi = c->tensor_count - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, cmp = strcmp(c->names[mid], name);
    if (cmp == 0) return mid;
    if (cmp < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

int ckpt_catalog_replicas(const ckpt_catalog *c, const loom_mesh_shape *shape, int t, int rank,
                          int *out) {
  const loom_state_spec *spec = &c->specs[t];
  int64_t mine_offsets[LOOM_STATE_MAX_DIMS] = {0}, mine_extents[LOOM_STATE_MAX_DIMS] = {0};
  int64_t offsets[LOOM_STATE_MAX_DIMS] = {0}, extents[LOOM_STATE_MAX_DIMS] = {0};
  loom_mesh_coords coords = loom_mesh_coords_of(shape, rank);
  if (loom_state_slice(spec, shape, &coords, mine_offsets, mine_extents) != LOOM_OK) return -1;
  int count = 0, holds = 0;
  for (int h = c->holder_start[t]; h < c->holder_start[t + 1]; h++) {
    int other = c->holder_ranks[h];
    holds |= other == rank;
    coords = loom_mesh_coords_of(shape, other);
    if (loom_state_slice(spec, shape, &coords, offsets, extents) != LOOM_OK) return -1;
    if (memcmp(offsets, mine_offsets, sizeof offsets) == 0 &&
        memcmp(extents, mine_extents, sizeof extents) == 0)
      out[count++] = other;
  }
  return holds ? count : 0;
}

/* Writers of tensor t (of `tensors`, the row length of c->writes): holders grouped by identical slices; in each group the holder with the
 * fewest bytes assigned so far writes (ties: the lowest rank). */
static void assign_writers(ckpt_catalog *c, int t, int tensors, const int *holders,
                           int holder_count, const loom_mesh_shape *shape, double *assigned) {
  const loom_state_spec *spec = &c->specs[t];
  int64_t (*offsets)[LOOM_STATE_MAX_DIMS] = calloc((size_t)holder_count, sizeof *offsets);
  int64_t (*extents)[LOOM_STATE_MAX_DIMS] = calloc((size_t)holder_count, sizeof *extents);
  unsigned char *done = calloc((size_t)holder_count, 1);
  if (!offsets || !extents || !done) goto out; /* no writer: reported as a missing shard */
  for (int h = 0; h < holder_count; h++) {
    loom_mesh_coords coords = loom_mesh_coords_of(shape, holders[h]);
    loom_state_slice(spec, shape, &coords, offsets[h], extents[h]);
  }
  size_t element = loom_dtype_size(spec->dtype);
  for (int h = 0; h < holder_count; h++) {
    if (done[h]) continue;
    double elements = 1;
    for (int d = 0; d < spec->ndims; d++) elements *= (double)extents[h][d];
    int best = h;
    for (int o = h; o < holder_count; o++) {
      if (done[o] || memcmp(offsets[o], offsets[h], sizeof offsets[h]) != 0 ||
          memcmp(extents[o], extents[h], sizeof extents[h]) != 0)
        continue;
      done[o] = 1;
      if (assigned[holders[o]] < assigned[holders[best]]) best = o;
    }
    if (elements == 0) continue;
    c->writes[(size_t)holders[best] * (size_t)tensors + (size_t)t] = 1;
    assigned[holders[best]] += elements * (double)element;
  }
out:
  free(offsets);
  free(extents);
  free(done);
}

loom_status ckpt_catalog_build(loom_state *state, MPI_Comm comm, ckpt_catalog *c) {
  memset(c, 0, sizeof *c);
  int rank, world;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &world);
  c->world = world;
  char *mine = NULL, *all = NULL;
  int my_bytes = 0;
  int *sizes = calloc((size_t)world, sizeof(int)), *displs = calloc((size_t)world, sizeof(int));
  raw_entry *raw = NULL;
  double *assigned = calloc((size_t)world, sizeof(double));
  int *holders = malloc(sizeof(int) * (size_t)world);
  loom_status status = serialize(state, &mine, &my_bytes);
  if (status == LOOM_OK && (!sizes || !displs || !assigned || !holders))
    status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint catalog (%d ranks)", world);
  status = loom_status_agree_comm(comm, status, "checkpoint catalog");
  if (status < 0) goto out;
  if (MPI_Allgather(&my_bytes, 1, MPI_INT, sizes, 1, MPI_INT, comm) != MPI_SUCCESS) {
    status = loom_error_set(LOOM_ERR_MPI, "checkpoint catalog: MPI_Allgather of the entry sizes");
    goto out;
  }
  long long total = 0;
  for (int r = 0; r < world; r++) displs[r] = (int)total, total += sizes[r];
  all = malloc((size_t)(total ? total : 1));
  if (!all || total > INT32_MAX) { /* every rank sees the same total */
    status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint catalog (%lld bytes)", total);
    goto out;
  }
  if (MPI_Allgatherv(mine, my_bytes, MPI_BYTE, all, sizes, displs, MPI_BYTE, comm) !=
      MPI_SUCCESS) {
    status = loom_error_set(LOOM_ERR_MPI, "checkpoint catalog: MPI_Allgatherv of the entries");
    goto out;
  }
  size_t entry_count = 0;
  for (const char *p = all; p < all + total;) {
    uint32_t len;
    memcpy(&len, p, 4);
    p += 4 + len + sizeof(loom_state_spec);
    entry_count++;
  }
  raw = malloc(sizeof *raw * (entry_count ? entry_count : 1));
  /* names are copied NUL-terminated into a second buffer */
  char *names = malloc((size_t)total + entry_count + 1);
  if (!raw || !names) {
    free(names);
    status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint catalog (%zu entries)", entry_count);
    goto out;
  }
  size_t e = 0;
  char *q = names;
  for (int r = 0; r < world; r++) {
    for (const char *p = all + displs[r]; p < all + displs[r] + sizes[r]; e++) {
      uint32_t len;
      memcpy(&len, p, 4);
      memcpy(q, p + 4, len);
      q[len] = '\0';
      raw[e].name = q;
      q += len + 1;
      memcpy(&raw[e].spec, p + 4 + len, sizeof(loom_state_spec));
      raw[e].rank = r;
      p += 4 + len + sizeof(loom_state_spec);
    }
  }
  qsort(raw, entry_count, sizeof *raw, by_name_then_rank);
  int distinct = 0;
  for (size_t i = 0; i < entry_count; i++) distinct += i == 0 || strcmp(raw[i].name, raw[i - 1].name) != 0;
  c->names = calloc((size_t)(distinct ? distinct : 1), sizeof(char *));
  c->specs = calloc((size_t)(distinct ? distinct : 1), sizeof(loom_state_spec));
  c->writes = calloc((size_t)world * (size_t)(distinct ? distinct : 1), 1);
  c->holder_start = calloc((size_t)distinct + 1, sizeof(int));
  c->holder_ranks = calloc(entry_count ? entry_count : 1, sizeof(int));
  if (!c->names || !c->specs || !c->writes || !c->holder_start || !c->holder_ranks) {
    free(names);
    status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint catalog (%d tensors)", distinct);
    goto out;
  }
  loom_mesh_shape shape = loom_mesh_get_shape(loom_state_mesh(state));
  for (size_t i = 0; i < entry_count && status == LOOM_OK;) {
    size_t j = i;
    int t = c->tensor_count++, holder_count = 0;
    c->names[t] = strdup(raw[i].name);
    c->specs[t] = raw[i].spec;
    for (; j < entry_count && strcmp(raw[j].name, raw[i].name) == 0; j++) {
      if (!same_spec(&raw[j].spec, &raw[i].spec) && status == LOOM_OK)
        status = loom_error_set(LOOM_ERR_ARG, "checkpoint: tensor '%s' is registered with "
                                "different shapes, dtypes or placements on ranks %d and %d; a "
                                "name must mean one tensor", raw[i].name, raw[i].rank, raw[j].rank);
      holders[holder_count++] = raw[j].rank;
      c->holder_ranks[j] = raw[j].rank;
    }
    c->holder_start[t + 1] = (int)j;
    if (!c->names[t]) status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint catalog names");
    if (status == LOOM_OK) assign_writers(c, t, distinct, holders, holder_count, &shape, assigned);
    i = j;
  }
  free(names);
  if (status != LOOM_OK) goto out;
  c->local_count = loom_state_count(state);
  c->local_tensor = calloc((size_t)(c->local_count ? c->local_count : 1), sizeof(int));
  c->local_writes = calloc((size_t)(c->local_count ? c->local_count : 1), 1);
  if (!c->local_tensor || !c->local_writes) {
    status = loom_error_set(LOOM_ERR_NOMEM, "checkpoint catalog");
    goto out;
  }
  for (int i = 0; i < c->local_count; i++) {
    const char *name;
    loom_state_entry(state, i, &name, NULL, NULL, NULL, NULL);
    int t = ckpt_catalog_find(c, name);
    c->local_tensor[i] = t;
    c->local_writes[i] = c->writes[(size_t)rank * (size_t)c->tensor_count + (size_t)t];
  }
  c->local_bytes = assigned[rank];
out:
  free(mine);
  free(all);
  free(sizes);
  free(displs);
  free(raw);
  free(assigned);
  free(holders);
  if (status != LOOM_OK) ckpt_catalog_free(c);
  return status;
}

void ckpt_catalog_free(ckpt_catalog *c) {
  for (int t = 0; c->names && t < c->tensor_count; t++) free(c->names[t]);
  free(c->names);
  free(c->specs);
  free(c->writes);
  free(c->local_tensor);
  free(c->local_writes);
  free(c->holder_start);
  free(c->holder_ranks);
  memset(c, 0, sizeof *c);
}
