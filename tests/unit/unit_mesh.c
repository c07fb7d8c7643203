/* Unit tests of mesh arithmetic: shape checks and dp resolution from a config, rank <-> coords
 * round trips with sp innermost, and for every axis groups that partition the world and match
 * a brute-force reference over the coordinates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/config.h"
#include "runtime/mesh.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#include "unit.h"

static void test_mesh_shape_checks(void) {
  loom_rng rng = input_rng(20);
  for (int trial = 0; trial < 50; trial++) {
    int ep = 1 + (int)loom_rng_below(&rng, 4), edp = 1 + (int)loom_rng_below(&rng, 4);
    loom_mesh_shape s = {1 + (int)loom_rng_below(&rng, 5), ep * edp,
                         1 + (int)loom_rng_below(&rng, 5), ep};
    int world = s.pp * s.dp * s.sp;
    CHECK(loom_mesh_shape_check(&s, world) == LOOM_OK, "pp%d dp%d sp%d ep%d on %d: %s", s.pp,
          s.dp, s.sp, s.ep, world, loom_error_string());
    char product[32], ranks[32];
    snprintf(product, sizeof product, "= %d ", world);
    snprintf(ranks, sizeof ranks, "the %d ranks", world + 1);
    CHECK(loom_mesh_shape_check(&s, world + 1) == LOOM_ERR_ARG, "world %d accepted", world + 1);
    CHECK_CONTAINS(loom_error_string(), product);
    CHECK_CONTAINS(loom_error_string(), ranks);
  }
  loom_mesh_shape not_dividing = {1, 6, 1, 4};
  CHECK(loom_mesh_shape_check(&not_dividing, 6) == LOOM_ERR_ARG, "ep 4 in dp 6 accepted");
  CHECK_CONTAINS(loom_error_string(), "ep=4");
  CHECK_CONTAINS(loom_error_string(), "dp=6");
  const loom_mesh_shape non_positive[] = {{0, 4, 1, 1}, {1, 0, 1, 1}, {1, 4, 0, 1},
                                          {1, 4, 1, 0}, {-1, -4, 1, 1}, {1, 4, -2, 1}};
  const char *const needles[] = {"pp=0", "dp=0", "sp=0", "ep=0", "dp=-4", "sp=-2"};
  for (int i = 0; i < 6; i++) {
    CHECK(loom_mesh_shape_check(&non_positive[i], 4) == LOOM_ERR_ARG, "case %d accepted", i);
    CHECK_CONTAINS(loom_error_string(), needles[i]);
  }
  CHECK(loom_mesh_shape_check(NULL, 4) == LOOM_ERR_ARG, "NULL shape accepted");

  /* dp = 0 resolves to world / (pp * sp) */
  loom_config c = LOOM_CONFIG_INIT;
  c.pp = 2, c.sp = 2, c.ep = 2;
  loom_mesh_shape s = {-1, -1, -1, -1};
  CHECK(loom_mesh_shape_from_config(&c, 16, &s) == LOOM_OK, "%s", loom_error_string());
  CHECK(s.pp == 2 && s.dp == 4 && s.sp == 2 && s.ep == 2, "resolved pp%d dp%d sp%d ep%d", s.pp,
        s.dp, s.sp, s.ep);
  loom_mesh_shape untouched = {-1, -1, -1, -1};
  CHECK(loom_mesh_shape_from_config(&c, 15, &untouched) == LOOM_ERR_ARG, "15 ranks accepted");
  CHECK_CONTAINS(loom_error_string(), "15");
  CHECK(untouched.pp == -1, "output written on failure");
  c.ep = 3;
  CHECK(loom_mesh_shape_from_config(&c, 16, &untouched) == LOOM_ERR_ARG, "ep 3 of dp 4");
  CHECK_CONTAINS(loom_error_string(), "ep=3");
  c.ep = 1, c.dp = 3;
  CHECK(loom_mesh_shape_from_config(&c, 16, &untouched) == LOOM_ERR_ARG, "explicit dp 3");
  CHECK_CONTAINS(loom_error_string(), "16");
}

/* Coordinates a group of `axis` holds fixed: members agree on these and only these. */
static int same_fixed_coords(loom_axis axis, loom_mesh_coords a, loom_mesh_coords b) {
  switch (axis) {
    case LOOM_AXIS_PP: return a.dp == b.dp && a.sp == b.sp;
    case LOOM_AXIS_DP: return a.pp == b.pp && a.sp == b.sp;
    case LOOM_AXIS_SP: return a.pp == b.pp && a.dp == b.dp;
    case LOOM_AXIS_EP: return a.pp == b.pp && a.sp == b.sp && a.edp == b.edp;
    case LOOM_AXIS_EDP: return a.pp == b.pp && a.sp == b.sp && a.ep == b.ep;
    case LOOM_AXIS_GRAD: return a.pp == b.pp;
    case LOOM_AXIS_WORLD: return 1;
    default: return 0;
  }
}

static int expected_group_size(loom_axis axis, loom_mesh_shape s) {
  switch (axis) {
    case LOOM_AXIS_PP: return s.pp;
    case LOOM_AXIS_DP: return s.dp;
    case LOOM_AXIS_SP: return s.sp;
    case LOOM_AXIS_EP: return s.ep;
    case LOOM_AXIS_EDP: return s.dp / s.ep;
    case LOOM_AXIS_GRAD: return s.dp * s.sp;
    case LOOM_AXIS_WORLD: return s.pp * s.dp * s.sp;
    default: return -1;
  }
}

static void check_mesh_shape(loom_mesh_shape s) {
  const int world = s.pp * s.dp * s.sp, edp = s.dp / s.ep;
  loom_mesh_coords *coords = malloc(sizeof *coords * (size_t)world);
  int *members = malloc(sizeof(int) * (size_t)world), *other = malloc(sizeof(int) * (size_t)world);
  int *expected = malloc(sizeof(int) * (size_t)world);
  char label[64];
  snprintf(label, sizeof label, "pp%d dp%d sp%d ep%d", s.pp, s.dp, s.sp, s.ep);
  int bad_coords = 0, bad_round_trip = 0, bad_inner = 0;
  for (int rank = 0; rank < world; rank++) {
    loom_mesh_coords c = loom_mesh_coords_of(&s, rank);
    coords[rank] = c;
    if (c.pp < 0 || c.pp >= s.pp || c.dp < 0 || c.dp >= s.dp || c.sp < 0 || c.sp >= s.sp ||
        c.ep < 0 || c.ep >= s.ep || c.edp < 0 || c.edp >= edp || c.dp != c.edp * s.ep + c.ep ||
        rank != ((c.pp * edp + c.edp) * s.ep + c.ep) * s.sp + c.sp)
      bad_coords++;
    if (loom_mesh_rank_of(&s, &c) != rank) bad_round_trip++;
    /* sp is innermost: the next rank is the next sp shard unless the sp group wraps */
    if (rank > 0 && s.sp > 1 && rank % s.sp != 0) {
      loom_mesh_coords p = coords[rank - 1];
      if (c.sp != p.sp + 1 || c.pp != p.pp || c.dp != p.dp) bad_inner++;
    }
  }
  CHECK(bad_coords == 0, "%s: %d ranks with wrong coordinates", label, bad_coords);
  CHECK(bad_round_trip == 0, "%s: %d ranks fail rank_of(coords_of)", label, bad_round_trip);
  CHECK(bad_inner == 0, "%s: sp not innermost at %d ranks", label, bad_inner);

  for (int axis = 0; axis < LOOM_AXIS_COUNT; axis++) {
    if (axis == LOOM_AXIS_NODE) {
      CHECK(loom_mesh_group_members(&s, LOOM_AXIS_NODE, 0, members) == -1, "NODE members");
      continue;
    }
    const int size = expected_group_size((loom_axis)axis, s);
    int wrong = 0, first_wrong = -1;
    for (int rank = 0; rank < world && wrong < 5; rank++) {
      int count = loom_mesh_group_members(&s, (loom_axis)axis, rank, members);
      int reference = 0, contains_self = 0, sorted = 1, fixed = 1, partition = 1;
      for (int r = 0; r < world; r++)
        if (same_fixed_coords((loom_axis)axis, coords[rank], coords[r])) expected[reference++] = r;
      for (int i = 0; i < count; i++) {
        contains_self |= members[i] == rank;
        if (i > 0 && members[i] <= members[i - 1]) sorted = 0;
        if (members[i] < 0 || members[i] >= world ||
            !same_fixed_coords((loom_axis)axis, coords[rank], coords[members[i]]))
          fixed = 0;
      }
      /* a partition: every member sees exactly the same group */
      for (int i = 0; i < count && fixed && partition; i++) {
        int other_count = loom_mesh_group_members(&s, (loom_axis)axis, members[i], other);
        partition = other_count == count &&
                    memcmp(other, members, sizeof(int) * (size_t)count) == 0;
      }
      int matches = count == size && reference == size &&
                    memcmp(members, expected, sizeof(int) * (size_t)size) == 0;
      /* the group rank that loom_mesh_axis_position computes is the position in the members
       * (the state registry slices tensors by it) */
      if (axis != LOOM_AXIS_NODE) {
        int64_t position = -2, positions = -2;
        loom_mesh_coords c = loom_mesh_coords_of(&s, rank);
        loom_mesh_axis_position(&s, &c, (loom_axis)axis, &position, &positions);
        matches = matches && positions == count && position >= 0 && position < count &&
                  members[position] == rank;
      }
      if (!(matches && contains_self && sorted && fixed && partition)) {
        if (first_wrong < 0) first_wrong = rank;
        wrong++;
        check_failed(__LINE__, "group", "%s axis %s rank %d: count %d (want %d) self %d "
                     "sorted %d fixed %d partition %d", label, loom_axis_name((loom_axis)axis),
                     rank, count, size, contains_self, sorted, fixed, partition);
      }
    }
    CHECK(wrong == 0, "%s axis %s: %d wrong groups from rank %d", label,
          loom_axis_name((loom_axis)axis), wrong, first_wrong);
  }
  free(coords);
  free(members);
  free(other);
  free(expected);
}

static void test_mesh_layout_and_groups(void) {
  const loom_mesh_shape fixed[] = {{2, 4, 2, 2}, {1, 8, 1, 4}, {3, 2, 1, 1}, {1, 1, 1, 1},
                                   {2, 6, 3, 3}, {1, 4, 4, 1}, {4, 1, 1, 1}, {1, 8, 1, 8}};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) check_mesh_shape(fixed[i]);
  loom_rng rng = input_rng(21);
  for (int trial = 0; trial < 12; trial++) {
    int ep = 1 + (int)loom_rng_below(&rng, 3), edp = 1 + (int)loom_rng_below(&rng, 3);
    loom_mesh_shape s = {1 + (int)loom_rng_below(&rng, 3), ep * edp,
                         1 + (int)loom_rng_below(&rng, 3), ep};
    check_mesh_shape(s);
  }
  CHECK(loom_mesh_group_members(&fixed[0], LOOM_AXIS_COUNT, 0, NULL) == -1, "AXIS_COUNT");
  for (int a = 0; a < LOOM_AXIS_COUNT; a++)
    for (int b = 0; b < a; b++)
      CHECK(strcmp(loom_axis_name((loom_axis)a), loom_axis_name((loom_axis)b)) != 0,
            "axes %d and %d share a name", a, b);
  CHECK(strcmp(loom_axis_name(LOOM_AXIS_EDP), "EDP") == 0, "%s", loom_axis_name(LOOM_AXIS_EDP));
  CHECK(strcmp(loom_axis_name(LOOM_AXIS_COUNT), "INVALID") == 0, "%s",
        loom_axis_name(LOOM_AXIS_COUNT));
}

/* The named axes: format and parse are inverse; bad text, missing or repeated axes, and an
 * unknown axis of size > 1 are refused naming the problem; an unknown axis of size 1 passes. */
static void test_mesh_axis_names(void) {
  loom_rng rng = input_rng(21);
  for (int trial = 0; trial < 50; trial++) {
    loom_mesh_shape s = {1 + (int)loom_rng_below(&rng, 9), 1 + (int)loom_rng_below(&rng, 64),
                         1 + (int)loom_rng_below(&rng, 9), 1 + (int)loom_rng_below(&rng, 9)};
    char text[128];
    loom_mesh_shape_format(&s, text, sizeof text);
    loom_mesh_shape back = {0, 0, 0, 0};
    CHECK(loom_mesh_shape_parse(text, &back) == LOOM_OK, "'%s': %s", text, loom_error_string());
    CHECK(memcmp(&s, &back, sizeof s) == 0, "'%s' parsed to pp %d dp %d sp %d ep %d", text,
          back.pp, back.dp, back.sp, back.ep);
  }
  CHECK(strcmp(loom_mesh_axis_label(0), "pp") == 0 && loom_mesh_axis_label(4) == NULL,
        "axis labels");
  loom_mesh_shape s;
  CHECK(loom_mesh_shape_parse("ep=2 sp=1 dp=4 pp=1 tp=1", &s) == LOOM_OK && s.dp == 4 && s.ep == 2,
        "order-free, unknown size-1 axis: %s", loom_error_string());
  static const struct {
    const char *text, *needle;
  } bad[] = {{"pp=1 dp=4 sp=1", "'ep' missing"}, {"pp=1 dp=4 sp=1 ep=2 tp=2", "'tp'"},
             {"pp=1 dp=4 dp=4 sp=1 ep=1", "twice"}, {"pp=1 dp=0 sp=1 ep=1", "sizes >= 1"},
             {"pp=1 dp=four sp=1 ep=1", "name=size"}, {"pp", "name=size"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    loom_error_clear();
    CHECK(loom_mesh_shape_parse(bad[i].text, &s) == LOOM_ERR_ARG, "'%s' accepted", bad[i].text);
    CHECK(strstr(loom_error_string(), bad[i].needle) != NULL, "'%s': message '%s' lacks '%s'",
          bad[i].text, loom_error_string(), bad[i].needle);
  }
}

int register_mesh_suite(void) {
  static const unit_test tests[] = {
      {"named axes", test_mesh_axis_names},
      {"shape checks", test_mesh_shape_checks},
      {"layout and groups", test_mesh_layout_and_groups},
      {NULL, NULL}};
  return unit_add_suite("mesh", tests);
}
