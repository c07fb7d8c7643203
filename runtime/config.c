/* Table-driven parsing of LOOM_* variables and --flags into a loom_config and tool options.
 * Precedence: struct defaults < environment < command line. Every rejection names the flag or
 * variable, the value, and what is accepted. */
#include "runtime/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

enum { NAME_BYTES = 128 };

void loom_config_options(loom_config *c, loom_option *out) {
  const loom_option table[LOOM_CONFIG_OPTION_COUNT] = {
      {"pp", LOOM_OPTION_INT, &c->pp, "pipeline-parallel size (outermost mesh axis)", NULL, 1, 1 << 20},
      {"dp", LOOM_OPTION_INT, &c->dp, "data-parallel size; 0 = world / (pp * sp)", NULL, 0, 1 << 20},
      {"sp", LOOM_OPTION_INT, &c->sp, "sequence-parallel size (innermost mesh axis)", NULL, 1, 1 << 20},
      {"ep", LOOM_OPTION_INT, &c->ep, "expert-parallel size; must divide dp", NULL, 1, 1 << 20},
      {"log", LOOM_OPTION_CHOICE, &c->log_level, "log level", "error|warn|info|debug", 0, 0},
      {"ranks-per-node", LOOM_OPTION_INT, &c->ranks_per_node,
       "simulate nodes of this many ranks; 0 = detect from shared memory", NULL, 0, 1 << 20},
      {"coll-algo", LOOM_OPTION_CHOICE, &c->collective_algo,
       "allreduce/allgather/reduce_scatter algorithm", "auto|flat|hier", 0, 0},
      {"hier-threshold", LOOM_OPTION_UINT64, &c->hier_threshold_bytes,
       "bytes at or above which 'auto' goes hierarchical across nodes", NULL, 0, 0},
      {"timeout", LOOM_OPTION_DOUBLE, &c->timeout_seconds,
       "seconds before a silent peer is reported as failed", NULL, 1e-3, 1e9},
      {"sparse-nbx-min-ranks", LOOM_OPTION_INT, &c->sparse_nbx_min_ranks,
       "sparse all-to-all plans use NBX from this group size on, a count exchange below", NULL,
       1, 1 << 30},
      {"device", LOOM_OPTION_CHOICE, &c->device, "where this rank computes", "auto|cpu|cuda", 0, 0},
      {"share-gpus", LOOM_OPTION_BOOL, &c->share_gpus,
       "allow more ranks per host than visible GPUs (they share GPUs)", NULL, 0, 0},
      {"seed", LOOM_OPTION_UINT64, &c->seed, "root seed of every random stream", NULL, 0, 0},
      {"job-id", LOOM_OPTION_STRING, &c->job_id,
       "job name of in-memory snapshots (default: SLURM_JOB_ID, else generated)", NULL, 0, 0},
      {"device-comm", LOOM_OPTION_CHOICE, &c->device_comm,
       "device-buffer traffic: nccl, or staged through pinned host buffers over MPI (ranks "
       "that share a GPU); auto = staged when ranks share a GPU", "auto|nccl|staged", 0, 0},
      {"nccl-stream", LOOM_OPTION_CHOICE, &c->nccl_stream,
       "stream of device collectives: comm (own stream, overlaps compute) or compute (the "
       "compute stream: about 2 us less per call, no overlap)", "comm|compute", 0, 0},
      {"fault", LOOM_OPTION_STRING, &c->fault,
       "inject faults (tests): kind:rank:step[:seconds],... with kind kill, node, hang, delay, "
       "corrupt or ckpt-kill", NULL, 0, 0},
      {"help", LOOM_OPTION_BOOL, &c->help, "print the options and exit", NULL, 0, 0},
  };
  memcpy(out, table, sizeof table);
}

/* "ranks-per-node" -> "LOOM_RANKS_PER_NODE" */
static void variable_name(const char *option, char *out, size_t bytes) {
  size_t n = (size_t)snprintf(out, bytes, "LOOM_");
  for (const char *p = option; *p && n + 1 < bytes; p++, n++)
    out[n] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  out[n] = '\0';
}

static loom_status parse_uint64(const char *text, uint64_t *out) {
  /* strtoull skips blanks and negates a '-', so " -1" would wrap to 2^64 - 1: digits only */
  if (!isdigit((unsigned char)*text)) return LOOM_ERR_ARG;
  errno = 0;
  char *end = NULL;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || end == text) return LOOM_ERR_ARG;
  uint64_t scale = 1;
  if (*end) {
    switch (toupper((unsigned char)*end)) {
      case 'K': scale = 1ull << 10; break;
      case 'M': scale = 1ull << 20; break;
      case 'G': scale = 1ull << 30; break;
      case 'T': scale = 1ull << 40; break;
      default: return LOOM_ERR_ARG;
    }
    end++;
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'b' || *end == 'B') end++;
    if (*end) return LOOM_ERR_ARG;
  }
  if (v > UINT64_MAX / scale) return LOOM_ERR_ARG;
  *out = (uint64_t)v * scale;
  return LOOM_OK;
}

static int unbounded(const loom_option *o) { return o->min == 0 && o->max == 0; }

static int bounded(const loom_option *o, double v) {
  return unbounded(o) || (v >= o->min && v <= o->max);
}

/* Writes `text` into the option's target; `source` names the flag or variable for messages. */
static loom_status apply_value(const loom_option *o, const char *text, const char *source) {
  char *end = NULL;
  switch (o->type) {
    case LOOM_OPTION_INT: {
      errno = 0;
      long v = strtol(text, &end, 10);
      /* the range check on long comes first: an unbounded option must not wrap into int */
      if (errno || end == text || *end || v < INT_MIN || v > INT_MAX || !bounded(o, (double)v))
        return loom_error_set(LOOM_ERR_ARG, "%s='%s' is not an integer in [%.15g, %.15g]",
                              source, text, unbounded(o) ? (double)INT_MIN : o->min,
                              unbounded(o) ? (double)INT_MAX : o->max);
      *(int *)o->target = (int)v;
      return LOOM_OK;
    }
    case LOOM_OPTION_UINT64:
      if (parse_uint64(text, (uint64_t *)o->target) != LOOM_OK)
        return loom_error_set(LOOM_ERR_ARG,
                              "%s='%s' is not a non-negative integer (suffixes K, M, G, T "
                              "accepted)",
                              source, text);
      return LOOM_OK;
    case LOOM_OPTION_DOUBLE: {
      errno = 0;
      double v = strtod(text, &end);
      if (errno || end == text || *end || !isfinite(v) || !bounded(o, v)) {
        if (unbounded(o))
          return loom_error_set(LOOM_ERR_ARG, "%s='%s' is not a finite number", source, text);
        return loom_error_set(LOOM_ERR_ARG, "%s='%s' is not a number in [%.15g, %.15g]", source,
                              text, o->min, o->max);
      }
      *(double *)o->target = v;
      return LOOM_OK;
    }
    case LOOM_OPTION_STRING:
      *(const char **)o->target = text;
      return LOOM_OK;
    case LOOM_OPTION_BOOL: {
      static const char *const truths[] = {"1", "true", "yes", "on"};
      static const char *const falsehoods[] = {"0", "false", "no", "off"};
      for (int i = 0; i < 4; i++) {
        if (strcasecmp(text, truths[i]) == 0) return *(int *)o->target = 1, LOOM_OK;
        if (strcasecmp(text, falsehoods[i]) == 0) return *(int *)o->target = 0, LOOM_OK;
      }
      return loom_error_set(LOOM_ERR_ARG, "%s='%s' is not a boolean; accepted: 1 0 true false "
                            "yes no on off", source, text);
    }
    case LOOM_OPTION_CHOICE: {
      int index = 0;
      size_t len = strlen(text);
      for (const char *p = o->choices; p && *p; index++) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, text, n) == 0) return *(int *)o->target = index, LOOM_OK;
        p = bar ? bar + 1 : p + n;
      }
      return loom_error_set(LOOM_ERR_ARG, "%s='%s' is not one of %s", source, text, o->choices);
    }
  }
  return loom_error_set(LOOM_ERR_INTERNAL, "option --%s has an unknown type", o->name);
}

enum { MAX_TABLES = 8 };

/* The core table plus the caller's, as one list. */
typedef struct {
  loom_option core[LOOM_CONFIG_OPTION_COUNT];
  loom_option_table tables[MAX_TABLES + 1];
  int count;
} option_list;

static loom_status make_list(option_list *list, loom_config *config,
                             const loom_option_table *tables, int table_count) {
  if (table_count < 0 || table_count > MAX_TABLES || (table_count > 0 && !tables))
    return loom_error_set(LOOM_ERR_ARG, "loom_config_parse: %d option tables (at most %d)",
                          table_count, MAX_TABLES);
  loom_config_options(config, list->core);
  list->tables[0] = (loom_option_table){list->core, LOOM_CONFIG_OPTION_COUNT};
  list->count = 1;
  for (int t = 0; t < table_count; t++)
    if (tables[t].options && tables[t].count > 0) list->tables[list->count++] = tables[t];
  return LOOM_OK;
}

/* The option list as "--a --b ..." for messages naming what is accepted. */
static void list_names(const option_list *list, int as_variables, char *out, size_t bytes) {
  size_t used = 0;
  out[0] = '\0';
  for (int t = 0; t < list->count; t++) {
    for (int i = 0; i < list->tables[t].count && used + 1 < bytes; i++) {
      char name[NAME_BYTES];
      if (as_variables)
        variable_name(list->tables[t].options[i].name, name, sizeof name);
      else
        snprintf(name, sizeof name, "--%s", list->tables[t].options[i].name);
      used += (size_t)snprintf(out + used, bytes - used, "%s%s", used ? " " : "", name);
    }
  }
}

static const loom_option *find_option(const option_list *list, const char *name, size_t len,
                                      int as_variable) {
  for (int t = 0; t < list->count; t++) {
    for (int i = 0; i < list->tables[t].count; i++) {
      const loom_option *o = &list->tables[t].options[i];
      char candidate[NAME_BYTES];
      if (as_variable) variable_name(o->name, candidate, sizeof candidate);
      else snprintf(candidate, sizeof candidate, "%s", o->name);
      if (strlen(candidate) == len && strncmp(candidate, name, len) == 0) return o;
    }
  }
  return NULL;
}

/* Variables that loom's scripts read, not its programs (slurm/loom.sbatch). */
static const char *const script_variables[] = {"LOOM_MAX_RESTARTS"};

/* Edit distance (insertions, deletions, substitutions) of a[0..la) and b, both short. */
static size_t edit_distance(const char *a, size_t la, const char *b) {
  size_t lb = strlen(b), row[NAME_BYTES + 1];
  if (la > NAME_BYTES || lb > NAME_BYTES) return (size_t)-1;
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t above = row[j];
      size_t best = diagonal + (a[i - 1] != b[j - 1]);
      if (above + 1 < best) best = above + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diagonal = above;
    }
  }
  return row[lb];
}

/* The known variable closest to name[0..len) (ties: the first in table order). */
static void closest_variable(const option_list *list, const char *name, size_t len, char *out,
                             size_t bytes) {
  size_t best = (size_t)-1;
  out[0] = '\0';
  for (int t = 0; t < list->count; t++) {
    for (int i = 0; i < list->tables[t].count; i++) {
      char candidate[NAME_BYTES];
      variable_name(list->tables[t].options[i].name, candidate, sizeof candidate);
      size_t d = edit_distance(name, len, candidate);
      if (d < best) {
        best = d;
        snprintf(out, bytes, "%s", candidate);
      }
    }
  }
}

static int is_script_variable(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof script_variables / sizeof script_variables[0]; i++)
    if (strlen(script_variables[i]) == len && strncmp(script_variables[i], name, len) == 0)
      return 1;
  return 0;
}

loom_status loom_config_parse_env(loom_config *config, const loom_option_table *tables,
                                  int table_count, char **envp, FILE *warnings, int argc,
                                  char **argv) {
  option_list list;
  LOOM_CHECK(make_list(&list, config, tables, table_count));
  char accepted[2048];

  for (char **e = envp; e && *e; e++) {
    if (strncmp(*e, "LOOM_", 5) != 0) continue;
    const char *eq = strchr(*e, '=');
    if (!eq) continue;
    size_t len = (size_t)(eq - *e);
    const loom_option *o = find_option(&list, *e, len, 1);
    if (!o) {
      if (warnings && !is_script_variable(*e, len)) {
        char closest[NAME_BYTES];
        closest_variable(&list, *e, len, closest, sizeof closest);
        fprintf(warnings, "loom: warning: unknown environment variable %.*s ignored; the "
                "closest known one is %s (--help lists them all)\n", (int)len, *e, closest);
      }
      continue;
    }
    char source[NAME_BYTES];
    variable_name(o->name, source, sizeof source);
    LOOM_CHECK(apply_value(o, eq + 1, source));
  }

  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      list_names(&list, 0, accepted, sizeof accepted);
      return loom_error_set(LOOM_ERR_ARG, "unexpected argument '%s'; flags are --name value; "
                            "accepted: %s", arg, accepted);
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const loom_option *o = find_option(&list, name, len, 0);
    if (!o) {
      list_names(&list, 0, accepted, sizeof accepted);
      return loom_error_set(LOOM_ERR_ARG, "unknown flag --%.*s; accepted: %s", (int)len, name,
                            accepted);
    }
    const char *value = eq ? eq + 1 : NULL;
    if (!value) {
      int next_is_value = i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0;
      if (o->type == LOOM_OPTION_BOOL && !next_is_value) value = "1";
      else if (next_is_value) value = argv[++i];
      else
        return loom_error_set(LOOM_ERR_ARG, "flag --%s needs a value (%s)", o->name, o->help);
    }
    char source[NAME_BYTES];
    snprintf(source, sizeof source, "--%s", o->name);
    LOOM_CHECK(apply_value(o, value, source));
  }
  return LOOM_OK;
}

loom_status loom_config_parse_tables(loom_config *config, const loom_option_table *tables,
                                     int table_count, int argc, char **argv) {
  /* every rank reads the same environment: one warning is enough */
  FILE *warnings = loom_launcher_rank() == 0 ? stderr : NULL;
  return loom_config_parse_env(config, tables, table_count, environ, warnings, argc, argv);
}

loom_status loom_config_parse(loom_config *config, const loom_option *extra, int extra_count,
                              int argc, char **argv) {
  loom_option_table table = {extra, extra ? extra_count : 0};
  return loom_config_parse_tables(config, &table, 1, argc, argv);
}

static void print_value(FILE *f, const loom_option *o) {
  switch (o->type) {
    case LOOM_OPTION_INT: fprintf(f, "%d", *(int *)o->target); break;
    case LOOM_OPTION_UINT64: fprintf(f, "%" PRIu64, *(uint64_t *)o->target); break;
    case LOOM_OPTION_DOUBLE: fprintf(f, "%g", *(double *)o->target); break;
    case LOOM_OPTION_STRING: {
      const char *s = *(const char **)o->target;
      fprintf(f, "%s", s ? s : "(none)");
      break;
    }
    case LOOM_OPTION_BOOL: fprintf(f, "%d", *(int *)o->target); break;
    case LOOM_OPTION_CHOICE: {
      int index = *(int *)o->target;
      const char *p = o->choices;
      for (int i = 0; i < index && p; i++) {
        p = strchr(p, '|');
        if (p) p++;
      }
      fprintf(f, "%.*s", p ? (int)strcspn(p, "|") : 1, p ? p : "?");
      break;
    }
  }
}

void loom_config_usage_tables(FILE *f, const char *program, loom_config *config,
                              const loom_option_table *tables, int table_count) {
  option_list list;
  if (make_list(&list, config, tables, table_count) != LOOM_OK) return;
  fprintf(f, "usage: %s [--flag value ...]   (each flag also reads LOOM_<FLAG> from the "
          "environment)\n", program);
  for (int t = 0; t < list.count; t++) {
    for (int i = 0; i < list.tables[t].count; i++) {
      const loom_option *o = &list.tables[t].options[i];
      char variable[NAME_BYTES];
      variable_name(o->name, variable, sizeof variable);
      fprintf(f, "  --%-16s %-22s %s", o->name, variable, o->help);
      if (o->choices) fprintf(f, " (%s)", o->choices);
      fprintf(f, " [");
      print_value(f, o);
      fprintf(f, "]\n");
    }
  }
}

void loom_config_usage(FILE *f, const char *program, loom_config *config,
                       const loom_option *extra, int extra_count) {
  loom_option_table table = {extra, extra ? extra_count : 0};
  loom_config_usage_tables(f, program, config, &table, 1);
}

int loom_launcher_rank(void) {
  static const char *const variables[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                          "SLURM_PROCID"};
  for (size_t i = 0; i < sizeof variables / sizeof variables[0]; i++) {
    const char *v = getenv(variables[i]);
    if (v && *v) return atoi(v);
  }
  return 0;
}
