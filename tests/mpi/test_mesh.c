/* Mesh and groups on real communicators: for every shape that fits the job, each group's
 * members equal the pure arithmetic of loom_mesh_group_members, coordinates agree, and the
 * node-local and cross-node subgroups hold exactly the members on one node / with one local
 * index. Also the node layout itself (real or LOOM_RANKS_PER_NODE) and bad shapes. */
#include <string.h>

#include "check.h"

/* Gathers one int per member of `g` with loom's own allgather. */
static int *gather_int(check_state *st, loom_group *g, int value) {
  int *all = malloc(sizeof(int) * (size_t)loom_group_size(g));
  CHECK_OK(st, loom_allgather(g, loom_buf_host(&value, 1, LOOM_INT32),
                              loom_buf_host(all, (size_t)loom_group_size(g), LOOM_INT32)));
  return all;
}

static void check_subgroups(check_state *st, loom_group *g, const char *what) {
  loom_group *local = loom_group_node_local(g), *cross = loom_group_cross_node(g);
  int my_node = loom_ctx_node(st->ctx);
  int *nodes = gather_int(st, g, my_node);
  int on_my_node = 0, nodes_seen = 0;
  for (int r = 0; r < loom_group_size(g); r++) {
    if (nodes[r] == my_node) on_my_node++;
    int first = 1;
    for (int q = 0; q < r; q++)
      if (nodes[q] == nodes[r]) first = 0;
    nodes_seen += first;
  }
  expect_near(st, what, 0, loom_group_node_count(g), nodes_seen, 0);
  expect_near(st, what, 1, loom_group_size(local), on_my_node, 0);
  int *local_nodes = gather_int(st, local, my_node);
  for (int r = 0; r < loom_group_size(local); r++)
    expect_near(st, what, 2, local_nodes[r], my_node, 0);
  /* Cross-node: one member per node, all with my local index, nodes distinct. */
  int *cross_local = gather_int(st, cross, loom_group_rank(local));
  int *cross_nodes = gather_int(st, cross, my_node);
  for (int r = 0; r < loom_group_size(cross); r++) {
    expect_near(st, what, 3, cross_local[r], loom_group_rank(local), 0);
    for (int q = 0; q < r; q++) expect_near(st, what, 4, cross_nodes[q] != cross_nodes[r], 1, 0);
  }
  free(nodes), free(local_nodes), free(cross_local), free(cross_nodes);
}

static void check_shape(check_state *st, loom_mesh_shape shape) {
  loom_mesh *mesh = NULL;
  CHECK_OK(st, loom_mesh_create(st->ctx, &shape, &mesh));
  loom_mesh_coords mine = loom_mesh_my_coords(mesh), pure = loom_mesh_coords_of(&shape, st->rank);
  expect_near(st, "coords", 0, memcmp(&mine, &pure, sizeof mine) == 0, 1, 0);
  expect_near(st, "rank_of(coords)", 0, loom_mesh_rank_of(&shape, &mine), st->rank, 0);
  /* Groups are created on first use, collective over their members only: the ranks of the
   * first pipeline stage reduce over their DP group while the other stages never ask for it. */
  expect_near(st, "no group before first use", 0, loom_mesh_groups_created(mesh), 0, 0);
  if (mine.pp == 0) {
    loom_group *dp = loom_mesh_group(mesh, LOOM_AXIS_DP), *same = NULL;
    CHECK_OK(st, loom_mesh_group_of(mesh, loom_axis_fine_mask(LOOM_AXIS_DP), &same));
    expect_near(st, "DP by axis and by mask: one group", 0, dp == same && dp != NULL, 1, 0);
    expect_near(st, "one group after first use", 0, loom_mesh_groups_created(mesh), 1, 0);
    int one = 1, sum = 0;
    CHECK_OK(st, loom_allreduce(dp, loom_buf_host(&one, 1, LOOM_INT32), loom_buf_host(&sum, 1, LOOM_INT32),
                                LOOM_OP_SUM));
    expect_near(st, "allreduce on a group only its members created", 0, sum, shape.dp, 0);
  }
  CHECK_OK(st, loom_barrier(loom_mesh_group(mesh, LOOM_AXIS_WORLD)));
  expect_near(st, "WORLD is the context's", 0,
              loom_mesh_group(mesh, LOOM_AXIS_WORLD) == loom_ctx_world(st->ctx), 1, 0);
  int *members = malloc(sizeof(int) * (size_t)st->size);
  for (int axis = 0; axis < LOOM_AXIS_COUNT; axis++) {
    loom_group *g = loom_mesh_group(mesh, (loom_axis)axis);
    char what[96];
    snprintf(what, sizeof what, "mesh pp%d dp%d sp%d ep%d group %s", shape.pp, shape.dp, shape.sp,
             shape.ep, loom_axis_name((loom_axis)axis));
    if (axis != LOOM_AXIS_NODE) {
      int count = loom_mesh_group_members(&shape, (loom_axis)axis, st->rank, members);
      expect_near(st, what, 0, loom_group_size(g), count, 0);
      int *world_ranks = gather_int(st, g, st->rank);
      for (int r = 0; r < count && r < loom_group_size(g); r++) {
        expect_near(st, what, (size_t)r, world_ranks[r], members[r], 0);
        expect_near(st, what, (size_t)r, loom_group_world_rank(g, r), members[r], 0);
      }
      free(world_ranks);
    } else {
      expect_near(st, what, 0, loom_group_size(g), loom_ctx_local_size(st->ctx), 0);
    }
    check_subgroups(st, g, what);
  }
  /* Groups over any set of fine axes (created on first use, asked twice: the same group) match
   * the ranks that differ from this one only on those axes. */
  for (unsigned mask = 1; mask < (1u << LOOM_FINE_COUNT); mask++) {
    loom_group *g = NULL, *again = NULL;
    CHECK_OK(st, loom_mesh_group_of(mesh, mask, &g));
    CHECK_OK(st, loom_mesh_group_of(mesh, mask, &again));
    char what[96];
    snprintf(what, sizeof what, "mesh pp%d dp%d sp%d ep%d group_of %u (%s)", shape.pp, shape.dp,
             shape.sp, shape.ep, mask, loom_group_name(g));
    expect_near(st, what, 0, g == again, 1, 0);
    int count = 0;
    for (int r = 0; r < st->size; r++) {
      loom_mesh_coords c = loom_mesh_coords_of(&shape, r);
      int f[LOOM_FINE_COUNT] = {c.pp, c.edp, c.ep, c.sp}, m[LOOM_FINE_COUNT] = {mine.pp, mine.edp, mine.ep, mine.sp};
      int same = 1;
      for (int a = 0; a < LOOM_FINE_COUNT; a++)
        if (!(mask & LOOM_FINE_BIT(a)) && f[a] != m[a]) same = 0;
      if (same) members[count++] = r;
    }
    expect_near(st, what, 1, loom_group_size(g), count, 0);
    for (int r = 0; r < count && r < loom_group_size(g); r++)
      expect_near(st, what, 2, loom_group_world_rank(g, r), members[r], 0);
  }
  free(members);
  CHECK_OK(st, loom_mesh_destroy(mesh));
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  int early = check_start(&st, &config, &argc, &argv, 1u);
  if (early >= 0) return early;

  /* Node layout: simulated nodes follow rank / n; real detection puts this host's ranks on
   * one node. */
  int per_node = config.ranks_per_node;
  if (per_node > 0) {
    expect_near(&st, "simulated node", 0, loom_ctx_node(st.ctx), st.rank / per_node, 0);
    expect_near(&st, "simulated local rank", 0, loom_ctx_local_rank(st.ctx), st.rank % per_node, 0);
    expect_near(&st, "simulated node count", 0, loom_ctx_node_count(st.ctx),
                (st.size + per_node - 1) / per_node, 0);
  } else {
    expect_near(&st, "one host, one node", 0, loom_ctx_node_count(st.ctx), 1, 0);
    expect_near(&st, "local rank", 0, loom_ctx_local_rank(st.ctx), st.rank, 0);
  }
  expect_near(&st, "thread level", 0, loom_ctx_thread_level(st.ctx), MPI_THREAD_MULTIPLE, 0);

  /* Every shape with pp * dp * sp = world and ep | dp. */
  int shapes = 0;
  for (int pp = 1; pp <= st.size; pp++)
    for (int sp = 1; sp <= st.size; sp++) {
      if (st.size % (pp * sp)) continue;
      int dp = st.size / (pp * sp);
      for (int ep = 1; ep <= dp; ep++) {
        if (dp % ep) continue;
        check_shape(&st, (loom_mesh_shape){pp, dp, sp, ep});
        shapes++;
      }
    }
  if (st.rank == 0) printf("test_mesh: %d shapes\n", shapes);

  /* Bad shapes fail before any communication, with the numbers in the message. */
  loom_mesh *mesh = NULL;
  loom_mesh_shape wrong = {1, st.size + 1, 1, 1};
  expect_near(&st, "product != world", 0, loom_mesh_create(st.ctx, &wrong, &mesh), LOOM_ERR_ARG, 0);
  char number[32];
  snprintf(number, sizeof number, "%d", st.size + 1);
  expect_near(&st, "message names the product", 0, strstr(loom_error_string(), number) != NULL, 1, 0);
  loom_mesh_shape zero = {0, st.size, 1, 1};
  expect_near(&st, "zero size", 0, loom_mesh_create(st.ctx, &zero, &mesh), LOOM_ERR_ARG, 0);
  if (st.size > 1) {
    loom_mesh_shape ep = {1, st.size, 1, st.size + 1};
    expect_near(&st, "ep not dividing dp", 0, loom_mesh_create(st.ctx, &ep, &mesh), LOOM_ERR_ARG, 0);
  }
  int code = check_finish(&st, "test_mesh");
  loom_finalize(st.ctx);
  return code;
}
