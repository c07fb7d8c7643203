/* loom-ckpt: lists, verifies, compares and exports loom checkpoints from one process (no MPI,
 * no launcher). Tensors are read one at a time, so memory holds at most one tensor (two for
 * diff), never the whole checkpoint. Exit codes: 0 good / identical / written, 1 damaged /
 * different / not written, 2 usage error (and, for diff, an unreadable checkpoint). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint/inspect.h"
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

/* A growing string for the safetensors header; `failed` once an allocation failed. */
typedef struct {
  char *text;
  size_t length, capacity;
  int failed;
} text_buffer;

static void text_append(text_buffer *buffer, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static void text_append(text_buffer *buffer, const char *format, ...) {
  if (buffer->failed) return;
  va_list args;
  va_start(args, format);
  int needed = vsnprintf(NULL, 0, format, args);
  va_end(args);
  if (needed < 0) {
    buffer->failed = 1;
    return;
  }
  if (buffer->length + (size_t)needed + 1 > buffer->capacity) {
    size_t capacity = 2 * (buffer->length + (size_t)needed + 1);
    char *grown = realloc(buffer->text, capacity);
    if (!grown) {
      buffer->failed = 1;
      return;
    }
    buffer->text = grown;
    buffer->capacity = capacity;
  }
  va_start(args, format);
  vsnprintf(buffer->text + buffer->length, buffer->capacity - buffer->length, format, args);
  va_end(args);
  buffer->length += (size_t)needed;
}

/* A JSON string literal of `value` (quotes, backslashes and control bytes escaped). */
static void text_append_json_string(text_buffer *buffer, const char *value) {
  text_append(buffer, "\"");
  for (const unsigned char *c = (const unsigned char *)value; *c; c++) {
    if (*c == '"' || *c == '\\') text_append(buffer, "\\%c", *c);
    else if (*c < 0x20) text_append(buffer, "\\u%04x", *c);
    else text_append(buffer, "%c", *c);
  }
  text_append(buffer, "\"");
}

static const char *safetensors_dtype(loom_dtype dtype) {
  switch (dtype) {
    case LOOM_FLOAT32: return "F32";
    case LOOM_FLOAT64: return "F64";
    case LOOM_BFLOAT16: return "BF16";
    case LOOM_FLOAT16: return "F16";
    case LOOM_INT32: return "I32";
    case LOOM_INT64: return "I64";
    default: return "U8";
  }
}

/* safetensors data is little-endian; read_tensor gives native order. */
static void to_little_endian(void *data, size_t count, size_t element_bytes) {
  const uint16_t probe = 1;
  if (*(const unsigned char *)&probe == 1 || element_bytes == 1) return;
  unsigned char *bytes = data;
  for (size_t i = 0; i < count; i++, bytes += element_bytes)
    for (size_t lo = 0, hi = element_bytes - 1; lo < hi; lo++, hi--) {
      unsigned char swap = bytes[lo];
      bytes[lo] = bytes[hi];
      bytes[hi] = swap;
    }
}

/* The safetensors header (JSON, padded with spaces to a multiple of 8 bytes). Tensors follow
 * in info's (name) order, packed without gaps. 0 on success. */
static int build_header(const loom_ckpt_info *info, text_buffer *header) {
  int64_t offset = 0;
  text_append(header, "{");
  for (int i = 0; i < info->tensor_count; i++) {
    const loom_ckpt_tensor_info *t = &info->tensors[i];
    if (strcmp(t->name, "__metadata__") == 0) {
      fprintf(stderr, "loom-ckpt export: tensor '__metadata__' collides with the safetensors "
              "metadata key; rename it\n");
      return -1;
    }
    text_append_json_string(header, t->name);
    text_append(header, ":{\"dtype\":\"%s\",\"shape\":[", safetensors_dtype(t->dtype));
    for (int d = 0; d < t->ndims; d++) text_append(header, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    text_append(header, "],\"data_offsets\":[%lld,%lld]},", (long long)offset,
                (long long)(offset + t->bytes));
    offset += t->bytes;
  }
  text_append(header, "\"__metadata__\":{\"step\":\"%lld\",\"loom_version\":", (long long)info->step);
  text_append_json_string(header, info->version);
  text_append(header, ",\"mesh_pp_dp_sp_ep\":\"%d,%d,%d,%d\"}}", info->mesh[0], info->mesh[1],
              info->mesh[2], info->mesh[3]);
  while (!header->failed && header->length % 8 != 0) text_append(header, " ");
  if (header->failed) {
    fprintf(stderr, "loom-ckpt export: out of memory for the header\n");
    return -1;
  }
  return 0;
}

/* Writes header and tensors to an open stream; 0 on success (message printed otherwise). */
static int write_safetensors(const loom_ckpt_info *info, const text_buffer *header, FILE *out,
                             const char *path) {
  unsigned char length[8]; /* header bytes, uint64 little-endian */
  for (int b = 0; b < 8; b++) length[b] = (unsigned char)((uint64_t)header->length >> (8 * b));
  if (fwrite(length, 1, 8, out) != 8 || fwrite(header->text, 1, header->length, out) != header->length) {
    fprintf(stderr, "loom-ckpt export: writing %s: %s\n", path, strerror(errno));
    return -1;
  }
  for (int i = 0; i < info->tensor_count; i++) {
    const loom_ckpt_tensor_info *t = &info->tensors[i];
    size_t bytes = (size_t)t->bytes;
    void *values = malloc(bytes ? bytes : 1);
    int ok = values != NULL;
    if (!ok)
      fprintf(stderr, "loom-ckpt export: out of memory for tensor '%s' (%zu bytes)\n", t->name, bytes);
    else if (loom_ckpt_read_tensor(info->dir, t, values) != LOOM_OK) {
      fprintf(stderr, "loom-ckpt export: %s\n", loom_error_string());
      ok = 0;
    } else {
      to_little_endian(values, (size_t)t->count, loom_dtype_size(t->dtype));
      if (fwrite(values, 1, bytes, out) != bytes) {
        fprintf(stderr, "loom-ckpt export: writing tensor '%s' to %s: %s\n", t->name, path,
                strerror(errno));
        ok = 0;
      }
    }
    free(values);
    if (!ok) return -1;
  }
  return 0;
}

/* fsync of the directory holding `path`, so the rename survives a crash. */
static int sync_parent(const char *path) {
  char copy[LOOM_CKPT_PATH_BYTES + 8];
  snprintf(copy, sizeof copy, "%s", path);
  int fd = open(dirname(copy), O_RDONLY);
  int rc = fd >= 0 ? fsync(fd) : -1;
  if (fd >= 0) close(fd);
  return rc;
}

static int command_export(const char *root, const char *file) {
  loom_ckpt_info info;
  if (loom_ckpt_info_open(root, &info) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt export: %s\n", loom_error_string());
    return EXIT_BAD;
  }
  int checked = 0, code = EXIT_BAD;
  text_buffer header = {0};
  char tmp[LOOM_CKPT_PATH_BYTES + 8];
  FILE *out = NULL;
  if (strlen(file) + 5 > sizeof tmp) {
    fprintf(stderr, "loom-ckpt export: output path %s is too long\n", file);
    goto done;
  }
  snprintf(tmp, sizeof tmp, "%s.tmp", file);
  /* A damaged shard would be exported silently as wrong values: check every one first. */
  if (check_checkpoint(&info, stderr, &checked) != 0) {
    fprintf(stderr, "loom-ckpt export: checkpoint %s is damaged (problems above); nothing "
            "written to %s\n", info.dir, file);
    goto done;
  }
  if (build_header(&info, &header) != 0) goto done;
  out = fopen(tmp, "wb");
  if (!out) {
    fprintf(stderr, "loom-ckpt export: creating %s: %s\n", tmp, strerror(errno));
    goto done;
  }
  int written = write_safetensors(&info, &header, out, tmp) == 0;
  if (written && (fflush(out) != 0 || fsync(fileno(out)) != 0)) {
    fprintf(stderr, "loom-ckpt export: flushing %s: %s\n", tmp, strerror(errno));
    written = 0;
  }
  if (fclose(out) != 0 && written) {
    fprintf(stderr, "loom-ckpt export: closing %s: %s\n", tmp, strerror(errno));
    written = 0;
  }
  if (written && rename(tmp, file) != 0) {
    fprintf(stderr, "loom-ckpt export: renaming %s to %s: %s\n", tmp, file, strerror(errno));
    written = 0;
  }
  if (!written) {
    unlink(tmp); /* never leave a half file behind */
    goto done;
  }
  if (sync_parent(file) != 0) {
    fprintf(stderr, "loom-ckpt export: syncing the directory of %s: %s\n", file, strerror(errno));
    goto done;
  }
  int64_t total = 0;
  for (int i = 0; i < info.tensor_count; i++) total += info.tensors[i].bytes;
  printf("exported %d tensors (%lld bytes, %d shards verified) of %s, step %lld, to %s\n",
         info.tensor_count, (long long)total, checked, info.dir, (long long)info.step, file);
  code = EXIT_GOOD;
done:
  free(header.text);
  loom_ckpt_info_free(&info);
  return code;
}

/* Arguments of `export`: ROOT and --safetensors FILE (or --safetensors=FILE), in any order. */
static int parse_export(int argc, char **argv, const char **root, const char **file) {
  *root = *file = NULL;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--safetensors") == 0 && i + 1 < argc && !*file) {
      *file = argv[++i];
    } else if (strncmp(argv[i], "--safetensors=", 14) == 0 && argv[i][14] && !*file) {
      *file = argv[i] + 14;
    } else if (argv[i][0] != '-' && !*root) {
      *root = argv[i];
    } else {
      fprintf(stderr, "loom-ckpt export: unexpected argument '%s'\n", argv[i]);
      return -1;
    }
  }
  if (!*root || !*file || !**file) {
    fprintf(stderr, "loom-ckpt export: needs ROOT and --safetensors FILE\n");
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
    const char *root, *file;
    if (parse_export(operands, argv + 2, &root, &file) != 0) {
      usage(stderr);
      return EXIT_USAGE;
    }
    return command_export(root, file);
  }
  if (strcmp(command, "ls") == 0 || strcmp(command, "verify") == 0 || strcmp(command, "diff") == 0)
    fprintf(stderr, "loom-ckpt %s: wrong arguments\n", command);
  else
    fprintf(stderr, "loom-ckpt: unknown command '%s'\n", command);
  usage(stderr);
  return EXIT_USAGE;
}
