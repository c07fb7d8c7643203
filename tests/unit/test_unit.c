/* Single-process unit tests of loom's pure parts: status, config, mesh arithmetic, rng, dtype
 * conversions, sparse plans and the serial executor. No MPI call and no loom_init: everything
 * here must work before (and without) a communicator. Inputs come from a fresh seed per run,
 * printed first; pass it back as argv[1] to replay a failure. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "collectives/sparse.h"
#include "runtime/config.h"
#include "runtime/dtype.h"
#include "runtime/executor.h"
#include "runtime/mesh.h"
#include "runtime/req.h"
#include "runtime/rng.h"
#include "runtime/status.h"

/* Root of every input of this run (set once in main, read by the tests). */
static uint64_t unit_seed;

/* A test input stream; each test takes its own stream id so tests stay independent. */
static loom_rng input_rng(uint32_t stream) {
  loom_rng rng;
  loom_rng_init(&rng, unit_seed, LOOM_RNG_TEST, stream);
  return rng;
}

/* A CUnit assertion whose failure record carries the values involved (CUnit copies it). */
static void check_failed(unsigned line, const char *condition, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void check_failed(unsigned line, const char *condition, const char *fmt, ...) {
  char detail[400], text[600];
  va_list args;
  va_start(args, fmt);
  vsnprintf(detail, sizeof detail, fmt, args);
  va_end(args);
  snprintf(text, sizeof text, "%s [%s] (seed %" PRIu64 ")", condition, detail, unit_seed);
  CU_assertImplementation(CU_FALSE, line, text, __FILE__, "", CU_FALSE);
}
#define CHECK(cond, ...)                                                             \
  do {                                                                               \
    if (cond)                                                                        \
      CU_assertImplementation(CU_TRUE, __LINE__, #cond, __FILE__, "", CU_FALSE);     \
    else                                                                             \
      check_failed(__LINE__, #cond, __VA_ARGS__);                                    \
  } while (0)
#define CHECK_CONTAINS(text, needle) \
  CHECK(strstr((text), (needle)) != NULL, "'%s' lacks '%s'", (text), (needle))

/* ------------------------------------------------------------------------------------------
 * status */

static void test_status_names(void) {
  static const struct {
    loom_status value;
    const char *name, *message;
  } map[] = {
#define STATUS_ROW(name, value, msg) {LOOM_##name, "LOOM_" #name, msg},
      LOOM_STATUS_MAP(STATUS_ROW)
#undef STATUS_ROW
  };
  const int n = (int)(sizeof map / sizeof map[0]);
  CHECK(n >= 14, "only %d statuses in the map", n);
  for (int i = 0; i < n; i++) {
    const char *name = loom_status_name(map[i].value);
    const char *message = loom_status_message(map[i].value);
    CHECK(strcmp(name, map[i].name) == 0, "value %d named %s", (int)map[i].value, name);
    CHECK(strncmp(name, "LOOM_", 5) == 0, "%s", name);
    CHECK(message && message[0] && strcmp(message, map[i].message) == 0, "%s: '%s'", name,
          message ? message : "(null)");
    for (int j = 0; j < i; j++) {
      CHECK(map[i].value != map[j].value, "%s and %s share %d", map[i].name, map[j].name,
            (int)map[i].value);
      CHECK(strcmp(name, loom_status_name(map[j].value)) != 0, "%s named twice", name);
    }
  }
  CHECK(LOOM_OK == 0 && LOOM_INPROGRESS > 0 && LOOM_ERR_ARG < 0, "OK/INPROGRESS/ERR signs");
  const int unknown[] = {2, 77, -13, -1000};
  for (int i = 0; i < 4; i++) {
    const char *name = loom_status_name((loom_status)unknown[i]);
    CHECK(strcmp(name, "LOOM_UNKNOWN_STATUS") == 0, "%d named %s", unknown[i], name);
    const char *message = loom_status_message((loom_status)unknown[i]);
    CHECK(message && message[0], "no message for %d", unknown[i]);
  }
}

static void test_status_error_messages(void) {
  loom_rng rng = input_rng(1);
  static const loom_status errors[] = {LOOM_ERR_ARG,     LOOM_ERR_NOMEM,       LOOM_ERR_MPI,
                                       LOOM_ERR_NCCL,    LOOM_ERR_CUDA,        LOOM_ERR_HDF5,
                                       LOOM_ERR_IO,      LOOM_ERR_TIMEOUT,     LOOM_ERR_CORRUPT,
                                       LOOM_ERR_STATE,   LOOM_ERR_UNSUPPORTED, LOOM_ERR_INTERNAL};
  for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
    unsigned rank = loom_rng_u32(&rng) % 4096;
    double value = loom_rng_normal(&rng);
    char expected[256], prefix[64];
    snprintf(expected, sizeof expected, "tensor w%u on rank %u: value %.6f", rank + 1, rank,
             value);
    snprintf(prefix, sizeof prefix, "%s: ", loom_status_name(errors[i]));
    loom_error_clear();
    loom_status s = loom_error_set(errors[i], "tensor w%u on rank %u: value %.6f", rank + 1,
                                   rank, value);
    CHECK(s == errors[i], "returned %d for %d", (int)s, (int)errors[i]);
    const char *text = loom_error_string();
    CHECK(strncmp(text, prefix, strlen(prefix)) == 0, "'%s' does not start with '%s'", text,
          prefix);
    CHECK_CONTAINS(text, expected);
  }

  /* A message built from the previous one keeps the cause (formatted before it is replaced). */
  loom_error_set(LOOM_ERR_IO, "open shard-%d.h5", 17);
  loom_error_set(LOOM_ERR_CORRUPT, "checkpoint step 3: %s", loom_error_string());
  CHECK(strcmp(loom_error_string(),
               "LOOM_ERR_CORRUPT: checkpoint step 3: LOOM_ERR_IO: open shard-17.h5") == 0,
        "'%s'", loom_error_string());

  /* A long message is truncated, not overflowed. */
  char long_text[4000];
  memset(long_text, 'x', sizeof long_text - 1);
  long_text[sizeof long_text - 1] = '\0';
  loom_error_set(LOOM_ERR_ARG, "%s", long_text);
  size_t length = strlen(loom_error_string());
  CHECK(length > 100 && length < 4000, "length %zu", length);

  loom_error_restore("LOOM_ERR_MPI: restored verbatim");
  CHECK(strcmp(loom_error_string(), "LOOM_ERR_MPI: restored verbatim") == 0, "'%s'",
        loom_error_string());
  loom_error_restore(NULL);
  CHECK(loom_error_string()[0] == '\0', "'%s'", loom_error_string());
  loom_error_set(LOOM_ERR_ARG, "something");
  loom_error_clear();
  CHECK(loom_error_string()[0] == '\0', "'%s' after clear", loom_error_string());
}

static void *set_error_on_thread(void *unused) {
  loom_error_set(LOOM_ERR_TIMEOUT, "other thread");
  return NULL;
}

static void test_status_thread_local(void) {
  loom_error_set(LOOM_ERR_IO, "main thread");
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, set_error_on_thread, NULL) == 0, "pthread_create");
  pthread_join(thread, NULL);
  CHECK(strcmp(loom_error_string(), "LOOM_ERR_IO: main thread") == 0, "'%s'",
        loom_error_string());
  loom_error_clear();
}

static loom_status through_check(loom_status status, int *evaluations, int *reached) {
  LOOM_CHECK(((*evaluations)++, status));
  *reached = 1;
  return LOOM_OK;
}

static loom_status through_check_goto(loom_status status, int *cleaned) {
  loom_status result = LOOM_OK;
  LOOM_CHECK_GOTO(status, result, cleanup);
  result = LOOM_OK;
cleanup:
  *cleaned = 1;
  return result;
}

static void test_status_check_macros(void) {
  const loom_status cases[] = {LOOM_OK, LOOM_INPROGRESS, LOOM_ERR_ARG, LOOM_ERR_TIMEOUT,
                               LOOM_ERR_INTERNAL};
  for (int i = 0; i < 5; i++) {
    int evaluations = 0, reached = 0, cleaned = 0;
    loom_status s = through_check(cases[i], &evaluations, &reached);
    loom_status g = through_check_goto(cases[i], &cleaned);
    CHECK(evaluations == 1, "expression evaluated %d times", evaluations);
    CHECK(cleaned == 1, "cleanup skipped for %d", (int)cases[i]);
    if (cases[i] < 0) {
      CHECK(s == cases[i] && !reached, "LOOM_CHECK(%d) gave %d, reached %d", (int)cases[i],
            (int)s, reached);
      CHECK(g == cases[i], "LOOM_CHECK_GOTO(%d) gave %d", (int)cases[i], (int)g);
    } else {
      CHECK(s == LOOM_OK && reached, "LOOM_CHECK(%d) stopped (%d)", (int)cases[i], (int)s);
      CHECK(g == LOOM_OK, "LOOM_CHECK_GOTO(%d) gave %d", (int)cases[i], (int)g);
    }
  }
}

/* ------------------------------------------------------------------------------------------
 * config */

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
  return loom_config_parse_env(config, extra, extra_count, envp, args->argc, args->argv);
}

static int config_equal(const loom_config *a, const loom_config *b) {
  return a->pp == b->pp && a->dp == b->dp && a->sp == b->sp && a->ep == b->ep &&
         a->log_level == b->log_level && a->ranks_per_node == b->ranks_per_node &&
         a->collective_algo == b->collective_algo &&
         a->hier_threshold_bytes == b->hier_threshold_bytes &&
         a->timeout_seconds == b->timeout_seconds && a->comm_poll_us == b->comm_poll_us &&
         a->seed == b->seed && a->help == b->help;
}

static void test_config_defaults_and_flags(void) {
  loom_rng rng = input_rng(10);
  loom_config config = LOOM_CONFIG_INIT, defaults = LOOM_CONFIG_INIT;
  char *no_env[] = {NULL};
  arg_list args;
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "") == LOOM_OK, "%s", loom_error_string());
  CHECK(config_equal(&config, &defaults), "empty parse changed the config");
  CHECK(loom_config_parse_env(&config, NULL, 0, NULL, 1, args.argv) == LOOM_OK,
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
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "--comm-poll-us -1") == LOOM_OK &&
            config.comm_poll_us == -1,
        "comm-poll-us %d", config.comm_poll_us);
  CHECK(parse_flags(&config, NULL, 0, no_env, &args, "--comm-poll-us=250") == LOOM_OK &&
            config.comm_poll_us == 250,
        "comm-poll-us %d", config.comm_poll_us);
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
      {"", "LOOM_FOO=1", {"LOOM_FOO", "LOOM_DP", "LOOM_HIER_THRESHOLD"}},
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
      {"--comm-poll-us -2", NULL, {"--comm-poll-us", "-2", "1000000"}},
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

/* ------------------------------------------------------------------------------------------
 * mesh */

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

/* ------------------------------------------------------------------------------------------
 * rng */

static void test_rng_philox_known_answers(void) {
  /* Random123 kat_vectors, philox4x32 with 10 rounds */
  static const struct {
    uint32_t counter[4], key[2], out[4];
  } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (int i = 0; i < 3; i++) {
    uint32_t out[4] = {0xdeadbeef, 0xdeadbeef, 0xdeadbeef, 0xdeadbeef};
    loom_philox4x32(kat[i].counter, kat[i].key, out);
    CHECK(memcmp(out, kat[i].out, sizeof out) == 0,
          "KAT %d: got %08x %08x %08x %08x want %08x %08x %08x %08x", i, out[0], out[1], out[2],
          out[3], kat[i].out[0], kat[i].out[1], kat[i].out[2], kat[i].out[3]);
  }
}

static int equal_draws(loom_rng a, loom_rng b, int n) {
  int equal = 0;
  for (int i = 0; i < n; i++) equal += loom_rng_u32(&a) == loom_rng_u32(&b);
  return equal;
}

static void test_rng_streams(void) {
  loom_rng pick = input_rng(30);
  for (int trial = 0; trial < 20; trial++) {
    uint64_t seed = loom_rng_u64(&pick);
    uint32_t purpose = loom_rng_u32(&pick), stream = loom_rng_u32(&pick);
    loom_rng a, b, other;
    loom_rng_init(&a, seed, purpose, stream);
    loom_rng_init(&b, seed, purpose, stream);
    CHECK(equal_draws(a, b, 1000) == 1000, "same stream differs");
    loom_rng_init(&other, seed, purpose, stream + 1);
    CHECK(equal_draws(a, other, 1000) < 3, "stream+1 matches");
    loom_rng_init(&other, seed, purpose ^ 1, stream);
    CHECK(equal_draws(a, other, 1000) < 3, "purpose^1 matches");
    loom_rng_init(&other, seed ^ (1ull << (trial % 64)), purpose, stream);
    CHECK(equal_draws(a, other, 1000) < 3, "seed bit %d flip matches", trial % 64);
    loom_rng_init(&other, seed, stream, purpose); /* purpose and stream are not symmetric */
    if (purpose != stream) CHECK(equal_draws(a, other, 1000) < 3, "swapped purpose/stream");

    /* random access and skipping agree with sequential draws */
    loom_rng seq = a;
    int mismatches = 0;
    for (uint64_t i = 0; i < 1000; i++)
      mismatches += loom_rng_u32(&seq) != loom_rng_word_at(seed, purpose, stream, i);
    CHECK(mismatches == 0, "word_at differs from draws at %d indices", mismatches);
    CHECK(seq.position == 1000, "position %" PRIu64 " after 1000 draws", seq.position);
    const uint64_t skips[] = {0, 1, 3, 4, 5, 7, 8, 1 + loom_rng_below(&pick, 5000)};
    for (int k = 0; k < 8; k++) {
      loom_rng skipped = a, drawn = a;
      loom_rng_skip(&skipped, skips[k]);
      for (uint64_t i = 0; i < skips[k]; i++) loom_rng_u32(&drawn);
      CHECK(skipped.position == drawn.position && equal_draws(skipped, drawn, 64) == 64,
            "skip(%" PRIu64 ") differs from draws", skips[k]);
    }
    uint64_t far = loom_rng_u64(&pick) >> 1;
    loom_rng jump = a;
    loom_rng_skip(&jump, far);
    CHECK(loom_rng_u32(&jump) == loom_rng_word_at(seed, purpose, stream, far),
          "word %" PRIu64, far);

    /* save/restore mid-sequence */
    loom_rng original = a;
    uint64_t before = loom_rng_below(&pick, 777);
    for (uint64_t i = 0; i < before; i++) loom_rng_u32(&original);
    uint64_t state[LOOM_RNG_STATE_WORDS];
    loom_rng_save(&original, state);
    loom_rng restored;
    loom_rng_init(&restored, ~seed, purpose + 7, stream + 9);
    loom_rng_u32(&restored);
    loom_rng_restore(&restored, state);
    CHECK(restored.seed == seed && restored.purpose == purpose && restored.stream == stream &&
              restored.position == before,
          "restored fields differ");
    uint64_t x = loom_rng_u64(&original), y = loom_rng_u64(&restored);
    CHECK(x == y && equal_draws(original, restored, 256) == 256, "restore diverges");
  }
}

static void test_rng_distributions(void) {
  loom_rng rng = input_rng(31);
  enum { N = 100000 };
  double sum = 0, sum_sq = 0;
  int outside = 0;
  for (int i = 0; i < N; i++) {
    double u = loom_rng_uniform(&rng);
    outside += !(u >= 0.0 && u < 1.0);
    sum += u;
    sum_sq += u * u;
  }
  double mean = sum / N, variance = sum_sq / N - mean * mean;
  /* standard error of the mean is 0.29 / sqrt(N) = 0.0009: 0.01 is 11 sigma */
  CHECK(outside == 0, "%d uniforms outside [0, 1)", outside);
  CHECK(fabs(mean - 0.5) < 0.01, "uniform mean %.5f", mean);
  CHECK(fabs(variance - 1.0 / 12) < 0.005, "uniform variance %.5f", variance);

  sum = sum_sq = 0;
  int not_finite = 0, beyond_3 = 0;
  for (int i = 0; i < N; i++) {
    double z = loom_rng_normal(&rng);
    not_finite += !isfinite(z);
    beyond_3 += fabs(z) > 3;
    sum += z;
    sum_sq += z * z;
  }
  mean = sum / N;
  double std = sqrt(sum_sq / N - mean * mean);
  /* standard errors: mean 0.003, std 0.0022; 0.02 is over 6 sigma */
  CHECK(not_finite == 0, "%d non-finite normals", not_finite);
  CHECK(fabs(mean) < 0.02, "normal mean %.5f", mean);
  CHECK(fabs(std - 1) < 0.02, "normal std %.5f", std);
  CHECK(beyond_3 > 150 && beyond_3 < 400, "%d normals beyond 3 sigma (expect 270)", beyond_3);

  const uint64_t bounds[] = {1, 2, 3, 7, 1000, (1ull << 33) + 1, UINT64_MAX,
                             1 + loom_rng_below(&rng, 1u << 30)};
  for (int b = 0; b < 8; b++) {
    int outside_bound = 0;
    for (int i = 0; i < 10000; i++) outside_bound += loom_rng_below(&rng, bounds[b]) >= bounds[b];
    CHECK(outside_bound == 0, "%d draws >= %" PRIu64, outside_bound, bounds[b]);
  }
  /* every value of a small bound is hit about equally: counts 10000 +- 93 (1 sigma) */
  int hits[7] = {0};
  for (int i = 0; i < 70000; i++) hits[loom_rng_below(&rng, 7)]++;
  for (int v = 0; v < 7; v++)
    CHECK(abs(hits[v] - 10000) < 800, "value %d hit %d times", v, hits[v]);
}

/* ------------------------------------------------------------------------------------------
 * dtype */

static void test_dtype_sizes_and_names(void) {
  static const struct {
    loom_dtype dtype;
    size_t bytes;
    const char *name;
    int is_float;
  } table[] = {{LOOM_FLOAT32, 4, "float32", 1}, {LOOM_FLOAT64, 8, "float64", 1},
               {LOOM_BFLOAT16, 2, "bfloat16", 1}, {LOOM_FLOAT16, 2, "float16", 1},
               {LOOM_INT32, 4, "int32", 0},     {LOOM_INT64, 8, "int64", 0},
               {LOOM_UINT8, 1, "uint8", 0}};
  CHECK(LOOM_DTYPE_COUNT == 7, "%d dtypes", (int)LOOM_DTYPE_COUNT);
  for (int i = 0; i < 7; i++) {
    loom_dtype d = table[i].dtype, parsed = LOOM_DTYPE_COUNT;
    CHECK(loom_dtype_size(d) == table[i].bytes, "%s: %zu bytes", table[i].name,
          loom_dtype_size(d));
    CHECK(strcmp(loom_dtype_name(d), table[i].name) == 0, "%s", loom_dtype_name(d));
    CHECK(loom_dtype_is_float(d) == table[i].is_float, "%s is_float", table[i].name);
    CHECK(loom_dtype_parse(table[i].name, &parsed) == LOOM_OK && parsed == d, "parse %s: %d",
          table[i].name, (int)parsed);
  }
  CHECK(loom_dtype_size(LOOM_DTYPE_COUNT) == 0 && loom_dtype_size((loom_dtype)-1) == 0,
        "size outside the enum");
  CHECK(strcmp(loom_dtype_name(LOOM_DTYPE_COUNT), "invalid") == 0, "%s",
        loom_dtype_name(LOOM_DTYPE_COUNT));
  float f = 1.5f;
  loom_buf b = loom_buf_host(&f, 3, LOOM_BFLOAT16);
  CHECK(loom_buf_bytes(b) == 6 && b.device.kind == LOOM_DEVICE_CPU, "buf bytes %zu",
        loom_buf_bytes(b));

  const char *const bad[] = {"float", "FLOAT32", "", "fp16", "bf16", "int32 ", "uint8x"};
  for (int i = 0; i < 7; i++) {
    loom_dtype out = LOOM_INT64;
    CHECK(loom_dtype_parse(bad[i], &out) == LOOM_ERR_ARG && out == LOOM_INT64, "'%s' accepted",
          bad[i]);
    char quoted[32];
    snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
    CHECK_CONTAINS(loom_error_string(), quoted);
    CHECK_CONTAINS(loom_error_string(), "bfloat16");
  }
  loom_dtype out;
  CHECK(loom_dtype_parse(NULL, &out) == LOOM_ERR_ARG, "NULL name accepted");
}

/* Exact value of a float16 bit pattern, decoded independently of dtype.c. */
static double fp16_reference_value(uint16_t h) {
  int exponent = (h >> 10) & 31, mantissa = h & 1023;
  double v = exponent == 0    ? ldexp(mantissa, -24)
             : exponent == 31 ? (mantissa ? NAN : INFINITY)
                              : ldexp(1024 + mantissa, exponent - 25);
  return (h & 0x8000) ? -v : v;
}

static double bf16_reference_value(uint16_t h) {
  int exponent = (h >> 7) & 255, mantissa = h & 127;
  double v = exponent == 0     ? ldexp(mantissa, -133)
             : exponent == 255 ? (mantissa ? NAN : INFINITY)
                               : ldexp(128 + mantissa, exponent - 134);
  return (h & 0x8000) ? -v : v;
}

/* Round |x| to the nearest pattern of a 16-bit format whose positive patterns 0..inf are
 * monotonic in value; `inf_bits` counts as the next power of two above the largest finite
 * (IEEE overflow rule); ties go to the even pattern. */
static uint16_t reference_round(double x, double (*value)(uint16_t), uint16_t inf_bits,
                                double inf_as) {
  uint16_t sign = signbit(x) ? 0x8000 : 0;
  double a = fabs(x);
  if (a >= inf_as) return sign | inf_bits;
  uint16_t lo = 0, hi = inf_bits; /* value(lo) <= a < value(hi) */
  while (hi - lo > 1) {
    uint16_t mid = (uint16_t)((lo + hi) / 2);
    if (value(mid) <= a) lo = mid;
    else hi = mid;
  }
  double below = a - value(lo), above = (hi == inf_bits ? inf_as : value(hi)) - a;
  uint16_t pick = below < above ? lo : above < below ? hi : (lo & 1) ? hi : lo;
  return sign | pick;
}

static uint16_t bf16_reference(float x) {
  return reference_round(x, bf16_reference_value, 0x7f80, ldexp(1, 128));
}
static uint16_t fp16_reference(float x) {
  return reference_round(x, fp16_reference_value, 0x7c00, 65536.0);
}

static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f); }
static int fp16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

/* Pattern `h` decoded to `f` (exact value `want`) and encoded back to `back`: the same bits, or
 * NaN to NaN. */
static int survives(uint16_t h, int h_is_nan, float f, double want, uint16_t back,
                    int back_is_nan) {
  if (h_is_nan) return isnan(f) && back_is_nan;
  return (double)f == want && !signbit(f) == !(h & 0x8000) && back == h;
}

static void test_dtype_16bit_exhaustive(void) {
  int bf16_wrong = 0, fp16_wrong = 0, first_bf16 = -1, first_fp16 = -1;
  for (uint32_t bits = 0; bits < 65536; bits++) {
    uint16_t h = (uint16_t)bits;
    float f = loom_bf16_to_float(h);
    uint16_t back = loom_float_to_bf16(f);
    if (!survives(h, bf16_is_nan(h), f, bf16_reference_value(h), back, bf16_is_nan(back)) &&
        bf16_wrong++ == 0)
      first_bf16 = (int)h;
    f = loom_fp16_to_float(h);
    back = loom_float_to_fp16(f);
    if (!survives(h, fp16_is_nan(h), f, fp16_reference_value(h), back, fp16_is_nan(back)) &&
        fp16_wrong++ == 0)
      first_fp16 = (int)h;
  }
  CHECK(bf16_wrong == 0, "%d bf16 patterns fail the round trip, first 0x%04x", bf16_wrong,
        first_bf16);
  CHECK(fp16_wrong == 0, "%d fp16 patterns fail the round trip, first 0x%04x", fp16_wrong,
        first_fp16);
}

static float float_of_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_dtype_16bit_rounding(void) {
  static const struct {
    double value;
    uint16_t bf16, fp16;
  } cases[] = {
      {1.0, 0x3f80, 0x3c00},
      {1.0 + 0x1p-8, 0x3f80, 0x3c04},            /* bf16 halfway: down to even */
      {1.0 + 3 * 0x1p-9, 0x3f81, 0x3c06},        /* bf16 above halfway: up */
      {1.0 + 3 * 0x1p-8, 0x3f82, 0x3c0c},        /* bf16 halfway from odd: up to even */
      {1.0 + 0x1p-11, 0x3f80, 0x3c00},           /* fp16 halfway: down to even */
      {1.0 + 3 * 0x1p-11, 0x3f80, 0x3c02},       /* fp16 halfway from odd: up to even */
      {-2.5, 0xc020, 0xc100},
      {65504.0, 0x4780, 0x7bff},                 /* bf16: 65504 -> 65536 */
      {65519.0, 0x4780, 0x7bff},
      {65520.0, 0x4780, 0x7c00},                 /* fp16 overflow to inf */
      {-65520.0, 0xc780, 0xfc00},
      {0x1p-24, 0x3380, 0x0001},                 /* smallest fp16 subnormal */
      {0x1p-25, 0x3300, 0x0000},                 /* halfway to 0: even */
      {3 * 0x1p-25, 0x33c0, 0x0002},             /* 1.5 units: up to even 2 */
      {0x1p-14 - 0x1p-25, 0x3880, 0x0400},       /* rounds up into the normals */
      {0x1p-14, 0x3880, 0x0400},
      {1e-10, 0x2edc, 0x0000},
      {-0.0, 0x8000, 0x8000},
      {INFINITY, 0x7f80, 0x7c00},
      {-INFINITY, 0xff80, 0xfc00},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    float x = (float)cases[i].value;
    uint16_t b = loom_float_to_bf16(x), h = loom_float_to_fp16(x);
    CHECK(b == cases[i].bf16, "bf16(%.10g) = 0x%04x, want 0x%04x", (double)x, b, cases[i].bf16);
    CHECK(h == cases[i].fp16, "fp16(%.10g) = 0x%04x, want 0x%04x", (double)x, h, cases[i].fp16);
    CHECK(b == bf16_reference(x) && h == fp16_reference(x), "reference disagrees at %.10g",
          (double)x);
  }
  CHECK(bf16_is_nan(loom_float_to_bf16(NAN)) && fp16_is_nan(loom_float_to_fp16(NAN)), "NaN");
  CHECK(bf16_is_nan(loom_float_to_bf16(float_of_bits(0x7f800001))), "bf16 of a low-bit NaN");
  CHECK(fp16_is_nan(loom_float_to_fp16(float_of_bits(0xff800001))), "fp16 of a low-bit NaN");

  /* random floats against the reference: full range, halfway cases, and the fp16 range */
  loom_rng rng = input_rng(40);
  int bf16_wrong = 0, fp16_wrong = 0;
  uint32_t first_bf16 = 0, first_fp16 = 0;
  for (int i = 0; i < 400000; i++) {
    uint32_t u = loom_rng_u32(&rng);
    switch (i % 4) {
      case 1: u = (u & 0xffff0000u) | 0x8000u; break;                      /* bf16 tie */
      case 2: /* the float16 range, subnormals and overflow included */
        u = (u & 0x807fffffu) | ((100u + loom_rng_u32(&rng) % 46) << 23);
        break;
      case 3: /* float16 ties */
        u = (u & 0x807fe000u) | ((100u + loom_rng_u32(&rng) % 46) << 23) | 0x1000u;
        break;
    }
    float x = float_of_bits(u);
    if (isnan(x)) continue;
    if (loom_float_to_bf16(x) != bf16_reference(x) && bf16_wrong++ == 0) first_bf16 = u;
    if (loom_float_to_fp16(x) != fp16_reference(x) && fp16_wrong++ == 0) first_fp16 = u;
  }
  CHECK(bf16_wrong == 0, "%d bf16 roundings differ, first float bits 0x%08x", bf16_wrong,
        first_bf16);
  CHECK(fp16_wrong == 0, "%d fp16 roundings differ, first float bits 0x%08x", fp16_wrong,
        first_fp16);
}

/* The value loom_dtype_load must return after loom_dtype_store(value). */
static double stored_value(loom_dtype dtype, double value) {
  switch (dtype) {
    case LOOM_FLOAT32: return (float)value;
    case LOOM_FLOAT64: return value;
    case LOOM_BFLOAT16: return bf16_reference_value(bf16_reference((float)value));
    case LOOM_FLOAT16: return fp16_reference_value(fp16_reference((float)value));
    case LOOM_INT32:
    case LOOM_INT64: return trunc(value);
    case LOOM_UINT8: {
      double w = fmod(trunc(value), 256);
      return w < 0 ? w + 256 : w;
    }
    default: return NAN;
  }
}

static void test_dtype_load_store(void) {
  loom_rng rng = input_rng(41);
  enum { N = 64 };
  for (int d = 0; d < LOOM_DTYPE_COUNT; d++) {
    const loom_dtype dtype = (loom_dtype)d;
    const size_t bytes = loom_dtype_size(dtype);
    unsigned char buffer[N * 8], poison[N * 8];
    for (size_t i = 0; i < sizeof poison; i++) poison[i] = (unsigned char)loom_rng_u32(&rng);
    int wrong = 0, clobbered = 0;
    for (int trial = 0; trial < 200; trial++) {
      memcpy(buffer, poison, sizeof buffer);
      size_t index = loom_rng_below(&rng, N);
      double value;
      switch (dtype) {
        case LOOM_INT32: value = (double)(int32_t)loom_rng_u32(&rng) * 0.999; break;
        case LOOM_INT64: value = (double)((int64_t)(loom_rng_u64(&rng) >> 11) - (1ll << 52)); break;
        case LOOM_UINT8: value = (double)loom_rng_below(&rng, 2000) - 1000; break;
        default: value = loom_rng_normal(&rng) * ldexp(1, (int)loom_rng_below(&rng, 40) - 20);
      }
      loom_dtype_store(buffer, dtype, index, value);
      double loaded = loom_dtype_load(buffer, dtype, index), want = stored_value(dtype, value);
      if (loaded != want && wrong++ == 0)
        check_failed(__LINE__, "load(store(v))", "%s: stored %.17g loaded %.17g want %.17g",
                     loom_dtype_name(dtype), value, loaded, want);
      if (memcmp(buffer, poison, index * bytes) != 0 ||
          memcmp(buffer + (index + 1) * bytes, poison + (index + 1) * bytes,
                 (N - index - 1) * bytes) != 0)
        clobbered++;
    }
    CHECK(wrong == 0, "%s: %d wrong round trips", loom_dtype_name(dtype), wrong);
    CHECK(clobbered == 0, "%s: %d stores wrote outside their element", loom_dtype_name(dtype),
          clobbered);
  }
  uint8_t bytes[4] = {7, 7, 7, 7};
  loom_dtype_store(bytes, LOOM_UINT8, 0, 300);
  loom_dtype_store(bytes, LOOM_UINT8, 1, -1);
  loom_dtype_store(bytes, LOOM_UINT8, 2, 256);
  loom_dtype_store(bytes, LOOM_UINT8, 3, -257);
  CHECK(bytes[0] == 44 && bytes[1] == 255 && bytes[2] == 0 && bytes[3] == 255,
        "uint8 wrap: %u %u %u %u", bytes[0], bytes[1], bytes[2], bytes[3]);
  CHECK(loom_dtype_load(bytes, LOOM_UINT8, 1) == 255.0, "uint8 load");
  int32_t ints[2];
  loom_dtype_store(ints, LOOM_INT32, 0, 2.7);
  loom_dtype_store(ints, LOOM_INT32, 1, -2.7);
  CHECK(ints[0] == 2 && ints[1] == -2, "int32 truncation: %d %d", ints[0], ints[1]);
  uint16_t halves[2];
  loom_dtype_store(halves, LOOM_FLOAT16, 0, 65520.0);
  loom_dtype_store(halves, LOOM_BFLOAT16, 1, 1.0 + 0x1p-8);
  CHECK(halves[0] == 0x7c00 && isinf(loom_dtype_load(halves, LOOM_FLOAT16, 0)), "fp16 store");
  CHECK(halves[1] == 0x3f80 && loom_dtype_load(halves, LOOM_BFLOAT16, 1) == 1.0, "bf16 store");
}

/* ------------------------------------------------------------------------------------------
 * sparse plans */

static void shuffle(loom_rng *rng, int *values, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)loom_rng_below(rng, (uint64_t)i + 1), t = values[i];
    values[i] = values[j];
    values[j] = t;
  }
}

static void test_sparse_plan_fixed(void) {
  loom_sparse_plan plan;
  const int peers[] = {5, 2, 7, 0, 3};
  const size_t counts[] = {10, 0, 4, 6, 0};
  CHECK(loom_sparse_plan_init(&plan, LOOM_FLOAT32, 8, 5, peers, counts) == LOOM_OK, "%s",
        loom_error_string());
  CHECK(plan.dtype == LOOM_FLOAT32 && plan.send_count == 3 && plan.send_total == 20,
        "count %d total %zu", plan.send_count, plan.send_total);
  if (plan.send_count == 3) {
    CHECK(plan.send_peers[0] == 5 && plan.send_peers[1] == 7 && plan.send_peers[2] == 0,
          "peers %d %d %d (caller order, zeros dropped)", plan.send_peers[0],
          plan.send_peers[1], plan.send_peers[2]);
    CHECK(plan.send_counts[0] == 10 && plan.send_counts[1] == 4 && plan.send_counts[2] == 6,
          "counts");
    CHECK(plan.send_displs[0] == 0 && plan.send_displs[1] == 10 && plan.send_displs[2] == 14,
          "displs %zu %zu %zu", plan.send_displs[0], plan.send_displs[1], plan.send_displs[2]);
  }
  const int sources[] = {6, 1, 4, 3, 0};
  const size_t incoming[] = {3, 0, 8, 1, 2};
  CHECK(loom_sparse_plan_set_incoming(&plan, 5, sources, incoming) == LOOM_OK, "%s",
        loom_error_string());
  CHECK(plan.recv_count == 4 && plan.recv_total == 14, "recv count %d total %zu",
        plan.recv_count, plan.recv_total);
  if (plan.recv_count == 4) {
    CHECK(plan.recv_peers[0] == 0 && plan.recv_peers[1] == 3 && plan.recv_peers[2] == 4 &&
              plan.recv_peers[3] == 6,
          "sources %d %d %d %d", plan.recv_peers[0], plan.recv_peers[1], plan.recv_peers[2],
          plan.recv_peers[3]);
    CHECK(plan.recv_counts[0] == 2 && plan.recv_counts[1] == 1 && plan.recv_counts[2] == 8 &&
              plan.recv_counts[3] == 3,
          "recv counts");
    CHECK(plan.recv_displs[0] == 0 && plan.recv_displs[1] == 2 && plan.recv_displs[2] == 3 &&
              plan.recv_displs[3] == 11,
          "recv displs");
  }
  /* setting the receive side again replaces it (no leak under the sanitizer build) */
  const int again[] = {2};
  const size_t again_counts[] = {9};
  CHECK(loom_sparse_plan_set_incoming(&plan, 1, again, again_counts) == LOOM_OK &&
            plan.recv_count == 1 && plan.recv_total == 9 && plan.recv_peers[0] == 2,
        "second set_incoming");
  const int duplicate[] = {4, 1, 4};
  const size_t duplicate_counts[] = {1, 2, 3};
  CHECK(loom_sparse_plan_set_incoming(&plan, 3, duplicate, duplicate_counts) == LOOM_ERR_CORRUPT,
        "duplicate source accepted");
  CHECK_CONTAINS(loom_error_string(), "source 4");
  loom_sparse_plan_free(&plan);
  CHECK(plan.send_peers == NULL && plan.recv_peers == NULL && plan.send_count == 0 &&
            plan.recv_total == 0,
        "free left fields set");
  loom_sparse_plan_free(&plan); /* twice is harmless */
  loom_sparse_plan_free(NULL);

  /* rejections: peer out of range, a peer named twice (even with count 0) */
  const struct {
    int peers[3];
    size_t counts[3];
    const char *needle;
  } bad[] = {{{1, -1, 2}, {1, 1, 1}, "peer -1"},
             {{1, 8, 2}, {1, 1, 1}, "peer 8"},
             {{3, 1, 3}, {1, 1, 1}, "peer 3"},
             {{3, 1, 3}, {0, 1, 5}, "peer 3"}};
  for (int i = 0; i < 4; i++) {
    loom_sparse_plan p;
    CHECK(loom_sparse_plan_init(&p, LOOM_INT32, 8, 3, bad[i].peers, bad[i].counts) ==
              LOOM_ERR_ARG,
          "bad plan %d accepted", i);
    CHECK_CONTAINS(loom_error_string(), bad[i].needle);
    CHECK(p.send_peers == NULL && p.send_count == 0, "rejected plan %d kept memory", i);
    loom_sparse_plan_free(&p);
  }
  loom_sparse_plan empty;
  CHECK(loom_sparse_plan_init(&empty, LOOM_UINT8, 4, 0, NULL, NULL) == LOOM_OK &&
            empty.send_count == 0 && empty.send_total == 0,
        "empty plan");
  CHECK(loom_sparse_plan_set_incoming(&empty, 0, NULL, NULL) == LOOM_OK &&
            empty.recv_count == 0 && empty.recv_total == 0,
        "empty incoming");
  loom_sparse_plan_free(&empty);
  CHECK(loom_sparse_plan_init(&empty, LOOM_DTYPE_COUNT, 4, 0, NULL, NULL) == LOOM_ERR_ARG,
        "invalid dtype accepted");
  loom_sparse_plan_free(&empty);
  CHECK(loom_sparse_plan_init(NULL, LOOM_UINT8, 4, 0, NULL, NULL) == LOOM_ERR_ARG, "NULL plan");
}

static void test_sparse_plan_random(void) {
  loom_rng rng = input_rng(50);
  const double densities[] = {0.0, 0.1, 1.0};
  const int group_sizes[] = {1, 7, 64, 257};
  for (int di = 0; di < 3; di++) {
    for (int gi = 0; gi < 4; gi++) {
      for (int trial = 0; trial < 5; trial++) {
        const int g = group_sizes[gi];
        int *order = malloc(sizeof(int) * (size_t)g), *peers = malloc(sizeof(int) * (size_t)g);
        size_t *counts = malloc(sizeof(size_t) * (size_t)g);
        size_t *by_peer = calloc((size_t)g, sizeof(size_t)); /* reference: count per peer */
        for (int p = 0; p < g; p++) order[p] = p;
        shuffle(&rng, order, g);
        int pairs = 0;
        for (int i = 0; i < g; i++) {
          int with_data = loom_rng_uniform(&rng) < densities[di];
          if (!with_data && loom_rng_below(&rng, 2)) continue; /* omitted, or named with 0 */
          peers[pairs] = order[i];
          counts[pairs] = with_data ? 1 + loom_rng_below(&rng, 1000) : 0;
          by_peer[order[i]] = counts[pairs];
          pairs++;
        }
        loom_sparse_plan plan;
        CHECK(loom_sparse_plan_init(&plan, LOOM_BFLOAT16, g, pairs, peers, counts) == LOOM_OK,
              "%s", loom_error_string());
        /* reference: the nonzero pairs in caller order, packed back to back */
        int k = 0, bad = 0;
        size_t offset = 0;
        for (int i = 0; i < pairs; i++) {
          if (counts[i] == 0) continue;
          if (k >= plan.send_count || plan.send_peers[k] != peers[i] ||
              plan.send_counts[k] != counts[i] || plan.send_displs[k] != offset)
            bad++;
          offset += counts[i];
          k++;
        }
        CHECK(bad == 0 && k == plan.send_count && offset == plan.send_total,
              "g %d density %.1f: %d bad send entries, count %d/%d total %zu/%zu", g,
              densities[di], bad, plan.send_count, k, plan.send_total, offset);

        /* the receive side from the same pairs in another order: sorted by source */
        shuffle(&rng, order, g);
        int *sources = malloc(sizeof(int) * (size_t)g);
        size_t *incoming = malloc(sizeof(size_t) * (size_t)g);
        int n = 0;
        for (int i = 0; i < g; i++)
          if (by_peer[order[i]] > 0 || loom_rng_below(&rng, 4) == 0) {
            sources[n] = order[i];
            incoming[n++] = by_peer[order[i]];
          }
        CHECK(loom_sparse_plan_set_incoming(&plan, n, sources, incoming) == LOOM_OK, "%s",
              loom_error_string());
        k = 0, bad = 0, offset = 0;
        for (int source = 0; source < g; source++) {
          if (by_peer[source] == 0) continue;
          if (k >= plan.recv_count || plan.recv_peers[k] != source ||
              plan.recv_counts[k] != by_peer[source] || plan.recv_displs[k] != offset)
            bad++;
          offset += by_peer[source];
          k++;
        }
        CHECK(bad == 0 && k == plan.recv_count && offset == plan.recv_total &&
                  plan.recv_total == plan.send_total,
              "g %d density %.1f: %d bad recv entries, count %d/%d total %zu/%zu", g,
              densities[di], bad, plan.recv_count, k, plan.recv_total, offset);
        if (densities[di] == 0.0)
          CHECK(plan.send_count == 0 && plan.recv_count == 0, "density 0 kept pairs");
        if (densities[di] == 1.0)
          CHECK(plan.send_count == g && plan.recv_count == g, "density 1 dropped pairs");
        loom_sparse_plan_free(&plan);
        free(order);
        free(peers);
        free(counts);
        free(by_peer);
        free(sources);
        free(incoming);
      }
    }
  }
}

/* ------------------------------------------------------------------------------------------
 * executor */

/* A latch a job blocks on until the test opens it. */
typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t opened;
  int open;
} gate;

static void gate_init(gate *g) {
  pthread_mutex_init(&g->lock, NULL);
  pthread_cond_init(&g->opened, NULL);
  g->open = 0;
}
static void gate_destroy(gate *g) {
  pthread_mutex_destroy(&g->lock);
  pthread_cond_destroy(&g->opened);
}
static void gate_open(gate *g) {
  pthread_mutex_lock(&g->lock);
  g->open = 1;
  pthread_cond_broadcast(&g->opened);
  pthread_mutex_unlock(&g->lock);
}
static void gate_pass(gate *g) {
  pthread_mutex_lock(&g->lock);
  while (!g->open) pthread_cond_wait(&g->opened, &g->lock);
  pthread_mutex_unlock(&g->lock);
}
static void *gate_open_later(void *opaque) {
  usleep(200 * 1000);
  gate_open(opaque);
  return NULL;
}

enum { MAX_JOBS = 1100 };

/* What jobs record; written only from inside jobs, which the executor runs one at a time. */
typedef struct {
  int order[MAX_JOBS];
  int count;
  int released[MAX_JOBS];
  pthread_t ran_on[MAX_JOBS];
} job_log;

typedef struct {
  job_log *log;
  int index;
  loom_status result; /* what the job returns; a failure sets a message naming the index */
  unsigned spin;      /* random work so jobs take uneven time */
  gate *wait_for;     /* NULL or a gate the job blocks on first */
} job_arg;

static loom_status record_job(void *opaque) {
  job_arg *a = opaque;
  if (a->wait_for) gate_pass(a->wait_for);
  loom_rng work;
  loom_rng_init(&work, 1, LOOM_RNG_TEST, (uint32_t)a->index);
  volatile uint32_t sink = 0;
  for (unsigned i = 0; i < a->spin; i++) sink ^= loom_rng_u32(&work);
  a->log->ran_on[a->log->count] = pthread_self();
  a->log->order[a->log->count++] = a->index;
  if (a->result < 0) return loom_error_set(a->result, "job %d failed on purpose", a->index);
  return a->result;
}

static void release_job(void *opaque) {
  job_arg *a = opaque;
  a->log->released[a->index]++;
  free(a);
}

typedef struct {
  const loom_executor *executor;
  int on_thread; /* what loom_executor_on_thread said inside the job */
} thread_probe;

static loom_status probe_thread(void *opaque) {
  thread_probe *probe = opaque;
  probe->on_thread = loom_executor_on_thread(probe->executor);
  return LOOM_OK;
}

static loom_status post_job(loom_executor *executor, job_log *log, int index,
                            loom_status result, unsigned spin, gate *wait_for, loom_req **req) {
  job_arg *a = malloc(sizeof *a);
  *a = (job_arg){log, index, result, spin, wait_for};
  return loom_executor_post(executor, record_job, a, release_job, req);
}

static void test_executor_order(void) {
  loom_rng rng = input_rng(60);
  loom_executor *executor = NULL;
  CHECK(loom_executor_create("unit-exec", 1, &executor) == LOOM_OK, "%s", loom_error_string());
  if (!executor) return;
  job_log *log = calloc(1, sizeof *log);
  loom_req **reqs = calloc(MAX_JOBS, sizeof *reqs);
  gate start;
  gate_init(&start);
  enum { JOBS = 1000 };
  int post_failures = 0;
  for (int i = 0; i < JOBS; i++)
    post_failures += post_job(executor, log, i, LOOM_OK, (unsigned)loom_rng_below(&rng, 200),
                              i == 0 ? &start : NULL, &reqs[i]) != LOOM_OK;
  CHECK(post_failures == 0, "%d posts failed", post_failures);
  gate_open(&start);
  /* wait in a random order: completion order is the executor's, not the waiter's */
  int *wait_order = malloc(sizeof(int) * JOBS);
  for (int i = 0; i < JOBS; i++) wait_order[i] = i;
  shuffle(&rng, wait_order, JOBS);
  int failed = 0;
  for (int i = 0; i < JOBS; i++) {
    failed += loom_wait(&reqs[wait_order[i]]) != LOOM_OK;
    if (reqs[wait_order[i]] != NULL) failed++;
  }
  CHECK(failed == 0, "%d waits failed or left the handle set", failed);
  int out_of_order = 0, release_wrong = 0, on_caller = 0;
  for (int i = 0; i < JOBS; i++) {
    out_of_order += log->order[i] != i;
    release_wrong += log->released[i] != 1;
    on_caller += pthread_equal(log->ran_on[i], pthread_self()) != 0;
  }
  CHECK(log->count == JOBS && out_of_order == 0, "%d jobs ran, %d out of order", log->count,
        out_of_order);
  CHECK(release_wrong == 0, "%d jobs not released exactly once", release_wrong);
  CHECK(on_caller == 0, "%d posted jobs ran on the posting thread", on_caller);

  /* a blocking run while jobs are queued runs after them, in posting order */
  gate hold;
  gate_init(&hold);
  int base = log->count;
  for (int i = 0; i < 50; i++)
    post_job(executor, log, JOBS + i, LOOM_OK, (unsigned)loom_rng_below(&rng, 100),
             i == 0 ? &hold : NULL, &reqs[JOBS + i]);
  pthread_t opener;
  pthread_create(&opener, NULL, gate_open_later, &hold);
  job_arg inline_job = {log, JOBS + 50, LOOM_OK, 10, NULL};
  CHECK(loom_executor_run(executor, record_job, &inline_job) == LOOM_OK, "%s",
        loom_error_string());
  CHECK(log->count == base + 51, "run returned after %d of 51 jobs", log->count - base);
  int late = 0;
  for (int i = 0; i < 51 && base + i < MAX_JOBS; i++) late += log->order[base + i] != JOBS + i;
  CHECK(late == 0, "%d jobs out of order around a blocking run", late);
  for (int i = 0; i < 50; i++) loom_wait(&reqs[JOBS + i]);
  pthread_join(opener, NULL);

  /* with nothing queued, a blocking run takes the caller's thread */
  job_arg direct = {log, JOBS + 51, LOOM_OK, 0, NULL};
  CHECK(loom_executor_run(executor, record_job, &direct) == LOOM_OK, "%s", loom_error_string());
  CHECK(log->count == base + 52 && pthread_equal(log->ran_on[base + 51], pthread_self()),
        "idle blocking run did not run inline");

  /* loom_executor_on_thread: 1 only inside a job on the background thread */
  thread_probe posted = {executor, -1}, inline_probe = {executor, -1};
  loom_req *probe_req = NULL;
  loom_executor_post(executor, probe_thread, &posted, NULL, &probe_req);
  loom_wait(&probe_req);
  loom_executor_run(executor, probe_thread, &inline_probe);
  CHECK(posted.on_thread == 1 && inline_probe.on_thread == 0 &&
            loom_executor_on_thread(executor) == 0,
        "on_thread: posted %d inline %d caller %d", posted.on_thread, inline_probe.on_thread,
        loom_executor_on_thread(executor));
  loom_executor_destroy(executor);
  int release_after = 0;
  for (int i = JOBS; i < JOBS + 50; i++) release_after += log->released[i] != 1;
  CHECK(release_after == 0, "%d of the later jobs not released exactly once", release_after);
  gate_destroy(&start);
  gate_destroy(&hold);
  free(wait_order);
  free(reqs);
  free(log);
}

static void test_executor_failures(void) {
  loom_rng rng = input_rng(61);
  for (int threaded = 0; threaded <= 1; threaded++) {
    loom_executor *executor = NULL;
    CHECK(loom_executor_create("unit-fail", threaded, &executor) == LOOM_OK, "%s",
          loom_error_string());
    if (!executor) return;
    job_log *log = calloc(1, sizeof *log);
    gate hold[3];
    for (int g = 0; g < 3; g++) gate_init(&hold[g]);
    const int index = 1 + (int)loom_rng_below(&rng, 999);
    char expected[96];

    /* a failing posted job: status and message come back through loom_test */
    loom_req *req = NULL;
    loom_error_clear();
    CHECK(post_job(executor, log, index, LOOM_ERR_IO, 0, threaded ? &hold[0] : NULL, &req) ==
              LOOM_OK && req != NULL,
          "post");
    int done = -1;
    loom_status s;
    if (threaded) {
      CHECK(loom_error_string()[0] == '\0', "job message leaked to the poster: '%s'",
            loom_error_string());
      s = loom_test(&req, &done);
      CHECK(s == LOOM_INPROGRESS && done == 0 && req != NULL, "held job: test %d done %d",
            (int)s, done);
      CHECK(log->released[index] == 0, "released before it ran");
      gate_open(&hold[0]);
      for (int polls = 0; polls < 100000 && !done; polls++) {
        s = loom_test(&req, &done);
        if (!done) usleep(100);
      }
    } else {
      CHECK(log->count == 1 && log->released[index] == 1 &&
                pthread_equal(log->ran_on[0], pthread_self()),
            "unthreaded post did not complete at post time");
      loom_error_clear(); /* the inline job wrote it here; the request must bring it back */
      s = loom_test(&req, &done);
    }
    snprintf(expected, sizeof expected, "LOOM_ERR_IO: job %d failed on purpose", index);
    CHECK(done == 1 && s == LOOM_ERR_IO && req == NULL, "test: done %d status %d", done, (int)s);
    CHECK(strcmp(loom_error_string(), expected) == 0, "message '%s', want '%s'",
          loom_error_string(), expected);
    CHECK(log->released[index] == 1, "failing job released %d times", log->released[index]);

    /* the same through loom_wait */
    post_job(executor, log, index + 1, LOOM_ERR_TIMEOUT, 50, NULL, &req);
    loom_error_clear();
    s = loom_wait(&req);
    snprintf(expected, sizeof expected, "LOOM_ERR_TIMEOUT: job %d failed on purpose", index + 1);
    CHECK(s == LOOM_ERR_TIMEOUT && req == NULL, "wait gave %d", (int)s);
    CHECK(strcmp(loom_error_string(), expected) == 0, "message '%s', want '%s'",
          loom_error_string(), expected);
    CHECK(loom_wait(&req) == LOOM_OK, "wait on a NULL request");
    CHECK(loom_test(&req, &done) == LOOM_OK && done == 1, "test on a NULL request");

    /* a failing blocking run queued behind a job restores the message on the caller */
    pthread_t opener;
    post_job(executor, log, index + 2, LOOM_OK, 0, threaded ? &hold[1] : NULL, &req);
    if (threaded) pthread_create(&opener, NULL, gate_open_later, &hold[1]);
    loom_error_clear();
    job_arg failing = {log, index + 3, LOOM_ERR_CORRUPT, 0, NULL};
    s = loom_executor_run(executor, record_job, &failing);
    snprintf(expected, sizeof expected, "LOOM_ERR_CORRUPT: job %d failed on purpose", index + 3);
    CHECK(s == LOOM_ERR_CORRUPT && strcmp(loom_error_string(), expected) == 0,
          "blocking run: %d '%s'", (int)s, loom_error_string());
    CHECK(log->order[log->count - 2] == index + 2 && log->order[log->count - 1] == index + 3,
          "blocking run overtook a posted job");
    CHECK(loom_wait(&req) == LOOM_OK, "job before the run: %s", loom_error_string());
    if (threaded) pthread_join(opener, NULL);

    /* wait_all: the first failure in array order (not in time), after all completed */
    loom_req *reqs[6] = {NULL};
    CHECK(loom_req_completed(LOOM_OK, &reqs[0]) == LOOM_OK, "completed OK");
    post_job(executor, log, index + 4, LOOM_ERR_HDF5, 0, threaded ? &hold[2] : NULL, &reqs[1]);
    loom_error_set(LOOM_ERR_ARG, "second failure");
    CHECK(loom_req_completed(LOOM_ERR_ARG, &reqs[2]) == LOOM_OK, "completed ERR_ARG");
    post_job(executor, log, index + 5, LOOM_OK, 0, NULL, &reqs[4]);
    loom_error_set(LOOM_ERR_NCCL, "third failure");
    loom_req_completed(LOOM_ERR_NCCL, &reqs[5]);
    if (threaded) pthread_create(&opener, NULL, gate_open_later, &hold[2]);
    loom_error_clear();
    s = loom_wait_all(reqs, 6);
    snprintf(expected, sizeof expected, "LOOM_ERR_HDF5: job %d failed on purpose", index + 4);
    CHECK(s == LOOM_ERR_HDF5 && strcmp(loom_error_string(), expected) == 0,
          "wait_all: %d '%s'", (int)s, loom_error_string());
    int left = 0;
    for (int i = 0; i < 6; i++) left += reqs[i] != NULL;
    CHECK(left == 0, "%d requests left after wait_all", left);
    CHECK(log->released[index + 4] == 1 && log->released[index + 5] == 1, "wait_all releases");
    if (threaded) pthread_join(opener, NULL);

    loom_req *fine[3] = {NULL};
    loom_req_completed(LOOM_OK, &fine[0]);
    post_job(executor, log, index + 6, LOOM_OK, 10, NULL, &fine[1]);
    CHECK(loom_wait_all(fine, 3) == LOOM_OK, "all-OK wait_all: %s", loom_error_string());
    int total_released = 0;
    for (int i = 0; i < MAX_JOBS; i++) total_released += log->released[i];
    CHECK(total_released == 6, "%d releases for 6 posted jobs", total_released);
    thread_probe probe = {executor, -1};
    loom_executor_post(executor, probe_thread, &probe, NULL, &req);
    loom_wait(&req);
    CHECK(probe.on_thread == threaded, "on_thread %d in a posted job, threaded %d",
          probe.on_thread, threaded);
    loom_executor_destroy(executor);
    for (int g = 0; g < 3; g++) gate_destroy(&hold[g]);
    free(log);
  }
}

/* ------------------------------------------------------------------------------------------ */

typedef struct {
  const char *name;
  CU_TestFunc run;
} unit_test;

typedef struct {
  const char *name;
  const unit_test *tests;
} unit_suite;

int main(int argc, char **argv) {
  if (argc > 1) {
    unit_seed = strtoull(argv[1], NULL, 0);
  } else {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unit_seed = ((uint64_t)now.tv_sec * 1000000007ull) ^ (uint64_t)now.tv_nsec ^
                ((uint64_t)getpid() << 32);
  }
  printf("test_unit: seed %" PRIu64 " (replay with: test_unit %" PRIu64 ")\n", unit_seed,
         unit_seed);

  static const unit_test status_tests[] = {
      {"names and messages", test_status_names},
      {"error messages", test_status_error_messages},
      {"thread-local message", test_status_thread_local},
      {"LOOM_CHECK", test_status_check_macros},
      {NULL, NULL}};
  static const unit_test config_tests[] = {
      {"defaults and flags", test_config_defaults_and_flags},
      {"environment", test_config_environment},
      {"tool options", test_config_extra_options},
      {"rejections", test_config_rejections},
      {NULL, NULL}};
  static const unit_test mesh_tests[] = {
      {"shape checks", test_mesh_shape_checks},
      {"layout and groups", test_mesh_layout_and_groups},
      {NULL, NULL}};
  static const unit_test rng_tests[] = {
      {"philox known answers", test_rng_philox_known_answers},
      {"streams, skip, save/restore", test_rng_streams},
      {"distributions", test_rng_distributions},
      {NULL, NULL}};
  static const unit_test dtype_tests[] = {
      {"sizes and names", test_dtype_sizes_and_names},
      {"16-bit round trips (exhaustive)", test_dtype_16bit_exhaustive},
      {"16-bit rounding", test_dtype_16bit_rounding},
      {"load and store", test_dtype_load_store},
      {NULL, NULL}};
  static const unit_test sparse_tests[] = {
      {"fixed plan", test_sparse_plan_fixed},
      {"random plans", test_sparse_plan_random},
      {NULL, NULL}};
  static const unit_test executor_tests[] = {
      {"order", test_executor_order},
      {"failures and completion", test_executor_failures},
      {NULL, NULL}};
  static const unit_suite suites[] = {
      {"status", status_tests}, {"config", config_tests}, {"mesh", mesh_tests},
      {"rng", rng_tests},       {"dtype", dtype_tests},   {"sparse", sparse_tests},
      {"executor", executor_tests}};

  if (CU_initialize_registry() != CUE_SUCCESS) {
    fprintf(stderr, "test_unit: CUnit registry: %s\n", CU_get_error_msg());
    return 1;
  }
  for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++) {
    CU_pSuite suite = CU_add_suite(suites[s].name, NULL, NULL);
    for (const unit_test *t = suites[s].tests; suite && t->name; t++)
      if (!CU_add_test(suite, t->name, t->run)) suite = NULL;
    if (!suite) {
      fprintf(stderr, "test_unit: adding suite %s: %s\n", suites[s].name, CU_get_error_msg());
      CU_cleanup_registry();
      return 1;
    }
  }
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failures = CU_get_number_of_failures();
  unsigned tests_failed = CU_get_number_of_tests_failed();
  int run_error = CU_get_error() != CUE_SUCCESS;
  CU_cleanup_registry();
  if (failures || tests_failed || run_error) {
    fprintf(stderr, "test_unit: %u failed assertions in %u tests (seed %" PRIu64 ")\n",
            failures, tests_failed, unit_seed);
    return 1;
  }
  return 0;
}
