/* Runtime configuration: one struct with defaults, overridden by LOOM_* environment variables,
 * then by command-line flags, through one table-driven parser that every example, benchmark
 * and tool shares (tools append their own options to the core table). */
#ifndef LOOM_RUNTIME_CONFIG_H
#define LOOM_RUNTIME_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  LOOM_OPTION_INT,    /* int; bounded by [min, max] unless both are 0 */
  LOOM_OPTION_UINT64, /* uint64_t; accepts K/M/G/T suffixes (powers of 1024) for sizes */
  LOOM_OPTION_DOUBLE, /* double; bounded by [min, max] unless both are 0 */
  LOOM_OPTION_STRING, /* const char *; points into argv or the environment, not copied */
  LOOM_OPTION_BOOL,   /* int 0/1; "--flag" alone means 1; values 0/1/true/false/yes/no */
  LOOM_OPTION_CHOICE, /* int index into `choices` ("a|b|c") */
} loom_option_type;

typedef struct {
  const char *name; /* flag --name; variable LOOM_NAME (upper case, '-' becomes '_') */
  loom_option_type type;
  void *target;
  const char *help;
  const char *choices; /* CHOICE only: "error|warn|info|debug" */
  double min, max;     /* INT/DOUBLE only */
} loom_option;

typedef enum { LOOM_LOG_ERROR = 0, LOOM_LOG_WARN, LOOM_LOG_INFO, LOOM_LOG_DEBUG } loom_log_level;
typedef enum { LOOM_ALGO_AUTO = 0, LOOM_ALGO_FLAT, LOOM_ALGO_HIER } loom_algo;

typedef struct {
  /* mesh: pp x dp x sp ranks, ep divides dp; dp = 0 means world / (pp * sp) */
  int pp, dp, sp, ep;
  int log_level;          /* loom_log_level */
  int ranks_per_node;     /* 0: detect from shared memory; n: simulate nodes of n ranks */
  int collective_algo;    /* loom_algo for hierarchical-capable collectives */
  uint64_t hier_threshold_bytes; /* AUTO picks hierarchical at or above this size */
  double timeout_seconds; /* a peer silent this long is reported as a failure */
  int device;             /* 0 auto, 1 cpu, 2 cuda (see runtime/device.h) */
  int share_gpus;         /* allow more ranks on a host than visible GPUs */
  int sparse_nbx_min_ranks; /* sparse plans: NBX discovery from this group size on, a dense
                             * count exchange below it (cheaper for few ranks) */
  uint64_t seed;          /* root of every random stream */
  const char *job_id;     /* names in-memory snapshot segments; NULL: SLURM_JOB_ID, else a
                           * generated one (exported as LOOM_JOB_ID for child processes) */
  const char *fault;      /* fault injection for tests (runtime/fault.h); NULL = none */
  int device_comm;        /* device traffic: 0 auto (staged when ranks share a GPU, else NCCL),
                           * 1 nccl, 2 staged (pinned host buffers over MPI) */
  int nccl_stream;        /* 0: NCCL on a communication stream per group, ordered after the
                           * compute stream by events (overlap); 1: on the compute stream
                           * itself (no events: lowest latency per call, no overlap) */
  int help;               /* set by --help: the caller prints loom_config_usage and stops */
} loom_config;

#define LOOM_CONFIG_INIT                                                                   \
  {.pp = 1, .dp = 0, .sp = 1, .ep = 1, .log_level = LOOM_LOG_WARN, .ranks_per_node = 0,    \
   .collective_algo = LOOM_ALGO_AUTO, .hier_threshold_bytes = 1u << 20,                    \
   .timeout_seconds = 600.0, .sparse_nbx_min_ranks = 32, .device = 0, .share_gpus = 0, .seed = 1234,        \
   .job_id = NULL, .fault = NULL, .device_comm = 0, .nccl_stream = 0, .help = 0}

/* Number of core options, and the core table bound to `config`'s fields (writes
 * LOOM_CONFIG_OPTION_COUNT entries into `out`). */
enum { LOOM_CONFIG_OPTION_COUNT = 18 };
void loom_config_options(loom_config *config, loom_option *out);

/* One table of options: the library's core table, a tool's, an example's. */
typedef struct {
  const loom_option *options;
  int count;
} loom_option_table;

/* Applies LOOM_* variables from the environment, then the flags argv[1..argc-1], to `config`
 * and to the targets of `extra` (a tool's own options, may be NULL). Accepts "--name value"
 * and "--name=value". An unknown or malformed flag, or a malformed variable, returns
 * LOOM_ERR_ARG with a one-line message naming it and the accepted values; targets already
 * parsed may have been written. An unknown LOOM_* variable is not an error (scripts and
 * other tools set their own): it is ignored with a warning on stderr, from the launcher's
 * rank 0 only, naming the closest known variable. */
loom_status loom_config_parse(loom_config *config, const loom_option *extra, int extra_count,
                              int argc, char **argv);

/* The same over a list of tables (the core table comes first, then `tables[0..count-1]`:
 * a tool's options, an example's, ...). */
loom_status loom_config_parse_tables(loom_config *config, const loom_option_table *tables,
                                     int table_count, int argc, char **argv);

/* Same, over an explicit environment (NULL-terminated "KEY=VALUE" strings), writing warnings
 * to `warnings` (NULL: none); for tests. */
loom_status loom_config_parse_env(loom_config *config, const loom_option_table *tables,
                                  int table_count, char **envp, FILE *warnings, int argc,
                                  char **argv);

/* Prints every option with its variable, default (current value) and help. */
void loom_config_usage(FILE *stream, const char *program, loom_config *config,
                       const loom_option *extra, int extra_count);
void loom_config_usage_tables(FILE *stream, const char *program, loom_config *config,
                              const loom_option_table *tables, int table_count);

/* The rank the launcher assigned (OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK, SLURM_PROCID),
 * or 0 when none is set: lets a program print a pre-init error once, not once per rank. */
int loom_launcher_rank(void);

#ifdef __cplusplus
}
#endif
#endif
