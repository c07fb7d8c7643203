/* loom-ckpt: lists, verifies, compares and exports loom checkpoints from one process (no MPI,
 * no launcher). Tensors are read one at a time, so memory holds at most one tensor (two for
 * diff), never the whole checkpoint. Exit codes: 0 good / identical / written, 1 damaged /
 * different / not written, 2 usage error (and, for diff, an unreadable checkpoint). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/inspect.h"
#include "checkpoint/tool/export.h"
#include "runtime/dtype.h"
#include "runtime/status.h"

enum { EXIT_GOOD = 0, EXIT_BAD = 1, EXIT_USAGE = 2 };

static void usage(FILE *stream) {
  fprintf(stream,
          "usage: loom-ckpt COMMAND ...\n"
          "  ls ROOT                        step, mesh, version and every tensor (dtype, shape,\n"
          "                                 shards, bytes); exit 1 when unreadable\n"
          "  verify ROOT                    every rank file present, every shard's crc32 right;\n"
          "                                 exit 0 intact, 1 damaged or not a checkpoint\n"
          "  diff A B                       per tensor max |a-b|, tensors in one only, shape or\n"
          "                                 dtype changes; exit 0 identical, 1 different,\n"
          "                                 2 unreadable\n"
          "  export ROOT --safetensors FILE whole tensors into one safetensors file (shards\n"
          "                                 verified first; written to FILE.tmp, then renamed);\n"
          "                                 exit 0 written, 1 not written\n"
          "  export ROOT --gpt2 DIR         a GPT-2 checkpoint of examples/gpt/train_gpt as a\n"
          "                                 Hugging Face directory (model.safetensors with\n"
          "                                 GPT-2's names and Conv1D layout, config.json)\n"
          "ROOT is a checkpoint root (its `latest` names the step) or one step-* directory.\n"
          "Exit 2 for a command line that is not understood.\n");
}

/* "[13, 7]"; "[]" for a scalar. */
static void format_shape(const loom_ckpt_tensor_info *t, char *out, size_t bytes) {
  size_t used = (size_t)snprintf(out, bytes, "[");
  for (int d = 0; d < t->ndims && used < bytes; d++)
    used += (size_t)snprintf(out + used, bytes - used, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
  if (used < bytes) snprintf(out + used, bytes - used, "]");
}

static int command_ls(const char *root) {
  loom_ckpt_info info;
  if (loom_ckpt_info_open(root, &info) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt ls: %s\n", loom_error_string());
    return EXIT_BAD;
  }
  int64_t total_bytes = 0;
  int name_width = 4;
  for (int i = 0; i < info.tensor_count; i++) {
    total_bytes += info.tensors[i].bytes;
    int length = (int)strlen(info.tensors[i].name);
    if (length > name_width) name_width = length;
  }
  printf("checkpoint  %s\n", info.dir);
  printf("step        %lld\n", (long long)info.step);
  printf("mesh        pp %d dp %d sp %d ep %d\n", info.mesh[0], info.mesh[1], info.mesh[2],
         info.mesh[3]);
  printf("version     loom %s\n", info.version);
  printf("tensors     %d (%lld bytes)\n\n", info.tensor_count, (long long)total_bytes);
  printf("%-*s  %-8s  %-16s  %6s  %s\n", name_width, "name", "dtype", "shape", "shards", "bytes");
  for (int i = 0; i < info.tensor_count; i++) {
    const loom_ckpt_tensor_info *t = &info.tensors[i];
    char shape[256];
    format_shape(t, shape, sizeof shape);
    printf("%-*s  %-8s  %-16s  %6d  %lld\n", name_width, t->name, loom_dtype_name(t->dtype), shape,
           t->piece_count, (long long)t->bytes);
  }
  loom_ckpt_info_free(&info);
  return EXIT_GOOD;
}

/* Checks every shard of every tensor (and each tensor's mapping) of an open checkpoint,
 * printing one line per problem to `stream`; returns the number of problems. *checked gets
 * the number of shards whose checksums were compared. */
static int check_checkpoint(const loom_ckpt_info *info, FILE *stream, int *checked) {
  int writers = info->mesh[0] * info->mesh[1] * info->mesh[2], problems = 0;
  char *present = calloc((size_t)writers, 1); /* (writers,): rank file w exists and opens */
  *checked = 0;
  if (!present) {
    fprintf(stream, "problem: out of memory for %d rank files\n", writers);
    return 1;
  }
  for (int w = 0; w < writers; w++) {
    present[w] = loom_ckpt_check_rank_file(info->dir, w) == LOOM_OK;
    if (!present[w]) {
      fprintf(stream, "problem: %s\n", loom_error_string());
      problems++;
    }
  }
  /* A missing or unopenable rank file is reported once above, not again for each tensor. */
  for (int i = 0; i < info->tensor_count; i++) {
    const loom_ckpt_tensor_info *t = &info->tensors[i];
    int tensor_problems = 0, all_present = 1;
    for (int w = 0; w < t->shard_count; w++) {
      if (!present[w]) {
        all_present = 0;
        continue;
      }
      (*checked)++;
      if (loom_ckpt_verify_shard(info->dir, t->name, w, t->shard_crc32[w]) != LOOM_OK) {
        fprintf(stream, "problem: %s\n", loom_error_string());
        tensor_problems++;
      }
    }
    /* The mapping check would repeat a shard's problem; it finds what shards cannot show. */
    if (tensor_problems == 0 && all_present && loom_ckpt_check_mapping(info->dir, t) != LOOM_OK) {
      fprintf(stream, "problem: %s\n", loom_error_string());
      tensor_problems++;
    }
    problems += tensor_problems;
  }
  free(present);
  return problems;
}

static int command_verify(const char *root) {
  loom_ckpt_info info;
  if (loom_ckpt_info_open(root, &info) != LOOM_OK) {
    printf("problem: %s\n", loom_error_string());
    printf("checkpoint %s: index unreadable or not a checkpoint: DAMAGED\n", root);
    return EXIT_BAD;
  }
  int checked = 0, problems = check_checkpoint(&info, stdout, &checked);
  printf("checkpoint %s: step %lld, %d tensors, %d rank files, %d shards checked, %d problem%s: "
         "%s\n", info.dir, (long long)info.step, info.tensor_count,
         info.mesh[0] * info.mesh[1] * info.mesh[2], checked, problems, problems == 1 ? "" : "s",
         problems ? "DAMAGED" : "OK");
  loom_ckpt_info_free(&info);
  return problems ? EXIT_BAD : EXIT_GOOD;
}

/* Compares a and b (t->count elements of t->dtype each): *differing gets the number of
 * unequal elements, the return value their largest |a - b| (inf where one side is NaN; NaN
 * against NaN counts as equal; int64 exact). */
static double max_difference(const loom_ckpt_tensor_info *t, const void *a, const void *b,
                             int64_t *differing) {
  double largest = 0.0;
  *differing = 0;
  for (int64_t i = 0; i < t->count; i++) {
    double gap;
    if (t->dtype == LOOM_INT64) { /* doubles lose int64 differences beyond 2^53 */
      int64_t x = ((const int64_t *)a)[i], y = ((const int64_t *)b)[i];
      if (x == y) continue;
      gap = (double)fabsl((long double)x - (long double)y);
    } else {
      double x = loom_dtype_load(a, t->dtype, (size_t)i), y = loom_dtype_load(b, t->dtype, (size_t)i);
      if (x == y || (isnan(x) && isnan(y))) continue;
      gap = isnan(x) || isnan(y) ? INFINITY : fabs(x - y);
    }
    (*differing)++;
    if (gap > largest) largest = gap;
  }
  return largest;
}

/* Compares one tensor present in both; 0 same, 1 different, -1 unreadable (message printed). */
static int diff_tensor(const loom_ckpt_info *a, const loom_ckpt_tensor_info *ta,
                       const loom_ckpt_info *b, const loom_ckpt_tensor_info *tb) {
  char shape_a[256], shape_b[256];
  format_shape(ta, shape_a, sizeof shape_a);
  format_shape(tb, shape_b, sizeof shape_b);
  if (ta->dtype != tb->dtype || strcmp(shape_a, shape_b) != 0) {
    printf("%s: %s %s in A, %s %s in B\n", ta->name, loom_dtype_name(ta->dtype), shape_a,
           loom_dtype_name(tb->dtype), shape_b);
    return 1;
  }
  size_t bytes = (size_t)ta->bytes;
  char *values_a = malloc(bytes ? bytes : 1), *values_b = malloc(bytes ? bytes : 1);
  int result = 0;
  if (!values_a || !values_b) {
    fprintf(stderr, "loom-ckpt diff: out of memory for tensor '%s' (2 x %zu bytes)\n", ta->name, bytes);
    result = -1;
  } else if (loom_ckpt_read_tensor(a->dir, ta, values_a) != LOOM_OK ||
             loom_ckpt_read_tensor(b->dir, tb, values_b) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt diff: %s\n", loom_error_string());
    result = -1;
  } else if (memcmp(values_a, values_b, bytes) != 0) {
    int64_t differing;
    double largest = max_difference(ta, values_a, values_b, &differing);
    if (differing)
      printf("%s: max |a-b| = %.9g (%lld of %lld elements differ)\n", ta->name, largest,
             (long long)differing, (long long)ta->count);
    else
      printf("%s: equal values but other bits (-0 vs +0, or NaN payloads)\n", ta->name);
    result = 1;
  }
  free(values_a);
  free(values_b);
  return result;
}

static int command_diff(const char *root_a, const char *root_b) {
  loom_ckpt_info a, b;
  if (loom_ckpt_info_open(root_a, &a) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt diff: A: %s\n", loom_error_string());
    return EXIT_USAGE;
  }
  if (loom_ckpt_info_open(root_b, &b) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt diff: B: %s\n", loom_error_string());
    loom_ckpt_info_free(&a);
    return EXIT_USAGE;
  }
  printf("A: %s (step %lld)\nB: %s (step %lld)\n", a.dir, (long long)a.step, b.dir, (long long)b.step);
  /* Both lists are sorted by name: one merge pass. */
  int i = 0, j = 0, compared = 0, different = 0, only_a = 0, only_b = 0, unreadable = 0;
  while ((i < a.tensor_count || j < b.tensor_count) && !unreadable) {
    int order = i == a.tensor_count ? 1 : j == b.tensor_count ? -1
                : strcmp(a.tensors[i].name, b.tensors[j].name);
    if (order < 0) {
      printf("only in A: %s\n", a.tensors[i++].name);
      only_a++;
    } else if (order > 0) {
      printf("only in B: %s\n", b.tensors[j++].name);
      only_b++;
    } else {
      int result = diff_tensor(&a, &a.tensors[i++], &b, &b.tensors[j++]);
      compared++;
      if (result < 0) unreadable = 1;
      different += result > 0;
    }
  }
  int code = unreadable ? EXIT_USAGE : different || only_a || only_b ? EXIT_BAD : EXIT_GOOD;
  if (!unreadable)
    printf("%d tensors compared, %d differ, %d only in A, %d only in B: %s\n", compared,
           different, only_a, only_b, code == EXIT_GOOD ? "identical" : "different");
  loom_ckpt_info_free(&a);
  loom_ckpt_info_free(&b);
  return code;
}

/* `export ROOT --safetensors FILE`: every tensor under its own name; `export ROOT --gpt2 DIR`:
 * a Hugging Face GPT-2 directory. Every shard is verified first (a damaged one would be
 * exported silently as wrong values). */
static int command_export(const char *root, const char *file, const char *gpt2_dir) {
  loom_ckpt_info info;
  if (loom_ckpt_info_open(root, &info) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt export: %s\n", loom_error_string());
    return EXIT_BAD;
  }
  const char *target = file ? file : gpt2_dir;
  int checked = 0, rc = -1;
  export_entry *entries = NULL;
  if (check_checkpoint(&info, stderr, &checked) != 0) {
    fprintf(stderr, "loom-ckpt export: checkpoint %s is damaged (problems above); nothing "
            "written to %s\n", info.dir, target);
  } else if (gpt2_dir) {
    rc = export_gpt2(&info, gpt2_dir);
  } else if (!(entries = calloc((size_t)info.tensor_count + 1, sizeof *entries))) {
    fprintf(stderr, "loom-ckpt export: out of memory for %d tensors\n", info.tensor_count);
  } else {
    int64_t total = 0;
    for (int i = 0; i < info.tensor_count; i++) {
      entries[i].tensor = &info.tensors[i];
      snprintf(entries[i].name, sizeof entries[i].name, "%s", info.tensors[i].name);
      total += info.tensors[i].bytes;
    }
    rc = export_safetensors(&info, entries, info.tensor_count, file);
    if (rc == 0)
      printf("exported %d tensors (%lld bytes, %d shards verified) of %s, step %lld, to %s\n",
             info.tensor_count, (long long)total, checked, info.dir, (long long)info.step, file);
  }
  free(entries);
  loom_ckpt_info_free(&info);
  return rc == 0 ? EXIT_GOOD : EXIT_BAD;
}

/* Arguments of `export`: ROOT and one of --safetensors FILE / --gpt2 DIR (or =VALUE), in any
 * order. */
static int parse_export(int argc, char **argv, const char **root, const char **file,
                        const char **gpt2_dir) {
  *root = *file = *gpt2_dir = NULL;
  for (int i = 0; i < argc; i++) {
    const char **slot = strncmp(argv[i], "--safetensors", 13) == 0 ? file
                        : strncmp(argv[i], "--gpt2", 6) == 0     ? gpt2_dir
                                                                 : NULL;
    size_t flag = slot == file ? 13 : 6;
    if (slot && argv[i][flag] == '\0' && i + 1 < argc && !*slot) {
      *slot = argv[++i];
    } else if (slot && argv[i][flag] == '=' && argv[i][flag + 1] && !*slot) {
      *slot = argv[i] + flag + 1;
    } else if (argv[i][0] != '-' && !*root) {
      *root = argv[i];
    } else {
      fprintf(stderr, "loom-ckpt export: unexpected argument '%s'\n", argv[i]);
      return -1;
    }
  }
  if (!*root || (!*file == !*gpt2_dir) || (*file && !**file) || (*gpt2_dir && !**gpt2_dir)) {
    fprintf(stderr, "loom-ckpt export: needs ROOT and one of --safetensors FILE, --gpt2 DIR\n");
    return -1;
  }
  return 0;
}

/* 1 when all `count` arguments are operands (no option-like word such as --force). */
static int operands_only(int count, char **args) {
  for (int i = 0; i < count; i++)
    if (args[i][0] == '-' || args[i][0] == '\0') return 0;
  return 1;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return EXIT_GOOD;
    }
  if (argc < 2) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *command = argv[1];
  int operands = argc - 2;
  if (strcmp(command, "ls") == 0 && operands == 1 && operands_only(1, argv + 2))
    return command_ls(argv[2]);
  if (strcmp(command, "verify") == 0 && operands == 1 && operands_only(1, argv + 2))
    return command_verify(argv[2]);
  if (strcmp(command, "diff") == 0 && operands == 2 && operands_only(2, argv + 2))
    return command_diff(argv[2], argv[3]);
  if (strcmp(command, "export") == 0) {
    const char *root, *file, *gpt2_dir;
    if (parse_export(operands, argv + 2, &root, &file, &gpt2_dir) != 0) {
      usage(stderr);
      return EXIT_USAGE;
    }
    return command_export(root, file, gpt2_dir);
  }
  if (strcmp(command, "ls") == 0 || strcmp(command, "verify") == 0 || strcmp(command, "diff") == 0)
    fprintf(stderr, "loom-ckpt %s: wrong arguments\n", command);
  else
    fprintf(stderr, "loom-ckpt: unknown command '%s'\n", command);
  usage(stderr);
  return EXIT_USAGE;
}
