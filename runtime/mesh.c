/* Mesh arithmetic and group construction. The mesh is an ordered list of fine axes
 * (pp, edp, ep, sp), outermost first; every group is the set of fine axes that vary inside
 * it, so a new axis (tensor parallelism, say) is one more entry in these tables. */
#include "runtime/mesh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/group_impl.h"
#include "runtime/log.h"
#include "runtime/watchdog.h"

enum { FINE_PP = LOOM_FINE_PP, FINE_EDP = LOOM_FINE_EDP, FINE_EP = LOOM_FINE_EP,
       FINE_SP = LOOM_FINE_SP, FINE_COUNT = LOOM_FINE_COUNT };
#define BIT(fine) LOOM_FINE_BIT(fine)

/* Fine axes varying inside each group (NODE is not a mesh group). */
static const unsigned varying_axes[LOOM_AXIS_COUNT] = {
    [LOOM_AXIS_PP] = BIT(FINE_PP),
    [LOOM_AXIS_DP] = BIT(FINE_EDP) | BIT(FINE_EP),
    [LOOM_AXIS_SP] = BIT(FINE_SP),
    [LOOM_AXIS_EP] = BIT(FINE_EP),
    [LOOM_AXIS_EDP] = BIT(FINE_EDP),
    [LOOM_AXIS_GRAD] = BIT(FINE_EDP) | BIT(FINE_EP) | BIT(FINE_SP),
    [LOOM_AXIS_NODE] = 0,
    [LOOM_AXIS_WORLD] = BIT(FINE_PP) | BIT(FINE_EDP) | BIT(FINE_EP) | BIT(FINE_SP),
};

static const char *const axis_names[LOOM_AXIS_COUNT] = {"PP",   "DP",   "SP",   "EP",
                                                        "EDP",  "GRAD", "NODE", "WORLD"};

struct loom_mesh {
  loom_ctx *ctx;
  loom_mesh_shape shape;
  loom_mesh_coords coords;
  loom_group *by_mask[1u << FINE_COUNT]; /* groups by fine-axis mask, created on first use */
  MPI_Comm creation; /* a world duplicate for creating those: never mixed with the world's
                      * own collectives, which may run on its lane meanwhile */
};

const char *loom_axis_name(loom_axis axis) {
  return axis >= 0 && axis < LOOM_AXIS_COUNT ? axis_names[axis] : "INVALID";
}

unsigned loom_axis_fine_mask(loom_axis axis) {
  return axis >= 0 && axis < LOOM_AXIS_COUNT ? varying_axes[axis] : 0;
}

static void fine_sizes(const loom_mesh_shape *s, int out[FINE_COUNT]) {
  out[FINE_PP] = s->pp;
  out[FINE_EDP] = s->dp / s->ep;
  out[FINE_EP] = s->ep;
  out[FINE_SP] = s->sp;
}

static void fine_coords(const loom_mesh_shape *s, int rank, int out[FINE_COUNT]) {
  int sizes[FINE_COUNT];
  fine_sizes(s, sizes);
  for (int a = FINE_COUNT - 1; a >= 0; a--) {
    out[a] = rank % sizes[a];
    rank /= sizes[a];
  }
}

/* Linear index over the fine axes in `mask`, outermost first. */
static int linear_index(const int sizes[FINE_COUNT], const int coords[FINE_COUNT], unsigned mask) {
  int index = 0;
  for (int a = 0; a < FINE_COUNT; a++)
    if (mask & BIT(a)) index = index * sizes[a] + coords[a];
  return index;
}

static const char *const mesh_axis_labels[LOOM_MESH_AXIS_COUNT] = {"pp", "dp", "sp", "ep"};

const char *loom_mesh_axis_label(int index) {
  return index >= 0 && index < LOOM_MESH_AXIS_COUNT ? mesh_axis_labels[index] : NULL;
}

static int *shape_field(loom_mesh_shape *s, int index) {
  switch (index) {
    case 0: return &s->pp;
    case 1: return &s->dp;
    case 2: return &s->sp;
    default: return &s->ep;
  }
}

int loom_mesh_shape_size(const loom_mesh_shape *s, int index) {
  if (index < 0 || index >= LOOM_MESH_AXIS_COUNT) return 0;
  return *shape_field((loom_mesh_shape *)s, index);
}

void loom_mesh_shape_format(const loom_mesh_shape *s, char *out, size_t bytes) {
  size_t used = 0;
  if (bytes) out[0] = '\0';
  for (int a = 0; a < LOOM_MESH_AXIS_COUNT && used < bytes; a++)
    used += (size_t)snprintf(out + used, bytes - used, "%s%s=%d", a ? " " : "",
                             mesh_axis_labels[a], loom_mesh_shape_size(s, a));
}

loom_status loom_mesh_shape_parse(const char *text, loom_mesh_shape *out) {
  if (!text || !out) return loom_error_set(LOOM_ERR_ARG, "loom_mesh_shape_parse: NULL argument");
  loom_mesh_shape s = {0, 0, 0, 0};
  int seen[LOOM_MESH_AXIS_COUNT] = {0};
  const char *p = text;
  while (*p) {
    while (*p == ' ') p++;
    if (!*p) break;
    const char *eq = strchr(p, '=');
    size_t len = eq ? (size_t)(eq - p) : 0;
    char *end = NULL;
    long size = eq ? strtol(eq + 1, &end, 10) : 0;
    if (!eq || len == 0 || end == eq + 1 || (*end && *end != ' ') || size < 1 || size > 1 << 24)
      return loom_error_set(LOOM_ERR_ARG, "mesh axes '%s': expected name=size pairs (sizes >= 1) "
                            "such as 'pp=1 dp=4 sp=1 ep=2'", text);
    int axis = -1;
    for (int a = 0; a < LOOM_MESH_AXIS_COUNT; a++)
      if (strlen(mesh_axis_labels[a]) == len && strncmp(mesh_axis_labels[a], p, len) == 0) axis = a;
    if (axis < 0 && size != 1)
      return loom_error_set(LOOM_ERR_ARG, "mesh axes '%s': axis '%.*s' of size %ld is not one "
                            "this loom knows (pp dp sp ep); load it with the loom that wrote it",
                            text, (int)len, p, size);
    if (axis >= 0) {
      if (seen[axis]++)
        return loom_error_set(LOOM_ERR_ARG, "mesh axes '%s': axis '%s' given twice", text,
                              mesh_axis_labels[axis]);
      *shape_field(&s, axis) = (int)size;
    }
    p = end;
  }
  for (int a = 0; a < LOOM_MESH_AXIS_COUNT; a++)
    if (!seen[a])
      return loom_error_set(LOOM_ERR_ARG, "mesh axes '%s': axis '%s' missing", text,
                            mesh_axis_labels[a]);
  *out = s;
  return LOOM_OK;
}

loom_status loom_mesh_shape_check(const loom_mesh_shape *s, int world_size) {
  if (!s) return loom_error_set(LOOM_ERR_ARG, "mesh shape is NULL");
  if (s->pp <= 0 || s->dp <= 0 || s->sp <= 0 || s->ep <= 0)
    return loom_error_set(LOOM_ERR_ARG, "mesh sizes must be positive: pp=%d dp=%d sp=%d ep=%d",
                          s->pp, s->dp, s->sp, s->ep);
  long long product = (long long)s->pp * s->dp * s->sp;
  if (product != world_size)
    return loom_error_set(LOOM_ERR_ARG, "mesh pp*dp*sp = %d*%d*%d = %lld does not equal the %d "
                          "ranks of the job; change --pp/--dp/--sp or the rank count",
                          s->pp, s->dp, s->sp, product, world_size);
  if (s->dp % s->ep != 0)
    return loom_error_set(LOOM_ERR_ARG, "mesh ep=%d does not divide dp=%d; choose ep among the "
                          "divisors of dp", s->ep, s->dp);
  return LOOM_OK;
}

loom_status loom_mesh_shape_from_config(const loom_config *c, int world_size,
                                        loom_mesh_shape *out) {
  loom_mesh_shape s = {c->pp, c->dp, c->sp, c->ep};
  if (s.dp == 0) {
    if (s.pp <= 0 || s.sp <= 0 || world_size % (s.pp * s.sp) != 0)
      return loom_error_set(LOOM_ERR_ARG, "cannot derive dp: %d ranks are not divisible by "
                            "pp*sp = %d*%d", world_size, s.pp, s.sp);
    s.dp = world_size / (s.pp * s.sp);
  }
  LOOM_CHECK(loom_mesh_shape_check(&s, world_size));
  *out = s;
  return LOOM_OK;
}

loom_mesh_coords loom_mesh_coords_of(const loom_mesh_shape *s, int rank) {
  int f[FINE_COUNT];
  fine_coords(s, rank, f);
  loom_mesh_coords c = {.pp = f[FINE_PP], .dp = f[FINE_EDP] * s->ep + f[FINE_EP],
                        .sp = f[FINE_SP], .ep = f[FINE_EP], .edp = f[FINE_EDP]};
  return c;
}

int loom_mesh_rank_of(const loom_mesh_shape *s, const loom_mesh_coords *c) {
  int sizes[FINE_COUNT], f[FINE_COUNT] = {c->pp, c->dp / s->ep, c->dp % s->ep, c->sp};
  fine_sizes(s, sizes);
  return linear_index(sizes, f, BIT(FINE_PP) | BIT(FINE_EDP) | BIT(FINE_EP) | BIT(FINE_SP));
}

void loom_mesh_axis_position(const loom_mesh_shape *s, const loom_mesh_coords *c,
                             loom_axis axis, int64_t *index, int64_t *size) {
  unsigned vary = loom_axis_fine_mask(axis);
  if (!vary) {
    *index = -1, *size = 0;
    return;
  }
  int sizes[FINE_COUNT], f[FINE_COUNT] = {c->pp, c->edp, c->ep, c->sp};
  fine_sizes(s, sizes);
  int64_t linear = 0, count = 1;
  for (int a = 0; a < FINE_COUNT; a++)
    if (vary & BIT(a)) linear = linear * sizes[a] + f[a], count *= sizes[a];
  *index = linear, *size = count;
}

int loom_mesh_group_members(const loom_mesh_shape *s, loom_axis axis, int rank, int *members) {
  if (axis < 0 || axis >= LOOM_AXIS_COUNT || axis == LOOM_AXIS_NODE) return -1;
  int sizes[FINE_COUNT], mine[FINE_COUNT], world = s->pp * s->dp * s->sp, count = 0;
  unsigned vary = varying_axes[axis];
  fine_sizes(s, sizes);
  fine_coords(s, rank, mine);
  int my_color = linear_index(sizes, mine, ~vary);
  /* Members in key order: iterate over the varying index space. */
  for (int other = 0; other < world; other++) {
    int f[FINE_COUNT];
    fine_coords(s, other, f);
    if (linear_index(sizes, f, ~vary) == my_color) members[count++] = other;
  }
  /* World rank order and key order agree: both are outermost-first linear orders over the
   * varying axes once the fixed axes are equal. */
  return count;
}

loom_status loom_mesh_create(loom_ctx *ctx, const loom_mesh_shape *shape, loom_mesh **out) {
  if (!ctx || !shape || !out) return loom_error_set(LOOM_ERR_ARG, "loom_mesh_create: NULL argument");
  LOOM_CHECK(loom_mesh_shape_check(shape, ctx->size));
  loom_mesh *mesh = calloc(1, sizeof *mesh);
  if (!mesh) return loom_error_set(LOOM_ERR_NOMEM, "allocating the mesh");
  mesh->ctx = ctx;
  mesh->creation = MPI_COMM_NULL;
  mesh->shape = *shape;
  mesh->coords = loom_mesh_coords_of(shape, ctx->rank);
  loom_status status = LOOM_OK;
  int rc = MPI_Comm_dup(ctx->world->comm, &mesh->creation);
  if (rc != MPI_SUCCESS) {
    mesh->creation = MPI_COMM_NULL;
    status = loom_mpi_error(ctx, rc, "loom_mesh_create: MPI_Comm_dup");
    goto fail;
  }
  loom_log(ctx, LOOM_LOG_INFO, "mesh pp=%d dp=%d sp=%d ep=%d: coords pp=%d dp=%d sp=%d ep=%d "
           "edp=%d", shape->pp, shape->dp, shape->sp, shape->ep, mesh->coords.pp,
           mesh->coords.dp, mesh->coords.sp, mesh->coords.ep, mesh->coords.edp);
  *out = mesh;
  return LOOM_OK;
fail:
  loom_mesh_destroy(mesh);
  return status;
}

/* The standard axis whose group varies exactly `mask`, or NULL. */
static const char *varying_named(unsigned mask) {
  for (int axis = 0; axis < LOOM_AXIS_COUNT; axis++)
    if (varying_axes[axis] == mask) return axis_names[axis];
  return NULL;
}

loom_status loom_mesh_group_of(loom_mesh *mesh, unsigned mask, loom_group **out) {
  if (!mesh || !out || mask == 0 || mask >= (1u << FINE_COUNT))
    return loom_error_set(LOOM_ERR_ARG, "loom_mesh_group_of: mesh or out NULL, or fine-axis mask "
                          "%u outside [1, %u]", mask, (1u << FINE_COUNT) - 1);
  loom_ctx *ctx = mesh->ctx;
  if (mask == (1u << FINE_COUNT) - 1) { /* every axis varies: the world, in rank order */
    *out = ctx->world;
    return LOOM_OK;
  }
  if (mesh->by_mask[mask]) {
    *out = mesh->by_mask[mask];
    return LOOM_OK;
  }
  int sizes[FINE_COUNT], mine[FINE_COUNT], world = ctx->size, count = 0;
  fine_sizes(&mesh->shape, sizes);
  fine_coords(&mesh->shape, ctx->rank, mine);
  int *members = malloc(sizeof(int) * (size_t)world);
  if (!members) return loom_error_set(LOOM_ERR_NOMEM, "loom_mesh_group_of (%d ranks)", world);
  int my_color = linear_index(sizes, mine, ~mask);
  for (int other = 0; other < world; other++) {
    int f[FINE_COUNT];
    fine_coords(&mesh->shape, other, f);
    if (linear_index(sizes, f, ~mask) == my_color) members[count++] = other;
  }
  /* Named after the standard axis with this mask (DP, GRAD, ...), else after its fine axes */
  char name[48] = "";
  if (varying_named(mask)) snprintf(name, sizeof name, "%s", varying_named(mask));
  static const char *const fine_names[FINE_COUNT] = {"PP", "EDP", "EP", "SP"};
  for (int a = 0; a < FINE_COUNT && !varying_named(mask); a++)
    if (mask & BIT(a))
      snprintf(name + strlen(name), sizeof name - strlen(name), "%s%s", *name ? "+" : "",
               fine_names[a]);
  /* Creation blocks until every member asks: a member that never does (or asks for other
   * groups first) would hang here, so the watchdog names it at LOOM_TIMEOUT. */
  loom_watch watch = {.what = "loom_mesh_group: creating a group on first use (every member "
                              "must ask for it, members in the same order of groups)",
                      .group = name, .peer = -1, .tag = -1, .fatal = 1};
  loom_watch_begin(ctx, &watch);
  MPI_Group world_group, group;
  MPI_Comm comm = MPI_COMM_NULL;
  int rc = MPI_Comm_group(mesh->creation, &world_group);
  if (rc == MPI_SUCCESS) {
    rc = MPI_Group_incl(world_group, count, members, &group);
    if (rc == MPI_SUCCESS) {
      /* collective over the members only; the mask as tag keeps creations apart */
      rc = MPI_Comm_create_group(mesh->creation, group, (int)mask, &comm);
      MPI_Group_free(&group);
    }
    MPI_Group_free(&world_group);
  }
  free(members);
  loom_status status = rc == MPI_SUCCESS
                           ? loom_group_from_comm(ctx, comm, name, 0, &mesh->by_mask[mask])
                           : loom_mpi_error(ctx, rc, "loom_mesh_group_of: MPI_Comm_create_group");
  loom_watch_end(ctx, &watch);
  if (status < 0) return status;
  *out = mesh->by_mask[mask];
  return LOOM_OK;
}

loom_status loom_mesh_destroy(loom_mesh *mesh) {
  if (!mesh) return LOOM_OK;
  for (unsigned m = 0; m < (1u << FINE_COUNT); m++) loom_group_free(mesh->by_mask[m]);
  if (mesh->creation != MPI_COMM_NULL) MPI_Comm_free(&mesh->creation);
  free(mesh);
  return LOOM_OK;
}

loom_group *loom_mesh_group(loom_mesh *mesh, loom_axis axis) {
  if (!mesh || axis < 0 || axis >= LOOM_AXIS_COUNT) {
    loom_error_set(LOOM_ERR_ARG, "loom_mesh_group: mesh NULL or axis %d invalid", (int)axis);
    return NULL;
  }
  if (axis == LOOM_AXIS_NODE) return mesh->ctx->node_group;
  loom_group *group = NULL;
  return loom_mesh_group_of(mesh, varying_axes[axis], &group) == LOOM_OK ? group : NULL;
}

int loom_mesh_groups_created(const loom_mesh *mesh) {
  int count = 0;
  for (unsigned m = 0; m < (1u << FINE_COUNT); m++) count += mesh->by_mask[m] != NULL;
  return count;
}
loom_mesh_shape loom_mesh_get_shape(const loom_mesh *mesh) { return mesh->shape; }
loom_mesh_coords loom_mesh_my_coords(const loom_mesh *mesh) { return mesh->coords; }
