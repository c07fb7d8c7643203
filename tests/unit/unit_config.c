/* Unit tests of loom_config parsing: flags and LOOM_* variables set exactly the fields they name
 * (the command line wins), tool options of every type parse alongside the core ones, and every
 * bad input is rejected with LOOM_ERR_ARG and a message that names it. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "runtime/config.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#include "unit.h"

/* argv for one parse; STRING options point into it, so it lives as long as their targets. */
typedef struct {
  char text[512];
  char *argv[32];
  int argc;
} arg_list;

static loom_status parse_flags(loom_config *config, const loom_option *extra, int extra_count,
                               char **envp, arg_list *args, const char *flags) {
  snprintf(args->text, sizeof args->text, "%s", flags);
  args->argc = 0;
  args->argv[args->argc++] = "test_unit";
  for (char *save = NULL, *word = strtok_r(args->text, " ", &save); word && args->argc < 31;
       word = strtok_r(NULL, " ", &save))
    args->argv[args->argc++] = word;
  args->argv[args->argc] = NULL;
  loom_option_table table = {extra, extra_count};
  return loom_config_parse_env(config, &table, 1, envp, NULL, args->argc, args->argv);
}

static int config_equal(const loom_config *a, const loom_config *b) {
  return a->pp == b->pp && a->dp == b->dp && a->sp == b->sp && a->ep == b->ep &&
         a->log_level == b->log_level && a->ranks_per_node == b->ranks_per_node &&
         a->collective_algo == b->collective_algo &&
         a->hier_threshold_bytes == b->hier_threshold_bytes &&
         a->timeout_seconds == b->timeout_seconds &&
         a->sparse_nbx_min_ranks == b->sparse_nbx_min_ranks &&
         a->seed == b->seed && a->help == b->help;
}

static void test_config_defaults_and_flags(void) {
  loom_rng rng = input_rng(10);
  loom_config config = LOOM_CONFIG_INIT, defaults = LOOM_CONFIG_INIT;
  char *no_env[] = {NULL};
  arg_list args;
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "") == LOOM_OK, "%s", loom_error_string());
  CHECK(config_equal(&config, &defaults), "empty parse changed the config");
  CHECK(loom_config_parse_env(&config, NULL, 0, NULL, NULL, 1, args.argv) == LOOM_OK,
        "NULL envp: %s", loom_error_string());

  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "--dp 2 --pp 3") == LOOM_OK, "%s",
        loom_error_string());
  CHECK(config.dp == 2 && config.pp == 3 && config.sp == 1, "dp %d pp %d sp %d", config.dp,
        config.pp, config.sp);
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "--dp=4") == LOOM_OK, "%s",
        loom_error_string());
  CHECK(config.dp == 4 && config.pp == 3, "dp %d pp %d", config.dp, config.pp);

  for (int trial = 0; trial < 20; trial++) {
    loom_config c = LOOM_CONFIG_INIT;
    int pp = 1 + (int)loom_rng_below(&rng, 1000), dp = (int)loom_rng_below(&rng, 1 << 20);
    int sp = 1 + (int)loom_rng_below(&rng, 64), ep = 1 + (int)loom_rng_below(&rng, 64);
    int rpn = (int)loom_rng_below(&rng, 129);
    uint64_t seed = loom_rng_u64(&rng);
    double timeout = 1e-3 + loom_rng_uniform(&rng) * 1e5;
    char flags[400];
    snprintf(flags, sizeof flags,
             "--pp %d --dp=%d --sp %d --ep=%d --ranks-per-node %d --seed %" PRIu64
             " --timeout %.17g --coll-algo flat",
             pp, dp, sp, ep, rpn, seed, timeout);
    CHECK(parse_flags(&c, NULL, 0, no_env, &args, flags) == LOOM_OK, "%s: %s", flags,
          loom_error_string());
    CHECK(c.pp == pp && c.dp == dp && c.sp == sp && c.ep == ep && c.ranks_per_node == rpn,
          "%s gave pp %d dp %d sp %d ep %d rpn %d", flags, c.pp, c.dp, c.sp, c.ep,
          c.ranks_per_node);
    CHECK(c.seed == seed && c.timeout_seconds == timeout && c.collective_algo == LOOM_ALGO_FLAT,
          "%s gave seed %" PRIu64 " timeout %.17g algo %d", flags, c.seed, c.timeout_seconds,
          c.collective_algo);
    CHECK(c.log_level == defaults.log_level && c.help == 0 &&
              c.hier_threshold_bytes == defaults.hier_threshold_bytes,
          "%s touched other fields", flags);
  }

  static const char *const levels[] = {"error", "warn", "info", "debug"};
  for (int level = 0; level < 4; level++) {
    char flags[64];
    snprintf(flags, sizeof flags, "--log %s", levels[level]);
    CHECK(parse_flags(&config, NULL, 0, no_env, &args, flags) == LOOM_OK, "%s",
          loom_error_string());
    CHECK(config.log_level == level, "%s gave %d", flags, config.log_level);
  }
  CHECK(LOOM_LOG_DEBUG == 3, "LOOM_LOG_DEBUG is %d", LOOM_LOG_DEBUG);
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "--sparse-nbx-min-ranks=250") == LOOM_OK &&
            config.sparse_nbx_min_ranks == 250,
        "sparse-nbx-min-ranks %d", config.sparse_nbx_min_ranks);
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "--coll-algo hier") == LOOM_OK &&
            config.collective_algo == LOOM_ALGO_HIER,
        "coll-algo %d", config.collective_algo);

  static const struct {
    const char *text;
    uint64_t bytes;
  } sizes[] = {{"4M", 4194304}, {"4m", 4194304}, {"4MiB", 4194304}, {"4MB", 4194304},
               {"512", 512},    {"3K", 3072},    {"2G", 2ull << 30}, {"5T", 5ull << 40},
               {"010", 10},     {"0", 0}}; /* decimal only: a leading 0 is not octal */
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    char flags[64];
    snprintf(flags, sizeof flags, "--hier-threshold %s", sizes[i].text);
    CHECK(parse_flags(&config, NULL, 0, no_env, &args, flags) == LOOM_OK, "%s: %s", flags,
          loom_error_string());
    CHECK(config.hier_threshold_bytes == sizes[i].bytes, "%s gave %" PRIu64, flags,
          config.hier_threshold_bytes);
  }
  uint64_t kilo = 1 + loom_rng_below(&rng, 1 << 20);
  char flags[64];
  snprintf(flags, sizeof flags, "--hier-threshold=%" PRIu64 "K", kilo);
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, flags) == LOOM_OK &&
            config.hier_threshold_bytes == kilo * 1024,
        "%s gave %" PRIu64, flags, config.hier_threshold_bytes);

  loom_config h = LOOM_CONFIG_INIT;
  CHECK(parse_flags(&h, NULL, 0, no_env, &args, "--help") == LOOM_OK && h.help == 1,
        "--help alone: help %d", h.help);
  h = defaults;
  CHECK(parse_flags(&h, NULL, 0, no_env, &args, "--help --dp 6") == LOOM_OK && h.help == 1 &&
            h.dp == 6,
        "--help --dp 6: help %d dp %d", h.help, h.dp);
  CHECK(parse_flags(&h, NULL, 0, no_env, &args, "--help=no") == LOOM_OK && h.help == 0,
        "--help=no: help %d", h.help);
  CHECK(parse_flags(&h, NULL, 0, no_env, &args, "--help true") == LOOM_OK && h.help == 1,
        "--help true: help %d", h.help);
}

static void test_config_environment(void) {
  loom_rng rng = input_rng(11);
  arg_list args;
  for (int trial = 0; trial < 10; trial++) {
    int sp = 1 + (int)loom_rng_below(&rng, 512), pp = 1 + (int)loom_rng_below(&rng, 512);
    int flag_sp = 1 + (int)loom_rng_below(&rng, 512);
    char sp_var[64], pp_var[64], flags[64];
    snprintf(sp_var, sizeof sp_var, "LOOM_SP=%d", sp);
    snprintf(pp_var, sizeof pp_var, "LOOM_PP=%d", pp);
    char *env[] = {"PATH=/usr/bin:/bin", sp_var, "LOOMX=1", "NOT_LOOM_DP=9", pp_var,
                   "LOOM_LOG=info", "LOOM_RANKS_PER_NODE=4", "LOOM_HELP=yes", NULL};
    loom_config c = LOOM_CONFIG_INIT;
    CHECK(parse_flags(&c, NULL, 0, env, &args, "") == LOOM_OK, "%s", loom_error_string());
    CHECK(c.sp == sp && c.pp == pp && c.dp == 0 && c.log_level == LOOM_LOG_INFO &&
              c.ranks_per_node == 4 && c.help == 1,
          "env gave sp %d pp %d dp %d log %d rpn %d help %d", c.sp, c.pp, c.dp, c.log_level,
          c.ranks_per_node, c.help);
    /* the command line wins over the environment, which still sets the rest */
    loom_config d = LOOM_CONFIG_INIT;
    snprintf(flags, sizeof flags, "--sp %d --log=error", flag_sp);
    CHECK(parse_flags(&d, NULL, 0, env, &args, flags) == LOOM_OK, "%s", loom_error_string());
    CHECK(d.sp == flag_sp && d.pp == pp && d.log_level == LOOM_LOG_ERROR,
          "env sp %d + %s gave sp %d pp %d log %d", sp, flags, d.sp, d.pp, d.log_level);
  }
}

static void test_config_extra_options(void) {
  loom_rng rng = input_rng(12);
  int layers = -7, verbose = -7, optimizer = -7, steps = -7;
  double learning_rate = -7;
  const char *data_path = NULL;
  const loom_option extra[] = {
      {"layers", LOOM_OPTION_INT, &layers, "transformer layers", NULL, 1, 1000},
      {"lr", LOOM_OPTION_DOUBLE, &learning_rate, "learning rate", NULL, 0, 0},
      {"data-path", LOOM_OPTION_STRING, &data_path, "training shards", NULL, 0, 0},
      {"verbose", LOOM_OPTION_BOOL, &verbose, "chatty", NULL, 0, 0},
      {"optimizer", LOOM_OPTION_CHOICE, &optimizer, "optimizer", "sgd|adam|adamw", 0, 0},
      {"steps", LOOM_OPTION_INT, &steps, "training steps (unbounded)", NULL, 0, 0},
  };
  const int n = (int)(sizeof extra / sizeof extra[0]);
  arg_list args;
  for (int trial = 0; trial < 10; trial++) {
    int want_layers = 1 + (int)loom_rng_below(&rng, 1000);
    int want_steps = (int)(loom_rng_u32(&rng) & 0x7fffffff) - (1 << 30);
    double want_lr = loom_rng_uniform(&rng) * 1e-2;
    int want_optimizer = (int)loom_rng_below(&rng, 3);
    static const char *const names[] = {"sgd", "adam", "adamw"};
    char flags[400], path_var[64];
    snprintf(flags, sizeof flags,
             "--layers %d --lr=%.17g --data-path /data/shard%u --verbose --optimizer %s "
             "--steps %d --dp 2",
             want_layers, want_lr, loom_rng_u32(&rng) % 100, names[want_optimizer],
             want_steps);
    snprintf(path_var, sizeof path_var, "LOOM_DATA_PATH=/env/path%d", trial);
    char *env[] = {"LOOM_LAYERS=3", path_var, "LOOM_VERBOSE=0", NULL};
    loom_config c = LOOM_CONFIG_INIT;
    CHECK(parse_flags(&c, extra, n, env, &args, "") == LOOM_OK, "%s", loom_error_string());
    CHECK(layers == 3 && verbose == 0 && data_path == env[1] + strlen("LOOM_DATA_PATH="),
          "env gave layers %d verbose %d path %s", layers, verbose, data_path);
    CHECK(parse_flags(&c, extra, n, env, &args, flags) == LOOM_OK, "%s: %s", flags,
          loom_error_string());
    CHECK(layers == want_layers && learning_rate == want_lr && verbose == 1 &&
              optimizer == want_optimizer && steps == want_steps && c.dp == 2,
          "%s gave layers %d lr %.17g verbose %d optimizer %d steps %d dp %d", flags, layers,
          learning_rate, verbose, optimizer, steps, c.dp);
    /* a STRING points into argv, not a copy */
    CHECK(data_path == args.argv[5], "data-path %p is not argv[5] %p", (const void *)data_path,
          (void *)args.argv[5]);
  }
  /* the core table is the same when the tool appends its options */
  loom_option core[LOOM_CONFIG_OPTION_COUNT];
  loom_config c = LOOM_CONFIG_INIT;
  loom_config_options(&c, core);
  for (int i = 0; i < LOOM_CONFIG_OPTION_COUNT; i++)
    CHECK(core[i].name && core[i].help && core[i].target, "core option %d incomplete", i);
}

typedef struct {
  const char *flags;
  const char *variable; /* one environment entry or NULL */
  const char *needles[3];
} bad_input;

static void test_config_rejections(void) {
  int layers = 5, steps = 5, verbose = 0, optimizer = 0;
  double learning_rate = 0.1;
  const loom_option extra[] = {
      {"layers", LOOM_OPTION_INT, &layers, "transformer layers", NULL, 1, 1000},
      {"steps", LOOM_OPTION_INT, &steps, "training steps (unbounded)", NULL, 0, 0},
      {"lr", LOOM_OPTION_DOUBLE, &learning_rate, "learning rate", NULL, 0, 0},
      {"verbose", LOOM_OPTION_BOOL, &verbose, "chatty", NULL, 0, 0},
      {"optimizer", LOOM_OPTION_CHOICE, &optimizer, "optimizer", "sgd|adam|adamw", 0, 0},
  };
  static const bad_input bad[] = {
      {"--dpp 2", NULL, {"--dpp", "--dp", "--hier-threshold"}},
      {"", "LOOM_DP=two", {"LOOM_DP", "two"}},
      {"", "LOOM_SEED= -1", {"LOOM_SEED", "-1"}},
      {"", "LOOM_TIMEOUT=", {"LOOM_TIMEOUT"}},
      {"--dp two", NULL, {"--dp", "two"}},
      {"--dp 2x", NULL, {"--dp", "2x"}},
      {"--dp -1", NULL, {"--dp", "-1", "1048576"}},
      {"--dp 4294967298", NULL, {"--dp", "4294967298"}},
      {"--log loud", NULL, {"--log", "loud", "error|warn|info|debug"}},
      {"--coll-algo ring", NULL, {"--coll-algo", "ring", "auto|flat|hier"}},
      {"--pp 2 --dp", NULL, {"--dp"}},
      {"--dp --pp 2", NULL, {"--dp"}},
      {"--dp=", NULL, {"--dp"}},
      {"foo", NULL, {"foo"}},
      {"--pp 2 foo", NULL, {"'foo'"}},
      {"-dp 2", NULL, {"-dp"}},
      {"--", NULL, {"--"}},
      {"--timeout 0", NULL, {"--timeout", "0"}},
      {"--sparse-nbx-min-ranks 0", NULL, {"--sparse-nbx-min-ranks", "0", "1073741824"}},
      {"--timeout nan", NULL, {"--timeout", "nan"}},
      {"--timeout 2e9", NULL, {"--timeout", "2e9"}},
      {"--hier-threshold 5X", NULL, {"--hier-threshold", "5X"}},
      {"--hier-threshold -5", NULL, {"--hier-threshold", "-5"}},
      {"--hier-threshold 4Mx", NULL, {"--hier-threshold", "4Mx"}},
      {"--hier-threshold 99999999T", NULL, {"--hier-threshold", "99999999T"}},
      {"--seed 99999999999999999999", NULL, {"--seed"}},
      {"--help maybe", NULL, {"--help", "maybe"}},
      {"--layers 0", NULL, {"--layers", "0", "1000"}},
      {"--layers 1001", NULL, {"--layers", "1001"}},
      {"--steps 4294967297", NULL, {"--steps", "4294967297"}},
      {"--steps 1.5", NULL, {"--steps", "1.5"}},
      {"--lr inf", NULL, {"--lr", "inf"}},
      {"--lr 1e400", NULL, {"--lr", "1e400"}},
      {"--verbose 2", NULL, {"--verbose", "2"}},
      {"--optimizer adagrad", NULL, {"--optimizer", "adagrad", "sgd|adam|adamw"}},
      {"--optimizer", NULL, {"--optimizer"}},
      {"", "LOOM_LAYERS=abc", {"LOOM_LAYERS", "abc"}},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char variable[64] = "";
    if (bad[i].variable) snprintf(variable, sizeof variable, "%s", bad[i].variable);
    char *env[] = {"HOME=/root", bad[i].variable ? variable : NULL, NULL};
    loom_config c = LOOM_CONFIG_INIT;
    arg_list args;
    loom_error_clear();
    loom_status s = parse_flags(&c, extra, 5, env, &args, bad[i].flags);
    const char *text = loom_error_string();
    CHECK(s == LOOM_ERR_ARG, "'%s' %s gave %d", bad[i].flags, variable, (int)s);
    CHECK(strncmp(text, "LOOM_ERR_ARG: ", 14) == 0, "'%s' %s: message '%s'", bad[i].flags,
          variable, text);
    for (int k = 0; k < 3; k++) {
      const char *needle = bad[i].needles[k];
      if (needle) /* `text ?:` quiets a false -Wformat-overflow under the sanitizers */
        CHECK(strstr(text, needle) != NULL, "'%s' lacks '%s'", text ? text : "", needle);
    }
    /* an unbounded option must not claim a range of [0, 0] */
    CHECK(strstr(text, "[0, 0]") == NULL, "'%s': %s", bad[i].flags, text);
  }
}

/* An unknown LOOM_* variable is a warning naming the closest known one, never an error; the
 * variables of loom's own scripts pass silently; the known ones around it still apply. */
static void test_config_unknown_variables(void) {
  int layers = 5;
  const loom_option extra[] = {{"layers", LOOM_OPTION_INT, &layers, "layers", NULL, 1, 1000}};
  const loom_option_table tables[] = {{extra, 1}};
  static const struct {
    const char *variable, *closest;
  } cases[] = {{"LOOM_TIMEOUTS=5", "LOOM_TIMEOUT"}, {"LOOM_RANK_PER_NODE=2", "LOOM_RANKS_PER_NODE"},
               {"LOOM_LAYER=4", "LOOM_LAYERS"}, {"LOOM_FOO=1", "LOOM_LOG"},
               {"LOOM_MAX_RESTARTS=3", NULL}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char variable[64];
    snprintf(variable, sizeof variable, "%s", cases[i].variable);
    char *env[] = {"LOOM_DP=3", variable, "LOOM_LAYERS=7", NULL};
    FILE *warnings = tmpfile();
    CHECK(warnings != NULL, "tmpfile failed");
    if (!warnings) return;
    loom_config c = LOOM_CONFIG_INIT;
    layers = 5;
    loom_status s = loom_config_parse_env(&c, tables, 1, env, warnings, 0, NULL);
    char text[512] = "";
    rewind(warnings);
    size_t n = fread(text, 1, sizeof text - 1, warnings);
    text[n] = '\0';
    fclose(warnings);
    CHECK(s == LOOM_OK, "%s: %s", cases[i].variable, loom_error_string());
    CHECK(c.dp == 3 && layers == 7, "%s: dp %d layers %d", cases[i].variable, c.dp, layers);
    if (!cases[i].closest) {
      CHECK(n == 0, "%s (a script's variable) warned: %s", cases[i].variable, text);
      continue;
    }
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(cases[i].variable, "="), cases[i].variable);
    char closest[80];
    snprintf(closest, sizeof closest, "closest known one is %s ", cases[i].closest);
    CHECK(strstr(text, name) && strstr(text, closest) && strstr(text, "warning"),
          "%s: warning '%s' lacks %s or '%s'", cases[i].variable, text, name, closest);
  }
  /* malformed values of known variables are still errors */
  char *env[] = {"LOOM_DP=two", NULL};
  loom_config c = LOOM_CONFIG_INIT;
  CHECK(loom_config_parse_env(&c, tables, 1, env, NULL, 0, NULL) == LOOM_ERR_ARG,
        "LOOM_DP=two accepted");
}

int register_config_suite(void) {
  static const unit_test tests[] = {
      {"defaults and flags", test_config_defaults_and_flags},
      {"environment", test_config_environment},
      {"tool options", test_config_extra_options},
      {"rejections", test_config_rejections},
      {"unknown variables", test_config_unknown_variables},
      {NULL, NULL}};
  return unit_add_suite("config", tests);
}
