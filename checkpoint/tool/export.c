/* loom-ckpt export (see export.h): the safetensors writer and the GPT-2 directory. */
#include "checkpoint/tool/export.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/dtype.h"
#include "runtime/status.h"

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

/* The safetensors header (JSON, padded with spaces to a multiple of 8 bytes): the entries in
 * order, packed without gaps, then loom's metadata. 0 on success. */
static int build_header(const loom_ckpt_info *info, const export_entry *entries, int count,
                        text_buffer *header) {
  int64_t offset = 0;
  text_append(header, "{");
  for (int i = 0; i < count; i++) {
    const loom_ckpt_tensor_info *t = entries[i].tensor;
    if (strcmp(entries[i].name, "__metadata__") == 0) {
      fprintf(stderr, "loom-ckpt export: tensor '__metadata__' collides with the safetensors "
              "metadata key; rename it\n");
      return -1;
    }
    text_append_json_string(header, entries[i].name);
    text_append(header, ":{\"dtype\":\"%s\",\"shape\":[", safetensors_dtype(t->dtype));
    for (int d = 0; d < t->ndims; d++) {
      int from = entries[i].transpose ? t->ndims - 1 - d : d;
      text_append(header, "%s%lld", d ? "," : "", (long long)t->shape[from]);
    }
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

/* (rows, cols) of `element` bytes each -> (cols, rows). */
static void transpose(const unsigned char *in, unsigned char *out, int64_t rows, int64_t cols,
                      size_t element) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      memcpy(out + ((size_t)c * (size_t)rows + (size_t)r) * element,
             in + ((size_t)r * (size_t)cols + (size_t)c) * element, element);
}

/* One entry's values in file order (transposed if asked, little-endian) into `out`. */
static int write_entry(const loom_ckpt_info *info, const export_entry *e, FILE *out,
                       const char *path) {
  const loom_ckpt_tensor_info *t = e->tensor;
  size_t bytes = (size_t)t->bytes, element = loom_dtype_size(t->dtype);
  int turn = e->transpose && t->ndims == 2;
  unsigned char *values = malloc(bytes ? bytes : 1), *turned = turn ? malloc(bytes ? bytes : 1) : NULL;
  int ok = values && (!turn || turned);
  if (!ok)
    fprintf(stderr, "loom-ckpt export: out of memory for tensor '%s' (%zu bytes)\n", t->name, bytes);
  else if (loom_ckpt_read_tensor(info->dir, t, values) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt export: %s\n", loom_error_string());
    ok = 0;
  } else {
    if (turn) transpose(values, turned, t->shape[0], t->shape[1], element);
    unsigned char *data = turn ? turned : values;
    to_little_endian(data, (size_t)t->count, element);
    if (fwrite(data, 1, bytes, out) != bytes) {
      fprintf(stderr, "loom-ckpt export: writing tensor '%s' to %s: %s\n", t->name, path,
              strerror(errno));
      ok = 0;
    }
  }
  free(values), free(turned);
  return ok ? 0 : -1;
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

/* What a file's body is: called with the open temporary file; 0 on success. */
typedef int (*body_writer)(FILE *out, const char *tmp, const void *arg);

/* path.tmp written by `body`, flushed, renamed to path, directory synced; the temporary is
 * removed on any failure, so `path` is the old file or the complete new one. */
static int write_atomically(const char *path, body_writer body, const void *arg) {
  char tmp[LOOM_CKPT_PATH_BYTES + 8];
  if (strlen(path) + 5 > sizeof tmp) {
    fprintf(stderr, "loom-ckpt export: output path %s is too long\n", path);
    return -1;
  }
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "wb");
  if (!out) {
    fprintf(stderr, "loom-ckpt export: creating %s: %s\n", tmp, strerror(errno));
    return -1;
  }
  int written = body(out, tmp, arg) == 0;
  if (written && (fflush(out) != 0 || fsync(fileno(out)) != 0)) {
    fprintf(stderr, "loom-ckpt export: flushing %s: %s\n", tmp, strerror(errno));
    written = 0;
  }
  if (fclose(out) != 0 && written) {
    fprintf(stderr, "loom-ckpt export: closing %s: %s\n", tmp, strerror(errno));
    written = 0;
  }
  if (written && rename(tmp, path) != 0) {
    fprintf(stderr, "loom-ckpt export: renaming %s to %s: %s\n", tmp, path, strerror(errno));
    written = 0;
  }
  if (!written) {
    unlink(tmp); /* never leave a half file behind */
    return -1;
  }
  if (sync_parent(path) != 0) {
    fprintf(stderr, "loom-ckpt export: syncing the directory of %s: %s\n", path, strerror(errno));
    return -1;
  }
  return 0;
}

typedef struct {
  const loom_ckpt_info *info;
  const export_entry *entries;
  int count;
  const text_buffer *header;
} safetensors_body;

static int write_safetensors_body(FILE *out, const char *tmp, const void *arg) {
  const safetensors_body *b = arg;
  unsigned char length[8]; /* header bytes, uint64 little-endian */
  for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)b->header->length >> (8 * i));
  if (fwrite(length, 1, 8, out) != 8 ||
      fwrite(b->header->text, 1, b->header->length, out) != b->header->length) {
    fprintf(stderr, "loom-ckpt export: writing %s: %s\n", tmp, strerror(errno));
    return -1;
  }
  for (int i = 0; i < b->count; i++)
    if (write_entry(b->info, &b->entries[i], out, tmp) != 0) return -1;
  return 0;
}

int export_safetensors(const loom_ckpt_info *info, const export_entry *entries, int count,
                       const char *file) {
  text_buffer header = {0};
  int rc = build_header(info, entries, count, &header);
  safetensors_body body = {info, entries, count, &header};
  if (rc == 0) rc = write_atomically(file, write_safetensors_body, &body);
  free(header.text);
  return rc;
}

typedef struct {
  const char *text;
  size_t length;
} text_body;

static int write_text_body(FILE *out, const char *tmp, const void *arg) {
  const text_body *b = arg;
  if (fwrite(b->text, 1, b->length, out) == b->length) return 0;
  fprintf(stderr, "loom-ckpt export: writing %s: %s\n", tmp, strerror(errno));
  return -1;
}

int export_text_file(const char *path, const char *text, size_t length) {
  text_body body = {text, length};
  return write_atomically(path, write_text_body, &body);
}

/* The checkpoint tensor called `name`, or NULL with a message. */
static const loom_ckpt_tensor_info *find(const loom_ckpt_info *info, const char *name) {
  for (int i = 0; i < info->tensor_count; i++)
    if (strcmp(info->tensors[i].name, name) == 0) return &info->tensors[i];
  fprintf(stderr, "loom-ckpt export: checkpoint %s has no tensor '%s' (--gpt2 needs a "
          "checkpoint of examples/gpt/train_gpt)\n", info->dir, name);
  return NULL;
}

/* GPT-2's Conv1D layers store (in, out); loom's Linear weights are (out, in). */
static int is_conv1d_weight(const char *name) {
  static const char *const suffixes[] = {".attn.c_attn.weight", ".attn.c_proj.weight",
                                         ".mlp.c_fc.weight", ".mlp.c_proj.weight"};
  size_t n = strlen(name);
  for (int i = 0; i < 4; i++) {
    size_t s = strlen(suffixes[i]);
    if (n > s && strcmp(name + n - s, suffixes[i]) == 0) return 1;
  }
  return 0;
}

int export_gpt2(const loom_ckpt_info *info, const char *dir) {
  const loom_ckpt_tensor_info *shape_tensor = find(info, "gpt.shape");
  if (!shape_tensor) return -1;
  int32_t shape[5]; /* layers, width, heads, vocab, context */
  if (shape_tensor->dtype != LOOM_INT32 || shape_tensor->count != 5) {
    fprintf(stderr, "loom-ckpt export: tensor 'gpt.shape' of %s is not 5 int32 (layers, width, "
            "heads, vocab, context)\n", info->dir);
    return -1;
  }
  if (loom_ckpt_read_tensor(info->dir, shape_tensor, shape) != LOOM_OK) {
    fprintf(stderr, "loom-ckpt export: %s\n", loom_error_string());
    return -1;
  }
  int layers = shape[0], count = 0;
  export_entry *entries = calloc((size_t)(4 + 12 * (layers > 0 ? layers : 0)), sizeof *entries);
  if (!entries) {
    fprintf(stderr, "loom-ckpt export: out of memory for %d layers\n", layers);
    return -1;
  }
  static const char *const block[] = {
      "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
      "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
      "mlp.c_proj.weight", "mlp.c_proj.bias"};
  int rc = layers >= 1 && layers <= 128 ? 0 : -1;
  if (rc) fprintf(stderr, "loom-ckpt export: gpt.shape of %s says %d layers\n", info->dir, layers);
  /* loom's names in gpt_layout order; GPT-2's are "transformer." + them (".weight" on wte, wpe) */
  for (int i = 0; rc == 0 && i < 4 + 12 * layers; i++) {
    char source[64];
    if (i < 2) snprintf(source, sizeof source, "%s", i == 0 ? "wte" : "wpe");
    else if (i >= 2 + 12 * layers) snprintf(source, sizeof source, "ln_f.%s", i == 2 + 12 * layers ? "weight" : "bias");
    else snprintf(source, sizeof source, "h.%d.%s", (i - 2) / 12, block[(i - 2) % 12]);
    export_entry *e = &entries[count++];
    if (!(e->tensor = find(info, source))) rc = -1;
    snprintf(e->name, sizeof e->name, "transformer.%s%s", source, i < 2 ? ".weight" : "");
    e->transpose = e->tensor && e->tensor->ndims == 2 && is_conv1d_weight(source);
  }
  if (rc == 0 && mkdir(dir, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "loom-ckpt export: creating directory %s: %s\n", dir, strerror(errno));
    rc = -1;
  }
  char path[LOOM_CKPT_PATH_BYTES];
  if (rc == 0 && (size_t)snprintf(path, sizeof path, "%s/model.safetensors", dir) >= sizeof path) {
    fprintf(stderr, "loom-ckpt export: directory name %s is too long\n", dir);
    rc = -1;
  }
  if (rc == 0) rc = export_safetensors(info, entries, count, path);
  if (rc == 0) {
    /* GPT-2's configuration with loom's shape; no dropout (loom trains without it). */
    char config[1024];
    int n = snprintf(config, sizeof config,
                     "{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n"
                     "  \"n_layer\": %d,\n  \"n_embd\": %d,\n  \"n_head\": %d,\n"
                     "  \"vocab_size\": %d,\n  \"n_positions\": %d,\n  \"n_ctx\": %d,\n"
                     "  \"n_inner\": null,\n  \"activation_function\": \"gelu_new\",\n"
                     "  \"layer_norm_epsilon\": 1e-05,\n  \"resid_pdrop\": 0.0,\n"
                     "  \"embd_pdrop\": 0.0,\n  \"attn_pdrop\": 0.0,\n"
                     "  \"tie_word_embeddings\": true,\n  \"torch_dtype\": \"float32\",\n"
                     "  \"loom_step\": %lld\n}\n",
                     shape[0], shape[1], shape[2], shape[3], shape[4], shape[4], (long long)info->step);
    snprintf(path, sizeof path, "%s/config.json", dir);
    rc = export_text_file(path, config, (size_t)n);
  }
  if (rc == 0)
    printf("exported GPT-2 L%d d%d H%d V%d context %d, step %lld of %s, to %s (model.safetensors, "
           "config.json)\n", shape[0], shape[1], shape[2], shape[3], shape[4],
           (long long)info->step, info->dir, dir);
  free(entries);
  return rc;
}
